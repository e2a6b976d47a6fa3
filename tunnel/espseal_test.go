package tunnel

import (
	"bytes"
	"encoding/binary"
	"math"
	"net/netip"
	"runtime"
	"testing"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
)

// TestSealersKeepWireOrderAndBytes: the segments of super-segments are
// sealed by the writing goroutine and a sealer goroutine at once, and
// what goes out is what one goroutine would have sent: every datagram
// opens, sequence numbers rise by one in the order sent (so the receiver
// never sees a run out of order), and the TCP segments are byte for byte
// those of the super-segment. It writes until a sealer has taken part.
func TestSealersKeepWireOrderAndBytes(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	rec := &runRecorder{closed: make(chan struct{})}
	v := New(Config{Underlay: rec})
	t.Cleanup(func() { v.Close() })
	const mtu = 1405
	n, _ := v.AddSegment(testVNI, mtu)
	n.SetCipher(esp.AES128GCM)
	n.SetPeers([]netip.Addr{vtepB})
	n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	out, in := testSA(t, 0x6000ab, 11)
	if err := v.SetSAs([]OutboundSA{{vtepB, out}}, nil); err != nil {
		t.Fatal(err)
	}
	mss := mtu - 20 - 32
	want := uint64(1)
	for round := 0; v.Stats().HelperSealed == 0; round++ {
		if round == 2000 {
			t.Fatal("no sealer took part in 2000 writes")
		}
		frames := [][]byte{tsoBuffer(macB, macA, false, 60000, mss), tsoBuffer(macB, macA, round%2 == 1, 30000, mss-20)}
		origs := [][]byte{bytes.Clone(frames[0]), bytes.Clone(frames[1])}
		rec.mu.Lock()
		rec.msgs = nil
		rec.mu.Unlock()
		if k, err := n.Write(frames, packet.Headroom); k != 2 || err != nil {
			t.Fatalf("Write: %d, %v", k, err)
		}
		var segs [2][]Message
		frame := 0
		for _, m := range rec.msgs {
			for b := m.Buf; len(b) > 0; {
				l := len(b)
				if m.GSOSize > 0 {
					l = min(l, m.GSOSize)
				}
				if seq := uint64(binary.BigEndian.Uint32(b[4:])); seq != want {
					t.Fatalf("round %d: sequence number %d sent where %d was due", round, seq, want)
				}
				want++
				buf := make([]byte, 64+l)
				copy(buf[64:], b[:l])
				i0, i1, _, err := in.Open(buf, 64, len(buf))
				if err != nil {
					t.Fatalf("round %d: datagram with seq %d: %v", round, want-1, err)
				}
				if frame == 0 && len(segs[0]) == (60000+mss-1)/mss {
					frame++ // the second frame's segments follow the first's
				}
				segs[frame] = append(segs[frame], Message{Buf: buf[i0+udpHeaderLen : i1]})
				b = b[l:]
			}
		}
		checkTCPSegments(t, segs[0], mtu, origs[0][packet.Headroom+14+20+32:])
		ipLen := 20
		if round%2 == 1 {
			ipLen = 40
		}
		checkTCPSegments(t, segs[1], mtu, origs[1][packet.Headroom+14+ipLen+32:])
		if t.Failed() {
			t.Fatalf("round %d", round)
		}
	}
}

// TestHelpersDoNotAllocate: sealing with a helper goroutine, and opening
// what was sealed as one coalesced read, allocate nothing once warm.
// (testing.AllocsPerRun runs on one P, where a helper hardly ever joins,
// so this counts the process's allocations around batches in which a
// helper took part.)
func TestHelpersDoNotAllocate(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	mn := NewMemNetwork()
	out, in := testSA(t, 0x3000ad, 13)
	v, n, peer := espSender(t, mn, out, 1405)

	rv, rn := espReceiver(t, mn, vtepB, esp.Port+1, in, 1405)

	mss := 1405 - 20 - 32
	tso := tsoBuffer(macB, macA, false, 60000, mss)
	segs := (60000 + mss - 1) / mss
	r := &rv.erx
	step := func() {
		n.Write([][]byte{tso}, packet.Headroom)
		got := 0
		for got < segs {
			k, _ := peer.ReadBatch(r.msgs[got:])
			for i := got; i < got+k; i++ {
				// Each read is one datagram: put them back to back as a
				// coalesced read would have them.
				if i > 0 {
					copy(r.bufs[0][packet.Headroom-espRxFront+i*r.msgs[0].N:], r.msgs[i].Buf[:r.msgs[i].N])
				}
			}
			got += k
		}
		m := &r.msgs[0]
		m.GSOSize, m.N = m.N, m.N*(segs-1)+r.msgs[segs-1].N
		m.Addr = netip.AddrPortFrom(vtepA, esp.Port)
		rv.receive(r, r.msgs[:1], true)
	}
	for i := range r.msgs {
		r.msgs[i].Buf = r.bufs[i][packet.Headroom-espRxFront:]
	}
	for range 20 {
		step()
	}
	if st := rn.Stats(); st.RxPackets == 0 || len(st.Drops) != 0 || len(rv.Stats().Drops) != 0 {
		t.Fatalf("nothing delivered: %+v, vtep drops %v", st, rv.Stats().Drops)
	}
	// Mallocs counts the whole process: the runtime itself allocates now
	// and then (a channel wait after a collection refills its sudog cache
	// with one allocation), so one clean window out of five in which a
	// helper sealed passes. A per-datagram or per-batch allocation shows
	// in every window (20 or more).
	var ms runtime.MemStats
	fewest, helped := uint64(math.MaxUint64), 0
	for window := 0; helped < 5; window++ {
		if window == 50 {
			t.Fatalf("only %d windows of 20 batches in which a helper sealed", helped)
		}
		sealed := v.Stats().HelperSealed
		runtime.ReadMemStats(&ms)
		before := ms.Mallocs
		for range 20 {
			step()
		}
		runtime.ReadMemStats(&ms)
		if v.Stats().HelperSealed == sealed {
			continue
		}
		helped++
		if fewest = min(fewest, ms.Mallocs-before); fewest == 0 {
			return
		}
	}
	t.Fatalf("%d allocations (the fewest of %d windows) in 20 batches of %d datagrams sealed with a helper and opened", fewest, helped, segs)
}

// BenchmarkESPWriteSuperSegment seals a 64 KB super-segment (47 ESP
// datagrams at MTU 1405) against an underlay that discards, by the
// writing goroutine alone and with a helper: the wall time per
// super-segment is what the writer (a TAP reader) waits for.
func BenchmarkESPWriteSuperSegment(b *testing.B) {
	for _, helpers := range []int{0, 1} {
		b.Run(map[int]string{0: "alone", 1: "helper"}[helpers], func(b *testing.B) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
			v := New(Config{Underlay: discard{}})
			defer v.Close()
			v.helpers = helpers
			n, _ := v.AddSegment(testVNI, 1405)
			n.SetCipher(esp.AES128GCM)
			n.SetPeers([]netip.Addr{vtepB})
			n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
			out, _ := testSA(b, 0x7000ab, 14)
			v.SetSAs([]OutboundSA{{vtepB, out}}, nil)
			mss := 1405 - 20 - 32
			tso := tsoBuffer(macB, macA, false, 47*mss, mss)
			b.ReportAllocs()
			b.SetBytes(int64(len(tso) - packet.Headroom))
			for b.Loop() {
				n.Write([][]byte{tso}, packet.Headroom)
			}
			b.ReportMetric(float64(v.Stats().HelperSealed)/float64(b.N), "helper-dgrams/op")
		})
	}
}
