package gateway

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

var (
	natClient    = netip.MustParseAddr("192.0.2.7")
	natHost      = netip.MustParseAddr("198.51.100.1")
	natVIP       = netip.MustParseAddr("10.0.1.100")
	natClientMAC = packet.MAC{0x52, 0x54, 0, 0, 0, 7}
	natHostMAC   = packet.MAC{0x52, 0x54, 0, 0, 0, 1}
)

// natOutput records what the gateway hands the switch.
type natOutput struct {
	mu     sync.Mutex
	frames [][]byte
}

func (o *natOutput) Input(bufs [][]byte, sizes []int, offset int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := range bufs {
		o.frames = append(o.frames, slices.Clone(bufs[i][offset:offset+sizes[i]]))
	}
}

func (o *natOutput) take() [][]byte {
	o.mu.Lock()
	defer o.mu.Unlock()
	f := o.frames
	o.frames = nil
	return f
}

// fakeUplinks records the steered ports and the replies.
type fakeUplinks struct {
	mu      sync.Mutex
	ports   []uint16
	ifindex []int
	frames  [][]byte
	syncs   int
	noCopy  bool // count only (allocation test)
}

func (u *fakeUplinks) Sync(ports []uint16) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ports = slices.Sorted(slices.Values(ports))
	u.syncs++
	return nil
}

func (u *fakeUplinks) Write(ifindex int, bufs [][]byte, offset int) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.noCopy {
		return len(bufs), nil
	}
	for _, b := range bufs {
		u.ifindex = append(u.ifindex, ifindex)
		u.frames = append(u.frames, slices.Clone(b[offset:]))
	}
	return len(bufs), nil
}

func (u *fakeUplinks) take() ([]int, [][]byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	i, f := u.ifindex, u.frames
	u.ifindex, u.frames = nil, nil
	return i, f
}

type natHarness struct {
	nat  *NAT
	eg   *Egress
	gw   *Gateway
	out  *natOutput
	up   *fakeUplinks
	port *Port
	now  time.Time
}

func newNATHarness(t testing.TB, cfg NATConfig) *natHarness {
	t.Helper()
	h := &natHarness{now: time.Unix(1_800_000_000, 0), out: &natOutput{}, up: &fakeUplinks{}}
	cfg.Now = func() time.Time { return h.now }
	h.nat = NewNAT(cfg)
	h.eg = NewEgress(EgressConfig{})
	h.eg.SetNAT(h.nat)
	g, err := New(Config{Name: "web", Addr: gwAddr, MAC: gwMAC, MTU: 1450, Egress: h.eg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	g.Attach(h.out)
	h.gw = g
	if err := h.nat.SetUplinks(h.up); err != nil {
		t.Fatal(err)
	}
	h.port = &Port{spec: Publish{HostPort: 8080, Port: 80, Proto: "tcp", ClientIP: ClientIPPreserve}, e: h.eg,
		target: func() (*Gateway, netip.Addr, bool) { return g, natVIP, true }}
	if err := h.port.SteerNAT(); err != nil {
		t.Fatal(err)
	}
	return h
}

// natSeg builds an Ethernet frame with a TCP segment (a timestamp option
// behind two NOPs when ts is not nil: TSval, TSecr) and a correct
// checksum, at packet.Headroom in a buffer.
func natSeg(srcMAC, dstMAC packet.MAC, src, dst netip.AddrPort, flags uint8, ts *[2]uint32, payload int) []byte {
	opt := 0
	if ts != nil {
		opt = 12
	}
	tcpLen := 20 + opt + payload
	f := make([]byte, packet.EthernetHeaderLen+20+tcpLen)
	copy(f[0:6], dstMAC[:])
	copy(f[6:12], srcMAC[:])
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeIPv4)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+tcpLen))
	ip[8], ip[9] = 64, packet.ProtoTCP
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], packet.Checksum(ip[:20]))
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	tcp[12] = byte((20+opt)/4) << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65000)
	if ts != nil {
		copy(tcp[20:], []byte{1, 1, 8, 10})
		binary.BigEndian.PutUint32(tcp[24:], ts[0])
		binary.BigEndian.PutUint32(tcp[28:], ts[1])
	}
	for i := range payload {
		tcp[20+opt+i] = byte(i)
	}
	binary.BigEndian.PutUint16(tcp[16:], packet.Fold(packet.Sum(tcp, packet.PseudoHeaderSum(src.Addr(), dst.Addr(), packet.ProtoTCP, tcpLen))))
	buf := make([]byte, packet.Headroom+len(f))
	copy(buf[packet.Headroom:], f)
	return buf
}

