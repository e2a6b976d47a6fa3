package vswitch

import "github.com/vxmesh/vxmesh/packet"

// AddGateway attaches p as the switch's gateway port (the network's
// gateway on this host, see package gateway), named name. It takes the
// frames addressed to the switch's GatewayMAC, but only from ports with
// port security (this host's endpoints): the gateway address is anycast,
// the same IP and MAC on every host, so a frame to GatewayMAC that came
// in through the tunnel was never meant for this host's gateway and is
// dropped ("no-route"). Likewise the gateway port's own frames go only to
// ports with port security, never into the tunnel: a host's gateway talks
// to its own endpoints only. It is not a flooding target. The switch
// needs a GatewayIP and GatewayMAC, and has at most one gateway port;
// RemovePort detaches it.
func (s *Switch) AddGateway(p Sink, name string) (*Port, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed.Load():
		return nil, s.errorf("gateway port %q: switch closed", name)
	case p == nil:
		return nil, s.errorf("gateway port %q: no device", name)
	case name == "":
		return nil, s.errorf("gateway port needs a name")
	case s.ports[name] != nil:
		return nil, s.errorf("gateway port %q: name in use", name)
	case !s.gwIP.Is4() || s.gwMAC.IsZero() || s.gwMAC.IsMulticast():
		return nil, s.errorf("gateway port %q: the switch has no gateway address", name)
	}
	if e, ok := s.statics[s.gwMAC]; ok {
		return nil, s.errorf("gateway port %q: switch already has gateway port %q", name, e.port.name)
	}
	r := &Port{sw: s, sink: p, name: name, mac: s.gwMAC, ip: s.gwIP, gateway: true, id: s.allocID()}
	r.ll = packet.LinkLocalEUI64(s.gwMAC)
	s.ports[name] = r
	s.statics[s.gwMAC] = staticEntry{port: r, kind: KindLocal}
	s.publish()
	return r, nil
}

// gatewayRoute reports whether a frame from r to out (nil: flooded) may
// be forwarded under the gateway rules of AddGateway.
func (r *Port) gatewayRoute(out *Port) bool {
	switch {
	case out == nil:
		return true // the flood loop applies the rules per port
	case out.gateway:
		return r.security
	case r.gateway:
		return out.security
	}
	return true
}

// floodsTo reports whether a frame from r that is flooded goes to p.
func (r *Port) floodsTo(p *Port) bool {
	return p != r && !p.gateway && (!r.gateway || p.security) && !p.removed.Load()
}
