package tunnel

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// groFrame is one frame a VTEP delivered, with its offload slot.
type groFrame struct {
	slot  []byte
	frame []byte
}

// groReceiver is a VTEP (not running) whose receive is driven directly
// with crafted messages; it records what it delivers.
type groReceiver struct {
	v      *VTEP
	frames []groFrame
}

func newGROReceiver(tb testing.TB) *groReceiver {
	mn := NewMemNetwork()
	u, _ := mn.Listen(netip.AddrPortFrom(vtepB, packet.VXLANPort))
	v := New(Config{Underlay: u})
	tb.Cleanup(func() { v.Close() })
	n, _ := v.AddSegment(testVNI, 0)
	n.SetPeers([]netip.Addr{vtepA})
	g := &groReceiver{v: v}
	n.SetInput(func(bufs [][]byte, sizes []int, offset int) {
		for i, b := range bufs {
			g.frames = append(g.frames, groFrame{bytes.Clone(b[:packet.OffloadLen]), bytes.Clone(b[offset : offset+sizes[i]])})
		}
	})
	return g
}

// feed hands the VTEP one batch: each element of chunks is one read of
// datagrams of gso bytes each (0: a single datagram).
func (g *groReceiver) feed(gso int, chunks ...[]byte) {
	msgs := g.v.rx.msgs[:len(chunks)]
	for i, c := range chunks {
		msgs[i].N = copy(msgs[i].Buf, c)
		msgs[i].GSOSize = gso
		msgs[i].Addr = netip.AddrPortFrom(vtepA, MemTxPortBase)
	}
	g.v.receive(&g.v.rx, msgs, false)
}

// segmentsOf returns the VXLAN datagrams a VTEP sends for a TSO buffer.
func segmentsOf(t *testing.T, b []byte) [][]byte {
	t.Helper()
	mn := NewMemNetwork()
	a := newNode(t, mn, vtepA, nil, vtepB)
	rb := newRaw(t, mn, vtepB)
	a.n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	g, _ := packet.ParseGSO(b[packet.Headroom:], packet.OffloadOf(b))
	if n, err := a.n.Write([][]byte{b}, packet.Headroom); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	var out [][]byte
	for _, m := range rb.recv(t, g.Segments()) {
		out = append(out, m.Buf)
	}
	return out
}

// checkSuperSegment decodes a coalesced frame with gVisor's header package
// as the receiving kernel would take it from a TAP: GSO TCPv4 metadata
// with gso_size mss and a partial checksum, a valid IPv4 header whose
// length covers the whole frame, a TCP checksum field holding the
// pseudo-header sum, which completed gives a valid checksum, the payload.
func checkSuperSegment(t *testing.T, f groFrame, mss int, seq uint32, payload []byte) {
	t.Helper()
	o := packet.Offload(f.slot)
	l4 := 14 + 20
	if o.GSOType() != packet.GSOTCPv4 || o.GSOSize() != mss || !o.NeedsCsum() || o.CsumStart() != l4 || o.CsumOffset() != 16 || o.HdrLen() != l4+32 {
		t.Fatalf("slot % x: want GSO TCPv4, gso_size %d, NEEDS_CSUM at %d+16, hdr_len %d", f.slot, mss, l4, l4+32)
	}
	ip := header.IPv4(f.frame[14:])
	if !ip.IsValid(len(f.frame)-14) || !ip.IsChecksumValid() || int(ip.TotalLength()) != len(f.frame)-14 {
		t.Fatalf("bad IPv4 header (total length %d, frame %d)", ip.TotalLength(), len(f.frame))
	}
	tcp := header.TCP(ip.Payload())
	pseudo := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	if tcp.Checksum() != pseudo {
		t.Errorf("TCP checksum field %#04x, want the pseudo-header sum %#04x", tcp.Checksum(), pseudo)
	}
	full := bytes.Clone(f.frame)
	if !packet.CompleteChecksum(full, packet.Offload(bytes.Clone(f.slot))) {
		t.Fatal("CompleteChecksum refused the frame")
	}
	ip = header.IPv4(full[14:])
	tcp = header.TCP(ip.Payload())
	body := tcp.Payload()
	if !tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(body, 0), uint16(len(body))) {
		t.Error("completed TCP checksum invalid")
	}
	if tcp.SequenceNumber() != seq || tcp.Flags() != header.TCPFlagAck|header.TCPFlagPsh {
		t.Errorf("seq %d flags %v, want %d ACK|PSH", tcp.SequenceNumber(), tcp.Flags(), seq)
	}
	if !bytes.Equal(body, payload) {
		t.Errorf("payload of %d bytes differs from the %d sent", len(body), len(payload))
	}
}

