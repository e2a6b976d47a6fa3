package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
)

// testSA returns the two ends of an SA with the given SPI; seed varies the
// key.
func testSA(t testing.TB, spi uint32, seed byte) (*esp.Outbound, *esp.Inbound) {
	t.Helper()
	key := bytes.Repeat([]byte{seed}, 16)
	salt := []byte{seed, 1, 2, 3}
	out, err := esp.NewOutbound(spi, key, salt)
	if err != nil {
		t.Fatal(err)
	}
	in, err := esp.NewInbound(spi, key, salt)
	if err != nil {
		t.Fatal(err)
	}
	return out, in
}

// encNode is a VTEP with a VXLAN and an ESP underlay and one encrypted
// network.
type encNode struct {
	*node
	eu *MemUnderlay
}

func newEncNode(t *testing.T, mn *MemNetwork, addr netip.Addr, peers ...netip.Addr) *encNode {
	t.Helper()
	u, err := mn.Listen(netip.AddrPortFrom(addr, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	eu, err := mn.Listen(netip.AddrPortFrom(addr, esp.Port))
	if err != nil {
		t.Fatal(err)
	}
	v := New(Config{Underlay: u, ESPUnderlay: eu})
	n, err := v.AddSegment(testVNI, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.SetCipher(esp.AES128GCM); err != nil {
		t.Fatal(err)
	}
	if err := n.SetPeers(peers); err != nil {
		t.Fatal(err)
	}
	s := newSink()
	n.SetInput(s.input)
	return &encNode{node: &node{v: v, u: u, n: n, sink: s}, eu: eu}
}

func (nd *encNode) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- nd.v.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})
}