// checkSums fails unless f's IPv4 header and TCP checksums are right.
func checkSums(t *testing.T, f []byte) {
	t.Helper()
	ip := packet.IPv4(f[14:])
	if !ip.ChecksumValid() {
		t.Fatalf("IP header checksum wrong")
	}
	l4 := ip.Payload()
	if packet.Fold(packet.Sum(l4, packet.PseudoHeaderSum(ip.Src(), ip.Dst(), packet.ProtoTCP, len(l4)))) != 0 {
		t.Fatalf("TCP checksum wrong")
	}
}

func tcpTS(f []byte) (uint32, uint32) {
	tcp := packet.IPv4(f[14:]).Payload()
	return binary.BigEndian.Uint32(tcp[24:]), binary.BigEndian.Uint32(tcp[28:])
}

func ports(f []byte) (uint16, uint16) {
	tcp := packet.IPv4(f[14:]).Payload()
	return binary.BigEndian.Uint16(tcp[0:]), binary.BigEndian.Uint16(tcp[2:])
}

func (h *natHarness) in(ifindex int, bufs ...[]byte) {
	sizes := make([]int, len(bufs))
	for i, b := range bufs {
		sizes[i] = len(b) - packet.Headroom
	}
	h.nat.Input(ifindex, bufs, sizes, packet.Headroom)
}

func (h *natHarness) reply(t *testing.T, bufs ...[]byte) {
	t.Helper()
	if n, err := h.gw.dev.Write(bufs, packet.Headroom); err != nil || n != len(bufs) {
		t.Fatalf("gateway write: %d, %v", n, err)
	}
}

var (
	natCAP = netip.AddrPortFrom(natClient, 40000)
	natHAP = netip.AddrPortFrom(natHost, 8080)
	natVAP = netip.AddrPortFrom(natVIP, 80)
)