func TestReceiveCoalescesTCP(t *testing.T) {
	const payload, mss = 60000, 1398
	b := tsoBuffer(macB, macA, false, payload, mss)
	want := bytes.Clone(b[packet.Headroom+14+20+32:])
	dgrams := segmentsOf(t, b)
	for _, mode := range []string{"gro", "datagrams"} {
		g := newGROReceiver(t)
		if mode == "gro" {
			g.feed(len(dgrams[0]), bytes.Join(dgrams, nil))
		} else {
			g.feed(0, dgrams...)
		}
		if len(g.frames) != 1 {
			t.Fatalf("%s: %d frames delivered, want 1", mode, len(g.frames))
		}
		checkSuperSegment(t, g.frames[0], mss, 1000, want)
		st := g.v.Stats()
		if st.RxDatagrams != uint64(len(dgrams)) || st.Segments[0].RxPackets != uint64(len(dgrams)) {
			t.Errorf("%s: stats %+v", mode, st)
		}
	}
}

// A segment with a bad TCP checksum is not merged: the kernel must see it
// (and drop it); the segments around it are delivered in order.
func TestReceiveDoesNotCoalesceBadChecksum(t *testing.T) {
	const payload, mss = 10 * 1398, 1398
	b := tsoBuffer(macB, macA, false, payload, mss)
	dgrams := segmentsOf(t, b)
	dgrams[4][len(dgrams[4])-1] ^= 0xff
	g := newGROReceiver(t)
	g.feed(len(dgrams[0]), bytes.Join(dgrams, nil))
	if len(g.frames) != 3 {
		t.Fatalf("%d frames delivered, want 3 (4 merged, the bad one, 5 merged)", len(g.frames))
	}
	if !packet.Offload(g.frames[1].slot).IsNone() || !bytes.Equal(g.frames[1].frame, dgrams[4][8:]) {
		t.Error("the bad segment was not delivered unchanged")
	}
	var seq uint32 = 1000
	for _, f := range []groFrame{g.frames[0], g.frames[2]} {
		if got := header.TCP(f.frame[34:]).SequenceNumber(); got != seq {
			t.Errorf("frame starts at seq %d, want %d", got, seq)
		}
		seq += 5 * mss
	}
}

// Datagrams of a read that are not TCP (or do not follow) become frames
// of their own, each at Headroom of its own buffer, in order, more than
// the spare buffers (the group is delivered in between).
func TestReceiveSplitsGROReadOfUDP(t *testing.T) {
	const n = 3*groSpares + 5
	var chunk []byte
	var want [][]byte
	for i := range n {
		f := udpFrame(macB, macA, uint16(i), 80, 1000)
		want = append(want, f)
		chunk = append(chunk, vxlanDatagram(testVNI, f)...)
	}
	g := newGROReceiver(t)
	g.feed(len(chunk)/n, chunk)
	if len(g.frames) != n {
		t.Fatalf("%d frames delivered, want %d", len(g.frames), n)
	}
	for i, f := range g.frames {
		if !bytes.Equal(f.frame, want[i]) || !packet.Offload(f.slot).IsNone() {
			t.Fatalf("frame %d differs or has metadata", i)
		}
	}
}

// Interleaved flows are coalesced per flow; a segment that cannot follow
// its flow's head (a gap) starts a new one instead of being merged into
// an older head.
func TestReceiveCoalescesInterleavedFlows(t *testing.T) {
	const mss = 1398
	b1 := tsoBuffer(macB, macA, false, 4*mss, mss)
	b2 := tsoBuffer(macB, macA, false, 4*mss, mss)
	binary.BigEndian.PutUint16(b2[packet.Headroom+34:], 40001) // other source port
	tcp := b2[packet.Headroom+34:]
	tcp[16], tcp[17] = 0, 0
	binary.BigEndian.PutUint16(tcp[16:], ^packet.Fold(packet.Sum(b2[packet.Headroom+14+12:packet.Headroom+34], packet.ProtoTCP+uint64(len(tcp)))))
	d1, d2 := segmentsOf(t, b1), segmentsOf(t, b2)
	g := newGROReceiver(t)
	// flow 1: 0 1 _ 3 (gap), flow 2: 0 1 2 3
	g.feed(0, d1[0], d2[0], d1[1], d2[1], d2[2], d1[3], d2[3])
	if len(g.frames) != 3 {
		t.Fatalf("%d frames, want 3", len(g.frames))
	}
	sizes := []int{14 + 20 + 32 + 2*mss, 14 + 20 + 32 + 4*mss, 14 + 20 + 32 + mss}
	for i, f := range g.frames {
		if len(f.frame) != sizes[i] {
			t.Errorf("frame %d: %d bytes, want %d", i, len(f.frame), sizes[i])
		}
	}
	checkSuperSegment(t, g.frames[1], mss, 1000, b2[packet.Headroom+14+20+32:])
}

