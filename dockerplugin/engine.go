package dockerplugin

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

// engineTimeout bounds one Docker Engine API request.
const engineTimeout = 5 * time.Second

// UnixEngine asks the Docker Engine API on a unix socket.
type UnixEngine struct {
	socket string
	client *http.Client
}

// NewUnixEngine returns an Engine for the API at socket.
func NewUnixEngine(socket string) *UnixEngine {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &UnixEngine{socket: socket, client: &http.Client{Transport: tr, Timeout: engineTimeout}}
}

// engineNetwork is a network in the Engine's /networks list.
type engineNetwork struct {
	ID       string `json:"Id"`
	Name     string
	Driver   string
	Options  map[string]string
	Internal bool
	IPAM     struct {
		Config []struct {
			Subnet  string
			Gateway string
		}
	}
}

// get reads the body of the Engine's answer to GET path (at most limit
// bytes); what names the request in errors.
func (e *UnixEngine) get(ctx context.Context, path, what string, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("docker engine at %s: %w", e.socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return nil, fmt.Errorf("docker engine at %s: %w", e.socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("docker engine at %s: %s: %s", e.socket, what, resp.Status)
	}
	return body, nil
}

// Networks lists the Engine's networks.
func (e *UnixEngine) Networks(ctx context.Context) ([]EngineNetwork, error) {
	body, err := e.get(ctx, "/networks", "networks", 16<<20)
	if err != nil {
		return nil, err
	}
	return parseNetworks(body)
}

// parseNetworks decodes the Engine's network list.
func parseNetworks(body []byte) ([]EngineNetwork, error) {
	var list []engineNetwork
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("docker engine: networks: %v", err)
	}
	out := make([]EngineNetwork, 0, len(list))
	for _, n := range list {
		en := EngineNetwork{ID: n.ID, Name: n.Name, Driver: n.Driver, Options: n.Options, Internal: n.Internal}
		if len(n.IPAM.Config) > 0 {
			en.Subnet, en.Gateway = n.IPAM.Config[0].Subnet, n.IPAM.Config[0].Gateway
		}
		out = append(out, en)
	}
	return out, nil
}

// engineContainer is a container in the Engine's /containers/json list.
type engineContainer struct {
	Names           []string
	NetworkSettings struct {
		Networks map[string]struct {
			EndpointID string
			Aliases    []string
		}
	}
}

// ContainerName returns the name of the running container that has
// endpoint id, and whether one has it.
func (e *UnixEngine) ContainerName(ctx context.Context, id string) (string, bool, error) {
	body, err := e.get(ctx, "/containers/json", "containers", 64<<20)
	if err != nil {
		return "", false, err
	}
	return containerOfEndpoint(body, id)
}

// EndpointAliases returns the network aliases (`--network-alias`,
// `network connect --alias`) container has on its endpoint id: the
// container list leaves them out, its inspect has them.
func (e *UnixEngine) EndpointAliases(ctx context.Context, container, id string) ([]string, error) {
	body, err := e.get(ctx, "/containers/"+url.PathEscape(container)+"/json", "container "+container, 16<<20)
	if err != nil {
		return nil, err
	}
	return aliasesOfEndpoint(body, id)
}

// aliasesOfEndpoint reads from a container's inspect the aliases of its
// endpoint id (none if it has no such endpoint).
func aliasesOfEndpoint(body []byte, id string) ([]string, error) {
	var c engineContainer
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("docker engine: container: %v", err)
	}
	for _, n := range c.NetworkSettings.Networks {
		if n.EndpointID == id && id != "" {
			return n.Aliases, nil
		}
	}
	return nil, nil
}

// containerOfEndpoint finds in the Engine's container list the name of
// the container with endpoint id.
func containerOfEndpoint(body []byte, id string) (string, bool, error) {
	var list []engineContainer
	if err := json.Unmarshal(body, &list); err != nil {
		return "", false, fmt.Errorf("docker engine: containers: %v", err)
	}
	for _, c := range list {
		for _, n := range c.NetworkSettings.Networks {
			if n.EndpointID == id && id != "" && len(c.Names) > 0 {
				return strings.TrimPrefix(c.Names[0], "/"), true, nil
			}
		}
	}
	return "", false, nil
}
