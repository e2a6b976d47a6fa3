package vswitch

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

// Frames in these tests are built with gopacket, an implementation
// independent of the code under test, and checked with packet's checksum
// helpers.

var (
	vip    = netip.MustParseAddr("10.0.1.100")
	vipMAC = lb.VIPMAC(vip)
	vip2   = netip.MustParseAddr("10.0.1.101")
)

// seg describes a TCP segment to build.
type seg struct {
	srcMAC, dstMAC packet.MAC
	src, dst       netip.Addr
	sport, dport   uint16
	syn, ack, rst  bool
	seq            uint32
	payload        int
}

func (s seg) frame() []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr(s.srcMAC[:]), DstMAC: net.HardwareAddr(s.dstMAC[:]), EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Id: 9, Flags: layers.IPv4DontFragment,
		SrcIP: s.src.AsSlice(), DstIP: s.dst.AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport), Seq: s.seq, SYN: s.syn, ACK: s.ack, RST: s.rst, Window: 1000}
	if s.ack {
		tcp.Ack = 77
	}
	if s.syn {
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}}}
	}
	tcp.SetNetworkLayerForChecksum(ip)
	pl := make([]byte, s.payload)
	for i := range pl {
		pl[i] = byte(i*7 + 1)
	}
	b := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(b, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp, gopacket.Payload(pl)); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// tcpView is what a test reads back from a delivered TCP frame.
type tcpView struct {
	srcMAC, dstMAC packet.MAC
	src, dst       netip.Addr
	sport, dport   uint16
	flags          uint8
	seq            uint32
}

const (
	finFlag = 0x01
	synFlag = 0x02
	rstFlag = 0x04
	ackFlag = 0x10
)

// parseTCP reads f and fails the test unless it is IPv4/TCP with valid
// header and TCP checksums.
func parseTCP(t *testing.T, f []byte) tcpView {
	t.Helper()
	eth := packet.Ethernet(f)
	if eth.EtherType() != packet.EtherTypeIPv4 {
		t.Fatalf("not IPv4: ethertype %#04x", eth.EtherType())
	}
	ip := packet.IPv4(eth.Payload())
	if !ip.Valid() || !ip.ChecksumValid() {
		t.Fatalf("bad IPv4 header or header checksum: % x", []byte(ip[:20]))
	}
	if ip.Protocol() != packet.ProtoTCP {
		t.Fatalf("not TCP: protocol %d", ip.Protocol())
	}
	l4 := ip.Payload()
	if packet.Fold(packet.Sum(l4, packet.PseudoHeaderSum(ip.Src(), ip.Dst(), packet.ProtoTCP, len(l4)))) != 0 {
		t.Fatalf("bad TCP checksum %#04x", binary.BigEndian.Uint16(l4[16:]))
	}
	return tcpView{srcMAC: eth.Src(), dstMAC: eth.Dst(), src: ip.Src(), dst: ip.Dst(),
		sport: binary.BigEndian.Uint16(l4), dport: binary.BigEndian.Uint16(l4[2:]), flags: l4[13],
		seq: binary.BigEndian.Uint32(l4[4:])}
}

// webService is a service on vip with port 80 going to 8080 on the
// backends b (macB/ipB) and c (macC/ipC).
func webService() lb.Service {
	return lb.Service{Name: "web", VIP: vip,
		Ports:    []lb.Port{{Proto: packet.ProtoTCP, Port: 80, Target: 8080}},
		Backends: []lb.Backend{{IP: ipB, MAC: macB}, {IP: ipC, MAC: macC}}}
}

func newTable(t testing.TB, svcs ...lb.Service) *lb.Table {
	t.Helper()
	tb := lb.NewTable(lb.NewConntrack(lb.Config{Max: 1024, AffinityMax: 64, SynSlots: 64}), 1)
	snap, err := lb.NewSnapshot(svcs)
	if err != nil {
		t.Fatal(err)
	}
	tb.Swap(snap)
	return tb
}

