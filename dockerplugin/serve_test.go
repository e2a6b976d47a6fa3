package dockerplugin

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeOnUnixSocket: the plugin answers on its socket, a second
// plugin on the same socket is refused, a stale socket file is replaced,
// and the socket goes when the plugin stops (Docker then stops finding it).
func TestServeOnUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "plugins", "vxmesh.sock")
	if DriverName(path) != "vxmesh" {
		t.Fatalf("DriverName(%s) = %q", path, DriverName(path))
	}
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	p := New(Config{Backend: newFakeBackend(), Engine: &fakeEngine{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln) }()

	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	resp, err := client.Post("http://plugin/Plugin.Activate", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"IpamDriver"`) || resp.Header.Get("Content-Type") != contentType {
		t.Fatalf("Activate over the socket: %d %s %q", resp.StatusCode, body, resp.Header.Get("Content-Type"))
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another process is listening") {
		t.Fatalf("a second Listen on a live socket: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket after Serve returned: %v", err)
	}
	// A stale socket file (a killed daemon's) is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	ln, err = Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket file: %v", err)
	}
	ln.Close()
}