func TestReceiveGRODoesNotAllocate(t *testing.T) {
	b := tsoBuffer(macB, macA, false, 60000, 1398)
	dgrams := segmentsOf(t, b)
	chunk := bytes.Join(dgrams, nil)
	var udp []byte
	for i := range 40 {
		udp = append(udp, vxlanDatagram(testVNI, udpFrame(macB, macA, uint16(i), 80, 1000))...)
	}
	g := newGROReceiver(t)
	count := 0
	g.v.Segment(testVNI).SetInput(func(bufs [][]byte, sizes []int, offset int) { count += len(bufs) })
	step := func() {
		g.feed(len(dgrams[0]), chunk, chunk)
		g.feed(len(udp)/40, udp)
		g.feed(0, dgrams...)
	}
	step()
	if allocs := testing.AllocsPerRun(100, step); allocs != 0 {
		t.Errorf("receive with GRO allocates %.1f times per batch", allocs)
	}
	if count != 102*(2+40+1) { // step, the warm-up run, 100 runs
		t.Errorf("%d frames delivered", count)
	}
}

// FuzzReceiveGRO feeds arbitrary reads with an arbitrary segment size:
// no panic, every frame within its buffer, and every coalesced frame
// consistent with its metadata (packet.ParseGSO accepts it, the segment
// sizes fit the MTU).
func FuzzReceiveGRO(f *testing.F) {
	f.Add(bytes.Join(segmentsOf(&testing.T{}, tsoBuffer(macB, macA, false, 8000, 1398)), nil), uint16(8+14+20+32+1398))
	f.Add(vxlanDatagram(testVNI, udpFrame(macB, macA, 1, 2, 30)), uint16(20))
	g := newGROReceiver(f) // one receiver: its batch is 4 MiB
	f.Fuzz(func(t *testing.T, data []byte, gso uint16) {
		if len(data) > len(g.v.rx.msgs[0].Buf) {
			return
		}
		g.frames = g.frames[:0]
		g.feed(int(gso), data)
		for i, fr := range g.frames {
			o := packet.Offload(fr.slot)
			if o.IsNone() {
				continue
			}
			gs, ok := packet.ParseGSO(fr.frame, o)
			if !ok || o.GSOType() != packet.GSOTCPv4 || gs.MaxSegmentLen() > len(data) || o.CsumStart() != 34 || !packet.CompleteChecksum(bytes.Clone(fr.frame), packet.Offload(bytes.Clone(fr.slot))) {
				t.Fatalf("frame %d: inconsistent super-segment, slot % x", i, fr.slot)
			}
		}
	})
}

// retag makes the TSO buffer b (from tsoBuffer) continue a flow at seq
// and IP ID id, without PSH.
func retag(b []byte, seq uint32, id uint16) {
	ip := packet.IPv4(b[packet.Headroom+14:])
	binary.BigEndian.PutUint16(ip[4:], id)
	ip.SetChecksum(ip.HeaderChecksum())
	tcp := b[packet.Headroom+34:]
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[13] = 0x10 // ACK
}

// TestReceiveCoalescesWithinGSOBounds: coalescing never builds a
// super-segment that packet.ParseGSO (and so the switch) refuses: at most
// packet.GSOMaxSegments segments, and never of segments smaller than
// packet.GSOMinSizeIPv4.
func TestReceiveCoalescesWithinGSOBounds(t *testing.T) {
	const mss = packet.GSOMinSizeIPv4
	var dgrams [][]byte
	seq, id := uint32(1000), uint16(777)
	for _, n := range []int{60, 20} {
		b := tsoBuffer(macB, macA, false, n*mss, mss)
		retag(b, seq, id)
		dgrams = append(dgrams, segmentsOf(t, b)...)
		seq, id = seq+uint32(n*mss), id+uint16(n)
	}
	g := newGROReceiver(t)
	g.feed(len(dgrams[0]), bytes.Join(dgrams, nil))
	var segs []int
	for _, f := range g.frames {
		gs, ok := packet.ParseGSO(f.frame, packet.Offload(f.slot))
		if !ok {
			t.Fatalf("coalesced frame of %d bytes refused by ParseGSO", len(f.frame))
		}
		segs = append(segs, gs.Segments())
	}
	if len(segs) != 2 || segs[0] != packet.GSOMaxSegments || segs[1] != 80-packet.GSOMaxSegments {
		t.Errorf("80 segments coalesced into %v, want [%d %d]", segs, packet.GSOMaxSegments, 80-packet.GSOMaxSegments)
	}

	var small [][]byte
	for i := range 4 {
		b := tsoBuffer(macB, macA, false, 100, 1400)
		retag(b, 1000+uint32(100*i), 777+uint16(i))
		small = append(small, segmentsOf(t, b)...)
	}
	g = newGROReceiver(t)
	g.feed(0, small...)
	if len(g.frames) != 4 {
		t.Fatalf("4 segments of 100 bytes became %d frames, want 4 (not coalesced)", len(g.frames))
	}
	for i, f := range g.frames {
		if !packet.Offload(f.slot).IsNone() {
			t.Errorf("frame %d has GSO metadata % x", i, f.slot)
		}
	}
}
