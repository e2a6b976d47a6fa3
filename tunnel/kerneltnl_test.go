package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

// fakeSuper is a SuperWriter that records what it is given, or refuses
// everything with err.
type fakeSuper struct {
	mu     sync.Mutex
	err    error
	frames [][]byte
	dsts   []netip.AddrPort
	// onWrite, if set, is called by every WriteSuper.
	onWrite func()
}

func (f *fakeSuper) WriteSuper(frame []byte, o packet.Offload, vni uint32, dst netip.AddrPort, hash uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.onWrite != nil {
		f.onWrite()
	}
	if f.err != nil {
		return f.err
	}
	f.frames = append(f.frames, bytes.Clone(frame))
	f.dsts = append(f.dsts, dst)
	return nil
}

func (f *fakeSuper) Close() error { return nil }

// superNode is newNode with a SuperWriter.
func superNode(t *testing.T, mn *MemNetwork, s SuperWriter) *node {
	t.Helper()
	u, err := mn.Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	v := New(Config{Underlay: u, Super: s})
	n, err := v.AddSegment(testVNI, 0)
	if err != nil {
		t.Fatal(err)
	}
	n.SetPeers([]netip.Addr{vtepB})
	return &node{v: v, u: u, n: n}
}

// superMSS is the TCP payload of one segment at the default MTU (IPv4,
// 32-byte TCP header with timestamps).
const superMSS = 1450 - 20 - 32

// superPair is superNode on a fresh MemNetwork of 1500-byte MTU, with a
// raw receiver at vtepB, whose MAC macB it knows.
func superPair(t *testing.T, s SuperWriter) (*node, *raw, *MemNetwork) {
	t.Helper()
	mn := NewMemNetwork()
	mn.SetMTU(1500)
	a := superNode(t, mn, s)
	rb := newRaw(t, mn, vtepB)
	a.n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	return a, rb, mn
}

// TestSuperWriterRefusedFallsBack: a super-segment the kernel path refuses
// is split and sent as datagrams as without it, and counted.
func TestSuperWriterRefusedFallsBack(t *testing.T) {
	a, rb, _ := superPair(t, &fakeSuper{err: errors.New("refused")})
	const mss = superMSS
	b := tsoBuffer(macB, macA, false, 10000, mss)
	orig := bytes.Clone(b)
	if n, err := a.n.Write([][]byte{b}, packet.Headroom); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	checkTCPSegments(t, rb.recv(t, (10000+mss-1)/mss), 1450, orig[packet.Headroom+14+20+32:])
	if st := a.v.Stats(); st.TxSupers != 0 || st.SuperFallbacks != 1 {
		t.Errorf("TxSupers %d, SuperFallbacks %d; want 0, 1", st.TxSupers, st.SuperFallbacks)
	}
}

// TestSuperWriterTakesUnicastSuperSegmentsInOrder: a super-segment to one
// peer goes to the SuperWriter whole and nothing of it to the underlay;
// the datagram of a plain frame written before it in the same batch is
// sent before it; a super-segment flooded to several peers is split as
// before.
func TestSuperWriterTakesUnicastSuperSegmentsInOrder(t *testing.T) {
	fs := &fakeSuper{}
	a, rb, mn := superPair(t, fs)
	const mss = superMSS
	plain := withHeadroom(udpFrame(macB, macA, 1, 2, 100))[0]
	super := tsoBuffer(macB, macA, false, 10000, mss)
	sentBefore := -1
	fs.onWrite = func() { sentBefore = rb.pending() }
	if n, err := a.n.Write([][]byte{plain, super}, packet.Headroom); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if len(fs.frames) != 1 || !bytes.Equal(fs.frames[0], super[packet.Headroom:]) || fs.dsts[0] != netip.AddrPortFrom(vtepB, packet.VXLANPort) {
		t.Fatalf("SuperWriter got %d frames to %v, want the super-segment to %v", len(fs.frames), fs.dsts, vtepB)
	}
	if sentBefore != 1 {
		t.Errorf("%d datagrams sent before the super-segment, want the plain frame's", sentBefore)
	}
	fs.onWrite = nil
	if got := rb.recv(t, 1); len(got) != 1 || rb.pending() != 0 {
		t.Fatalf("underlay carried %d+%d datagrams, want the plain frame's only", len(got), rb.pending())
	}
	if st := a.n.Stats(); st.TxPackets != 2 || st.TxDatagrams != uint64(1+(10000+mss-1)/mss) {
		t.Errorf("TxPackets %d, TxDatagrams %d", st.TxPackets, st.TxDatagrams)
	}
	vtepC := netip.MustParseAddr("192.168.50.3")
	rc := newRaw(t, mn, vtepC)
	a.n.SetPeers([]netip.Addr{vtepB, vtepC})
	flood := tsoBuffer(packet.MAC{0x02, 9, 9, 9, 9, 9}, macA, false, 10000, mss)
	if n, err := a.n.Write([][]byte{flood}, packet.Headroom); n != 1 || err != nil {
		t.Fatalf("Write flood = %d, %v", n, err)
	}
	segs := (10000 + mss - 1) / mss
	if len(fs.frames) != 1 || len(rb.recv(t, segs)) != segs || len(rc.recv(t, segs)) != segs {
		t.Errorf("a super-segment flooded to two peers went to the SuperWriter")
	}
}

