//go:build linux

package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultDockerSocket is where the Docker Engine API listens by default.
const DefaultDockerSocket = "/var/run/docker.sock"

// DockerHostEnv names the environment variable that, as for the docker
// CLI, says where the Docker Engine API listens.
const DockerHostEnv = "DOCKER_HOST"

// DockerSocket returns the unix socket path of the Docker Engine named by
// host, a DOCKER_HOST value: "unix:///path" or an absolute path; empty
// means DefaultDockerSocket. Other schemes (tcp://, ssh://, npipe://) are
// refused: only a local unix socket is supported.
func DockerSocket(host string) (string, error) {
	if host == "" {
		return DefaultDockerSocket, nil
	}
	path := host
	if scheme, rest, ok := strings.Cut(host, "://"); ok {
		if scheme != "unix" {
			return "", fmt.Errorf("docker host %q: only unix:// sockets are supported, not %s://", host, scheme)
		}
		path = rest
	}
	if !strings.HasPrefix(path, "/") {
		return "", fmt.Errorf("docker host %q: want unix:///ABSOLUTE/PATH", host)
	}
	return path, nil
}

// dockerTimeout bounds one Docker Engine API request.
const dockerTimeout = 10 * time.Second

// DockerPID asks the Docker Engine listening on the unix socket socketPath
// (DefaultDockerSocket if empty) for the container named or identified by
// container, and returns the PID of its main process, whose network
// namespace is NetnsPathForPID(pid). It fails if the engine cannot be
// reached, the container does not exist or is not running.
func DockerPID(socketPath, container string) (int, error) {
	if socketPath == "" {
		socketPath = DefaultDockerSocket
	}
	if container == "" || strings.ContainsAny(container, "/?#") {
		return 0, fmt.Errorf("docker: invalid container name %q", container)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: dockerTimeout}

	u := "http://docker/containers/" + url.PathEscape(container) + "/json"
	resp, err := client.Get(u)
	if err != nil {
		return 0, fmt.Errorf("docker: cannot reach the Docker Engine at %s: %w", socketPath, unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return 0, fmt.Errorf("docker: container %q: reading the engine's answer: %w", container, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return 0, fmt.Errorf("docker: container %q not found", container)
	case resp.StatusCode != http.StatusOK:
		return 0, fmt.Errorf("docker: container %q: engine answered %s: %s", container, resp.Status, engineMessage(body))
	}
	var info struct {
		State struct {
			Running bool
			Paused  bool
			Status  string
			Pid     int
		}
	}
	if err := json.Unmarshal(body, &info); err != nil {
		return 0, fmt.Errorf("docker: container %q: malformed engine answer: %w", container, err)
	}
	if !info.State.Running || info.State.Pid <= 0 {
		status := info.State.Status
		if status == "" {
			status = "stopped"
		}
		return 0, fmt.Errorf("docker: container %q is not running (%s)", container, status)
	}
	return info.State.Pid, nil
}

// unwrapURLError drops net/http's `Get "http://docker/...": ` prefix, which
// names a made-up URL.
func unwrapURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

// engineMessage extracts the "message" of a Docker Engine error body.
func engineMessage(body []byte) string {
	var e struct{ Message string }
	if json.Unmarshal(body, &e) == nil && e.Message != "" {
		return e.Message
	}
	return strings.TrimSpace(string(body))
}
