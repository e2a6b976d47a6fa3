package dockerplugin

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/packet"
)

// DefaultSocket is where Docker looks for the vxmesh plugin: a socket in
// /run/docker/plugins named after the driver.
const DefaultSocket = "/run/docker/plugins/vxmesh.sock"

const (
	// addressSpace is the IPAM driver's only address space.
	addressSpace = "vxmesh"
	// gatewayRequest is the RequestAddressType of the gateway request
	// Docker makes when it creates a network.
	gatewayRequest = "com.docker.network.gateway"
	// genericOptions holds the driver options (`docker network create -o`).
	genericOptions = "com.docker.network.generic"
	// internalOptionKey is true in a CreateNetwork request's options for
	// docker network create --internal.
	internalOptionKey = "com.docker.network.internal"
	// NetworkOption (`-o vxmesh.network=NAME`) names the cluster network
	// when it is not the Docker network's name.
	NetworkOption = "vxmesh.network"
	// EncryptedOption (`-o encrypted`, as Docker's overlay driver takes
	// it) makes an encrypted cluster network.
	EncryptedOption = "encrypted"
	// MTUOption (`-o com.docker.network.driver.mtu=N`, Docker's) sets
	// the cluster network's MTU.
	MTUOption = "com.docker.network.driver.mtu"
	// portMapOption lists a container's published ports (`docker run
	// -p`), given to ProgramExternalConnectivity.
	portMapOption = "com.docker.network.portmap"
	// contentType is the plugin protocol's media type.
	contentType = "application/vnd.docker.plugins.v1.2+json"
	// maxBody bounds a request body.
	maxBody = 1 << 20
	// resolveTimeout bounds the wait for Docker to know a network it is
	// creating (the background resolve after CreateNetwork).
	resolveTimeout = 15 * time.Second
	// nameTimeout bounds the wait for Docker to list a joined endpoint's
	// container (it starts after Join).
	nameTimeout = 60 * time.Second
)

// Backend is the vxmesh daemon as the plugin uses it (*daemon.Daemon).
type Backend interface {
	Networks() []api.Network
	CreateNetwork(api.NetworkCreateRequest) (api.Network, error)
	Endpoints() []api.Endpoint
	// ReserveAddress holds an address of a network for a coming
	// endpoint: want if valid, else a free one; ReleaseAddress gives a
	// held one back.
	ReserveAddress(network string, want netip.Addr) (netip.Addr, error)
	ReleaseAddress(network string, a netip.Addr)
	// EndpointMAC is the MAC of the endpoint with address a.
	EndpointMAC(a netip.Addr) packet.MAC
	// AttachHostTAP attaches a new container with a TAP device made in
	// the daemon's namespace (req.IfName) that Docker moves.
	AttachHostTAP(req api.AttachRequest) (api.Endpoint, error)
	Detach(name, network string) error
	// AddAlias gives an endpoint one more DNS name.
	AddAlias(name, network, alias string) error
	// PublishPorts sets an endpoint's published ports (specs as
	// `vxmesh run -p` takes them); UnpublishPorts closes them all.
	PublishPorts(name, network string, specs []string) error
	UnpublishPorts(name, network string) error
}

// EngineNetwork is a network as the Docker Engine lists it.
type EngineNetwork struct {
	ID, Name, Driver string
	Options          map[string]string
	// Subnet and Gateway are of its first IPAM config ("" if none).
	Subnet, Gateway string
	// Internal is docker network create --internal: no egress.
	Internal bool
}

// Engine is the Docker Engine API the plugin asks for network names
// (the remote driver protocol carries only IDs).
type Engine interface {
	Networks(ctx context.Context) ([]EngineNetwork, error)
	// ContainerName returns the name of the running container that has
	// endpoint id, and whether one has it.
	ContainerName(ctx context.Context, id string) (string, bool, error)
	// EndpointAliases returns the network aliases container has on its
	// endpoint id.
	EndpointAliases(ctx context.Context, container, id string) ([]string, error)
}

// Config configures a Plugin.
type Config struct {
	Backend Backend
	Engine  Engine
	// Driver is the driver's name (the socket's base name without
	// ".sock"): Docker networks of that driver are this plugin's.
	Driver string
	// StateFile keeps the endpoint records across daemon restarts
	// ("": none are kept).
	StateFile string
	Logger    *slog.Logger
}

// Plugin answers Docker's network and IPAM driver requests.
type Plugin struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// nets maps Docker network IDs to cluster network names.
	nets map[string]string
	// eps are the endpoints between CreateEndpoint and DeleteEndpoint,
	// by endpoint ID, as saved in cfg.StateFile.
	eps map[string]endpointInfo
}

// endpointInfo is what CreateEndpoint learnt for Join.
type endpointInfo struct {
	network string
	ip      netip.Addr
	// held: CreateEndpoint held ip itself (no address from Docker's IPAM).
	held bool
}