// TestPutSuperHeader checks the virtio header and the outer headers of a
// super-packet against the frame's offload slot, and what is refused.
func TestPutSuperHeader(t *testing.T) {
	const mss = 1450 - 20 - 32
	b := tsoBuffer(macB, macA, false, 10000, mss)
	f, o := b[packet.Headroom:], packet.OffloadOf(b)
	a := superAddrs{dstMAC: macA, srcMAC: macB, src: [4]byte{192, 0, 2, 1}}
	dst := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), 4789)
	h := make([]byte, superHeaderLen)
	if !putSuperHeader(h, &a, f, o, 4097, dst, 40000) {
		t.Fatal("refused an IPv4 super-segment")
	}
	le := binary.LittleEndian
	if h[0] != 1|8 || h[1] != 1|0x20 || le.Uint16(h[2:]) != 50+14+20+32 || le.Uint16(h[4:]) != mss ||
		le.Uint16(h[6:]) != 50+34 || le.Uint16(h[8:]) != 16 || le.Uint16(h[20:]) != 34 || le.Uint16(h[22:]) != 64 {
		t.Errorf("virtio header % x", h[:24])
	}
	e := h[24:]
	ip := packet.IPv4(e[14:34])
	if packet.Ethernet(e).Dst() != macA || packet.Ethernet(e).EtherType() != packet.EtherTypeIPv4 || !ip.ChecksumValid() ||
		int(binary.BigEndian.Uint16(ip[2:4])) != 20+8+8+len(f) || ip[9] != packet.ProtoUDP || ip[6]&0x40 == 0 {
		t.Errorf("outer Ethernet/IPv4 % x", e[:34])
	}
	udp := e[34:]
	if binary.BigEndian.Uint16(udp[0:]) != 40000 || binary.BigEndian.Uint16(udp[2:]) != 4789 ||
		int(binary.BigEndian.Uint16(udp[4:])) != 8+8+len(f) || packet.VXLAN(udp[8:]).VNI() != 4097 {
		t.Errorf("outer UDP/VXLAN % x", udp[:16])
	}
	// The UDP checksum field holds the pseudo-header sum: completed over
	// the UDP header and payload it must verify.
	full := append(append([]byte(nil), udp[:16]...), f...)
	full[6], full[7] = 0, 0
	sum := packet.Fold(packet.Sum(full, packet.Sum(ip[12:20], uint64(packet.ProtoUDP)+uint64(len(full)))))
	if partial := binary.BigEndian.Uint16(udp[6:]); packet.Fold(packet.Sum(full, uint64(partial))) != sum {
		t.Errorf("outer UDP checksum field %#x is not the pseudo-header sum", partial)
	}

	one := tsoBuffer(macB, macA, false, mss, mss) // GSO metadata, one segment
	for _, tc := range []struct {
		name string
		f    []byte
		o    packet.Offload
		dst  netip.AddrPort
	}{
		{"IPv6 underlay", f, o, netip.AddrPortFrom(netip.MustParseAddr("2001:db8::2"), 4789)},
		{"no partial checksum", f, packet.Offload{0, 1, 0, 0, 0, 0, 0, 0, 0, 0}, dst},
		{"not GSO", f, packet.Offload{1, 0, 0, 0, 34, 0, 16, 0, 0, 0}, dst},
		{"too long for one outer packet", make([]byte, 65500), o, dst},
		{"VLAN-tagged", append(append(append([]byte(nil), f[:12]...), 0x81, 0), f[12:]...), o, dst},
		{"one segment", one[packet.Headroom:], packet.OffloadOf(one), dst},
	} {
		if putSuperHeader(h, &a, tc.f, tc.o, 4097, tc.dst, 40000) {
			t.Errorf("%s: not refused", tc.name)
		}
	}
}

// countSuper is a SuperWriter that only counts, without allocating.
type countSuper struct{ n atomic.Uint64 }

func (c *countSuper) WriteSuper([]byte, packet.Offload, uint32, netip.AddrPort, uint32) error {
	c.n.Add(1)
	return nil
}

func (c *countSuper) Close() error { return nil }

