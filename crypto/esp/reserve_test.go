package esp

import (
	"bytes"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

// TestSealReservedMatchesSeal: a datagram sealed with a reserved sequence
// number is byte for byte the one Seal makes with that number, with and
// without ESN, and opens.
func TestSealReservedMatchesSeal(t *testing.T) {
	for _, noESN := range []bool{false, true} {
		sa := SA{SPI: 0x1234_5678, Key: testKey16, Salt: [4]byte(testSalt), NoESN: noESN}
		a, _ := NewOutboundSA(sa)
		b, _ := NewOutboundSA(sa)
		in, _ := NewInboundSA(sa)
		clear := 0
		for i := range 3 {
			_, s, e := datagram(1000+i, 0)
			clear += e - s
		}
		first, err := b.Reserve(3, clear)
		if err != nil || first != 1 {
			t.Fatalf("Reserve(3) = %d, %v; want 1", first, err)
		}
		var sc Scratch
		for i := range uint64(3) {
			bufA, s, e := datagram(1000+int(i), byte(i))
			bufB, _, _ := datagram(1000+int(i), byte(i))
			as, ae, err := a.Seal(bufA, s, e)
			if err != nil {
				t.Fatal(err)
			}
			bs, bEnd, err := b.SealReserved(bufB, s, e, first+i, &sc)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(bufA[as:ae], bufB[bs:bEnd]) {
				t.Fatalf("esn %v seq %d: SealReserved differs from Seal", !noESN, first+i)
			}
			if _, _, _, err := in.Open(bufB, bs, bEnd); err != nil {
				t.Fatalf("esn %v seq %d: %v", !noESN, first+i, err)
			}
		}
		if st, sa := b.Stats(), a.Stats(); st.Packets != 3 || st.Seq != 3 || st.Bytes != sa.Bytes {
			t.Fatalf("stats %+v, Seal's %+v", st, sa)
		}
	}
}

// TestReserveRefusals: a block beyond the last sequence number takes
// nothing, and SealReserved refuses a number never reserved.
func TestReserveRefusals(t *testing.T) {
	out, err := NewOutboundSA(SA{SPI: 300, Key: testKey16, NoESN: true})
	if err != nil {
		t.Fatal(err)
	}
	out.seq.Store(1<<32 - 3)
	if _, err := out.Reserve(3, 0); err != ErrSeqExhausted {
		t.Fatal("3 beyond 2^32-1:", err)
	}
	if _, err := out.Reserve(0, 0); err != ErrMalformed {
		t.Fatal("Reserve(0):", err)
	}
	if _, err := out.Reserve(1, -1); err != ErrMalformed {
		t.Fatal("Reserve(1, -1):", err)
	}
	first, err := out.Reserve(2, 0)
	if err != nil || first != 1<<32-2 {
		t.Fatalf("the last 2: %d, %v", first, err)
	}
	if _, _, err := out.Seal(make([]byte, 2048), 100, 200); err != ErrSeqExhausted {
		t.Fatal("Seal after the last was reserved:", err)
	}
	fresh, _ := NewOutbound(300, testKey16, testSalt)
	buf, s, e := datagram(10, 0)
	var sc Scratch
	for _, seq := range []uint64{0, 1} {
		if _, _, err := fresh.SealReserved(buf, s, e, seq, &sc); err != ErrMalformed {
			t.Fatalf("seq %d never reserved: %v", seq, err)
		}
	}
}

// TestSealReservedNeighboursAtOnce seals back-to-back datagrams of one
// buffer (each ESP packet ends where the next one's header starts, as in
// a GSO run) from two goroutines at once, alternating; every packet must
// open. Seal, which borrows the tail of the datagram in front as scratch,
// races here (go test -race) and corrupts the ICVs it borrows.
func TestSealReservedNeighboursAtOnce(t *testing.T) {
	out, in := pair(t, testKey16)
	const n, clear = 64, 1000
	stride := clear + Overhead(clear)
	const base = ScratchLen // what Seal would need in front of the first
	buf := make([]byte, base+n*stride+MaxTrailerLen)
	for i := range buf {
		buf[i] = byte(i)
	}
	first, err := out.Reserve(n, n*clear)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			var sc Scratch
			for k := g; k < n; k += 2 {
				start := base + k*stride + HeaderLen
				s0, s1, err := out.SealReserved(buf[:base+n*stride], start, start+clear, first+uint64(k), &sc)
				if err != nil || s0 != base+k*stride || s1 != base+(k+1)*stride {
					t.Errorf("datagram %d: [%d:%d] %v", k, s0, s1, err)
				}
			}
		})
	}
	wg.Wait()
	for k := range n {
		d := make([]byte, ScratchLen+stride)
		copy(d[ScratchLen:], buf[base+k*stride:base+(k+1)*stride])
		i0, i1, _, err := in.Open(d, ScratchLen, len(d))
		if err != nil {
			t.Fatalf("datagram %d: %v", k, err)
		}
		for j, c := range d[i0:i1] {
			if want := byte(base + k*stride + HeaderLen + j); c != want {
				t.Fatalf("datagram %d byte %d: %d, want %d", k, j, c, want)
			}
		}
	}
}

func TestSealReservedDoesNotAllocate(t *testing.T) {
	out, in := pair(t, testKey16)
	buf := make([]byte, packet.BufferSize)
	sc := new(Scratch)
	if a := testing.AllocsPerRun(1000, func() {
		buf, s, e := fillDatagram(buf, 1400, 1)
		seq, err := out.Reserve(1, e-s)
		if err != nil {
			t.Fatal(err)
		}
		es, ee, err := out.SealReserved(buf, s, e, seq, sc)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := in.Open(buf, es, ee); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Reserve+SealReserved+Open: %v allocations per packet", a)
	}
}
