package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
	"github.com/vxmesh/vxmesh/vswitch"
)

// TraceRequest is a frame to trace: the first packet of a flow a local
// endpoint (Port, on Network) would send to Dst.
type TraceRequest struct {
	Network, Port string
	Dst           netip.Addr
	// Proto is packet.ProtoTCP (a SYN), ProtoUDP or ProtoICMP (an echo
	// request); DPort the destination port, SPort the source port (0:
	// 40000).
	Proto        uint8
	SPort, DPort uint16
	// Size is the IP packet's length; 0 means the headers alone.
	Size int
}

// Trace verdicts beyond the switch's (vswitch.TraceDeliver to a local
// endpoint, TraceFlood, TraceDrop).
const (
	TraceTunnel  = "tunnel"  // to another host (Trace.Tunnel.Peers)
	TraceEgress  = "egress"  // to the gateway, which re-originates it outside
	TraceGateway = "gateway" // to the gateway's own address (ping, DNS)
)

// Trace is what the data plane would do with a TraceRequest's frame.
type Trace struct {
	// SrcMAC, Src are the endpoint's; NextHop is the address its ARP asks
	// for (Dst in the subnet, else the gateway), DstMAC the answer (zero
	// if the switch has none: the frame traced is then the ARP request).
	SrcMAC  packet.MAC
	Src     netip.Addr
	NextHop netip.Addr
	DstMAC  packet.MAC
	// ARP is set when the frame traced is the endpoint's ARP request,
	// NextHop being unknown to the switch.
	ARP    bool
	Switch vswitch.Trace
	// Tunnel is the tunnel's part, for a frame to the tunnel port (or
	// flooded to it).
	Tunnel *tunnel.Trace
	// Egress is the gateway's decision for a frame to it: "" admitted,
	// else a gateway.Refuse* reason or gateway.NoEgress.
	Egress string
	// Internal is the network's setting.
	Internal bool
	// Verdict is a Trace* constant of this package or vswitch; Drop the
	// reason a dropped frame is counted under, DropIn the counters that
	// count it: "switch" (NetworkStats' switch drops), "tunnel" (its
	// segment drops) or "egress" (the gateway's refusals).
	Verdict string
	Drop    string
	DropIn  string
}

// Trace reports what the data plane would do with req's frame, through
// the switch's, the tunnel's and the gateway's own decisions
// (vswitch.Switch.Trace, tunnel.Segment.Trace, gateway.EgressVerdict),
// changing nothing.
func (dp *Dataplane) Trace(req TraceRequest) (Trace, error) {
	dp.mu.Lock()
	n, p := dp.nets[req.Network], dp.ports[portKey{req.Network, req.Port}]
	var gw *gateway.Gateway
	if n != nil && n.gw != nil {
		gw = n.gw.gw
	}
	var srcMAC packet.MAC
	var src netip.Addr
	if p != nil {
		srcMAC, src = p.cfg.MAC, p.cfg.IP // Reconfig may change them
	}
	dp.mu.Unlock()
	switch {
	case n == nil:
		return Trace{}, fmt.Errorf("trace: network %q is not on this host", req.Network)
	case p == nil || p.ref.Load() == nil:
		return Trace{}, fmt.Errorf("trace: port %q of network %q is not on its switch", req.Port, req.Network)
	}
	tr := Trace{SrcMAC: srcMAC, Src: src, NextHop: req.Dst, Internal: n.cfg.Internal}
	if n.cfg.Subnet.IsValid() && !n.cfg.Subnet.Contains(req.Dst) {
		tr.NextHop = n.cfg.Gateway
	}
	mac, ok, err := n.sw.ResolveARP(req.Port, tr.NextHop)
	if err != nil {
		return Trace{}, err
	}
	var frame []byte
	if ok {
		tr.DstMAC = mac
		sport := req.SPort
		if sport == 0 {
			sport = 40000
		}
		frame, err = packet.ProbeFrame(packet.Probe{DstMAC: mac, SrcMAC: tr.SrcMAC, Src: tr.Src, Dst: req.Dst,
			Proto: req.Proto, SPort: sport, DPort: req.DPort, Size: req.Size})
		if err != nil {
			return Trace{}, fmt.Errorf("trace: %w", err)
		}
	} else {
		tr.ARP = true
		frame = packet.ARPRequestFrame(tr.SrcMAC, tr.Src, tr.NextHop)
	}
	if tr.Switch, err = n.sw.Trace(req.Port, frame); err != nil {
		return Trace{}, err
	}
	tr.Verdict, tr.Drop = tr.Switch.Verdict, tr.Switch.Drop
	if tr.Drop != "" {
		tr.DropIn = "switch"
	}
	switch {
	case tr.Switch.Verdict == vswitch.TraceDeliver && tr.Switch.Out == TunnelPortName,
		tr.Switch.Verdict == vswitch.TraceFlood && floodsTunnel(tr.Switch.Flood):
		tt := n.tn.Trace(tr.Switch.Frame)
		tr.Tunnel = &tt
		if tr.Switch.Verdict == vswitch.TraceDeliver {
			tr.Verdict = TraceTunnel
			if tt.Drop != "" {
				tr.Verdict, tr.Drop, tr.DropIn = vswitch.TraceDrop, tt.Drop, "tunnel"
			}
		}
	case tr.Switch.Verdict == vswitch.TraceDeliver && tr.Switch.OutKind == "gateway":
		tr.gateway(gw, req, tr.Switch.Frame)
	}
	return tr, nil
}

// gateway completes a trace whose frame goes to the gateway port: to the
// gateway's own address, or a flow its forwarders decide.
func (tr *Trace) gateway(gw *gateway.Gateway, req TraceRequest, frame []byte) {
	if gw == nil {
		return
	}
	ip := packet.IPv4(packet.Ethernet(frame).Payload())
	if tr.ARP || !ip.Valid() || ip.Dst() == gw.Addr() {
		tr.Verdict = TraceGateway
		return
	}
	f := gateway.Flow{Proto: req.Proto, Src: netip.AddrPortFrom(ip.Src(), 0), Dst: netip.AddrPortFrom(ip.Dst(), req.DPort)}
	if req.Proto != packet.ProtoICMP {
		f.Src = netip.AddrPortFrom(ip.Src(), max(req.SPort, 1))
	}
	tr.Verdict = TraceEgress
	if tr.Egress = gw.EgressVerdict(f); tr.Egress != "" {
		tr.Verdict, tr.Drop, tr.DropIn = vswitch.TraceDrop, tr.Egress, "egress"
	}
}

func floodsTunnel(ports []string) bool {
	for _, p := range ports {
		if p == TunnelPortName {
			return true
		}
	}
	return false
}