// New returns a plugin with the endpoint records of cfg.StateFile (an
// unreadable file is logged and ignored); Close stops its background
// work.
func New(cfg Config) *Plugin {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Driver == "" {
		cfg.Driver = DriverName(DefaultSocket)
	}
	p := &Plugin{cfg: cfg, log: cfg.Logger.With("docker_driver", cfg.Driver), nets: map[string]string{}, eps: map[string]endpointInfo{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	eps, err := loadState(cfg.StateFile)
	if err != nil {
		p.log.Warn("docker endpoints of the previous run not restored", "err", err)
	}
	p.restore(eps)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.removeStopped()
		p.nameRestored()
	}()
	return p
}

// DriverName is the name Docker knows the plugin at socket by.
func DriverName(socket string) string {
	return strings.TrimSuffix(filepath.Base(socket), ".sock")
}

// Close stops the background resolution of new networks and waits for it.
func (p *Plugin) Close() {
	p.cancel()
	p.wg.Wait()
}

// Handler serves the protocol: POST /Plugin.Activate, /NetworkDriver.*,
// /IpamDriver.*; unknown methods get 404, as Docker expects of methods a
// plugin does not implement.
func (p *Plugin) Handler() http.Handler {
	mux := http.NewServeMux()
	for path, h := range p.routes() {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
			var resp any
			if err == nil {
				resp, err = h(body)
			}
			p.reply(w, path, resp, err)
		})
	}
	return mux
}

type handler func(body []byte) (any, error)

func (p *Plugin) routes() map[string]handler {
	return map[string]handler{
		"/Plugin.Activate": func([]byte) (any, error) {
			return activateResponse{Implements: []string{"NetworkDriver", "IpamDriver"}}, nil
		},
		// The network is the cluster's, but each Docker Engine keeps its
		// own record of it (no swarm needed): local scope, global
		// connectivity.
		"/NetworkDriver.GetCapabilities": func([]byte) (any, error) {
			return capabilitiesResponse{Scope: "local", ConnectivityScope: "global"}, nil
		},
		"/NetworkDriver.CreateNetwork":    decoded(p.createNetwork),
		"/NetworkDriver.DeleteNetwork":    decoded(p.deleteNetwork),
		"/NetworkDriver.CreateEndpoint":   decoded(p.createEndpoint),
		"/NetworkDriver.EndpointOperInfo": decoded(p.operInfo),
		"/NetworkDriver.DeleteEndpoint":   decoded(p.deleteEndpoint),
		"/NetworkDriver.Join":             decoded(p.join),
		"/NetworkDriver.Leave":            decoded(p.leave),
		// Node discovery is the cluster's (memberlist) business.
		"/NetworkDriver.DiscoverNew":    empty,
		"/NetworkDriver.DiscoverDelete": empty,
		// Egress is vxmesh's gateway's; published ports are `run -p`'s.
		"/NetworkDriver.ProgramExternalConnectivity": decoded(p.programExternal),
		"/NetworkDriver.RevokeExternalConnectivity":  decoded(p.revokeExternal),
		"/IpamDriver.GetCapabilities": func([]byte) (any, error) {
			return ipamCapabilitiesResponse{}, nil
		},
		"/IpamDriver.GetDefaultAddressSpaces": func([]byte) (any, error) {
			return addressSpacesResponse{LocalDefaultAddressSpace: addressSpace, GlobalDefaultAddressSpace: addressSpace}, nil
		},
		"/IpamDriver.RequestPool":    decoded(p.requestPool),
		"/IpamDriver.ReleasePool":    empty,
		"/IpamDriver.RequestAddress": decoded(p.requestAddress),
		"/IpamDriver.ReleaseAddress": decoded(p.releaseAddress),
	}
}

func empty([]byte) (any, error) { return struct{}{}, nil }

// decoded wraps a handler of one request type: the body must be one JSON
// object of it.
func decoded[T any](h func(T) (any, error)) handler {
	return func(body []byte) (any, error) {
		req, err := decode[T](body)
		if err != nil {
			return nil, err
		}
		return h(req)
	}
}

// decode reads one JSON object; anything else is a clear error.
func decode[T any](body []byte) (T, error) {
	var req T
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("request body: %v", err)
	}
	if dec.More() {
		return req, errors.New("request body: more than one JSON value")
	}
	return req, nil
}

func (p *Plugin) reply(w http.ResponseWriter, path string, resp any, err error) {
	w.Header().Set("Content-Type", contentType)
	if err != nil {
		p.log.Warn("docker plugin request refused", "method", path, "err", err)
		w.WriteHeader(http.StatusInternalServerError)
		json.NewEncoder(w).Encode(errResponse{Err: "vxmesh: " + err.Error()})
		return
	}
	p.log.Debug("docker plugin request", "method", path)
	json.NewEncoder(w).Encode(resp)
}

// names returns the vxmesh container and host-side interface names of
// Docker endpoint id (a hex ID of at least 12 characters).
func names(id string) (container, ifname string, err error) {
	if len(id) < 12 {
		return "", "", fmt.Errorf("endpoint ID %q: want Docker's hex ID", id)
	}
	if _, err := hex.DecodeString(id[:12]); err != nil {
		return "", "", fmt.Errorf("endpoint ID %q: want Docker's hex ID", id)
	}
	return "docker-" + id[:12], "vxd" + id[:12], nil
}
