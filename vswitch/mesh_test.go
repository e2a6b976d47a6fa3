package vswitch

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

// The routing mesh between two switches, I (the ingress host, whose
// gateway dials the VIP from an outside client's address) and H (the
// backend's host), their tunnel ports joined by hand: what one tunnel
// port's recorder got is given to the other's Input.

var (
	subnet    = netip.MustParsePrefix("10.0.1.0/24")
	clientIP  = netip.MustParseAddr("203.0.113.7")
	hostIPI   = netip.MustParseAddr("10.0.1.250")
	hostMACI  = packet.MAC{0x02, 0x42, 10, 0, 1, 250}
	hostIPH   = netip.MustParseAddr("10.0.1.251")
	hostMACH  = packet.MAC{0x02, 0x42, 10, 0, 1, 251}
	meshTimes = lb.Timeouts{TCPSyn: 5 * time.Second, TCPEstablished: time.Hour, TCPClosing: 20 * time.Second,
		TCPClose: 3 * time.Second, UDP: 30 * time.Second}
)

// meshHost is one host's switch: a gateway port, a tunnel port and
// optionally a backend port b (macB/ipB), with a balancer for the web
// service whose only backend is b.
type meshHost struct {
	s             *Switch
	gw, tun, b    *netdevtest.Recorder
	pgw, ptun, pb *Port
	clock         *fakeClock
}

func newMeshHost(t testing.TB, hostIP netip.Addr, hostMAC packet.MAC, withBackend bool, max int) *meshHost {
	h := &meshHost{gw: &netdevtest.Recorder{}, tun: &netdevtest.Recorder{}, b: &netdevtest.Recorder{}}
	var b Sink
	if withBackend {
		b = h.b
	}
	h.s, h.pgw, h.ptun, h.pb, h.clock = newMeshSwitch(t, hostIP, hostMAC, h.gw, h.tun, b, max)
	return h
}

