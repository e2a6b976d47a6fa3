package tunnel

import (
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

// encapSetup is a VTEP whose network sends to one peer, whose datagrams
// are drained with a preallocated batch so the in-memory queue never fills.
type encapSetup struct {
	n     *Segment
	peer  *MemUnderlay
	drain []Message
	bufs  [][]byte
}

func newEncapSetup(tb testing.TB, frames int, dst packet.MAC) *encapSetup {
	mn := NewMemNetwork()
	u, _ := mn.Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
	peer, _ := mn.Listen(netip.AddrPortFrom(vtepB, packet.VXLANPort))
	v := New(Config{Underlay: u})
	tb.Cleanup(func() { v.Close(); peer.Close() })
	n, _ := v.AddSegment(testVNI, 0)
	n.SetPeers([]netip.Addr{vtepB})
	n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	s := &encapSetup{n: n, peer: peer, drain: make([]Message, packet.BatchSize)}
	for i := range s.drain {
		s.drain[i].Buf = make([]byte, 2048)
	}
	for i := range frames {
		s.bufs = append(s.bufs, withHeadroom(udpFrame(dst, macA, uint16(i), 80, 1400))...)
	}
	return s
}

func (s *encapSetup) step() {
	s.n.Write(s.bufs, packet.Headroom)
	for left := len(s.bufs); left > 0; {
		k, _ := s.peer.ReadBatch(s.drain)
		left -= k
	}
}

func TestWriteDoesNotAllocate(t *testing.T) {
	for _, dst := range []packet.MAC{macB, packet.Broadcast} {
		s := newEncapSetup(t, packet.BatchSize, dst)
		if allocs := testing.AllocsPerRun(200, s.step); allocs != 0 {
			t.Errorf("Write to %s allocates %.1f times per batch", dst, allocs)
		}
		if st := s.n.Stats(); st.TxPackets != 201*packet.BatchSize {
			t.Errorf("sent %d frames", st.TxPackets)
		}
	}
}

// decapSetup is a VTEP receiving batches from a peer endpoint.
type decapSetup struct {
	v     *VTEP
	peer  *MemUnderlay
	msgs  []Message
	count int
}

func newDecapSetup(tb testing.TB) *decapSetup {
	mn := NewMemNetwork()
	u, _ := mn.Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
	peer, _ := mn.Listen(netip.AddrPortFrom(vtepE, packet.VXLANPort))
	v := New(Config{Underlay: u})
	tb.Cleanup(func() { v.Close(); peer.Close() })
	n, _ := v.AddSegment(testVNI, 0)
	n.SetPeers([]netip.Addr{vtepE})
	n.SetExternal([]netip.Addr{vtepE})
	s := &decapSetup{v: v, peer: peer}
	n.SetInput(func(bufs [][]byte, sizes []int, offset int) { s.count += len(bufs) })
	for i := range packet.BatchSize {
		// Several source MACs behind the external VTEP: learned once, then
		// refreshed without allocating.
		src := packet.MAC{2, 0xee, 0, 0, 0, byte(i % 8)}
		s.msgs = append(s.msgs, Message{
			Buf:  vxlanDatagram(testVNI, udpFrame(macA, src, uint16(i), 80, 1400)),
			Addr: netip.AddrPortFrom(vtepA, packet.VXLANPort),
		})
	}
	return s
}

func (s *decapSetup) step() {
	s.peer.WriteBatch(s.msgs)
	for left := len(s.msgs); left > 0; {
		before := s.v.c.rxDatagrams.Load()
		s.v.receiveOnce()
		left -= int(s.v.c.rxDatagrams.Load() - before)
	}
}

func TestReceiveDoesNotAllocate(t *testing.T) {
	s := newDecapSetup(t)
	if allocs := testing.AllocsPerRun(200, s.step); allocs != 0 {
		t.Errorf("receive allocates %.1f times per batch", allocs)
	}
	if want := 201 * packet.BatchSize; s.count != want {
		t.Errorf("delivered %d frames, want %d", s.count, want)
	}
	if fdb := s.v.Segment(testVNI).FDB(); len(fdb) != 8 {
		t.Errorf("learned %d MACs, want 8", len(fdb))
	}
}

func BenchmarkEncap(b *testing.B) {
	for _, bc := range []struct {
		name string
		dst  packet.MAC
	}{{"unicast", macB}, {"flood1", packet.Broadcast}} {
		b.Run(bc.name, func(b *testing.B) {
			s := newEncapSetup(b, packet.BatchSize, bc.dst)
			b.ReportAllocs()
			b.SetBytes(int64(packet.BatchSize * (len(s.bufs[0]) - packet.Headroom)))
			for b.Loop() {
				s.step()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*packet.BatchSize), "ns/frame")
		})
	}
}

// BenchmarkEncapWriteOnly measures Write alone against an underlay that
// discards, without the in-memory network's copy.
func BenchmarkEncapWriteOnly(b *testing.B) {
	v := New(Config{Underlay: discard{}})
	n, _ := v.AddSegment(testVNI, 0)
	n.SetPeers([]netip.Addr{vtepB})
	n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	var bufs [][]byte
	for i := range packet.BatchSize {
		bufs = append(bufs, withHeadroom(udpFrame(macB, macA, uint16(i), 80, 1400))...)
	}
	b.ReportAllocs()
	b.SetBytes(int64(packet.BatchSize * 1442))
	for b.Loop() {
		n.Write(bufs, packet.Headroom)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*packet.BatchSize), "ns/frame")
}

func BenchmarkDecap(b *testing.B) {
	s := newDecapSetup(b)
	b.ReportAllocs()
	b.SetBytes(int64(packet.BatchSize * len(s.msgs[0].Buf)))
	for b.Loop() {
		s.step()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*packet.BatchSize), "ns/frame")
}

// BenchmarkDecapReceiveOnly measures validation, learning refresh and
// delivery of a batch already in the receive buffers.
func BenchmarkDecapReceiveOnly(b *testing.B) {
	s := newDecapSetup(b)
	r := &s.v.rx
	for i, m := range s.msgs {
		copy(r.msgs[i].Buf, m.Buf)
		r.msgs[i].N = len(m.Buf)
		r.msgs[i].Addr = netip.AddrPortFrom(vtepE, 50000)
	}
	b.ReportAllocs()
	b.SetBytes(int64(packet.BatchSize * len(s.msgs[0].Buf)))
	for b.Loop() {
		s.v.receive(r, r.msgs, false)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*packet.BatchSize), "ns/frame")
}

// discard is an underlay that sends nowhere.
type discard struct{}

func (discard) ReadBatch([]Message) (int, error) { select {} }
func (discard) WriteBatch(m []Message) (int, error) {
	for i := range m {
		m[i].Err = nil
	}
	return len(m), nil
}
func (discard) Close() error { return nil }
