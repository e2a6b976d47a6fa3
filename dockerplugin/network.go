package dockerplugin

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// parsePool parses an IPv4 subnet in canonical form (10.1.0.0/24).
func parsePool(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() || p != p.Masked() || p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("subnet %q: want an IPv4 subnet such as 10.1.0.0/24 (at most /30)", s)
	}
	return p, nil
}

// parseAddr parses an address, with or without a prefix length.
func parseAddr(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

// clusterNet is a cluster network's addressing, and whether it is
// internal (no egress).
type clusterNet struct {
	name     string
	subnet   netip.Prefix
	gw       netip.Addr
	internal bool
}

func (p *Plugin) clusterNets() []clusterNet {
	var out []clusterNet
	for _, n := range p.cfg.Backend.Networks() {
		s, err1 := netip.ParsePrefix(n.Subnet)
		g, err2 := netip.ParseAddr(n.Gateway)
		if err1 == nil && err2 == nil {
			out = append(out, clusterNet{n.Name, s.Masked(), g, n.Internal})
		}
	}
	return out
}

// checkNetwork fails when a Docker network of subnet and gateway gw
// (if valid) could not be the cluster network name ("" while unknown): that
// network exists with other addressing, or another one overlaps.
func (p *Plugin) checkNetwork(name string, subnet netip.Prefix, gw netip.Addr) error {
	for _, n := range p.clusterNets() {
		switch {
		case n.name == name && n.subnet != subnet:
			return fmt.Errorf("network %q: the cluster network of that name has subnet %s, not %s", name, n.subnet, subnet)
		case n.name == name && gw.IsValid() && n.gw != gw:
			return fmt.Errorf("network %q: the cluster network of that name has gateway %s, not %s", name, n.gw, gw)
		case n.name != name && n.subnet.Overlaps(subnet) && (name != "" || n.subnet != subnet):
			return fmt.Errorf("subnet %s: overlaps the cluster network %q (%s)", subnet, n.name, n.subnet)
		}
	}
	return nil
}

// ensure makes the cluster network name with subnet and gw (if valid),
// internal (docker network create --internal) or not, unless it exists
// so; one that exists otherwise is refused.
func (p *Plugin) ensure(name string, subnet netip.Prefix, gw netip.Addr, internal bool) error {
	if err := p.checkNetwork(name, subnet, gw); err != nil {
		return err
	}
	if found, err := p.adopt(name, internal); found || err != nil {
		return err
	}
	req := api.NetworkCreateRequest{Name: name, Subnet: subnet.String(), Internal: internal}
	if gw.IsValid() {
		req.Gateway = gw.String()
	}
	_, err := p.cfg.Backend.CreateNetwork(req)
	if err != nil {
		// Made meanwhile (another host, a concurrent request)?
		if err2 := p.checkNetwork(name, subnet, gw); err2 != nil {
			return err2
		}
		if found, err2 := p.adopt(name, internal); found || err2 != nil {
			return err2
		}
		return fmt.Errorf("network %q: %w", name, err)
	}
	p.log.Info("docker network made a cluster network", "network", name, "subnet", subnet)
	return nil
}

// adopt reports whether the cluster network name exists, failing when
// it is internal and the Docker network is not, or the other way round:
// adopting it would give a Docker --internal network egress, or take it
// from one made without.
func (p *Plugin) adopt(name string, internal bool) (bool, error) {
	for _, n := range p.clusterNets() {
		switch {
		case n.name != name:
		case n.internal && !internal:
			return true, fmt.Errorf("network %q: the cluster network of that name is internal (no egress): create the Docker network with --internal", name)
		case !n.internal && internal:
			return true, fmt.Errorf("network %q: the cluster network of that name is not internal: create the Docker network without --internal, or under another name", name)
		default:
			return true, nil
		}
	}
	return false, nil
}

// internalOption reports whether a CreateNetwork request's options mark
// the network internal (docker network create --internal).
func internalOption(opts map[string]any) bool {
	v, _ := opts[internalOptionKey].(bool)
	return v
}

// ipv4Data checks a CreateNetwork request's addressing: one IPv4 pool.
func ipv4Data(req createNetworkRequest) (netip.Prefix, netip.Addr, error) {
	if len(req.IPv6Data) > 0 {
		return netip.Prefix{}, netip.Addr{}, errors.New("IPv6 is not supported on vxmesh networks")
	}
	if len(req.IPv4Data) != 1 {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("want one IPv4 subnet, got %d", len(req.IPv4Data))
	}
	subnet, err := parsePool(req.IPv4Data[0].Pool)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, err
	}
	var gw netip.Addr
	if g := req.IPv4Data[0].Gateway; g != "" {
		if gw, err = parseAddr(g); err != nil || !subnet.Contains(gw) {
			return netip.Prefix{}, netip.Addr{}, fmt.Errorf("gateway %q: not an address of %s", g, subnet)
		}
	}
	return subnet, gw, nil
}

