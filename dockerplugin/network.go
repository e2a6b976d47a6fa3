package dockerplugin

import (
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
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

// clusterNet is a cluster network's addressing and what netSpec
// compares.
type clusterNet struct {
	name      string
	subnet    netip.Prefix
	gw        netip.Addr
	internal  bool
	encrypted bool
	mtu       int
}

func (p *Plugin) clusterNets() []clusterNet {
	var out []clusterNet
	for _, n := range p.cfg.Backend.Networks() {
		s, err1 := netip.ParsePrefix(n.Subnet)
		g, err2 := netip.ParseAddr(n.Gateway)
		if err1 == nil && err2 == nil {
			out = append(out, clusterNet{n.Name, s.Masked(), g, n.Internal, n.Encrypted, n.MTU})
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

// ensure makes the cluster network name with subnet and gw (if valid) as
// spec asks, unless it exists so; one that exists otherwise is refused.
func (p *Plugin) ensure(name string, subnet netip.Prefix, gw netip.Addr, spec netSpec) error {
	if err := p.checkNetwork(name, subnet, gw); err != nil {
		return err
	}
	if found, err := p.adopt(name, spec); found || err != nil {
		return err
	}
	req := api.NetworkCreateRequest{Name: name, Subnet: subnet.String(), Internal: spec.internal, Encrypted: spec.encrypted, MTU: spec.mtu}
	if gw.IsValid() {
		req.Gateway = gw.String()
	}
	_, err := p.cfg.Backend.CreateNetwork(req)
	if err != nil {
		// Made meanwhile (another host, a concurrent request)?
		if err2 := p.checkNetwork(name, subnet, gw); err2 != nil {
			return err2
		}
		if found, err2 := p.adopt(name, spec); found || err2 != nil {
			return err2
		}
		return fmt.Errorf("network %q: %w", name, err)
	}
	p.log.Info("docker network made a cluster network", "network", name, "subnet", subnet)
	return nil
}

// adopt reports whether the cluster network name exists, failing when
// it is not what spec asks: adopting it would give a Docker --internal
// network egress, leave one made with -o encrypted in the clear, or the
// other way round.
func (p *Plugin) adopt(name string, spec netSpec) (bool, error) {
	for _, n := range p.clusterNets() {
		if n.name != name {
			continue
		}
		switch {
		case n.internal && !spec.internal:
			return true, fmt.Errorf("network %q: the cluster network of that name is internal (no egress): create the Docker network with --internal", name)
		case !n.internal && spec.internal:
			return true, fmt.Errorf("network %q: the cluster network of that name is not internal: create the Docker network without --internal, or under another name", name)
		case n.encrypted && !spec.encrypted:
			return true, fmt.Errorf("network %q: the cluster network of that name is encrypted: create the Docker network with -o %s", name, EncryptedOption)
		case !n.encrypted && spec.encrypted:
			return true, fmt.Errorf("network %q: the cluster network of that name is not encrypted: create the Docker network without -o %s, or under another name", name, EncryptedOption)
		case spec.mtu != 0 && n.mtu != spec.mtu:
			return true, fmt.Errorf("network %q: the cluster network of that name has MTU %d, not %d", name, n.mtu, spec.mtu)
		}
		return true, nil
	}
	return false, nil
}

// netSpec is what a Docker network asks of its cluster network besides
// its addressing: docker network create --internal and the driver
// options (-o).
type netSpec struct {
	// name is -o vxmesh.network ("": the Docker network's name).
	name      string
	internal  bool
	encrypted bool
	// mtu is -o com.docker.network.driver.mtu (0: the default).
	mtu int
}

// parseNetSpec reads a Docker network's driver options; an option vxmesh
// does not implement is refused rather than ignored (an ignored -o
// encrypted would carry the traffic in the clear).
func parseNetSpec(opts map[string]string, internal bool) (netSpec, error) {
	spec := netSpec{internal: internal}
	for _, k := range slices.Sorted(maps.Keys(opts)) {
		v := opts[k]
		switch k {
		case NetworkOption:
			if v == "" {
				return spec, fmt.Errorf("option %s: want a network name", NetworkOption)
			}
			spec.name = v
		case EncryptedOption:
			// As Docker's overlay driver: the option's presence.
			spec.encrypted = true
		case MTUOption:
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return spec, fmt.Errorf("option %s=%q: want a number of bytes", MTUOption, v)
			}
			spec.mtu = n
		default:
			return spec, fmt.Errorf("option %q: not supported (vxmesh takes %s, %s and %s)", k, NetworkOption, EncryptedOption, MTUOption)
		}
	}
	return spec, nil
}

// requestSpec reads a CreateNetwork request's netSpec: the driver
// options (generic, strings as the Docker CLI sends them) and
// --internal.
func requestSpec(opts map[string]any) (netSpec, error) {
	internal, _ := opts[internalOptionKey].(bool)
	generic := map[string]string{}
	if g, ok := opts[genericOptions].(map[string]any); ok {
		for k, v := range g {
			s, ok := v.(string)
			if !ok {
				return netSpec{}, fmt.Errorf("option %s: want a string, got %v", k, v)
			}
			generic[k] = s
		}
	}
	return parseNetSpec(generic, internal)
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
	spec, err := requestSpec(req.Options)
	if err != nil {
		return nil, err
	}
	name := spec.name
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
	if err := p.ensure(name, subnet, gw, spec); err != nil {
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
		spec, err := parseNetSpec(n.Options, n.Internal)
		if err != nil {
			return "", fmt.Errorf("docker network %q: %w", n.Name, err)
		}
		name := n.Name
		if spec.name != "" {
			name = spec.name
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
		if err := p.ensure(name, subnet, gw, spec); err != nil {
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
	return clusterNet{}, fmt.Errorf("subnet %s: %w", subnet, errNoNetwork)
}

var errNoNetwork = errors.New("no vxmesh network has it")

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
	if err != nil && want.IsValid() && errors.Is(err, errNoNetwork) {
		// Docker asks for the --aux-address ones while it creates the
		// network, before any cluster network has the subnet.
		return nil, fmt.Errorf("address %s: no vxmesh network has subnet %s yet: docker network create --aux-address is not supported (vxmesh reserves addresses for its containers only)", want, subnet)
	}
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