// lbBed is a switch with a balancer: client port a, backend ports b and c
// (all containers, with port security) and a tunnel port.
type lbBed struct {
	s                  *Switch
	tb                 *lb.Table
	ra, rb, rc, rt     *netdevtest.Recorder
	pa, pb, pc, tunnel *Port
}

func newLBBed(t testing.TB, svcs ...lb.Service) *lbBed {
	t.Helper()
	e := &lbBed{s: New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW, StormLimit: -1}),
		ra: &netdevtest.Recorder{}, rb: &netdevtest.Recorder{}, rc: &netdevtest.Recorder{}, rt: &netdevtest.Recorder{}}
	e.pa = addPort(t, e.s, e.ra, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	e.pb = addPort(t, e.s, e.rb, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
	e.pc = addPort(t, e.s, e.rc, PortConfig{Name: "c", MAC: macC, IP: ipC, Security: true})
	e.tunnel = addPort(t, e.s, e.rt, PortConfig{Name: "vxlan"})
	e.tb = newTable(t, svcs...)
	e.s.SetBalancer(e.tb)
	return e
}

func (e *lbBed) reset() { resetAll([]*netdevtest.Recorder{e.ra, e.rb, e.rc, e.rt}) }

// one returns the only frame recorded by rec, failing otherwise.
func one(t *testing.T, what string, rec *netdevtest.Recorder) []byte {
	t.Helper()
	fs := rec.Frames()
	if len(fs) != 1 {
		t.Fatalf("%s got %d frames, want 1", what, len(fs))
	}
	return fs[0]
}

func TestLBAnswersARPForVIPs(t *testing.T) {
	e := newLBBed(t, webService())
	for _, from := range []struct {
		p   *Port
		rec *netdevtest.Recorder
		mac packet.MAC
		ip  netip.Addr
	}{{e.pa, e.ra, macA, ipA}, {e.tunnel, e.rt, packet.MAC{2, 0, 0, 0, 0, 9}, netip.MustParseAddr("10.0.1.9")}} {
		input(from.p, arpFrame(from.mac, from.ip, vip))
		rep := one(t, "asker", from.rec)
		a := packet.ARP(packet.Ethernet(rep).Payload())
		if a.Op() != packet.ARPReply || a.SenderMAC() != vipMAC || a.SenderIP() != vip || packet.Ethernet(rep).Dst() != from.mac {
			t.Errorf("ARP for the VIP: op %d, %s is at %s, to %s", a.Op(), a.SenderIP(), a.SenderMAC(), packet.Ethernet(rep).Dst())
		}
		if n := counts([]*netdevtest.Recorder{e.rb, e.rc}); n[0]+n[1] != 0 {
			t.Errorf("the request was flooded too: %v", n)
		}
		e.reset()
	}
	// A VIP swapped in is answered from the next batch, the old one no
	// more (the request floods like any for an unknown address).
	svc2 := webService()
	svc2.Name, svc2.VIP = "api", vip2
	svc2.MAC = packet.MAC{2, 0x99, 0, 0, 0, 1}
	snap, err := lb.NewSnapshot([]lb.Service{svc2})
	if err != nil {
		t.Fatal(err)
	}
	e.tb.Swap(snap)
	input(e.pa, arpFrame(macA, ipA, vip2))
	if a := packet.ARP(packet.Ethernet(one(t, "a", e.ra)).Payload()); a.SenderMAC() != svc2.MAC {
		t.Errorf("ARP for the swapped-in VIP answered %s, want %s", a.SenderMAC(), svc2.MAC)
	}
	e.reset()
	input(e.pa, arpFrame(macA, ipA, vip))
	if len(e.ra.Frames()) != 0 || len(e.rb.Frames()) != 1 {
		t.Errorf("ARP for a removed VIP: a got %d frames, b %d; want a flood", len(e.ra.Frames()), len(e.rb.Frames()))
	}
}

// TestLBConnectionThroughVIP: a SYN to the VIP reaches a backend with the
// client's own address, the reply reaches the client from the VIP, and
// the next connection goes to the other backend.
func TestLBConnectionThroughVIP(t *testing.T) {
	e := newLBBed(t, webService())
	backends := map[packet.MAC]struct {
		p   *Port
		rec *netdevtest.Recorder
		ip  netip.Addr
	}{macB: {e.pb, e.rb, ipB}, macC: {e.pc, e.rc, ipC}}
	seen := map[packet.MAC]bool{}
	for cport := uint16(40000); cport < 40002; cport++ {
		input(e.pa, seg{srcMAC: macA, dstMAC: vipMAC, src: ipA, dst: vip, sport: cport, dport: 80, syn: true, seq: 100}.frame())
		var got []byte
		var be packet.MAC
		for mac, b := range backends {
			if fs := b.rec.Frames(); len(fs) > 0 {
				got, be = one(t, "backend", b.rec), mac
			}
		}
		if got == nil {
			t.Fatalf("the SYN reached no backend (tunnel %d, a %d)", len(e.rt.Frames()), len(e.ra.Frames()))
		}
		seen[be] = true
		b := backends[be]
		v := parseTCP(t, got)
		if v.dstMAC != be || v.dst != b.ip || v.dport != 8080 || v.src != ipA || v.srcMAC != macA || v.sport != cport || v.flags != synFlag || v.seq != 100 {
			t.Fatalf("backend got %+v", v)
		}
		input(b.p, seg{srcMAC: be, dstMAC: macA, src: b.ip, dst: ipA, sport: 8080, dport: cport, syn: true, ack: true, seq: 500}.frame())
		r := parseTCP(t, one(t, "client", e.ra))
		if r.srcMAC != vipMAC || r.src != vip || r.sport != 80 || r.dst != ipA || r.dport != cport || r.flags != synFlag|ackFlag || r.seq != 500 {
			t.Fatalf("client got %+v, want it from %s:80 (%s)", r, vip, vipMAC)
		}
		e.reset()
	}
	if len(seen) != 2 {
		t.Errorf("two connections went to %d backends, want both (round robin)", len(seen))
	}
	if st := e.s.Stats(); st.Translated != 2 {
		t.Errorf("translated %d, want 2", st.Translated)
	}
	ss := e.tb.Stats(1)
	if len(ss) != 1 || ss[0].NewConns != 2 {
		t.Errorf("service stats %+v", ss)
	}
}

func TestLBRejects(t *testing.T) {
	e := newLBBed(t, webService())
	for _, c := range []struct {
		name string
		in   seg
	}{
		{"port not listed", seg{srcMAC: macA, dstMAC: vipMAC, src: ipA, dst: vip, sport: 40000, dport: 81, syn: true, seq: 100}},
		{"non-SYN without connection", seg{srcMAC: macA, dstMAC: vipMAC, src: ipA, dst: vip, sport: 40001, dport: 80, ack: true, seq: 100, payload: 10}},
	} {
		input(e.pa, c.in.frame())
		r := parseTCP(t, one(t, c.name+": client", e.ra))
		if r.flags&rstFlag == 0 || r.src != vip || r.srcMAC != vipMAC || r.sport != c.in.dport || r.dport != c.in.sport || r.dst != ipA {
			t.Errorf("%s: client got %+v, want a RST from the VIP", c.name, r)
		}
		if n := counts([]*netdevtest.Recorder{e.rb, e.rc, e.rt}); n[0]+n[1]+n[2] != 0 {
			t.Errorf("%s: the refused frame went out: %v", c.name, n)
		}
		e.reset()
	}
	st := e.s.Stats()
	if st.Drops["lb-reject"] != 2 || st.LBRejects != 2 {
		t.Errorf("lb-reject drops %d, rejects sent %d; want 2, 2", st.Drops["lb-reject"], st.LBRejects)
	}
	if r := e.tb.Reasons(); r["port"] != 1 || r["no-conn"] != 1 {
		t.Errorf("balancer reasons %v", r)
	}
}

// TestLBRetriesBackendRST: a backend's RST to the SYN never reaches the
// client; the SYN goes to the other backend at once.
func TestLBRetriesBackendRST(t *testing.T) {
	e := newLBBed(t, webService())
	syn := seg{srcMAC: macA, dstMAC: vipMAC, src: ipA, dst: vip, sport: 40000, dport: 80, syn: true, seq: 100}
	input(e.pa, syn.frame())
	first, firstRec, firstIP, other, otherRec := e.pb, e.rb, ipB, macC, e.rc
	if len(e.rb.Frames()) == 0 {
		first, firstRec, firstIP, other, otherRec = e.pc, e.rc, ipC, macB, e.rb
	}
	one(t, "first backend", firstRec)
	e.reset()
	input(first, seg{srcMAC: first.mac, dstMAC: macA, src: firstIP, dst: ipA, sport: 8080, dport: 40000, rst: true, ack: true}.frame())
	if fs := e.ra.Frames(); len(fs) != 0 {
		t.Fatalf("the client got %d frames, want the RST hidden", len(fs))
	}
	v := parseTCP(t, one(t, "other backend", otherRec))
	if v.dstMAC != other || v.src != ipA || v.sport != 40000 || v.dport != 8080 || v.flags != synFlag || v.seq != 100 {
		t.Errorf("retried SYN %+v", v)
	}
	if st := e.s.Stats(); st.Drops["lb-retry"] != 1 || st.LBRetries != 1 {
		t.Errorf("lb-retry %d, retries %d", st.Drops["lb-retry"], st.LBRetries)
	}
}

// TestLBVIPMACNeverFlooded: frames to a VIP's MAC the balancer does not
// translate are dropped and counted; from the tunnel they are never
// translated.
func TestLBVIPMACNeverFlooded(t *testing.T) {
	e := newLBBed(t, webService())
	remote := packet.MAC{2, 0, 0, 0, 0, 9}
	input(e.tunnel, seg{srcMAC: remote, dstMAC: vipMAC, src: netip.MustParseAddr("10.0.1.9"), dst: vip, sport: 1, dport: 80, syn: true}.frame())
	input(e.pa, ipv6Frame(vipMAC, macA, llA, netip.MustParseAddr("fe80::1"), packet.ProtoUDP, make([]byte, 8)))
	input(e.pa, ipv4Frame(vipMAC, macA, ipA, ipB))
	if n := counts([]*netdevtest.Recorder{e.ra, e.rb, e.rc, e.rt}); n[0]+n[1]+n[2]+n[3] != 0 {
		t.Errorf("frames to the VIP MAC went out: %v", n)
	}
	st := e.s.Stats()
	if st.Drops["vip-remote"] != 1 || st.Drops["vip-pass"] != 2 || st.Translated != 0 {
		t.Errorf("drops %v, translated %d", st.Drops, st.Translated)
	}
}

// TestLBReplyFromTunnel: a backend behind the tunnel answers; the reply
// is untranslated before the client's port.
func TestLBReplyFromTunnel(t *testing.T) {
	e := newLBBed(t)
	far, farIP := packet.MAC{2, 0x42, 10, 0, 1, 50}, netip.MustParseAddr("10.0.1.50")
	if err := e.s.AddStatic(far, farIP, e.tunnel); err != nil {
		t.Fatal(err)
	}
	svc := lb.Service{Name: "web", VIP: vip, Backends: []lb.Backend{{IP: farIP, MAC: far}}}
	snap, err := lb.NewSnapshot([]lb.Service{svc})
	if err != nil {
		t.Fatal(err)
	}
	e.tb.Swap(snap)
	input(e.pa, seg{srcMAC: macA, dstMAC: vipMAC, src: ipA, dst: vip, sport: 40000, dport: 443, syn: true}.frame())
	if v := parseTCP(t, one(t, "tunnel", e.rt)); v.dstMAC != far || v.dst != farIP || v.dport != 443 {
		t.Fatalf("to the tunnel: %+v", v)
	}
	input(e.tunnel, seg{srcMAC: far, dstMAC: macA, src: farIP, dst: ipA, sport: 443, dport: 40000, syn: true, ack: true}.frame())
	if v := parseTCP(t, one(t, "client", e.ra)); v.srcMAC != vipMAC || v.src != vip || v.sport != 443 {
		t.Fatalf("reply to the client: %+v", v)
	}
}

func TestLBForwardAndUntranslateDoNotAllocate(t *testing.T) {
	e := New(Config{Name: "web", StormLimit: -1})
	var ca, cb netdevtest.Counter
	pa := addPort(t, e, &ca, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	pb := addPort(t, e, &cb, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
	svc := lb.Service{Name: "web", VIP: vip, Backends: []lb.Backend{{IP: ipB, MAC: macB}}}
	e.SetBalancer(newTable(t, svc))
	input(pa, seg{srcMAC: macA, dstMAC: vipMAC, src: ipA, dst: vip, sport: 40000, dport: 80, syn: true}.frame())
	input(pb, seg{srcMAC: macB, dstMAC: macA, src: ipB, dst: ipA, sport: 80, dport: 40000, syn: true, ack: true}.frame())
	fwd := make([][]byte, packet.BatchSize)
	rev := make([][]byte, packet.BatchSize)
	for i := range fwd {
		fwd[i] = seg{srcMAC: macA, dstMAC: vipMAC, src: ipA, dst: vip, sport: 40000, dport: 80, ack: true, payload: 100}.frame()
		rev[i] = seg{srcMAC: macB, dstMAC: macA, src: ipB, dst: ipA, sport: 80, dport: 40000, ack: true, payload: 100}.frame()
	}
	fb, fs := batch(fwd...)
	rb, rs := batch(rev...)
	ftmpl, rtmpl := fb[0][off:off+fs[0]], rb[0][off:off+rs[0]]
	ftmpl, rtmpl = append([]byte(nil), ftmpl...), append([]byte(nil), rtmpl...)
	allocs := testing.AllocsPerRun(200, func() {
		for i := range fb {
			copy(fb[i][off:], ftmpl) // translated in place by the previous run
			copy(rb[i][off:], rtmpl)
		}
		pa.Input(fb, fs, off)
		pb.Input(rb, rs, off)
	})
	if allocs != 0 {
		t.Errorf("translated forwarding and untranslated delivery allocate %.1f times per batch pair", allocs)
	}
	if v := parseTCP(t, cb.Last()); v.dst != ipB || v.dstMAC != macB {
		t.Errorf("last frame to b: %+v", v)
	}
	if v := parseTCP(t, ca.Last()); v.src != vip || v.srcMAC != vipMAC {
		t.Errorf("last frame to a: %+v", v)
	}
	if st := e.Stats(); st.Translated != 1+201*packet.BatchSize || len(st.Drops) != 0 {
		t.Errorf("translated %d, drops %v", st.Translated, st.Drops)
	}
}

// BenchmarkForwardLB is BenchmarkForward with 1000-byte TCP frames
// between two container ports: without a balancer ("none"), direct to
// the backend's IP with a VIP table in place ("direct": the cost of the
// lb stage for frames it passes, both ways), and through the VIP
// ("vip": translated at the client's port, every frame).
func BenchmarkForwardLB(b *testing.B) {
	for _, c := range []struct {
		name string
		dst  netip.Addr
		mac  packet.MAC
		lb   bool
	}{{"none", ipB, macB, false}, {"direct", ipB, macB, true}, {"vip", vip, vipMAC, true}} {
		b.Run(c.name, func(b *testing.B) {
			s := New(Config{Name: "bench", StormLimit: -1})
			a := addPort(b, s, &netdevtest.Counter{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
			addPort(b, s, &netdevtest.Counter{}, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
			if c.lb {
				s.SetBalancer(newTable(b, lb.Service{Name: "web", VIP: vip, Backends: []lb.Backend{{IP: ipB, MAC: macB}}}))
			}
			input(a, seg{srcMAC: macA, dstMAC: vipMAC, src: ipA, dst: vip, sport: 40000, dport: 80, syn: true}.frame())
			tmpl := seg{srcMAC: macA, dstMAC: c.mac, src: ipA, dst: c.dst, sport: 40000, dport: 80, ack: true, payload: 1000}.frame()
			frames := make([][]byte, packet.BatchSize)
			for i := range frames {
				frames[i] = tmpl
			}
			bufs, sizes := batch(frames...)
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				for i := range bufs {
					copy(bufs[i][off+0:off+14+20+4], tmpl) // restore the headers
				}
				a.Input(bufs, sizes, off)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*packet.BatchSize), "ns/frame")
			// CPU time rather than wall time: steadier on a shared machine.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N*packet.BatchSize), "cpu-ns/frame")
		})
	}
}

// cpuTime returns the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// fixIPv4 sets the header checksum of f if it looks like an IPv4 frame,
// so that every frame the fuzzer sends has a valid one.
func fixIPv4(f []byte) {
	eth := packet.Ethernet(f)
	if len(f) < packet.EthernetHeaderLen+20 || eth.EtherType() != packet.EtherTypeIPv4 {
		return
	}
	ip := packet.IPv4(eth.Payload())
	if hl := ip.HeaderLen(); ip[0]>>4 == 4 && hl >= 20 && hl <= len(ip) {
		ip.SetChecksum(0)
		ip.SetChecksum(packet.Checksum(ip[:hl]))
	}
}

// FuzzInputLB feeds arbitrary frames from a client port, a backend port
// and the tunnel port into a switch with a VIP table (backends local and
// behind the tunnel). Every IPv4 frame sent has a valid header checksum;
// no frame may come out with a bad one, and every frame is accounted
// for. The input is records: port index byte, 2-byte length, frame.
func FuzzInputLB(f *testing.F) {
	rec := func(port byte, frame []byte) []byte {
		return append([]byte{port, byte(len(frame) >> 8), byte(len(frame))}, frame...)
	}
	syn := seg{srcMAC: macA, dstMAC: vipMAC, src: ipA, dst: vip, sport: 40000, dport: 80, syn: true, seq: 1}.frame()
	synack := seg{srcMAC: macB, dstMAC: macA, src: ipB, dst: ipA, sport: 8080, dport: 40000, syn: true, ack: true}.frame()
	rst := seg{srcMAC: macB, dstMAC: macA, src: ipB, dst: ipA, sport: 8080, dport: 40000, rst: true, ack: true}.frame()
	ack := seg{srcMAC: macA, dstMAC: vipMAC, src: ipA, dst: vip, sport: 40000, dport: 80, ack: true, payload: 20}.frame()
	f.Add(append(append(rec(0, syn), rec(1, synack)...), rec(0, ack)...))
	f.Add(append(rec(0, syn), rec(1, rst)...))
	f.Add(rec(0, arpFrame(macA, ipA, vip)))
	f.Add(rec(0, ipv4Frame(vipMAC, macA, ipA, vip)))
	f.Add(rec(2, seg{srcMAC: macC, dstMAC: macA, src: ipC, dst: ipA, sport: 8080, dport: 40000, syn: true, ack: true}.frame()))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := New(Config{Name: "fuzz", GatewayIP: ipGW, GatewayMAC: macGW, MTU: 1000, StormLimit: 5})
		recs := []*netdevtest.Recorder{{}, {}, {}}
		refs := []*Port{
			addPort(t, s, recs[0], PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true}),
			addPort(t, s, recs[1], PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true}),
			addPort(t, s, recs[2], PortConfig{Name: "tunnel"}),
		}
		if err := s.AddStatic(macC, ipC, refs[2]); err != nil {
			t.Fatal(err)
		}
		svc := webService()
		svc.Ports = append(svc.Ports, lb.Port{Proto: packet.ProtoUDP, Port: 53})
		s.SetBalancer(newTable(t, svc, lb.Service{Name: "all", VIP: vip2, Scheduler: lb.Maglev, Backends: svc.Backends}))
		var total int
		for len(data) >= 3 {
			port := int(data[0]) % len(refs)
			n := min(int(binary.BigEndian.Uint16(data[1:3])), len(data)-3)
			frame := append([]byte(nil), data[3:3+n]...)
			data = data[3+n:]
			fixIPv4(frame)
			input(refs[port], frame)
			total++
		}
		st := s.Stats()
		var rx, tx, inDrops uint64
		for _, p := range st.Ports {
			rx += p.RxPackets
			tx += p.TxPackets
		}
		for k, v := range st.Drops {
			if k == "tx-error" {
				t.Fatalf("tx-error %d", v)
			}
			inDrops += v
		}
		if rx != uint64(total) || rx != st.Forwarded+st.Flooded+st.ARPSuppressed+inDrops {
			t.Fatalf("rx %d of %d: forwarded %d flooded %d suppressed %d dropped %d",
				rx, total, st.Forwarded, st.Flooded, st.ARPSuppressed, inDrops)
		}
		var delivered int
		for _, r := range recs {
			for _, fr := range r.Frames() {
				delivered++
				eth := packet.Ethernet(fr)
				if len(fr) < packet.EthernetHeaderLen+20 || eth.EtherType() != packet.EtherTypeIPv4 {
					continue
				}
				ip := packet.IPv4(eth.Payload())
				if hl := ip.HeaderLen(); ip[0]>>4 == 4 && hl >= 20 && hl <= len(ip) && packet.Checksum(ip[:hl]) != 0 {
					t.Fatalf("delivered an IPv4 header with a bad checksum: % x", fr)
				}
			}
		}
		if uint64(delivered) != tx || st.Forwarded+st.ARPSuppressed+st.LBRejects+st.LBRetries > tx {
			t.Fatalf("delivered %d, tx %d, forwarded %d, suppressed %d, rejects %d, retries %d",
				delivered, tx, st.Forwarded, st.ARPSuppressed, st.LBRejects, st.LBRetries)
		}
	})
}