// newMeshSwitch builds one host's switch with sinks gw, tun and b (nil:
// the backend is behind the tunnel).
func newMeshSwitch(t testing.TB, hostIP netip.Addr, hostMAC packet.MAC, gw, tun, b Sink, max int) (s *Switch, pgw, ptun, pb *Port, clk *fakeClock) {
	t.Helper()
	clk = newFakeClock()
	s = New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW, StormLimit: -1, Now: clk.Now,
		Subnet: subnet, IngressReturnMax: max, IngressReturnTimeouts: meshTimes})
	var err error
	if pgw, err = s.AddGateway(gw, "gateway"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetGatewayHost(hostIP, hostMAC); err != nil {
		t.Fatal(err)
	}
	ptun = addPort(t, s, tun, PortConfig{Name: "vxlan"})
	if b != nil {
		pb = addPort(t, s, b, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
	} else if err := s.AddStatic(macB, ipB, ptun); err != nil {
		t.Fatal(err)
	}
	svc := lb.Service{Name: "web", VIP: vip, Ports: []lb.Port{{Proto: packet.ProtoTCP, Port: 80, Target: 8080}, {Proto: packet.ProtoUDP, Port: 53}},
		Backends: []lb.Backend{{IP: ipB, MAC: macB}}}
	s.SetBalancer(newTable(t, svc))
	return s, pgw, ptun, pb, clk
}

func (h *meshHost) reset() { resetAll([]*netdevtest.Recorder{h.gw, h.tun, h.b}) }

// newMesh returns I (no backend) and H (backend b), each knowing the
// other's gateway identity behind its tunnel port.
func newMesh(t *testing.T, max int) (hi, hh *meshHost) {
	hi = newMeshHost(t, hostIPI, hostMACI, false, max)
	hh = newMeshHost(t, hostIPH, hostMACH, true, max)
	if err := hi.s.AddRemoteGateway(hostMACH, hostIPH, hi.ptun); err != nil {
		t.Fatal(err)
	}
	if err := hh.s.AddRemoteGateway(hostMACI, hostIPI, hh.ptun); err != nil {
		t.Fatal(err)
	}
	return hi, hh
}

// cross gives the frames the from host's tunnel port sent to the to
// host's tunnel port, and returns how many there were.
func cross(from, to *meshHost) int {
	fs := from.tun.Frames()
	from.tun.Reset()
	if len(fs) > 0 {
		input(to.ptun, fs...)
	}
	return len(fs)
}

// TestMeshPreserveAcrossHosts: I's gateway dials the VIP from an outside
// client's address; the SYN reaches the backend on H with that address
// and I's gateway-host MAC, H remembers the flow, the backend's reply to
// its default gateway goes back to I (not to H's gateway), and I's
// gateway gets it from the VIP; the FIN ends the entry after the closing
// timeout, and the next reply of that tuple goes to H's gateway (egress).
func TestMeshPreserveAcrossHosts(t *testing.T) {
	hi, hh := newMesh(t, 0)
	syn := seg{srcMAC: macGW, dstMAC: vipMAC, src: clientIP, dst: vip, sport: 40000, dport: 80, syn: true}
	input(hi.pgw, syn.frame())
	v := parseTCP(t, one(t, "I's tunnel", hi.tun))
	if v.srcMAC != hostMACI || v.dstMAC != macB || v.src != clientIP || v.dst != ipB || v.dport != 8080 {
		t.Fatalf("I sent the SYN as %+v, want from %s (client %s) to %s:8080 at %s", v, hostMACI, clientIP, ipB, macB)
	}
	cross(hi, hh)
	if v := parseTCP(t, one(t, "backend", hh.b)); v.src != clientIP || v.sport != 40000 || v.dst != ipB {
		t.Fatalf("the backend got %+v, want from %s:40000", v, clientIP)
	}
	if st := hh.s.Stats(); st.IngressReturn != 1 || st.IngressReturnMax != DefaultIngressReturnMax {
		t.Fatalf("H's ingress-return table: %d of %d entries, want 1 of %d", st.IngressReturn, st.IngressReturnMax, DefaultIngressReturnMax)
	}

	reply := seg{srcMAC: macB, dstMAC: macGW, src: ipB, dst: clientIP, sport: 8080, dport: 40000, syn: true, ack: true}
	input(hh.pb, reply.frame())
	if n := len(hh.gw.Frames()); n != 0 {
		t.Fatalf("H's own gateway got the reply (%d frames)", n)
	}
	if v := parseTCP(t, one(t, "H's tunnel", hh.tun)); v.dstMAC != hostMACI || v.srcMAC != macB {
		t.Fatalf("H sent the reply as %+v, want to %s", v, hostMACI)
	}
	cross(hh, hi)
	v = parseTCP(t, one(t, "I's gateway", hi.gw))
	if v.src != vip || v.sport != 80 || v.srcMAC != vipMAC || v.dstMAC != macGW || v.dst != clientIP || v.flags != synFlag|ackFlag {
		t.Fatalf("I's gateway got %+v, want the SYN-ACK from %s:80 (%s) to %s", v, vip, vipMAC, macGW)
	}
	hi.reset()

	// Data both ways, then FIN from the backend and from the client.
	input(hi.pgw, seg{srcMAC: macGW, dstMAC: vipMAC, src: clientIP, dst: vip, sport: 40000, dport: 80, ack: true, payload: 100}.frame())
	cross(hi, hh)
	fin := seg{srcMAC: macB, dstMAC: macGW, src: ipB, dst: clientIP, sport: 8080, dport: 40000, ack: true}.frame()
	setTCPFlags(fin, finFlag|ackFlag)
	input(hh.pb, fin)
	if cross(hh, hi) != 1 || len(hi.gw.Frames()) != 1 {
		t.Fatalf("the backend's FIN did not reach I's gateway (%d frames)", len(hi.gw.Frames()))
	}
	hh.clock.Advance(meshTimes.TCPClosing - time.Second)
	if n := hh.s.SweepIngressReturn(); n != 0 {
		t.Fatalf("swept %d entries before the closing timeout", n)
	}
	hh.clock.Advance(2 * time.Second)
	if n := hh.s.SweepIngressReturn(); n != 1 || hh.s.Stats().IngressReturn != 0 {
		t.Fatalf("swept %d entries after the closing timeout (%d left), want 1 (0)", n, hh.s.Stats().IngressReturn)
	}
	hh.reset()
	input(hh.pb, reply.frame())
	if len(hh.gw.Frames()) != 1 || len(hh.tun.Frames()) != 0 {
		t.Fatalf("a reply of a forgotten flow: H's gateway got %d frames, the tunnel %d; want the gateway", len(hh.gw.Frames()), len(hh.tun.Frames()))
	}
}

// TestMeshLocalGatewayTakesFlow: a client port that came to the backend
// on H through I's gateway comes again (a new connection of the same
// tuple, within the old one's closing timeout) through H's own gateway:
// the backend's replies go to H's gateway, not back to I; the same for a
// UDP flow.
func TestMeshLocalGatewayTakesFlow(t *testing.T) {
	hi, hh := newMesh(t, 0)
	input(hi.pgw, seg{srcMAC: macGW, dstMAC: vipMAC, src: clientIP, dst: vip, sport: 40000, dport: 80, syn: true}.frame())
	cross(hi, hh)
	fin := seg{srcMAC: macB, dstMAC: macGW, src: ipB, dst: clientIP, sport: 8080, dport: 40000, ack: true}.frame()
	setTCPFlags(fin, finFlag|ackFlag)
	input(hh.pb, fin)
	if cross(hh, hi) != 1 {
		t.Fatal("the backend's FIN did not go back to I")
	}
	hh.reset()

	input(hh.pgw, seg{srcMAC: macGW, dstMAC: vipMAC, src: clientIP, dst: vip, sport: 40000, dport: 80, syn: true}.frame())
	if v := parseTCP(t, one(t, "backend", hh.b)); v.src != clientIP || v.sport != 40000 || v.dst != ipB {
		t.Fatalf("the backend got %+v from H's gateway, want from %s:40000", v, clientIP)
	}
	input(hh.pb, seg{srcMAC: macB, dstMAC: macGW, src: ipB, dst: clientIP, sport: 8080, dport: 40000, syn: true, ack: true}.frame())
	if n := len(hh.tun.Frames()); n != 0 {
		t.Fatalf("the SYN-ACK to H's gateway's SYN went to I (%d frames through the tunnel)", n)
	}
	if v := parseTCP(t, one(t, "H's gateway", hh.gw)); v.src != vip || v.dst != clientIP || v.flags != synFlag|ackFlag {
		t.Fatalf("H's gateway got %+v, want the SYN-ACK from %s", v, vip)
	}
	hh.reset()

	input(hi.pgw, udpFrame(macGW, vipMAC, clientIP, vip, 40001, 53))
	cross(hi, hh)
	one(t, "backend", hh.b)
	hh.reset()
	input(hh.pgw, udpFrame(macGW, vipMAC, clientIP, vip, 40001, 53))
	one(t, "backend", hh.b)
	hh.reset()
	input(hh.pb, udpFrame(macB, macGW, ipB, clientIP, 53, 40001))
	if n := len(hh.tun.Frames()); n != 0 || len(hh.gw.Frames()) != 1 {
		t.Fatalf("a UDP reply after H's gateway took the flow: %d frames to I, %d to H's gateway; want H's", n, len(hh.gw.Frames()))
	}
}

// udpFrame is an empty UDP datagram (no checksum) from src:sport to
// dst:dport.
func udpFrame(srcMAC, dstMAC packet.MAC, src, dst netip.Addr, sport, dport uint16) []byte {
	f := ipv4Frame(dstMAC, srcMAC, src, dst)
	l4 := packet.IPv4(packet.Ethernet(f).Payload()).Payload()
	l4[0], l4[1], l4[2], l4[3], l4[4], l4[5] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport), 0, 8
	return f
}

