package vswitch

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

var (
	macR = packet.MAC{0x02, 0x42, 10, 0, 1, 9} // a remote endpoint behind the tunnel port
	ipR  = netip.MustParseAddr("10.0.1.9")
)

func probe(t *testing.T, dst packet.MAC, to netip.Addr, proto uint8, dport uint16, size int) []byte {
	t.Helper()
	f, err := packet.ProbeFrame(packet.Probe{DstMAC: dst, SrcMAC: macA, Src: ipA, Dst: to, Proto: proto, SPort: 40001, DPort: dport, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// traceThenInput traces f from port a of e, checks that the trace changed
// nothing, then sends f for real and checks the trace said what Input
// did: the ports that got the frame (and the frame they got), or the
// drop counted.
func traceThenInput(t *testing.T, e *lbBed, f []byte) Trace {
	t.Helper()
	defer e.reset()
	fdb, conns := len(e.s.FDB()), e.tb.Stats(1)[0].NewConns
	tr, err := e.s.Trace("a", f)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.s.FDB()) != fdb || e.tb.Stats(1)[0].NewConns != conns {
		t.Fatalf("trace changed state")
	}
	for _, rec := range []*netdevtest.Recorder{e.ra, e.rb, e.rc, e.rt} {
		if len(rec.Frames()) != 0 {
			t.Fatal("trace sent a frame")
		}
	}
	before := e.s.Stats().Drops
	input(e.pa, f)
	var got []string
	for name, rec := range map[string]*netdevtest.Recorder{"a": e.ra, "b": e.rb, "c": e.rc, "vxlan": e.rt} {
		if fs := rec.Frames(); len(fs) > 0 {
			if tr.Drop == "lb-reject" && name == "a" {
				continue // the balancer's refusal goes back to the client
			}
			got = append(got, name)
			if !bytes.Equal(fs[0], tr.Frame) {
				t.Fatalf("port %s got a frame other than the traced one", name)
			}
		}
	}
	slices.Sort(got)
	switch tr.Verdict {
	case TraceDeliver, TraceARPReply:
		if !slices.Equal(got, []string{tr.Out}) {
			t.Fatalf("trace: %s to %s; Input sent to %v", tr.Verdict, tr.Out, got)
		}
	case TraceFlood:
		if !slices.Equal(got, tr.Flood) {
			t.Fatalf("trace: flood to %v; Input sent to %v", tr.Flood, got)
		}
	case TraceDrop:
		if len(got) != 0 || e.s.Stats().Drops[tr.Drop] != before[tr.Drop]+1 {
			t.Fatalf("trace: drop %q; Input sent to %v, drops %v", tr.Drop, got, e.s.Stats().Drops)
		}
	default:
		t.Fatalf("verdict %q", tr.Verdict)
	}
	return tr
}

func TestTraceAgreesWithInput(t *testing.T) {
	e := newLBBed(t, webService())
	if err := e.s.AddStatic(macR, ipR, e.tunnel); err != nil {
		t.Fatal(err)
	}
	unknown := packet.MAC{0x02, 0x42, 10, 0, 1, 77}
	for _, tc := range []struct {
		name    string
		frame   []byte
		verdict string
		out     string // Out, or Drop for a drop
	}{
		{"local endpoint", probe(t, macB, ipB, packet.ProtoUDP, 53, 0), TraceDeliver, "b"},
		{"remote endpoint", probe(t, macR, ipR, packet.ProtoTCP, 22, 0), TraceDeliver, "vxlan"},
		{"unknown destination", probe(t, unknown, netip.MustParseAddr("10.0.1.77"), packet.ProtoUDP, 53, 0), TraceFlood, ""},
		{"port the service lacks", probe(t, vipMAC, vip, packet.ProtoTCP, 81, 0), TraceDrop, "lb-reject"},
		{"VIP", probe(t, vipMAC, vip, packet.ProtoTCP, 80, 0), TraceDeliver, ""},
		{"ARP for a VIP", arpFrame(macA, ipA, vip), TraceARPReply, "a"},
		{"spoofed source", ipv4Frame(macB, macA, ipC, ipB), TraceDrop, "port-security"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := traceThenInput(t, e, tc.frame)
			if tr.Verdict != tc.verdict || tc.verdict == TraceDrop && tr.Drop != tc.out || tc.verdict != TraceDrop && tc.out != "" && tr.Out != tc.out {
				t.Fatalf("trace %+v, want %s %s", tr, tc.verdict, tc.out)
			}
			if len(tr.Steps) == 0 || tr.Steps[0].Stage != "port-security" {
				t.Fatalf("steps %+v", tr.Steps)
			}
		})
	}
	// The VIP case: the service and its backend are named, and the frame
	// went to that backend's port.
	tr, err := e.s.Trace("a", probe(t, vipMAC, vip, packet.ProtoTCP, 80, 0))
	if err != nil {
		t.Fatal(err)
	}
	if s := tr.Service; s == nil || s.Service != "web" || s.Verdict != lb.Forward || s.BackendPort != 8080 ||
		(s.Backend != ipB || tr.Out != "b") && (s.Backend != ipC || tr.Out != "c") {
		t.Fatalf("VIP trace: %+v service %+v", tr, tr.Service)
	}
	unk := traceThenInput(t, e, probe(t, unknown, netip.MustParseAddr("10.0.1.77"), packet.ProtoUDP, 53, 0))
	if !slices.Equal(unk.Flood, []string{"b", "c", "vxlan"}) {
		t.Fatalf("flood to %v", unk.Flood)
	}
}

func TestTraceTooBigAndGateway(t *testing.T) {
	s := New(Config{Name: "small", MTU: 1400, GatewayIP: ipGW, GatewayMAC: macGW})
	ra, rt := &netdevtest.Recorder{}, &netdevtest.Recorder{}
	pa := addPort(t, s, ra, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(t, s, rt, PortConfig{Name: "vxlan"})
	e := &lbBed{s: s, pa: pa, ra: ra, rb: &netdevtest.Recorder{}, rc: &netdevtest.Recorder{}, rt: rt, tb: newTable(t, webService())}
	s.SetBalancer(e.tb)
	if tr := traceThenInput(t, e, probe(t, macB, ipB, packet.ProtoUDP, 53, 1401)); tr.Verdict != TraceDrop || tr.Drop != "mtu" {
		t.Fatalf("1401-byte packet on a 1400 MTU network: %+v", tr)
	}
	if tr := traceThenInput(t, e, probe(t, macGW, netip.MustParseAddr("1.1.1.1"), packet.ProtoUDP, 53, 0)); tr.Verdict != TraceDrop || tr.Drop != "no-route" {
		t.Fatalf("to the gateway MAC without a gateway port: %+v", tr)
	}
	if _, err := s.Trace("nope", probe(t, macB, ipB, packet.ProtoUDP, 53, 0)); err == nil {
		t.Fatal("trace from a port the switch lacks")
	}
	s.Close()
	if tr := traceThenInput(t, e, probe(t, macB, ipB, packet.ProtoUDP, 53, 0)); tr.Verdict != TraceDrop || tr.Drop != "port-down" {
		t.Fatalf("closed switch: %+v", tr)
	}
}

func TestResolveARP(t *testing.T) {
	e := newLBBed(t, webService())
	if err := e.s.AddStatic(macR, ipR, e.tunnel); err != nil {
		t.Fatal(err)
	}
	for ip, want := range map[netip.Addr]packet.MAC{ipB: macB, ipR: macR, vip: vipMAC, ipGW: macGW} {
		if mac, ok, err := e.s.ResolveARP("a", ip); err != nil || !ok || mac != want {
			t.Fatalf("%s: %s %v %v, want %s", ip, mac, ok, err, want)
		}
	}
	if _, ok, err := e.s.ResolveARP("a", netip.MustParseAddr("10.0.1.77")); ok || err != nil {
		t.Fatalf("unknown address resolved: %v %v", ok, err)
	}
}
