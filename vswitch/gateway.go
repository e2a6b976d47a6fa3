package vswitch

import (
	"fmt"
	"net/netip"

	"github.com/vxmesh/vxmesh/packet"
)

// AddGateway attaches p as the switch's gateway port (the network's
// gateway on this host, see package gateway), named name. It takes the
// frames addressed to the switch's GatewayMAC, but only from ports with
// port security (this host's endpoints): the gateway address is anycast,
// the same IP and MAC on every host, so a frame to GatewayMAC that came
// in through the tunnel was never meant for this host's gateway and is
// dropped ("no-route"). Likewise the gateway port's own frames go only to
// ports with port security, never into the tunnel: a host's gateway talks
// to its own endpoints only. The routing mesh's exceptions (see
// SetGatewayHost): frames the balancer translated may go to the tunnel,
// from the host MAC, and replies to the host MAC come back. It is not a
// flooding target. The switch
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
	r.setLinkLocal(s.gwMAC)
	s.ports[name] = r
	s.putStatic(s.gwMAC, staticEntry{port: r, kind: KindLocal})
	s.publish()
	return r, nil
}

// SetGatewayHost sets this host's own identity on the network for its
// gateway port (gateway.Config.HostAddr and HostMAC), unique in the
// cluster unlike the anycast gateway address and MAC; zero values clear
// it. While the switch has a gateway port, it answers ARP for ip with mac
// and sends frames to mac to the gateway port: from local ports like
// frames to the gateway MAC, from the tunnel only if they are replies of
// flows this host's gateway opened through the balancer (lb Untranslate
// rewrites them; other such frames are dropped, "ingress-stray"). The
// gateway's frames that the balancer translated to a backend behind the
// tunnel (a routing-mesh flow) leave with mac as their source, so that
// the backend's host sends the replies back here (AddRemoteGateway);
// without a host MAC they are dropped ("no-route"). Changing it is cheap:
// no flow is aborted.
func (s *Switch) SetGatewayHost(ip netip.Addr, mac packet.MAC) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ip.IsValid() && mac.IsZero() {
		s.hostIP, s.hostMAC = netip.Addr{}, packet.MAC{}
		s.publish()
		return nil
	}
	oldIP, oldMAC := s.hostIP, s.hostMAC
	s.hostIP, s.hostMAC = netip.Addr{}, packet.MAC{}
	err := s.checkEntry(mac, ip)
	if err == nil && !ip.IsValid() {
		err = fmt.Errorf("MAC %s: no IP", mac)
	}
	if err != nil {
		s.hostIP, s.hostMAC = oldIP, oldMAC
		return s.errorf("gateway host: %w", err)
	}
	s.hostIP, s.hostMAC = ip, mac
	s.publish()
	return nil
}

// gatewayRoute reports whether a frame from r to out (nil: flooded),
// addressed to dst and translated by the balancer or not, may be
// forwarded under the gateway rules of AddGateway and SetGatewayHost.
func (r *Port) gatewayRoute(v *view, out *Port, dst packet.MAC, translated bool) bool {
	switch {
	case out == nil:
		return true // the flood loop applies the rules per port
	case out.gateway:
		return r.security || (dst == v.hostMAC && !dst.IsZero())
	case r.gateway:
		return out.security || translated
	}
	return true
}

// floodsTo reports whether a frame from r that is flooded goes to p.
func (r *Port) floodsTo(p *Port) bool {
	return p != r && !p.gateway && (!r.gateway || p.security) && !p.removed.Load()
}

// floodsFrameTo is floodsTo for a frame to dst: a secured port hears only
// its own link-local address's solicited-node group (the ND guard lets
// its container speak for no other IPv6 address), so the Duplicate
// Address Detection probe every container sends when its link comes up
// does not cost a write to every other container.
func (r *Port) floodsFrameTo(p *Port, dst packet.MAC) bool {
	return r.floodsTo(p) && (!p.security || !isSolicitedNodeMAC(dst) || dst == p.llGroup)
}

// setLinkLocal sets r's link-local address, derived from mac, and the
// Ethernet address of its solicited-node group.
func (r *Port) setLinkLocal(mac packet.MAC) {
	r.ll = packet.LinkLocalEUI64(mac)
	a := r.ll.As16()
	r.llGroup = packet.MAC{0x33, 0x33, 0xff, a[13], a[14], a[15]}
}

// isSolicitedNodeMAC reports whether dst is the Ethernet address of an
// IPv6 solicited-node group (ff02::1:ffXX:XXXX, RFC 4291 2.7.1).
func isSolicitedNodeMAC(dst packet.MAC) bool {
	return dst[0] == 0x33 && dst[1] == 0x33 && dst[2] == 0xff
}