// TestNATBothWays: a client's SYN enters the network as the gateway's
// frame to the VIP with the client's address, timestamps on the
// cluster's clock; the SYN-ACK from the VIP goes out of the uplink the
// SYN came in on, from the host's address and published port, with the
// client's own timestamp echoed; the stack sees neither.
func TestNATBothWays(t *testing.T) {
	h := newNATHarness(t, NATConfig{TCPSecret: make([]byte, 32)})
	if got := h.up.ports; !slices.Equal(got, []uint16{8080}) {
		t.Fatalf("steered ports %v, want [8080]", got)
	}
	const clientTS = 123456
	h.in(7, natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPSYN, &[2]uint32{clientTS, 0}, 0))
	got := h.out.take()
	if len(got) != 1 {
		t.Fatalf("switch got %d frames, want 1", len(got))
	}
	f := got[0]
	checkSums(t, f)
	eth, ip := packet.Ethernet(f), packet.IPv4(f[14:])
	if eth.Dst() != lb.VIPMAC(natVIP) || eth.Src() != gwMAC || ip.Src() != natClient || ip.Dst() != natVIP {
		t.Fatalf("SYN into the network: %s -> %s, %s -> %s", eth.Src(), eth.Dst(), ip.Src(), ip.Dst())
	}
	if sp, dp := ports(f); sp != 40000 || dp != 80 {
		t.Fatalf("ports %d -> %d, want 40000 -> 80", sp, dp)
	}
	want := h.nat.tsTarget(natClient.As4(), natVIP.As4(), h.now)
	if tsv, _ := tcpTS(f); tsv != want {
		t.Fatalf("TSval %d, want the cluster clock's %d", tsv, want)
	}
	if st := h.port.Stats(); st.Total != 1 || st.Active != 1 {
		t.Fatalf("port stats after SYN %+v", st)
	}

	rx := h.gw.dev.rx.Load()
	h.reply(t, natSeg(lb.VIPMAC(natVIP), gwMAC, natVAP, natCAP, packet.TCPSYN|packet.TCPACK, &[2]uint32{999, want}, 0))
	idx, out := h.up.take()
	if len(out) != 1 || idx[0] != 7 {
		t.Fatalf("uplink writes %v %d, want one to ifindex 7", idx, len(out))
	}
	f = out[0]
	checkSums(t, f)
	eth, ip = packet.Ethernet(f), packet.IPv4(f[14:])
	if eth.Dst() != natClientMAC || eth.Src() != natHostMAC || ip.Src() != natHost || ip.Dst() != natClient {
		t.Fatalf("SYN-ACK to the client: %s -> %s, %s -> %s", eth.Src(), eth.Dst(), ip.Src(), ip.Dst())
	}
	if sp, dp := ports(f); sp != 8080 || dp != 40000 {
		t.Fatalf("ports %d -> %d, want 8080 -> 40000", sp, dp)
	}
	if tsv, tse := tcpTS(f); tsv != 999 || tse != clientTS {
		t.Fatalf("timestamps %d %d, want 999 and the client's %d", tsv, tse, clientTS)
	}
	if h.gw.dev.rx.Load() != rx+1 {
		t.Fatalf("the reply was not counted as the gateway's")
	}

	// Data both ways, then both FINs: the port's counters follow.
	h.now = h.now.Add(10 * time.Millisecond)
	h.in(7, natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPACK, &[2]uint32{clientTS + 10, 999}, 100))
	f = h.out.take()[0]
	checkSums(t, f)
	if tsv, _ := tcpTS(f); tsv != want+10 {
		t.Fatalf("TSval %d, want %d", tsv, want+10)
	}
	h.reply(t, natSeg(lb.VIPMAC(natVIP), gwMAC, natVAP, natCAP, packet.TCPACK|packet.TCPFIN, &[2]uint32{1009, want + 10}, 300))
	h.in(7, natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPACK|packet.TCPFIN, &[2]uint32{clientTS + 20, 1009}, 0))
	if _, out = h.up.take(); len(out) != 1 {
		t.Fatalf("FIN not sent to the client")
	}
	if st := h.port.Stats(); st.Total != 1 || st.Active != 0 || st.Failed != 0 || st.BytesIn != 100 || st.BytesOut != 300 {
		t.Fatalf("port stats after both FINs %+v", st)
	}
	if st := h.eg.Stats(); st.IngressTotal != 0 || st.NAT == nil || st.NAT.Total != 1 || st.NAT.Flows != 1 {
		t.Fatalf("egress stats %+v nat %+v", st, st.NAT)
	}
	// The closed flow leaves the table after the closing timeout.
	h.now = h.now.Add(lb.DefaultTimeouts.TCPClosing + time.Second)
	if n := h.nat.Sweep(); n != 1 || h.nat.Stats().Flows != 0 {
		t.Fatalf("sweep freed %d, %d left", n, h.nat.Stats().Flows)
	}
}

// TestNATPartialChecksum: a frame with a partial checksum (offload) keeps
// one: only the pseudo-header's change is applied.
func TestNATPartialChecksum(t *testing.T) {
	h := newNATHarness(t, NATConfig{})
	buf := natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPSYN, nil, 0)
	f := buf[packet.Headroom:]
	l4 := f[34:]
	binary.BigEndian.PutUint16(l4[16:], ^packet.Fold(packet.PseudoHeaderSum(natClient, natHost, packet.ProtoTCP, len(l4))))
	packet.OffloadOf(buf).Set(packet.OffloadNeedsCsum, packet.GSONone, 0, 0, 34, 16)
	h.in(1, buf)
	out := h.out.take()
	if len(out) != 1 {
		t.Fatal("no frame")
	}
	l4 = out[0][34:]
	if got, want := binary.BigEndian.Uint16(l4[16:]), ^packet.Fold(packet.PseudoHeaderSum(natClient, natVIP, packet.ProtoTCP, len(l4))); got != want {
		t.Fatalf("partial checksum %#x, want %#x", got, want)
	}
}