// TestSetSuperEnabledSwitchesAtRunTime: switched off, a super-segment to
// one peer is split and sent over the underlay (not refused: no fallback
// counted); switched on again, it goes to the SuperWriter whole. A VTEP
// without a SuperWriter reports that it cannot switch on.
func TestSetSuperEnabledSwitchesAtRunTime(t *testing.T) {
	fs := &fakeSuper{}
	a, rb, mn := superPair(t, fs)
	const mss = superMSS
	segs := (10000 + mss - 1) / mss
	write := func() {
		t.Helper()
		if n, err := a.n.Write([][]byte{tsoBuffer(macB, macA, false, 10000, mss)}, packet.Headroom); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	if !a.v.SuperEnabled() {
		t.Fatal("a VTEP made with a SuperWriter starts with it off")
	}
	write()
	if !a.v.SetSuperEnabled(false) || a.v.SuperEnabled() {
		t.Fatal("SetSuperEnabled(false) did not switch it off")
	}
	write()
	if got := rb.recv(t, segs); len(got) != segs || len(fs.frames) != 1 {
		t.Fatalf("switched off: %d datagrams on the underlay, %d super-packets; want %d, 1", len(got), len(fs.frames), segs)
	}
	a.v.SetSuperEnabled(true)
	write()
	if len(fs.frames) != 2 || rb.pending() != 0 {
		t.Fatalf("switched on again: %d super-packets, %d datagrams on the underlay; want 2, 0", len(fs.frames), rb.pending())
	}
	if st := a.v.Stats(); st.TxSupers != 2 || st.SuperFallbacks != 0 {
		t.Errorf("TxSupers %d, SuperFallbacks %d; want 2, 0", st.TxSupers, st.SuperFallbacks)
	}
	plain := newNode(t, mn, netip.MustParseAddr("192.168.50.9"), nil)
	if plain.v.SetSuperEnabled(true) || plain.v.SuperEnabled() {
		t.Error("a VTEP without a SuperWriter switched the kernel path on")
	}
}

// TestSuperSwitchDoesNotAllocate: writing super-segments while the switch
// flips between batches allocates nothing on either path.
func TestSuperSwitchDoesNotAllocate(t *testing.T) {
	cs := &countSuper{}
	a, rb, _ := superPair(t, cs)
	b := tsoBuffer(macB, macA, false, 10000, superMSS)
	orig := bytes.Clone(b)
	drain := make([]Message, packet.BatchSize)
	for i := range drain {
		drain[i].Buf = make([]byte, 2048)
	}
	bufs := [][]byte{b}
	on := true
	step := func() {
		copy(b, orig)
		on = !on
		a.v.SetSuperEnabled(on)
		a.n.Write(bufs, packet.Headroom)
		for rb.pending() > 0 {
			rb.u.ReadBatch(drain)
		}
	}
	if allocs := testing.AllocsPerRun(200, step); allocs != 0 {
		t.Errorf("a super-segment write with the switch flipping allocates %.1f times", allocs)
	}
	if got := cs.n.Load(); got < 100 {
		t.Errorf("%d super-packets of 201 writes, half of them switched on", got)
	}
}

// TestSuperWriterSkipsOneSegment: a TCP frame with GSO metadata but one
// segment's payload (as the gateway's netstack sends them) is not handed
// to the kernel, where its checksums would stay partial: it goes as one
// datagram with its TCP checksum complete, and is no fallback.
func TestSuperWriterSkipsOneSegment(t *testing.T) {
	fs := &fakeSuper{}
	a, rb, _ := superPair(t, fs)
	const mss = superMSS
	b := tsoBuffer(macB, macA, false, 700, mss)
	orig := bytes.Clone(b)
	if n, err := a.n.Write([][]byte{b}, packet.Headroom); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	checkTCPSegments(t, rb.recv(t, 1), 1450, orig[packet.Headroom+14+20+32:])
	if st := a.v.Stats(); len(fs.frames) != 0 || st.TxSupers != 0 || st.SuperFallbacks != 0 {
		t.Errorf("%d super-packets, TxSupers %d, SuperFallbacks %d; want none", len(fs.frames), st.TxSupers, st.SuperFallbacks)
	}
}

// BenchmarkPutSuperHeader is the per-super-packet cost of the kernel
// tunnel's headers.
func BenchmarkPutSuperHeader(b *testing.B) {
	const mss = 1450 - 20 - 32
	buf := tsoBuffer(macB, macA, false, 10000, mss)
	f, o := buf[packet.Headroom:], packet.OffloadOf(buf)
	a := superAddrs{dstMAC: macA, srcMAC: macB, src: [4]byte{192, 0, 2, 1}}
	dst := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), 4789)
	h := make([]byte, superHeaderLen)
	b.ReportAllocs()
	for b.Loop() {
		if !putSuperHeader(h, &a, f, o, 4097, dst, 40000) {
			b.Fatal("refused")
		}
	}
}
