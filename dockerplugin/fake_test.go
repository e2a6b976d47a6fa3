package dockerplugin

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/packet"
)

// fakeBackend is a daemon with networks, an allocator and endpoints,
// without devices.
type fakeBackend struct {
	mu       sync.Mutex
	nets     []api.Network
	held     map[netip.Addr]string // address -> network
	eps      []api.Endpoint
	attaches []api.AttachRequest
	creates  int
}

func newFakeBackend(nets ...api.Network) *fakeBackend {
	return &fakeBackend{nets: nets, held: map[netip.Addr]string{}}
}

func (b *fakeBackend) Networks() []api.Network {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]api.Network(nil), b.nets...)
}

func (b *fakeBackend) CreateNetwork(req api.NetworkCreateRequest) (api.Network, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := netip.MustParsePrefix(req.Subnet)
	for _, n := range b.nets {
		if n.Name == req.Name {
			return api.Network{}, fmt.Errorf("network %q: already exists", req.Name)
		}
		if netip.MustParsePrefix(n.Subnet).Overlaps(s) {
			return api.Network{}, fmt.Errorf("network %q: subnet overlaps %q", req.Name, n.Name)
		}
	}
	gw := req.Gateway
	if gw == "" {
		gw = s.Addr().Next().String()
	}
	n := api.Network{Name: req.Name, Subnet: req.Subnet, Gateway: gw, MTU: 1450, Internal: req.Internal, Encrypted: req.Encrypted}
	if req.MTU != 0 {
		n.MTU = req.MTU
	}
	b.nets = append(b.nets, n)
	b.creates++
	return n, nil
}

func (b *fakeBackend) Endpoints() []api.Endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]api.Endpoint(nil), b.eps...)
}

func (b *fakeBackend) network(name string) (api.Network, bool) {
	for _, n := range b.nets {
		if n.Name == name {
			return n, true
		}
	}
	return api.Network{}, false
}

func (b *fakeBackend) used(a netip.Addr, n api.Network) bool {
	if _, ok := b.held[a]; ok || a.String() == n.Gateway {
		return true
	}
	for _, e := range b.eps {
		if e.IP == a.String() {
			return true
		}
	}
	return false
}

func (b *fakeBackend) ReserveAddress(network string, want netip.Addr) (netip.Addr, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, ok := b.network(network)
	if !ok {
		return netip.Addr{}, fmt.Errorf("network %q: not found", network)
	}
	if want.IsValid() {
		if b.used(want, n) {
			return netip.Addr{}, fmt.Errorf("ip %s: already in use on network %q", want, network)
		}
		b.held[want] = network
		return want, nil
	}
	s := netip.MustParsePrefix(n.Subnet)
	for a := s.Addr().Next(); s.Contains(a); a = a.Next() {
		if !b.used(a, n) {
			b.held[a] = network
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("network %q: full", network)
}

func (b *fakeBackend) ReleaseAddress(network string, a netip.Addr) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held[a] == network {
		delete(b.held, a)
	}
}

func (b *fakeBackend) EndpointMAC(a netip.Addr) packet.MAC {
	v := a.As4()
	return packet.MAC{0x02, 0x42, v[0], v[1], v[2], v[3]}
}

func (b *fakeBackend) AttachHostTAP(req api.AttachRequest) (api.Endpoint, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.attaches = append(b.attaches, req)
	for _, e := range b.eps {
		if e.Name == req.Name {
			return api.Endpoint{}, fmt.Errorf("container %q: already exists", req.Name)
		}
	}
	a := netip.MustParseAddr(req.IP)
	delete(b.held, a)
	e := api.Endpoint{Name: req.Name, Network: req.Network, IP: req.IP, IfName: req.IfName, Netns: req.Netns, State: "up"}
	b.eps = append(b.eps, e)
	return e, nil
}

func (b *fakeBackend) Detach(name, network string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.eps {
		if e.Name == name && e.Network == network {
			b.eps = append(b.eps[:i], b.eps[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("container %q: not found", name)
}

func (b *fakeBackend) AddAlias(name, network, alias string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.eps {
		if e.Name == name && e.Network == network {
			b.eps[i].Aliases = append(b.eps[i].Aliases, alias)
			return nil
		}
	}
	return fmt.Errorf("container %q: not attached to network %q", name, network)
}

// fakeEngine lists the Docker networks and containers it was given.
type fakeEngine struct {
	mu    sync.Mutex
	nets  []EngineNetwork
	calls int
	err   error
	// ctrs maps endpoint IDs to container names.
	ctrs map[string]string
	// aliases maps endpoint IDs to their network aliases.
	aliases map[string][]string
}

func (e *fakeEngine) EndpointAliases(_ context.Context, _, id string) ([]string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.aliases[id], nil
}

func (e *fakeEngine) ContainerName(_ context.Context, id string) (string, bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	name, ok := e.ctrs[id]
	return name, ok, nil
}

func (e *fakeEngine) addContainer(id, name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ctrs == nil {
		e.ctrs = map[string]string{}
	}
	e.ctrs[id] = name
}

func (e *fakeEngine) Networks(context.Context) ([]EngineNetwork, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls++
	return append([]EngineNetwork(nil), e.nets...), e.err
}

func (e *fakeEngine) add(n EngineNetwork) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.nets = append(e.nets, n)
}

func (b *fakeBackend) PublishPorts(name, network string, specs []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	idx := -1
	for i, e := range b.eps {
		if e.Name == name && e.Network == network {
			idx = i
		}
	}
	if idx < 0 {
		return fmt.Errorf("container %q: not attached to network %q", name, network)
	}
	for i, e := range b.eps {
		for _, pp := range e.Published {
			if i != idx && slices.Contains(specs, pp.Spec) {
				return fmt.Errorf("container %q: publish %s: host port is already in use", name, pp.Spec)
			}
		}
	}
	var ports []api.PublishedPort
	for _, s := range specs {
		ports = append(ports, api.PublishedPort{Spec: s, State: "up"})
	}
	b.eps[idx].Published = ports
	return nil
}

func (b *fakeBackend) UnpublishPorts(name, network string) error {
	return b.PublishPorts(name, network, nil)
}

// forgetHolds is what a daemon restart does to the addresses held for
// Docker's IPAM: they are not saved.
func (b *fakeBackend) forgetHolds() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.held = map[netip.Addr]string{}
}