// TestNATStrays: segments of no flow, of ports not steered and replies of
// no flow are not taken; a client that cannot enter as itself is dropped.
func TestNATStrays(t *testing.T) {
	h := newNATHarness(t, NATConfig{})
	h.in(1, natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPACK, nil, 10))
	h.in(1, natSeg(natClientMAC, natHostMAC, natCAP, netip.AddrPortFrom(natHost, 9090), packet.TCPSYN, nil, 0))
	h.in(1, natSeg(natClientMAC, natHostMAC, netip.AddrPortFrom(netip.MustParseAddr("10.0.1.9"), 5), natHAP, packet.TCPSYN, nil, 0))
	if got := h.out.take(); len(got) != 0 {
		t.Fatalf("%d stray frames entered the network", len(got))
	}
	d := h.nat.Stats().Drops
	if d[NATDropNoFlow] != 1 || d[NATDropNoPort] != 1 || d[NATDropUnspoofable] != 1 {
		t.Fatalf("drops %v", d)
	}
	h.up.take() // the no-flow segment's RST (TestNATResetsNoFlow)
	// A reply of no NAT flow goes to the stack (the uplinks see nothing).
	h.in(1, natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPSYN, nil, 0)) // one flow, so replies are looked up
	h.out.take()
	h.reply(t, natSeg(lb.VIPMAC(natVIP), gwMAC, natVAP, netip.AddrPortFrom(natClient, 40001), packet.TCPSYN|packet.TCPACK, nil, 0))
	if _, out := h.up.take(); len(out) != 0 {
		t.Fatal("a reply of no flow went to the uplink")
	}
	// A RST answering the SYN fails the flow.
	h.reply(t, natSeg(lb.VIPMAC(natVIP), gwMAC, natVAP, natCAP, packet.TCPRST|packet.TCPACK, nil, 0))
	if st := h.port.Stats(); st.Failed != 1 || st.Active != 0 {
		t.Fatalf("port stats after a refused SYN %+v", st)
	}
	// Closing the port unsteers it and forgets its flows.
	h.nat.unsteer(h.port) // what Port.Close does first
	if len(h.up.ports) != 0 || h.nat.Stats().Flows != 0 || h.nat.Stats().Ports != 0 {
		t.Fatalf("after close: steered %v, flows %d", h.up.ports, h.nat.Stats().Flows)
	}
}