// createNetwork checks the addressing against the cluster's networks.
// With -o vxmesh.network=NAME the cluster network is made or adopted at
// once; otherwise its name is Docker's, learnt from the Docker Engine
// once the network exists there (in the background, and at the latest at
// the first endpoint).
func (p *Plugin) createNetwork(req createNetworkRequest) (any, error) {
	subnet, gw, err := ipv4Data(req)
	if err != nil {
		return nil, err
	}
	name := ""
	if g, ok := req.Options[genericOptions].(map[string]any); ok {
		if v, ok := g[NetworkOption]; ok {
			if name, ok = v.(string); !ok || name == "" {
				return nil, fmt.Errorf("option %s: want a network name", NetworkOption)
			}
		}
	}
	if _, err := hex.DecodeString(req.NetworkID); err != nil || len(req.NetworkID) < 12 {
		return nil, fmt.Errorf("network ID %q: want Docker's hex ID", req.NetworkID)
	}
	if name == "" {
		if err := p.checkNetwork("", subnet, gw); err != nil {
			return nil, err
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.resolveLater(req.NetworkID)
		}()
		return struct{}{}, nil
	}
	if err := p.ensure(name, subnet, gw, internalOption(req.Options)); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.nets[req.NetworkID] = name
	p.mu.Unlock()
	return struct{}{}, nil
}