// setTCPFlags sets the flags of an IPv4/TCP frame, fixing its checksum.
func setTCPFlags(f []byte, flags uint8) {
	ip := packet.IPv4(packet.Ethernet(f).Payload())
	l4 := ip.Payload()
	l4[13] = flags
	l4[16], l4[17] = 0, 0
	c := ^packet.Fold(packet.Sum(l4, packet.PseudoHeaderSum(ip.Src(), ip.Dst(), packet.ProtoTCP, len(l4))))
	l4[16], l4[17] = byte(c>>8), byte(c)
}

// TestMeshSnat: I's gateway dials the VIP from its host address: the
// backend on H answers that address (ARP gives I's gateway-host MAC, a
// static behind H's tunnel), H keeps no per-flow state, and I's gateway
// gets the reply from the VIP. A local container asking I for the host
// address gets the host MAC; its frames to it reach I's gateway.
func TestMeshSnat(t *testing.T) {
	hi, hh := newMesh(t, 0)
	input(hh.pb, arpFrame(macB, ipB, hostIPI))
	if a := packet.ARP(packet.Ethernet(one(t, "backend", hh.b)).Payload()); a.SenderMAC() != hostMACI {
		t.Fatalf("H answered ARP for I's host address with %s, want %s", a.SenderMAC(), hostMACI)
	}
	hh.reset()
	input(hi.pgw, seg{srcMAC: macGW, dstMAC: vipMAC, src: hostIPI, dst: vip, sport: 33000, dport: 80, syn: true}.frame())
	cross(hi, hh)
	if v := parseTCP(t, one(t, "backend", hh.b)); v.src != hostIPI || v.srcMAC != hostMACI {
		t.Fatalf("the backend got %+v, want from %s at %s", v, hostIPI, hostMACI)
	}
	if n := hh.s.Stats().IngressReturn; n != 0 {
		t.Fatalf("H keeps %d ingress-return entries for a snat flow, want 0", n)
	}
	input(hh.pb, seg{srcMAC: macB, dstMAC: hostMACI, src: ipB, dst: hostIPI, sport: 8080, dport: 33000, syn: true, ack: true}.frame())
	cross(hh, hi)
	if v := parseTCP(t, one(t, "I's gateway", hi.gw)); v.src != vip || v.dst != hostIPI || v.dstMAC != macGW {
		t.Fatalf("I's gateway got %+v, want from the VIP to %s at %s", v, hostIPI, macGW)
	}

	// A local container on I: ARP for the host address, then a frame to it.
	a := &netdevtest.Recorder{}
	pa := addPort(t, hi.s, a, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	input(pa, arpFrame(macA, ipA, hostIPI))
	if r := packet.ARP(packet.Ethernet(one(t, "a", a)).Payload()); r.SenderMAC() != hostMACI {
		t.Fatalf("I answered ARP for its host address with %s, want %s", r.SenderMAC(), hostMACI)
	}
	hi.reset()
	input(pa, ipv4Frame(hostMACI, macA, ipA, hostIPI))
	if f := one(t, "I's gateway", hi.gw); packet.Ethernet(f).Dst() != macGW {
		t.Fatalf("a local frame to the host MAC reached the gateway addressed to %s", packet.Ethernet(f).Dst())
	}
}

// TestMeshSecurity: the ingress-return table only learns from another
// host's gateway, for outside clients, to local ports; nothing else
// reaches a gateway from the tunnel; containers cannot pose as a gateway.
func TestMeshSecurity(t *testing.T) {
	hi, hh := newMesh(t, 0)
	other := packet.MAC{0x02, 0x42, 10, 0, 1, 77} // an ordinary remote endpoint
	if err := hh.s.AddStatic(other, netip.MustParseAddr("10.0.1.77"), hh.ptun); err != nil {
		t.Fatal(err)
	}
	toB := func(src packet.MAC, from netip.Addr) []byte {
		return seg{srcMAC: src, dstMAC: macB, src: from, dst: ipB, sport: 41000, dport: 8080, syn: true}.frame()
	}
	for _, tc := range []struct {
		what  string
		frame []byte
	}{
		{"an ordinary remote endpoint's frame from an outside address", toB(other, clientIP)},
		{"a gateway's frame from an address inside the subnet (snat)", toB(hostMACI, netip.MustParseAddr("10.0.1.77"))},
		{"a gateway's frame to a remote MAC", seg{srcMAC: hostMACI, dstMAC: other, src: clientIP, dst: ipB, sport: 1, dport: 2, syn: true}.frame()},
		{"a gateway's broadcast", seg{srcMAC: hostMACI, dstMAC: packet.Broadcast, src: clientIP, dst: ipB, sport: 1, dport: 2, syn: true}.frame()},
		{"a gateway's RST", seg{srcMAC: hostMACI, dstMAC: macB, src: clientIP, dst: ipB, sport: 1, dport: 2, rst: true}.frame()},
	} {
		input(hh.ptun, tc.frame)
		if n := hh.s.Stats().IngressReturn; n != 0 {
			t.Fatalf("%s created %d ingress-return entries", tc.what, n)
		}
	}
	// A container cannot use a gateway-host MAC or pose as the outside
	// client (port security), so it makes no entry either.
	hh.reset()
	input(hh.pb, toB(hostMACI, clientIP), seg{srcMAC: macB, dstMAC: macGW, src: clientIP, dst: ipB, sport: 1, dport: 2, syn: true}.frame())
	if n, d := hh.s.Stats().IngressReturn, hh.s.Stats().Drops["port-security"]; n != 0 || d != 2 {
		t.Fatalf("container frames posing as a gateway or client: %d entries, %d port-security drops; want 0, 2", n, d)
	}
	if _, err := hh.s.AddPort(&netdevtest.Recorder{}, PortConfig{Name: "x", MAC: hostMACI, Security: true}); err == nil {
		t.Fatal("a port with another host's gateway MAC was attached")
	}
	if _, err := hh.s.AddPort(&netdevtest.Recorder{}, PortConfig{Name: "x", MAC: hostMACH, Security: true}); err == nil {
		t.Fatal("a port with this host's gateway MAC was attached")
	}
	if err := hh.s.SetGatewayHost(ipB, packet.MAC{2, 0, 0, 0, 0, 1}); err == nil {
		t.Fatal("SetGatewayHost took a port's address")
	}

	// From the tunnel, a frame to the anycast gateway MAC is dropped as
	// before, and one to the host MAC that is no reply of a flow I's
	// gateway opened is dropped too.
	input(hi.ptun, seg{srcMAC: macB, dstMAC: macGW, src: ipB, dst: clientIP, sport: 8080, dport: 40000, ack: true}.frame())
	input(hi.ptun, seg{srcMAC: macB, dstMAC: hostMACI, src: ipB, dst: clientIP, sport: 8080, dport: 40001, ack: true}.frame())
	if n := len(hi.gw.Frames()); n != 0 {
		t.Fatalf("I's gateway got %d frames from the tunnel that are no replies of its flows", n)
	}
	if d := hi.s.Stats().Drops; d["no-route"] != 1 || d["ingress-stray"] != 1 {
		t.Fatalf("drops %v, want no-route 1 and ingress-stray 1", d)
	}

	// Without a host MAC, I's gateway cannot send a balanced flow across.
	if err := hi.s.SetGatewayHost(netip.Addr{}, packet.MAC{}); err != nil {
		t.Fatal(err)
	}
	input(hi.pgw, seg{srcMAC: macGW, dstMAC: vipMAC, src: clientIP, dst: vip, sport: 40000, dport: 80, syn: true}.frame())
	if n := len(hi.tun.Frames()); n != 0 {
		t.Fatalf("the gateway's balanced frame crossed the tunnel with the anycast MAC (%d frames)", n)
	}

	// A remote gateway that leaves takes its flows along.
	input(hh.ptun, toB(hostMACI, clientIP))
	if n := hh.s.Stats().IngressReturn; n != 1 {
		t.Fatalf("%d entries, want 1", n)
	}
	hh.s.RemoveStatic(hostMACI)
	if n := hh.s.Stats().IngressReturn; n != 0 {
		t.Fatalf("%d entries left after the gateway's static left", n)
	}
}

// TestMeshFullAndUDP: a full table refuses new flows ("ingress-full")
// and keeps the ones it has; UDP entries end after the UDP idle timeout.
func TestMeshFullAndUDP(t *testing.T) {
	_, hh := newMesh(t, meshShards) // one entry per shard
	udp := func(sport uint16) []byte {
		f := ipv4Frame(macB, hostMACI, clientIP, ipB)
		l4 := packet.IPv4(packet.Ethernet(f).Payload()).Payload()
		l4[0], l4[1], l4[2], l4[3], l4[4], l4[5] = byte(sport>>8), byte(sport), 0, 53, 0, 8
		return f
	}
	for p := range uint16(200) {
		input(hh.ptun, udp(1000+p))
	}
	st := hh.s.Stats()
	if st.IngressReturn != meshShards || st.IngressReturnMax != meshShards || st.Drops["ingress-full"] == 0 {
		t.Fatalf("full table: %d of %d entries, %d ingress-full drops", st.IngressReturn, st.IngressReturnMax, st.Drops["ingress-full"])
	}
	if got := len(hh.b.Frames()); got != 200-int(st.Drops["ingress-full"]) {
		t.Fatalf("backend got %d datagrams, want every one not dropped as ingress-full (%d)", got, 200-st.Drops["ingress-full"])
	}
	// A reply of a flow the table holds goes back to I; one of a flow
	// it refused goes to H's gateway.
	reply := func(dport uint16) []byte {
		f := ipv4Frame(macGW, macB, ipB, clientIP)
		l4 := packet.IPv4(packet.Ethernet(f).Payload()).Payload()
		l4[0], l4[1], l4[2], l4[3], l4[4], l4[5] = 0, 53, byte(dport>>8), byte(dport), 0, 8
		return f
	}
	steered := 0
	for p := range uint16(200) {
		hh.reset()
		input(hh.pb, reply(1000+p))
		if fs := hh.tun.Frames(); len(fs) == 1 && packet.Ethernet(fs[0]).Dst() == hostMACI {
			steered++
		} else if len(hh.gw.Frames()) != 1 {
			t.Fatalf("a UDP reply to port %d went neither back to I nor to H's gateway", 1000+p)
		}
	}
	if steered != meshShards {
		t.Fatalf("%d UDP replies steered back to I, want one per flow in the table (%d)", steered, meshShards)
	}
	hh.clock.Advance(meshTimes.UDP - time.Second)
	if n := hh.s.SweepIngressReturn(); n != 0 {
		t.Fatalf("swept %d UDP entries before their idle timeout", n)
	}
	hh.clock.Advance(2 * time.Second)
	if n := hh.s.SweepIngressReturn(); n != meshShards {
		t.Fatalf("swept %d UDP entries after their idle timeout, want %d", n, meshShards)
	}
}

// TestMeshAllocs: the routing mesh's per-packet work (I's translation
// across the tunnel, H's table refresh and reply steering, I's
// untranslation to its gateway) allocates nothing.
func TestMeshAllocs(t *testing.T) {
	var gwI, tunI, gwH, tunH, b netdevtest.Counter
	si, pgwI, ptunI, _, _ := newMeshSwitch(t, hostIPI, hostMACI, &gwI, &tunI, nil, 0)
	sh, _, ptunH, pb, _ := newMeshSwitch(t, hostIPH, hostMACH, &gwH, &tunH, &b, 0)
	if err := sh.AddRemoteGateway(hostMACI, hostIPI, ptunH); err != nil {
		t.Fatal(err)
	}
	input(pgwI, seg{srcMAC: macGW, dstMAC: vipMAC, src: clientIP, dst: vip, sport: 40000, dport: 80, syn: true}.frame())
	data := seg{srcMAC: macGW, dstMAC: vipMAC, src: clientIP, dst: vip, sport: 40000, dport: 80, ack: true, payload: 200}.frame()
	fwd := seg{srcMAC: hostMACI, dstMAC: macB, src: clientIP, dst: ipB, sport: 40000, dport: 8080, ack: true, payload: 200}.frame()
	rep := seg{srcMAC: macB, dstMAC: macGW, src: ipB, dst: clientIP, sport: 8080, dport: 40000, ack: true, payload: 200}.frame()
	back := seg{srcMAC: macB, dstMAC: hostMACI, src: ipB, dst: clientIP, sport: 8080, dport: 40000, ack: true, payload: 200}.frame()
	mk := func(f []byte) ([][]byte, []int) {
		fs := make([][]byte, 32)
		for i := range fs {
			fs[i] = f
		}
		return batch(fs...)
	}
	b1, s1 := mk(data)
	b2, s2 := mk(fwd)
	b3, s3 := mk(rep)
	b4, s4 := mk(back)
	run := func() {
		for i := range b1 {
			copy(b1[i][off:], data) // rewritten in place by the previous run
			copy(b2[i][off:], fwd)
			copy(b3[i][off:], rep)
			copy(b4[i][off:], back)
		}
		pgwI.Input(b1, s1, off)
		ptunH.Input(b2, s2, off)
		pb.Input(b3, s3, off)
		ptunI.Input(b4, s4, off)
	}
	run()
	if allocs := testing.AllocsPerRun(100, run); allocs != 0 {
		t.Errorf("the routing mesh allocates %.1f times per 4 batches", allocs)
	}
	if d := si.Stats().Drops; len(d) != 0 {
		t.Errorf("I dropped %v", d)
	}
	if n := sh.Stats().IngressReturn; n != 1 {
		t.Errorf("H has %d ingress-return entries, want 1", n)
	}
	for _, c := range []struct {
		what string
		c    *netdevtest.Counter
	}{{"I's tunnel", &tunI}, {"H's tunnel", &tunH}, {"I's gateway", &gwI}, {"backend", &b}} {
		if _, n, _ := c.c.Counts(); n < 101*32 {
			t.Errorf("%s took %d frames, want %d", c.what, n, 101*32)
		}
	}
	if _, n, _ := gwH.Counts(); n != 0 {
		t.Errorf("H's gateway took %d frames, want 0", n)
	}
}

// BenchmarkMeshReply measures a backend's replies through its host's
// switch: steered back to the ingress host's gateway (a hit in the
// ingress-return table of 1,000 flows, every reply of one flow; and of
// 60,000 of its 65,536, the replies of 4,096 flows spread over the table
// in turn), and, for comparison, a container's egress frame to the
// gateway (a miss) with the table holding other flows.
func BenchmarkMeshReply(b *testing.B) {
	for _, tc := range []struct {
		name         string
		client       netip.Addr
		first, flows uint16 // the table's flows: client ports first...first+flows-1
		batches      int    // of replies to distinct flows; 1: every reply to port 40500
	}{{"steered", clientIP, 40000, 1000, 1}, {"steered-full", clientIP, 2048, 60000, 64}, {"egress", netip.MustParseAddr("198.51.100.77"), 40000, 1000, 1}} {
		b.Run(tc.name, func(b *testing.B) {
			var gw, tun, be netdevtest.Counter
			sh, _, ptun, pb, _ := newMeshSwitch(b, hostIPH, hostMACH, &gw, &tun, &be, 0)
			if err := sh.AddRemoteGateway(hostMACI, hostIPI, ptun); err != nil {
				b.Fatal(err)
			}
			for p := range tc.flows {
				input(ptun, seg{srcMAC: hostMACI, dstMAC: macB, src: clientIP, dst: ipB, sport: tc.first + p, dport: 8080, syn: true}.frame())
			}
			if n := sh.Stats().IngressReturn; n != int(tc.flows) {
				b.Fatalf("%d ingress-return entries, want %d", n, tc.flows)
			}
			f := seg{srcMAC: macB, dstMAC: macGW, src: ipB, dst: tc.client, sport: 8080, dport: 40500, ack: true, payload: 1000}.frame()
			type rb struct {
				bufs  [][]byte
				sizes []int
			}
			rbs := make([]rb, tc.batches)
			for j := range rbs {
				fs := make([][]byte, packet.BatchSize)
				for i := range fs {
					fs[i] = f
					if tc.batches > 1 {
						port := tc.first + uint16((j*len(fs)+i)*13%int(tc.flows))
						fs[i] = seg{srcMAC: macB, dstMAC: macGW, src: ipB, dst: tc.client, sport: 8080, dport: port, ack: true, payload: 1000}.frame()
					}
				}
				rbs[j].bufs, rbs[j].sizes = batch(fs...)
			}
			b.SetBytes(int64(len(f)) * packet.BatchSize)
			b.ResetTimer()
			for n := range b.N {
				r := &rbs[n%len(rbs)]
				for i := range r.bufs {
					copy(r.bufs[i][off:off+packet.EthernetHeaderLen], f) // the MACs, rewritten by the last run
				}
				pb.Input(r.bufs, r.sizes, off)
			}
			b.StopTimer()
			if _, n, _ := tun.Counts(); n < uint64(b.N*packet.BatchSize) && tc.client == clientIP {
				b.Fatalf("%d of %d replies steered back to the ingress host", n, b.N*packet.BatchSize)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*packet.BatchSize), "ns/frame")
		})
	}
}