// TestNATResetsNoFlow: a segment of a connection the NAT has no entry
// for (its daemon restarted, the entry expired) is answered on the uplink
// it came from with the RST the kernel would send: from the host's
// address and published port, sequence number = the segment's ACK (RST|ACK
// acknowledging it when it has no ACK), no options, right checksums; a
// RST gets no answer.
func TestNATResetsNoFlow(t *testing.T) {
	h := newNATHarness(t, NATConfig{})
	seg := natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPACK|0x08, &[2]uint32{7, 9}, 100)
	binary.BigEndian.PutUint32(seg[packet.Headroom+34+8:], 5555) // ACK number
	tcp := seg[packet.Headroom+34:]
	binary.BigEndian.PutUint16(tcp[16:], 0)
	binary.BigEndian.PutUint16(tcp[16:], packet.Fold(packet.Sum(tcp, packet.PseudoHeaderSum(natClient, natHost, packet.ProtoTCP, len(tcp)))))
	h.in(3, seg)
	h.in(3, natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPFIN, nil, 10)) // no ACK: seq 1000 + 10 + FIN
	h.in(3, natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPRST|packet.TCPACK, nil, 0))
	if got := h.out.take(); len(got) != 0 {
		t.Fatalf("%d segments of no flow entered the network", len(got))
	}
	idx, out := h.up.take()
	if len(out) != 2 {
		t.Fatalf("%d frames to the uplinks, want 2 RSTs (none for the RST)", len(out))
	}
	for i, want := range []struct {
		flags    uint8
		seq, ack uint32
	}{{packet.TCPRST, 5555, 0}, {packet.TCPRST | packet.TCPACK, 0, 1011}} {
		f := out[i]
		if idx[i] != 3 || len(f) != 54 {
			t.Fatalf("RST %d: %d bytes to uplink %d, want 54 to 3", i, len(f), idx[i])
		}
		checkSums(t, f)
		e := packet.Ethernet(f)
		ip := packet.IPv4(f[14:])
		tcp := f[34:]
		if e.Src() != natHostMAC || e.Dst() != natClientMAC || ip.Src() != natHost || ip.Dst() != natClient {
			t.Fatalf("RST %d from %v %v to %v %v", i, e.Src(), ip.Src(), e.Dst(), ip.Dst())
		}
		if s, d := ports(f); s != natHAP.Port() || d != natCAP.Port() {
			t.Fatalf("RST %d from port %d to %d", i, s, d)
		}
		if tcp[13] != want.flags || binary.BigEndian.Uint32(tcp[4:]) != want.seq || binary.BigEndian.Uint32(tcp[8:]) != want.ack || tcp[12] != 5<<4 {
			t.Fatalf("RST %d: flags %#x seq %d ack %d offset %d; want %#x, %d, %d, 20 bytes", i, tcp[13],
				binary.BigEndian.Uint32(tcp[4:]), binary.BigEndian.Uint32(tcp[8:]), tcp[12]>>4*4, want.flags, want.seq, want.ack)
		}
	}
	if st := h.nat.Stats(); st.Resets != 2 || st.Drops[NATDropNoFlow] != 3 || st.Out != 0 {
		t.Fatalf("stats %+v: want 2 resets, 3 no-flow drops, no frame translated out", st)
	}
}

// TestNATFullTable: a full shard makes room from closing flows, never
// from open ones; a new flow meeting only open ones is dropped.
func TestNATFullTable(t *testing.T) {
	h := newNATHarness(t, NATConfig{Max: natShards}) // one entry per shard
	open := 0
	for p := uint16(1000); open < 200; p++ {
		h.in(1, natSeg(natClientMAC, natHostMAC, netip.AddrPortFrom(natClient, p), natHAP, packet.TCPSYN, nil, 0))
		open++
	}
	st := h.nat.Stats()
	if st.Flows != natShards || st.Drops[NATDropFull] != uint64(200-natShards) {
		t.Fatalf("flows %d, full drops %d", st.Flows, st.Drops[NATDropFull])
	}
	// Close every flow with FINs from both sides: the next SYNs evict.
	for p := uint16(1000); p < 1200; p++ {
		cap := netip.AddrPortFrom(natClient, p)
		h.in(1, natSeg(natClientMAC, natHostMAC, cap, natHAP, packet.TCPACK|packet.TCPFIN, nil, 0))
		h.reply(t, natSeg(lb.VIPMAC(natVIP), gwMAC, natVAP, cap, packet.TCPACK|packet.TCPFIN, nil, 0))
	}
	h.out.take()
	h.up.take()
	before := h.nat.Stats().Drops[NATDropFull]
	for p := uint16(2000); p < 2100; p++ {
		h.in(1, natSeg(natClientMAC, natHostMAC, netip.AddrPortFrom(natClient, p), natHAP, packet.TCPSYN, nil, 0))
	}
	st = h.nat.Stats()
	if st.Evicted == 0 || st.Drops[NATDropFull] != before+uint64(100-st.Evicted) {
		t.Fatalf("evicted %d, full drops %d (before %d)", st.Evicted, st.Drops[NATDropFull], before)
	}
	if ps := h.port.Stats(); ps.Active != int64(st.Evicted) {
		t.Fatalf("port active %d, want the %d new flows", ps.Active, st.Evicted)
	}
}