// resolveLater resolves a new network as soon as the Docker Engine lists
// it (Docker stores it once CreateNetwork returned).
func (p *Plugin) resolveLater(id string) {
	deadline := time.Now().Add(resolveTimeout)
	for {
		_, err := p.resolve(id)
		if err == nil {
			return
		}
		if !errors.Is(err, errUnknownNetwork) || time.Now().After(deadline) {
			p.log.Warn("docker network not made a cluster network yet (retried at its first endpoint)", "id", id, "err", err)
			return
		}
		select {
		case <-p.ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var errUnknownNetwork = errors.New("the Docker Engine does not list it")

// resolve returns the cluster network of Docker network id, making or
// adopting it on first use.
func (p *Plugin) resolve(id string) (string, error) {
	p.mu.Lock()
	name, ok := p.nets[id]
	p.mu.Unlock()
	if ok {
		return name, nil
	}
	nets, err := p.cfg.Engine.Networks(p.ctx)
	if err != nil {
		return "", fmt.Errorf("docker network %.12s: %w", id, err)
	}
	for _, n := range nets {
		if n.ID != id {
			continue
		}
		name := n.Name
		if v := n.Options[NetworkOption]; v != "" {
			name = v
		}
		subnet, err := parsePool(n.Subnet)
		if err != nil {
			return "", fmt.Errorf("docker network %q: %w", n.Name, err)
		}
		var gw netip.Addr
		if n.Gateway != "" {
			if gw, err = parseAddr(n.Gateway); err != nil {
				return "", fmt.Errorf("docker network %q: gateway %q: %w", n.Name, n.Gateway, err)
			}
		}
		if err := p.ensure(name, subnet, gw, n.Internal); err != nil {
			return "", err
		}
		p.mu.Lock()
		p.nets[id] = name
		p.mu.Unlock()
		return name, nil
	}
	return "", fmt.Errorf("docker network %.12s: %w", id, errUnknownNetwork)
}

func (p *Plugin) deleteNetwork(req networkRequest) (any, error) {
	// The cluster network stays: other hosts may use it (vxmesh network
	// rm removes it).
	p.mu.Lock()
	delete(p.nets, req.NetworkID)
	p.mu.Unlock()
	return struct{}{}, nil
}

// requestPool accepts the subnet given with --subnet (the cluster
// network's); vxmesh does not pick one for Docker.
func (p *Plugin) requestPool(req requestPoolRequest) (any, error) {
	if req.V6 {
		return nil, errors.New("IPv6 is not supported on vxmesh networks")
	}
	if req.Pool == "" {
		return nil, errors.New("no subnet: give one with docker network create --subnet CIDR")
	}
	subnet, err := parsePool(req.Pool)
	if err != nil {
		return nil, err
	}
	if req.SubPool != "" && req.SubPool != req.Pool {
		return nil, errors.New("--ip-range is not supported: vxmesh allocates from the whole subnet")
	}
	if err := p.checkNetwork("", subnet, netip.Addr{}); err != nil {
		return nil, err
	}
	return requestPoolResponse{PoolID: subnet.String(), Pool: subnet.String(), Data: map[string]string{}}, nil
}

// networkForPool returns the cluster network of subnet, resolving the
// Docker networks of this driver with that subnet when none exists yet.
func (p *Plugin) networkForPool(subnet netip.Prefix) (clusterNet, error) {
	find := func() (clusterNet, bool) {
		for _, n := range p.clusterNets() {
			if n.subnet == subnet {
				return n, true
			}
		}
		return clusterNet{}, false
	}
	if n, ok := find(); ok {
		return n, nil
	}
	nets, err := p.cfg.Engine.Networks(p.ctx)
	if err != nil {
		return clusterNet{}, fmt.Errorf("subnet %s: %w", subnet, err)
	}
	for _, n := range nets {
		if n.Driver == p.cfg.Driver && n.Subnet == subnet.String() {
			if _, err := p.resolve(n.ID); err != nil {
				return clusterNet{}, err
			}
		}
	}
	if n, ok := find(); ok {
		return n, nil
	}
	return clusterNet{}, fmt.Errorf("subnet %s: no vxmesh network has it", subnet)
}

// requestAddress answers the gateway request with the cluster network's
// gateway (or the one asked for, or the subnet's first address, which is
// what vxmesh would pick), and any other with an address held by the
// daemon's allocator.
func (p *Plugin) requestAddress(req requestAddressRequest) (any, error) {
	subnet, err := parsePool(req.PoolID)
	if err != nil {
		return nil, fmt.Errorf("pool %w", err)
	}
	var want netip.Addr
	if req.Address != "" {
		if want, err = parseAddr(req.Address); err != nil || !subnet.Contains(want) {
			return nil, fmt.Errorf("address %q: not an address of %s", req.Address, subnet)
		}
	}
	if req.Options["RequestAddressType"] == gatewayRequest {
		gw := want
		for _, n := range p.clusterNets() {
			if n.subnet == subnet {
				if gw.IsValid() && gw != n.gw {
					return nil, fmt.Errorf("gateway %s: the cluster network %q has gateway %s", gw, n.name, n.gw)
				}
				gw = n.gw
			}
		}
		if !gw.IsValid() {
			gw = subnet.Addr().Next()
		}
		return requestAddressResponse{Address: netip.PrefixFrom(gw, subnet.Bits()).String(), Data: map[string]string{}}, nil
	}
	n, err := p.networkForPool(subnet)
	if err != nil {
		return nil, err
	}
	a, err := p.cfg.Backend.ReserveAddress(n.name, want)
	if err != nil {
		return nil, err
	}
	return requestAddressResponse{Address: netip.PrefixFrom(a, subnet.Bits()).String(), Data: map[string]string{}}, nil
}

func (p *Plugin) releaseAddress(req releaseAddressRequest) (any, error) {
	subnet, err := parsePool(req.PoolID)
	if err != nil {
		return nil, fmt.Errorf("pool %w", err)
	}
	a, err := parseAddr(req.Address)
	if err != nil {
		return nil, fmt.Errorf("address %q: %v", req.Address, err)
	}
	for _, n := range p.clusterNets() {
		if n.subnet == subnet {
			p.cfg.Backend.ReleaseAddress(n.name, a)
		}
	}
	return struct{}{}, nil
}