// TestMeshTableSpreadsEachShardOverItsBuckets: a full ingress-return
// table keeps its hash chains short (the cost of every learn and steer
// lookup): each shard's entries spread over all of that shard's buckets,
// not the sixteenth of them whose index shares the shard's hash bits.
func TestMeshTableSpreadsEachShardOverItsBuckets(t *testing.T) {
	mt := newMeshTable(16*1024, meshTimes)
	n := 0
	for c := 0; n < mt.max(); c++ {
		k := meshKey{backend: ipB.As4(), client: [4]byte{198, 51, byte(c >> 8), byte(c)}, bport: 8080, cport: uint16(40000 + c%1000), proto: packet.ProtoTCP}
		if !mt.learn(&k, hostMACI, packet.TCPSYN, 0) {
			if mt.shards[mt.hash(&k)%meshShards].n < len(mt.shards[0].e)-1 {
				t.Fatalf("learn refused a flow with room in its shard")
			}
			continue
		}
		n++
	}
	for s := range mt.shards {
		sh := &mt.shards[s]
		used, longest := 0, 0
		for _, head := range sh.idx {
			l := 0
			for i := head; i != 0; i = sh.e[i].next {
				l++
			}
			if l > 0 {
				used++
			}
			longest = max(longest, l)
		}
		// Random keys at one entry per bucket: a mean chain of about 1.6
		// among the used buckets, the longest below 12.
		if mean := float64(sh.n) / float64(used); mean > 2.5 || longest >= 12 {
			t.Errorf("shard %d: %d entries in %d of %d buckets (mean chain %.1f), longest chain %d", s, sh.n, used, len(sh.idx), mean, longest)
		}
	}
}