// newRawAt is a plain endpoint at addr:port.
func newRawAt(t *testing.T, mn *MemNetwork, addr netip.Addr, port uint16) *raw {
	u, err := mn.Listen(netip.AddrPortFrom(addr, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return &raw{u: u}
}

func (r *raw) sendTo(t *testing.T, to netip.AddrPort, dgrams ...[]byte) {
	t.Helper()
	msgs := make([]Message, len(dgrams))
	for i, d := range dgrams {
		msgs[i] = Message{Buf: d, Addr: to}
	}
	if n, err := r.u.WriteBatch(msgs); n != len(msgs) || err != nil {
		t.Fatalf("raw send: %d, %v", n, err)
	}
}

func TestEncryptedNetworkBetweenTwoVTEPs(t *testing.T) {
	mn := NewMemNetwork()
	a := newEncNode(t, mn, vtepA, vtepB)
	b := newEncNode(t, mn, vtepB, vtepA)
	a.n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	b.n.SetRemotes(map[packet.MAC]netip.Addr{macA: vtepA})
	ab, abIn := testSA(t, 0x1000ab, 1)
	ba, baIn := testSA(t, 0x1000ba, 2)
	if err := a.v.SetSAs([]OutboundSA{{vtepB, ab}}, []InboundSA{{vtepB, baIn}}); err != nil {
		t.Fatal(err)
	}
	if err := b.v.SetSAs([]OutboundSA{{vtepA, ba}}, []InboundSA{{vtepA, abIn}}); err != nil {
		t.Fatal(err)
	}
	a.run(t)
	b.run(t)

	uni := udpFrame(macB, macA, 1000, 80, 1300)
	bcast := udpFrame(packet.Broadcast, macA, 1001, 80, 60)
	bufs := withHeadroom(uni, bcast)
	if n, err := a.n.Write(bufs, packet.Headroom); n != 2 || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	got := b.sink.wait(t, 2)
	if !bytes.Equal(got[0], uni) || !bytes.Equal(got[1], bcast) {
		t.Fatal("frames changed in transit")
	}
	// And back, B to A.
	if n, err := b.n.Write(withHeadroom(udpFrame(macA, macB, 7, 8, 100)), packet.Headroom); n != 1 || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	a.sink.wait(t, 1)
	if s := ab.Stats(); s.Packets != 2 || s.Seq != 2 {
		t.Fatalf("outbound SA: %+v", s)
	}
	if s := abIn.Stats(); s.Packets != 2 || s.Seq != 2 {
		t.Fatalf("inbound SA: %+v", s)
	}

	// Cleartext VXLAN for the encrypted VNI, from A's address, is dropped
	// and counted, never delivered.
	mallory := newRaw(t, mn, vtepC)
	mallory.send(t, vtepB, 1, vxlanDatagram(testVNI, udpFrame(macB, macA, 1, 2, 50)))
	waitCount(t, "cleartext drop", func() uint64 { return b.n.Stats().Drops["cleartext"] }, 1)
	// A sender without the key: the SPI B expects from A, another key.
	forged, _ := testSA(t, 0x1000ab, 9)
	unknown, _ := testSA(t, 0x7777, 1)
	for _, sa := range []*esp.Outbound{forged, unknown} {
		buf := make([]byte, packet.BufferSize)
		for range 5 { // ahead of B's replay window: refused for the key
			sa.Seal(buf, 64, 128)
		}
		d := vxlanDatagram(testVNI, udpFrame(macB, macA, 1, 2, 50))
		start := packet.Headroom - udpHeaderLen
		n := copy(buf[start+udpHeaderLen:], d)
		putInnerUDP(buf[start:start+udpHeaderLen+n], 1, packet.VXLANPort)
		s0, s1, err := sa.Seal(buf, start, start+udpHeaderLen+n)
		if err != nil {
			t.Fatal(err)
		}
		espRaw := newRawAt(t, mn, netip.MustParseAddr("192.168.50.7"), uint16(40000+sa.SPI()%100))
		espRaw.sendTo(t, netip.AddrPortFrom(vtepB, esp.Port), buf[s0:s1])
	}
	waitCount(t, "auth failure", func() uint64 { return b.v.Stats().Drops["esp-auth"] }, 1)
	waitCount(t, "unknown SPI", func() uint64 { return b.v.Stats().Drops["esp-unknown-spi"] }, 1)
	if s := abIn.Stats(); s.Drops[esp.ReasonAuth] != 1 {
		t.Fatalf("inbound SA drops: %v", s.Drops)
	}
	if c := b.sink.count(); c != 2 {
		t.Fatalf("B delivered %d frames, want the 2 sealed by A", c)
	}
}

func TestEncryptedWireFormatAndReplay(t *testing.T) {
	mn := NewMemNetwork()
	a := newEncNode(t, mn, vtepA, vtepC)
	sniff := newRawAt(t, mn, vtepC, esp.Port)
	out, in := testSA(t, 0x2000ac, 3)
	if err := a.v.SetSAs([]OutboundSA{{vtepC, out}}, nil); err != nil {
		t.Fatal(err)
	}
	frame := udpFrame(packet.Broadcast, macA, 5, 6, 333)
	if n, err := a.n.Write(withHeadroom(frame), packet.Headroom); n != 1 || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	m := sniff.recv(t, 1)[0]
	wire := bytes.Clone(m.Buf)
	// A standard ESP decoder given the SA decrypts the UDP datagram that
	// would have been sent in the clear.
	buf := make([]byte, 64+len(wire))
	copy(buf[64:], wire)
	i0, i1, nh, err := in.Open(buf, 64, len(buf))
	if err != nil || nh != esp.ProtoUDP {
		t.Fatalf("open: %v, next header %d", err, nh)
	}
	u := buf[i0:i1]
	if binary.BigEndian.Uint16(u[2:]) != packet.VXLANPort || int(binary.BigEndian.Uint16(u[4:])) != len(u) || u[6] != 0 || u[7] != 0 {
		t.Fatalf("inner UDP header % x", u[:8])
	}
	if sp := binary.BigEndian.Uint16(u[0:]); sp < 49152 {
		t.Fatalf("inner source port %d not from the flow hash range", sp)
	}
	x := packet.VXLAN(u[8:])
	if !x.Valid() || x.VNI() != testVNI || !bytes.Equal(x.Payload(), frame) {
		t.Fatal("inner VXLAN datagram differs")
	}

	// Replayed to B, which has the SA: accepted once, then refused.
	b := newEncNode(t, mn, vtepB, vtepA)
	if err := b.v.SetSAs(nil, []InboundSA{{vtepA, func() *esp.Inbound { _, i := testSA(t, 0x2000ac, 3); return i }()}}); err != nil {
		t.Fatal(err)
	}
	b.run(t)
	replayer := newRawAt(t, mn, vtepC, 4501)
	replayer.sendTo(t, netip.AddrPortFrom(vtepB, esp.Port), wire)
	if got := b.sink.wait(t, 1); !bytes.Equal(got[0], frame) {
		t.Fatal("frame changed")
	}
	replayer.sendTo(t, netip.AddrPortFrom(vtepB, esp.Port), wire, wire)
	waitCount(t, "replays", func() uint64 { return b.v.Stats().Drops["esp-replay"] }, 2)
	if c := b.sink.count(); c != 1 {
		t.Fatalf("delivered %d frames, want 1", c)
	}
}

func TestEncryptedWriteWithoutSADrops(t *testing.T) {
	mn := NewMemNetwork()
	a := newEncNode(t, mn, vtepA, vtepB)
	newRawAt(t, mn, vtepB, esp.Port)
	if n, err := a.n.Write(withHeadroom(udpFrame(packet.Broadcast, macA, 5, 6, 33)), packet.Headroom); n != 0 || err == nil {
		t.Fatalf("Write without SA: %d, %v", n, err)
	}
	if d := a.n.Stats().Drops["no-sa"]; d != 1 {
		t.Fatalf("no-sa drops %d", d)
	}
}

// waitCount waits until get returns at least want.
func waitCount(t *testing.T, what string, get func() uint64, want uint64) {
	t.Helper()
	for range 500 {
		if get() >= want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: %d, want %d", what, get(), want)
}

// espSender returns a VTEP at vtepA with an encrypted segment (MTU mtu)
// that seals to vtepB with out, and vtepB's ESP socket, which reads what
// it sends; both are closed at the end of the test.
func espSender(t *testing.T, mn *MemNetwork, out *esp.Outbound, mtu int) (*VTEP, *Segment, Underlay) {
	t.Helper()
	u, _ := mn.Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
	peer, _ := mn.Listen(netip.AddrPortFrom(vtepB, esp.Port))
	v := New(Config{Underlay: u})
	t.Cleanup(func() { v.Close(); peer.Close() })
	n, err := v.AddSegment(testVNI, mtu)
	if err != nil {
		t.Fatal(err)
	}
	n.SetCipher(esp.AES128GCM)
	n.SetPeers([]netip.Addr{vtepB})
	n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	v.SetSAs([]OutboundSA{{vtepB, out}}, nil)
	return v, n, peer
}

// espReceiver is an encrypting VTEP at addr (VXLAN port, ESP port
// espPort) with one network (testVNI, mtu) whose only peer and remote MAC
// are vtepA's, frames delivered to nowhere, and in as its inbound SA from
// vtepA.
func espReceiver(t *testing.T, mn *MemNetwork, addr netip.Addr, espPort uint16, in *esp.Inbound, mtu int) (*VTEP, *Segment) {
	t.Helper()
	ru, _ := mn.Listen(netip.AddrPortFrom(addr, packet.VXLANPort))
	eu, _ := mn.Listen(netip.AddrPortFrom(addr, espPort))
	rv := New(Config{Underlay: ru, ESPUnderlay: eu})
	t.Cleanup(func() { rv.Close() })
	rn, err := rv.AddSegment(testVNI, mtu)
	if err != nil {
		t.Fatal(err)
	}
	rn.SetCipher(esp.AES128GCM)
	rn.SetPeers([]netip.Addr{vtepA})
	rn.SetRemotes(map[packet.MAC]netip.Addr{macA: vtepA})
	rn.SetInput(func([][]byte, []int, int) {})
	rv.SetSAs(nil, []InboundSA{{vtepA, in}})
	return rv, rn
}

// TestEncryptedPathsDoNotAllocate checks the seal (unicast in place and
// flooded copies) and open paths with AllocsPerRun.
func TestEncryptedPathsDoNotAllocate(t *testing.T) {
	mn := NewMemNetwork()
	out, _ := testSA(t, 0x3000ab, 4)
	_, n, peer := espSender(t, mn, out, 0)
	drain := make([]Message, packet.BatchSize)
	for i := range drain {
		drain[i].Buf = make([]byte, 2048)
	}
	for _, dst := range []packet.MAC{macB, packet.Broadcast} {
		var bufs [][]byte
		for i := range packet.BatchSize {
			bufs = append(bufs, withHeadroom(udpFrame(dst, macA, uint16(i), 80, 1300))...)
		}
		frames := make([][]byte, len(bufs))
		for i, b := range bufs {
			frames[i] = bytes.Clone(b)
		}
		step := func() {
			for i, b := range bufs {
				copy(b[:cap(b)], frames[i][:cap(frames[i])])
			}
			n.Write(bufs, packet.Headroom)
			for left := len(bufs); left > 0; {
				k, _ := peer.ReadBatch(drain)
				left -= k
			}
		}
		if allocs := testing.AllocsPerRun(100, step); allocs != 0 {
			t.Errorf("encrypted Write to %s allocates %.1f times per batch", dst, allocs)
		}
	}

	// A super-segment: segments sealed in GSO runs in the arena.
	tso := tsoBuffer(macB, macA, false, 30000, 1300)
	tsoOrig := bytes.Clone(tso)
	gsoStep := func() {
		n.Write([][]byte{tso}, packet.Headroom)
		for left := (30000 + 1299) / 1300; left > 0; {
			k, _ := peer.ReadBatch(drain)
			left -= k
		}
	}
	if allocs := testing.AllocsPerRun(100, gsoStep); allocs != 0 {
		t.Errorf("encrypted Write of a super-segment allocates %.1f times", allocs)
	}
	if !bytes.Equal(tso, tsoOrig) {
		t.Error("the super-segment was modified")
	}

	// Receive: open and deliver a batch sealed in place in the receive
	// buffers.
	sout, sin := testSA(t, 0x3000ac, 5)
	rv, rn := espReceiver(t, mn, vtepC, esp.Port, sin, 0)
	d := vxlanDatagram(testVNI, udpFrame(macB, macA, 1, 2, 1300))
	r := &rv.erx
	msgs := r.msgs[:packet.BatchSize]
	recvStep := func() {
		for i := range msgs {
			buf := r.bufs[i]
			start := packet.Headroom - packet.VXLANHeaderLen - udpHeaderLen
			copy(buf[start+udpHeaderLen:], d)
			putInnerUDP(buf[start:start+udpHeaderLen+len(d)], 1, packet.VXLANPort)
			s0, s1, _ := sout.Seal(buf, start, start+udpHeaderLen+len(d))
			msgs[i].Buf = buf[s0:]
			msgs[i].N = s1 - s0
		}
		rv.receive(r, msgs, true)
	}
	if allocs := testing.AllocsPerRun(100, recvStep); allocs != 0 {
		t.Errorf("encrypted receive allocates %.1f times per batch", allocs)
	}
	if st := rn.Stats(); st.RxPackets != 101*packet.BatchSize {
		t.Errorf("delivered %d frames, want %d (drops %v, vtep %v)", st.RxPackets, 101*packet.BatchSize, st.Drops, rv.Stats().Drops)
	}

	// A coalesced (UDP_GRO) read: 32 datagrams back to back in one buffer.
	const run = 32
	inner := udpHeaderLen + len(d)
	stride := inner + esp.Overhead(inner)
	groStep := func() {
		buf := r.bufs[0]
		base := packet.Headroom - espRxFront
		for k := range run {
			start := base + k*stride + esp.HeaderLen
			copy(buf[start+udpHeaderLen:], d)
			putInnerUDP(buf[start:start+inner], 1, packet.VXLANPort)
			sout.Seal(buf, start, start+inner)
		}
		msgs[0].Buf = buf[base:]
		msgs[0].N, msgs[0].GSOSize = run*stride, stride
		rv.receive(r, msgs[:1], true)
	}
	before := rn.Stats().RxPackets
	if allocs := testing.AllocsPerRun(100, groStep); allocs != 0 {
		t.Errorf("encrypted receive of a coalesced read allocates %.1f times", allocs)
	}
	if got := rn.Stats().RxPackets - before; got != 101*run {
		t.Errorf("delivered %d frames of coalesced reads, want %d (drops %v, vtep %v)", got, 101*run, rn.Stats().Drops, rv.Stats().Drops)
	}
}

func TestEncryptedSuperSegmentGoesInGSORuns(t *testing.T) {
	for _, flood := range []bool{false, true} {
		mn := NewMemNetwork()
		mn.SetMTU(1500) // no ESP datagram may exceed it
		u, _ := mn.Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
		v := New(Config{Underlay: u})
		t.Cleanup(func() { v.Close() })
		const mtu = 1405
		n, _ := v.AddSegment(testVNI, mtu)
		n.SetCipher(esp.AES128GCM)
		n.SetPeers([]netip.Addr{vtepB, vtepC})
		if !flood {
			n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
		}
		sniffB, sniffC := newRawAt(t, mn, vtepB, esp.Port), newRawAt(t, mn, vtepC, esp.Port)
		outB, inB := testSA(t, 0x4000ab, 6)
		outC, inC := testSA(t, 0x4000ac, 7)
		v.SetSAs([]OutboundSA{{vtepB, outB}, {vtepC, outC}}, nil)
		dst := macB
		if flood {
			dst = packet.MAC{0x02, 0x42, 9, 9, 9, 9} // unknown: flooded
		}
		mss := mtu - 20 - 32
		b := tsoBuffer(dst, macA, false, 60000, mss)
		orig := bytes.Clone(b)
		if k, err := n.Write([][]byte{b}, packet.Headroom); k != 1 || err != nil {
			t.Fatalf("flood=%v: Write = %d, %v", flood, k, err)
		}
		segs := (60000 + mss - 1) / mss
		open := func(in *esp.Inbound, msgs []Message) []Message {
			var out []Message
			for _, m := range msgs {
				buf := make([]byte, 64+len(m.Buf))
				copy(buf[64:], m.Buf)
				i0, i1, nh, err := in.Open(buf, 64, len(buf))
				if err != nil || nh != esp.ProtoUDP {
					t.Fatalf("flood=%v: open: %v", flood, err)
				}
				out = append(out, Message{Buf: buf[i0+udpHeaderLen : i1]})
			}
			return out
		}
		checkTCPSegments(t, open(inB, sniffB.recv(t, segs)), mtu, orig[packet.Headroom+14+20+32:])
		if flood {
			checkTCPSegments(t, open(inC, sniffC.recv(t, segs)), mtu, orig[packet.Headroom+14+20+32:])
		} else if sniffC.pending() != 0 {
			t.Errorf("unicast reached C")
		}
		if !bytes.Equal(b, orig) {
			t.Errorf("flood=%v: Write modified the super-segment", flood)
		}
		if st := n.Stats(); st.TxPackets != 1 || st.TxGSO != 1 || len(st.Drops) != 0 {
			t.Errorf("flood=%v: stats %+v", flood, st)
		}
	}
}

// runRecorder is an Underlay that keeps every message written as sent: a
// GSO run stays one message with its GSOSize, as a UDP_GRO read returns it.
type runRecorder struct {
	mu     sync.Mutex
	msgs   []Message
	closed chan struct{}
}

func (r *runRecorder) ReadBatch([]Message) (int, error) { <-r.closed; return 0, net.ErrClosed }
func (r *runRecorder) Close() error                     { close(r.closed); return nil }

func (r *runRecorder) WriteBatch(msgs []Message) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range msgs {
		r.msgs = append(r.msgs, Message{Buf: bytes.Clone(m.Buf), GSOSize: m.GSOSize, Addr: m.Addr})
	}
	return len(msgs), nil
}

// TestEncryptedCoalescedReadIsOpenedPerDatagram: with UDP_GRO on the ESP
// socket, one read returns a run of ESP datagrams back to back (GSOSize
// apart, the last one maybe shorter), as the sender's UDP GSO send left
// it. Each is opened in place, and the TCP segments they carry are
// delivered coalesced, byte for byte what was sent, none refused.
func TestEncryptedCoalescedReadIsOpenedPerDatagram(t *testing.T) {
	const mtu = 1405
	rec := &runRecorder{closed: make(chan struct{})}
	v := New(Config{Underlay: rec})
	t.Cleanup(func() { v.Close() })
	n, _ := v.AddSegment(testVNI, mtu)
	n.SetCipher(esp.AES128GCM)
	n.SetPeers([]netip.Addr{vtepB})
	n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	out, in := testSA(t, 0x6000ab, 9)
	v.SetSAs([]OutboundSA{{vtepB, out}}, nil)
	mss := mtu - 20 - 32
	const payload = 60000
	b := tsoBuffer(macB, macA, false, payload, mss)
	want := bytes.Clone(b[packet.Headroom+14+20+32:])
	if k, err := n.Write([][]byte{b}, packet.Headroom); k != 1 || err != nil {
		t.Fatalf("Write = %d, %v", k, err)
	}
	runs := 0
	for _, m := range rec.msgs {
		if m.GSOSize > 0 {
			runs++
		}
	}
	if runs == 0 {
		t.Fatalf("no GSO run sent: %d messages", len(rec.msgs))
	}

	mn := NewMemNetwork()
	ru, _ := mn.Listen(netip.AddrPortFrom(vtepB, packet.VXLANPort))
	eu, _ := mn.Listen(netip.AddrPortFrom(vtepB, esp.Port))
	rv := New(Config{Underlay: ru, ESPUnderlay: eu})
	t.Cleanup(func() { rv.Close() })
	rn, _ := rv.AddSegment(testVNI, mtu)
	rn.SetCipher(esp.AES128GCM)
	rn.SetPeers([]netip.Addr{vtepA})
	rn.SetRemotes(map[packet.MAC]netip.Addr{macA: vtepA})
	var got []byte
	frames := 0
	rn.SetInput(func(bufs [][]byte, sizes []int, offset int) {
		for i, b := range bufs {
			frames++
			got = append(got, b[offset+14+20+32:offset+sizes[i]]...)
		}
	})
	rv.SetSAs(nil, []InboundSA{{vtepA, in}})
	r := &rv.erx
	msgs := r.msgs[:len(rec.msgs)]
	for i, m := range rec.msgs {
		msgs[i].Buf = r.bufs[i][packet.Headroom-espRxFront:]
		msgs[i].N = copy(msgs[i].Buf, m.Buf)
		msgs[i].GSOSize = m.GSOSize
		msgs[i].Addr = netip.AddrPortFrom(vtepA, esp.Port)
	}
	rv.receive(r, msgs, true)
	segs := (payload + mss - 1) / mss
	if !bytes.Equal(got, want) {
		t.Errorf("delivered %d payload bytes in %d frames, want the %d sent (vtep drops %v, network drops %v)", len(got), frames, len(want), rv.Stats().Drops, rn.Stats().Drops)
	}
	if frames >= segs {
		t.Errorf("%d segments delivered in %d frames: not coalesced", segs, frames)
	}
	if st := rv.Stats(); st.RxDatagrams != uint64(segs) || len(st.Drops) != 0 {
		t.Errorf("vtep stats: %d datagrams, drops %v; want %d, none", st.RxDatagrams, st.Drops, segs)
	}
	if st := in.Stats(); st.Packets != uint64(segs) {
		t.Errorf("SA opened %d packets, want %d", st.Packets, segs)
	}
	// network inspect shows both ends' counters: what the sender counted
	// when it reserved the runs is what the receiver opened.
	if so, si := out.Stats(), in.Stats(); so.Packets != si.Packets || so.Bytes != si.Bytes || so.Seq != si.Seq {
		t.Errorf("sent %d packets, %d bytes up to seq %d; opened %d, %d bytes up to %d", so.Packets, so.Bytes, so.Seq, si.Packets, si.Bytes, si.Seq)
	}
}

// TestEncryptedReceiveCoalescesWithoutReverifying: TCP segments that
// arrive in authenticated ESP datagrams are coalesced without their
// checksums being verified again. ESP's ICV rules out any change on the
// way, and the sending VTEP computed the checksums itself (segmentation,
// completed partial checksums) or passed the container's frame on as it
// came, as a veth does (it marks such a frame CHECKSUM_UNNECESSARY for the
// receiving namespace). So a segment whose TCP checksum its sender got
// wrong is merged like the others here, where cleartext VXLAN keeps it
// apart (TestReceiveDoesNotCoalesceBadChecksum).
func TestEncryptedReceiveCoalescesWithoutReverifying(t *testing.T) {
	const payload, mss = 10 * 1398, 1398
	b := tsoBuffer(macB, macA, false, payload, mss)
	want := bytes.Clone(b[packet.Headroom+14+20+32:])
	dgrams := segmentsOf(t, b)
	dgrams[4][len(dgrams[4])-30] ^= 0xff // the TCP checksum no longer matches
	want[5*mss-30] ^= 0xff

	mn := NewMemNetwork()
	ru, _ := mn.Listen(netip.AddrPortFrom(vtepB, packet.VXLANPort))
	eu, _ := mn.Listen(netip.AddrPortFrom(vtepB, esp.Port))
	rv := New(Config{Underlay: ru, ESPUnderlay: eu})
	t.Cleanup(func() { rv.Close() })
	rn, _ := rv.AddSegment(testVNI, 0)
	rn.SetCipher(esp.AES128GCM)
	rn.SetPeers([]netip.Addr{vtepA})
	var frames [][]byte
	rn.SetInput(func(bufs [][]byte, sizes []int, offset int) {
		for i, b := range bufs {
			frames = append(frames, bytes.Clone(b[offset:offset+sizes[i]]))
		}
	})
	out, in := testSA(t, 0x6000ac, 10)
	rv.SetSAs(nil, []InboundSA{{vtepA, in}})
	r := &rv.erx
	for i, d := range dgrams {
		buf := r.bufs[i]
		start := packet.Headroom - espRxFront + esp.HeaderLen
		copy(buf[start+udpHeaderLen:], d)
		putInnerUDP(buf[start:start+udpHeaderLen+len(d)], 1, packet.VXLANPort)
		s0, s1, err := out.Seal(buf, start, start+udpHeaderLen+len(d))
		if err != nil {
			t.Fatal(err)
		}
		r.msgs[i].Buf = buf[s0:]
		r.msgs[i].N, r.msgs[i].GSOSize = s1-s0, 0
		r.msgs[i].Addr = netip.AddrPortFrom(vtepA, esp.Port)
	}
	rv.receive(r, r.msgs[:len(dgrams)], true)
	if len(frames) != 1 {
		t.Fatalf("%d segments delivered in %d frames, want 1 (drops %v)", len(dgrams), len(frames), rn.Stats().Drops)
	}
	if got := frames[0][14+20+32:]; !bytes.Equal(got, want) {
		t.Errorf("coalesced payload of %d bytes differs from the %d sent", len(got), len(want))
	}
}

// TestEncryptedSentFromESPUnderlay: ESP datagrams go out through the ESP
// underlay (the daemon's 4500 socket), not the VXLAN transmit pool.
func TestEncryptedSentFromESPUnderlay(t *testing.T) {
	vx := &runRecorder{closed: make(chan struct{})}
	eu := &runRecorder{closed: make(chan struct{})}
	v := New(Config{Underlay: vx, ESPUnderlay: eu})
	t.Cleanup(func() { v.Close() })
	n, _ := v.AddSegment(testVNI, 1405)
	n.SetCipher(esp.AES128GCM)
	n.SetPeers([]netip.Addr{vtepB})
	n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	out, _ := testSA(t, 0x6000ad, 11)
	v.SetSAs([]OutboundSA{{vtepB, out}}, nil)
	frames := [][]byte{
		withHeadroom(udpFrame(macB, macA, 1, 2, 100))[0],
		withHeadroom(udpFrame(packet.Broadcast, macA, 1, 2, 100))[0],
		tsoBuffer(macB, macA, false, 20000, 1405-20-32),
	}
	for _, f := range frames {
		if k, err := n.Write([][]byte{f}, packet.Headroom); k != 1 || err != nil {
			t.Fatalf("Write = %d, %v", k, err)
		}
	}
	if len(vx.msgs) != 0 || len(eu.msgs) < len(frames) {
		t.Errorf("%d messages through the VXLAN underlay, %d through the ESP one; want 0 and at least %d", len(vx.msgs), len(eu.msgs), len(frames))
	}
	for _, m := range eu.msgs {
		if m.Addr != netip.AddrPortFrom(vtepB, esp.Port) {
			t.Errorf("ESP datagram to %v", m.Addr)
		}
	}
}
