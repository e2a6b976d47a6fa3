package dataplane

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
	"github.com/vxmesh/vxmesh/vswitch"
)

func mustTrace(t *testing.T, dp *Dataplane, req TraceRequest) Trace {
	t.Helper()
	tr, err := dp.Trace(req)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// A VIP's frame is traced to the service's backend on the other host, a
// remote endpoint's to its VTEP, an unknown address to the flooded ARP
// request; the real SYN then takes the traced path.
func TestTraceAcrossHosts(t *testing.T) {
	e := newTwoHosts(t)
	tr := mustTrace(t, e.h1, TraceRequest{Network: "a", Port: "client", Dst: vip, Proto: packet.ProtoTCP, DPort: 80})
	if tr.DstMAC != vipMAC || tr.Src != e.c.ip || tr.Switch.Service == nil || tr.Switch.Service.Service != "web" ||
		tr.Switch.Service.Backend != e.b.ip || tr.Switch.Service.BackendPort != 8080 ||
		tr.Verdict != TraceTunnel || tr.Tunnel == nil || !slices.Equal(tr.Tunnel.Peers, []netip.Addr{remoteB}) {
		t.Fatalf("trace to the VIP: %+v", tr)
	}
	if st := e.h1.ServiceStats(); st.ConntrackEntries != 0 {
		t.Fatalf("the trace made %d connections", st.ConntrackEntries)
	}
	tr = mustTrace(t, e.h1, TraceRequest{Network: "a", Port: "client", Dst: e.b.ip, Proto: packet.ProtoUDP, DPort: 53})
	if tr.DstMAC != e.b.mac || tr.Verdict != TraceTunnel || tr.Tunnel.Flood || tr.Tunnel.Cipher != 0 {
		t.Fatalf("trace to the remote endpoint: %+v", tr)
	}
	tr = mustTrace(t, e.h1, TraceRequest{Network: "a", Port: "client", Dst: ip(77), Proto: packet.ProtoUDP, DPort: 53})
	if !tr.ARP || tr.Verdict != vswitch.TraceFlood || tr.Tunnel == nil || !tr.Tunnel.Flood || !slices.Contains(tr.Switch.Flood, TunnelPortName) {
		t.Fatalf("trace to an unknown address: %+v", tr)
	}
	tr = mustTrace(t, e.h1, TraceRequest{Network: "a", Port: "client", Dst: e.b.ip, Proto: packet.ProtoUDP, DPort: 53, Size: 1451})
	if tr.Verdict != vswitch.TraceDrop || tr.Drop != "mtu" || tr.DropIn != "switch" {
		t.Fatalf("trace of a packet over the MTU: %+v", tr)
	}
	if _, err := e.h1.Trace(TraceRequest{Network: "nope", Port: "client", Dst: vip, Proto: packet.ProtoTCP}); err == nil {
		t.Fatal("trace on a network the host lacks")
	}
	// The real SYN goes where the trace said.
	e.c.send(t, tcpSeg(e.c.mac, vipMAC, e.c.ip, vip, 40000, 80, true, false, false))
	if got := readTCP(t, e.b.recv(t, "SYN at the backend")); got.dst != e.b.ip || got.dport != 8080 {
		t.Fatalf("the backend got %+v", got)
	}
}

// Off-subnet destinations go to the gateway: an internal network's is
// refused there (counted as the egress refusal "internal"), another's
// leaves; the gateway's own address is the gateway's.
func TestTraceGateway(t *testing.T) {
	for _, internal := range []bool{false, true} {
		mn := tunnel.NewMemNetwork()
		dp := newHost(t, mn, local, Options{Egress: gateway.NewEgress(gateway.EgressConfig{})})
		c, dev := newCtr(t, "c1", 2)
		n := testNetwork("a", 4096, 1)
		n.Subnet, n.Internal = netip.MustParsePrefix("10.0.1.0/24"), internal
		n.Ports = []PortConfig{c.port("c1", dev)}
		if err := dp.Reconfig(Config{Networks: []NetworkConfig{n}}); err != nil {
			t.Fatal(err)
		}
		tr := mustTrace(t, dp, TraceRequest{Network: "a", Port: "c1", Dst: netip.MustParseAddr("192.0.2.7"), Proto: packet.ProtoTCP, DPort: 443})
		want, drop := TraceEgress, ""
		if internal {
			want, drop = vswitch.TraceDrop, gateway.RefuseInternal
		}
		if tr.NextHop != ip(1) || tr.DstMAC != mac(1) || tr.Switch.OutKind != "gateway" || tr.Verdict != want || tr.Drop != drop || tr.Internal != internal {
			t.Fatalf("internal=%v: trace outside: %+v", internal, tr)
		}
		if tr := mustTrace(t, dp, TraceRequest{Network: "a", Port: "c1", Dst: ip(1), Proto: packet.ProtoUDP, DPort: 53}); tr.Verdict != TraceGateway {
			t.Fatalf("internal=%v: trace to the gateway: %+v", internal, tr)
		}
	}
}