// TestLBFragmentsReorderedFromTunnel: a client's fragmented datagram to
// a VIP whose backend is behind the tunnel leaves whole; the backend's
// fragmented reply comes back from the tunnel in reverse order (the last
// first): the fragments before the first are held ("lb-held") and reach
// the client, from the VIP, right after the first; a client's reordered
// fragments to the VIP (the gateway's, say) reach the backend the same way.
func TestLBFragmentsReorderedFromTunnel(t *testing.T) {
	e := newLBBed(t)
	far, farIP := packet.MAC{2, 0x42, 10, 0, 1, 50}, netip.MustParseAddr("10.0.1.50")
	if err := e.s.AddStatic(far, farIP, e.tunnel); err != nil {
		t.Fatal(err)
	}
	snap, err := lb.NewSnapshot([]lb.Service{{Name: "web", VIP: vip, Backends: []lb.Backend{{IP: farIP, MAC: far}}}})
	if err != nil {
		t.Fatal(err)
	}
	e.tb.Swap(snap)
	// sendReversed inputs frags on in, the last first, and checks that
	// out got them all as ok says.
	sendReversed := func(what string, in *Port, out *netdevtest.Recorder, frags [][]byte, ok func(eth packet.Ethernet, ip packet.IPv4) bool) {
		slices.Reverse(frags)
		input(in, frags...)
		got := out.Frames()
		if len(got) != len(frags) {
			t.Fatalf("%s: %d of %d fragments arrived (drops %v)", what, len(got), len(frags), e.s.Stats().Drops)
		}
		for i, f := range got {
			eth := packet.Ethernet(f)
			if ip := packet.IPv4(eth.Payload()); !ok(eth, ip) || ip.HeaderChecksum() != ip.Checksum() {
				t.Fatalf("%s: fragment %d from %s (%s) to %s (%s)", what, i, ip.Src(), eth.Src(), ip.Dst(), eth.Dst())
			}
		}
	}
	sendReversed("to the VIP", e.pa, e.rt, bigUDPFrags(macA, vipMAC, ipA, vip, 40000, 53, 4000, 3),
		func(eth packet.Ethernet, ip packet.IPv4) bool { return ip.Dst() == farIP && eth.Dst() == far })
	sendReversed("reply", e.tunnel, e.ra, bigUDPFrags(far, macA, farIP, ipA, 53, 40000, 4000, 4),
		func(eth packet.Ethernet, ip packet.IPv4) bool { return ip.Src() == vip && eth.Src() == vipMAC })
	if d := e.s.Stats().Drops; d["lb-held"] != 4 || d["lb-drop"] != 0 {
		t.Fatalf("drops %v, want lb-held 4 (two fragments each way)", d)
	}
}
