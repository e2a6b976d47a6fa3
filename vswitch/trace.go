package vswitch

import (
	"fmt"
	"net/netip"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

// Trace verdicts.
const (
	TraceDeliver  = "deliver"   // to one port (Trace.Out)
	TraceFlood    = "flood"     // to every port in Trace.Flood
	TraceARPReply = "arp-reply" // an ARP request the switch answers itself
	TraceDrop     = "drop"      // dropped, Trace.Drop says why
)

// TraceStep is one decision of the switch on a traced frame.
type TraceStep struct {
	Stage  string // "port-security", "arp", "balancer", "fdb", "gateway", "output"
	Result string // what the stage decided, one line
}

// Trace is what the switch would do with one frame from one of its ports
// (Switch.Trace).
type Trace struct {
	Steps []TraceStep
	// Verdict is one of the Trace* constants; Drop the drop reason as
	// Stats.Drops counts it.
	Verdict string
	Drop    string
	// Out is the port a delivered frame goes to, OutKind its kind:
	// "local" (a port with Security, a container), "gateway", or "port"
	// (any other: the tunnel).
	Out     string
	OutKind string
	// Flood are the ports a flooded frame goes to, by name.
	Flood []string
	// Service is the balancer's answer (lb.Table.Peek), nil when the
	// switch has no balancer or the port's frames are not translated.
	Service *lb.Peek
	// Frame is the frame as it would leave the switch (translated by the
	// balancer, or the ARP reply); nil for a drop.
	Frame []byte
}

// kind names r's kind for Trace.
func (r *Port) kind() string {
	switch {
	case r.security:
		return "local"
	case r.gateway:
		return "gateway"
	}
	return "port"
}

// Trace reports what Input would do with frame read from the port named
// port, step by step, through the same decisions (screen, suppressARP,
// the balancer's Peek and lbOutcome, route, floodsTo) without their side
// effects: nothing is learned, sent, counted or tracked. The storm limit
// is not evaluated (its state belongs to the port's reader), nor the
// reply path's Untranslate at the output port. frame is copied.
func (s *Switch) Trace(port string, frame []byte) (Trace, error) {
	s.mu.Lock()
	r := s.ports[port]
	s.mu.Unlock()
	if r == nil {
		return Trace{}, s.errorf("trace: no port %q", port)
	}
	if len(frame) < packet.EthernetHeaderLen {
		return Trace{}, s.errorf("trace: frame of %d bytes is shorter than an Ethernet header", len(frame))
	}
	t0 := s.now()
	v, now := s.view.Load(), int64(t0.Sub(s.epoch))
	l := s.loadLB(v, now, max(1, int64(t0.Sub(s.lbEpoch))+1))
	buf := make([]byte, packet.OffloadLen+len(frame))
	copy(buf[packet.OffloadLen:], frame)
	eth := packet.Ethernet(buf[packet.OffloadLen:])
	var tr Trace
	step := func(stage, format string, args ...any) {
		tr.Steps = append(tr.Steps, TraceStep{Stage: stage, Result: fmt.Sprintf(format, args...)})
	}
	drop := func(why reason) (Trace, error) {
		tr.Verdict, tr.Drop = TraceDrop, why.String()
		return tr, nil
	}

	if s.closed.Load() || r.removed.Load() {
		step("port-security", "port %s is down (switch closed or port removed)", r.name)
		return drop(dropPortDown)
	}
	if why, _, ok := r.screen(v, buf, eth); !ok {
		step("port-security", "refused: %s (source %s on port %s)", why, eth.Src(), r.name)
		return drop(why)
	}
	step("port-security", "admitted: source %s on port %s, %d bytes (frame limit %s)", eth.Src(), r.name, len(frame), s.frameLimit())
	if eth.EtherType() == packet.EtherTypeARP {
		target := packet.ARP(eth.Payload()).TargetIP()
		if suppressARP(v, &l, eth) {
			step("arp", "answered by the switch: %s is at %s", target, eth.Src())
			tr.Verdict, tr.Out, tr.OutKind, tr.Frame = TraceARPReply, r.name, r.kind(), []byte(eth)
			return tr, nil
		}
		step("arp", "%s is not in the switch's ARP table: the request is switched like any frame", target)
	}
	if l.b != nil {
		vd := lb.Pass
		if r.security {
			p := l.b.Peek(eth, packet.OffloadOf(buf), l.now)
			tr.Service, vd = &p, p.Verdict
			step("balancer", "%s", describePeek(&p))
		}
		if why, ok := r.lbOutcome(&l, eth.Dst(), vd); !ok {
			switch {
			case why == dropLBReject:
				step("balancer", "refused: the client gets a RST (TCP) or an ICMP unreachable")
			case !r.security:
				step("balancer", "to a VIP's MAC from a port that is not translated")
			}
			return drop(why)
		}
	}
	return s.traceRoute(r, v, eth, now, &tr, step)
}

// traceRoute is Trace's lookup and output step.
func (s *Switch) traceRoute(r *Port, v *view, eth packet.Ethernet, now int64, tr *Trace, step func(stage, format string, args ...any)) (Trace, error) {
	dst := eth.Dst()
	translated := tr.Service != nil && tr.Service.Verdict == lb.Forward
	out, why, ok := r.route(v, dst, translated, now)
	if !ok {
		switch why {
		case dropNoRoute:
			step("gateway", "%s: the gateway port takes frames from local ports only, and sends to local ports only", dst)
		default:
			step("fdb", "%s is on the input port %s", dst, r.name)
		}
		tr.Verdict, tr.Drop = TraceDrop, why.String()
		return *tr, nil
	}
	tr.Frame = []byte(eth)
	if out == nil {
		for _, p := range v.ports {
			if r.floodsFrameTo(p, dst) {
				tr.Flood = append(tr.Flood, p.name)
			}
		}
		what := "unknown unicast"
		if dst.IsMulticast() {
			what = "broadcast/multicast"
		}
		step("fdb", "%s %s: flooded to %v", what, dst, tr.Flood)
		tr.Verdict = TraceFlood
		return *tr, nil
	}
	step("fdb", "%s is on port %s (%s)", dst, out.name, out.kind())
	tr.Verdict, tr.Out, tr.OutKind = TraceDeliver, out.name, out.kind()
	return *tr, nil
}

// frameLimit describes the largest frame a port may send.
func (s *Switch) frameLimit() string {
	if s.maxFrame == 0 {
		return "none"
	}
	return fmt.Sprintf("%d bytes", s.maxFrame)
}

// describePeek says what the balancer would do, in one line.
func describePeek(p *lb.Peek) string {
	switch {
	case p.Verdict == lb.Pass:
		return "not to a VIP: passed"
	case p.Verdict == lb.Forward && !p.Backend.IsValid():
		return fmt.Sprintf("ICMP error about a flow of service %q (VIP %s): follows the connection it quotes", p.Service, p.VIP)
	case p.Verdict == lb.Forward:
		how := fmt.Sprintf("new connection, scheduler %s picks", p.Scheduler)
		if p.Existing {
			how = "existing connection to"
		}
		return fmt.Sprintf("service %q (VIP %s): %s backend %s (%s) port %d", p.Service, p.VIP, how, p.Backend, p.BackendMAC, p.BackendPort)
	}
	return fmt.Sprintf("service %q (VIP %s): %s (%s)", p.Service, p.VIP, p.Verdict, p.Reason)
}

// ResolveARP returns the MAC the switch's ARP suppression answers a
// request for ip from the port named port with (a local or static
// endpoint, the gateway, a VIP), as the container behind the port would
// learn it; false if the request would be flooded instead. It is the
// first step of a trace: the frame a container sends carries that MAC.
func (s *Switch) ResolveARP(port string, ip netip.Addr) (packet.MAC, bool, error) {
	s.mu.Lock()
	r := s.ports[port]
	s.mu.Unlock()
	if r == nil {
		return packet.MAC{}, false, s.errorf("trace: no port %q", port)
	}
	if !ip.Is4() || !r.ip.Is4() {
		return packet.MAC{}, false, nil
	}
	tr, err := s.Trace(port, packet.ARPRequestFrame(r.mac, r.ip, ip))
	if err != nil || tr.Verdict != TraceARPReply {
		return packet.MAC{}, false, err
	}
	return packet.Ethernet(tr.Frame).Src(), true, nil
}