// TestMeshFullTableMakesRoomFromClosingFlows: a table full of flows that
// have closed (FIN or RST seen) takes a new flow at once, long before
// their closing timeouts, evicting closed ones (counted); a table full of
// established flows refuses the new one and keeps every flow it has.
func TestMeshFullTableMakesRoomFromClosingFlows(t *testing.T) {
	key := func(c int) meshKey {
		return meshKey{backend: ipB.As4(), client: [4]byte{198, 51, byte(c >> 8), byte(c)}, bport: 8080, cport: 40000, proto: packet.ProtoTCP}
	}
	fill := func(mt *meshTable) []meshKey {
		var ks []meshKey
		for c := 0; mt.n.Load() < int64(mt.max()); c++ {
			k := key(c)
			if mt.learn(&k, hostMACI, packet.TCPSYN, 0) {
				ks = append(ks, k)
			}
		}
		for i := range ks {
			if _, ok := mt.steer(&ks[i], packet.TCPSYN|packet.TCPACK, 0); !ok {
				t.Fatalf("flow %d not found after its SYN", i)
			}
		}
		return ks
	}
	sec := int64(time.Second)

	// Every flow closed by a FIN (evicted one by one, the nearest to
	// expiry first), or one in three by an RST (those go in a batch).
	for _, rstEvery := range []int{0, 3} {
		mt := newMeshTable(meshShards*64, meshTimes)
		ks := fill(mt)
		for i := range ks {
			flag := uint8(packet.TCPFIN | packet.TCPACK)
			if rstEvery > 0 && i%rstEvery == 0 {
				flag = packet.TCPRST
			}
			mt.learn(&ks[i], hostMACI, flag, sec)
		}
		for c := 100000; c < 100000+4*meshShards; c++ {
			k := key(c)
			if !mt.learn(&k, hostMACI, packet.TCPSYN, 2*sec) {
				t.Fatalf("a table full of closed flows (RST every %d) refused new flow %d", rstEvery, c-100000)
			}
			if _, ok := mt.steer(&k, packet.TCPSYN|packet.TCPACK, 2*sec); !ok {
				t.Fatalf("new flow %d not found after it was taken", c-100000)
			}
		}
		if mt.evicted.Load() == 0 {
			t.Errorf("RST every %d: no eviction counted", rstEvery)
		}
	}

	mt := newMeshTable(meshShards*64, meshTimes)
	ks := fill(mt)
	for c := 100000; c < 100000+4*meshShards; c++ {
		k := key(c)
		if mt.learn(&k, hostMACI, packet.TCPSYN, sec) {
			t.Fatalf("a table full of established flows took new flow %d", c-100000)
		}
	}
	for i := range ks {
		if _, ok := mt.steer(&ks[i], packet.TCPACK, sec); !ok {
			t.Fatalf("established flow %d lost", i)
		}
	}
	if n := mt.evicted.Load(); n != 0 {
		t.Errorf("%d established flows evicted", n)
	}
}