// TestNATAllocs: translating a flow's segments both ways allocates
// nothing.
func TestNATAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector, sync.Pool drops some of what it is given")
	}
	h := newNATHarness(t, NATConfig{})
	h.up.noCopy = true
	h.in(1, natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPSYN, &[2]uint32{1, 0}, 0))
	seg := natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPACK, &[2]uint32{5, 0}, 1000)
	rep := natSeg(lb.VIPMAC(natVIP), gwMAC, natVAP, natCAP, packet.TCPACK, &[2]uint32{5, 0}, 1000)
	segCopy, repCopy := slices.Clone(seg), slices.Clone(rep)
	bufs, sizes := [][]byte{seg}, []int{len(seg) - packet.Headroom}
	rbufs := [][]byte{rep}
	h.out.take()
	h.out.frames = make([][]byte, 0, 4096)
	n := testing.AllocsPerRun(200, func() {
		copy(seg, segCopy)
		copy(rep, repCopy)
		bufs[0] = seg
		h.nat.Input(1, bufs, sizes, packet.Headroom)
		h.gw.dev.Write(rbufs, packet.Headroom)
		h.out.frames = h.out.frames[:0]
	})
	// natOutput clones each frame it records (one allocation).
	if n > 1 {
		t.Fatalf("%v allocations per segment pair, want at most the recorder's 1", n)
	}
}

// FuzzNATFrame: any bytes from an uplink or the switch are either
// translated into a frame with right checksums or left alone.
func FuzzNATFrame(f *testing.F) {
	f.Add(natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPSYN, &[2]uint32{1, 0}, 0)[packet.Headroom:])
	f.Add(natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPACK, nil, 30)[packet.Headroom:])
	n := NewNAT(NATConfig{Max: natShards})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := parseNAT(b)
		if !ok {
			return
		}
		// The RST answering it (a segment of no flow) is well formed.
		buf := append(make([]byte, packet.Headroom), b...)
		var o *natOut
		n.reset(1, buf, packet.Headroom, &p, &o)
		if o != nil {
			checkSums(t, o.bufs[0][packet.Headroom:])
			if len(o.bufs[0]) != packet.Headroom+p.l3+40 {
				t.Fatalf("RST of %d bytes", len(o.bufs[0])-packet.Headroom)
			}
		}
		if p.l4+20 > p.end || p.end > len(b) || (p.ts != 0 && p.ts+8 > p.end) {
			t.Fatalf("parse %+v out of a %d-byte frame", p, len(b))
		}
		ed := natEdit{addrAt: p.l3 + 16, addr: [4]byte{10, 0, 1, 100}, portAt: p.l4 + 2, port: 80, tsAt: p.ts, ts: 7}
		ed.apply(b, &p, false)
	})
}

// BenchmarkNATSegmentPair: one client segment translated into the
// network and one reply out (the recorder and the fake uplink count
// only), the NAT's own cost per frame pair.
func BenchmarkNATSegmentPair(b *testing.B) {
	h := newNATHarness(b, NATConfig{})
	h.up.noCopy = true
	h.in(1, natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPSYN, &[2]uint32{1, 0}, 0))
	seg := natSeg(natClientMAC, natHostMAC, natCAP, natHAP, packet.TCPACK, &[2]uint32{5, 0}, 1000)
	rep := natSeg(lb.VIPMAC(natVIP), gwMAC, natVAP, natCAP, packet.TCPACK, &[2]uint32{5, 0}, 1000)
	segCopy, repCopy := slices.Clone(seg), slices.Clone(rep)
	bufs, sizes := [][]byte{seg}, []int{len(seg) - packet.Headroom}
	rbufs := [][]byte{rep}
	out := &countOutput{}
	h.gw.dev.out.o.Store(func() *Output { var o Output = out; return &o }())
	b.ReportAllocs()
	for b.Loop() {
		copy(seg, segCopy)
		copy(rep, repCopy)
		bufs[0] = seg
		h.nat.Input(1, bufs, sizes, packet.Headroom)
		h.gw.dev.Write(rbufs, packet.Headroom)
	}
	if out.n == 0 {
		b.Fatal("nothing reached the switch")
	}
}