// bigUDPFrags is a UDP datagram (no checksum) of n payload bytes from
// src:sport to dst:dport, IP ID id, in fragments of up to 1500 bytes of
// IP packet, in order.
func bigUDPFrags(srcMAC, dstMAC packet.MAC, src, dst netip.Addr, sport, dport uint16, n int, id uint16) [][]byte {
	payload := make([]byte, 8+n)
	payload[0], payload[1], payload[2], payload[3] = byte(sport>>8), byte(sport), byte(dport>>8), byte(dport)
	payload[4], payload[5] = byte((8+n)>>8), byte(8+n)
	var out [][]byte
	for off := 0; off < len(payload); off += 1480 {
		end := min(off+1480, len(payload))
		ip := make(packet.IPv4, 20+end-off)
		ip[0], ip[8], ip[9] = 0x45, 64, packet.ProtoUDP
		ip[2], ip[3], ip[4], ip[5] = byte(len(ip)>>8), byte(len(ip)), byte(id>>8), byte(id)
		w := off / 8
		if end < len(payload) {
			w |= 0x2000
		}
		ip[6], ip[7] = byte(w>>8), byte(w)
		ip.SetSrc(src)
		ip.SetDst(dst)
		ip.SetChecksum(ip.HeaderChecksum())
		copy(ip[20:], payload[off:end])
		out = append(out, ether(dstMAC, srcMAC, packet.EtherTypeIPv4, ip))
	}
	return out
}

// TestMeshFragmentedUDP: an outside client's datagram larger than the MTU
// comes in through I's gateway in fragments; every fragment reaches the
// backend on H, and every fragment of the backend's fragmented reply goes
// back to I (not to H's gateway) and reaches I's gateway from the VIP.
func TestMeshFragmentedUDP(t *testing.T) {
	hi, hh := newMesh(t, 0)
	req := bigUDPFrags(macGW, vipMAC, clientIP, vip, 40000, 53, 4000, 7)
	input(hi.pgw, req...)
	if n := cross(hi, hh); n != len(req) {
		t.Fatalf("I sent %d of %d fragments to H (drops %v)", n, len(req), hi.s.Stats().Drops)
	}
	for i, f := range hh.b.Frames() {
		if ip := packet.IPv4(packet.Ethernet(f).Payload()); ip.Dst() != ipB || ip.Src() != clientIP {
			t.Fatalf("backend got fragment %d from %s to %s", i, ip.Src(), ip.Dst())
		}
	}
	if len(hh.b.Frames()) != len(req) {
		t.Fatalf("backend got %d of %d fragments", len(hh.b.Frames()), len(req))
	}
	rep := bigUDPFrags(macB, macGW, ipB, clientIP, 53, 40000, 4000, 9)
	input(hh.pb, rep...)
	if n := len(hh.gw.Frames()); n != 0 {
		t.Fatalf("H's own gateway got %d reply fragments", n)
	}
	if n := cross(hh, hi); n != len(rep) {
		t.Fatalf("H sent %d of %d reply fragments back to I", n, len(rep))
	}
	got := hi.gw.Frames()
	if len(got) != len(rep) {
		t.Fatalf("I's gateway got %d of %d reply fragments", len(got), len(rep))
	}
	for i, f := range got {
		eth := packet.Ethernet(f)
		if ip := packet.IPv4(eth.Payload()); ip.Src() != vip || eth.Src() != vipMAC || !ip.Valid() || ip.HeaderChecksum() != ip.Checksum() {
			t.Fatalf("I's gateway got reply fragment %d from %s (%s)", i, ip.Src(), eth.Src())
		}
	}
}
