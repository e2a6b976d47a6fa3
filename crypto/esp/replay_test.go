package esp

import (
	"math/rand/v2"
	"testing"
)

// accept runs one packet through the window as Open does: check, then
// update.
func (w *window) accept(seq uint64) bool { return w.check(seq) && w.update(seq) }

func TestWindowInOrder(t *testing.T) {
	var w window
	for s := uint64(1); s <= 10*windowBits; s++ {
		if !w.accept(s) {
			t.Fatalf("in-order %d refused", s)
		}
	}
	if w.top != 10*windowBits {
		t.Fatalf("top %d", w.top)
	}
}

func TestWindowZeroRefused(t *testing.T) {
	var w window
	if w.accept(0) {
		t.Fatal("sequence number 0 accepted")
	}
}

func TestWindowDuplicate(t *testing.T) {
	var w window
	for _, s := range []uint64{1, 2, 3, 100} {
		w.accept(s)
	}
	for _, s := range []uint64{1, 2, 3, 100} {
		if w.accept(s) {
			t.Errorf("duplicate %d accepted", s)
		}
	}
	if !w.accept(50) || w.accept(50) {
		t.Error("50: want accepted once")
	}
}

func TestWindowReorderedWithin(t *testing.T) {
	var w window
	const n = 20000
	// Shuffle within blocks smaller than the window: every packet arrives
	// once, late by less than WindowSize.
	seqs := make([]uint64, n)
	for i := range seqs {
		seqs[i] = uint64(i + 1)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for b := 0; b < n; b += 1000 {
		blk := seqs[b:min(b+1000, n)]
		r.Shuffle(len(blk), func(i, j int) { blk[i], blk[j] = blk[j], blk[i] })
	}
	for _, s := range seqs {
		if !w.accept(s) {
			t.Fatalf("reordered %d refused (top %d)", s, w.top)
		}
	}
	for _, s := range seqs[n-2000:] {
		if w.accept(s) {
			t.Fatalf("replayed %d accepted", s)
		}
	}
}

func TestWindowEdges(t *testing.T) {
	var w window
	top := uint64(100000)
	w.accept(top)
	// The oldest sequence number still in the window, and the newest
	// outside it.
	if !w.accept(top - WindowSize + 1) {
		t.Error("top-WindowSize+1 refused")
	}
	if w.accept(top - WindowSize) {
		t.Error("top-WindowSize accepted")
	}
	if w.accept(1) {
		t.Error("far behind accepted")
	}
}

func TestWindowFarAhead(t *testing.T) {
	var w window
	for s := uint64(1); s <= 3000; s++ {
		w.accept(s)
	}
	// Jump by more than the ring: every old bit must be gone, and the
	// packets just below the new top (never seen) are accepted.
	jump := uint64(3000 + 5*windowBits + 17)
	if !w.accept(jump) {
		t.Fatal("far ahead refused")
	}
	for s := jump - WindowSize + 1; s < jump; s++ {
		if !w.accept(s) {
			t.Fatalf("%d below a jump refused", s)
		}
	}
	if w.accept(3000) {
		t.Error("old packet accepted after a jump")
	}
	// A jump by less than the ring clears only the words entered.
	var v window
	v.accept(64*10 + 5)
	v.accept(64 * 20)
	if !v.accept(64*10+6) || v.accept(64*10+5) {
		t.Error("bits of words not entered were lost or duplicated")
	}
}

// TestWindowModel compares the ring with a naive set-and-top model on
// random traffic with reordering, duplicates and jumps.
func TestWindowModel(t *testing.T) {
	var w window
	seen := map[uint64]bool{}
	var top uint64
	r := rand.New(rand.NewPCG(3, 4))
	cur := uint64(1)
	for range 200000 {
		var s uint64
		switch x := r.IntN(100); {
		case x < 60:
			cur++
			s = cur
		case x < 90:
			s = cur - uint64(r.IntN(WindowSize+200))
		case x < 97:
			s = cur - uint64(r.IntN(20))
		default:
			cur += uint64(r.IntN(3 * windowBits))
			s = cur
		}
		if s == 0 || s > cur {
			continue
		}
		want := s > top || (top-s < WindowSize && !seen[s])
		if got := w.accept(s); got != want {
			t.Fatalf("seq %d top %d: window %v, model %v", s, top, got, want)
		}
		if want {
			seen[s] = true
			top = max(top, s)
		}
	}
}

func TestInferESN(t *testing.T) {
	const W = WindowSize
	type tc struct {
		top  uint64
		lo   uint32
		want uint64
		ok   bool
	}
	cases := []tc{
		// Fresh SA: the first packets of subspace 0.
		{0, 1, 1, true},
		{0, 5000, 5000, true},
		{0, 0xffffff00, 0, false}, // would be below 1
		// Case A, window within subspace 0.
		{100000, 100001, 100001, true},
		{100000, 100000 - W + 1, 100000 - W + 1, true},
		{100000, 100000 - W, 1<<32 + 100000 - W, true}, // below: the next subspace
		// Just below the 2^32 boundary: the wrap goes to subspace 1.
		{1<<32 - 10, 1<<32 - 5, 1<<32 - 5, true},
		{1<<32 - 10, 3, 1<<32 + 3, true},
		{1<<32 - 10, 1<<32 - 100, 1<<32 - 100, true},
		// Case B: just above the boundary, late packets from subspace 0.
		{1<<32 + 5, 1<<32 - 20, 1<<32 - 20, true},
		{1<<32 + 5, 2, 1<<32 + 2, true},
		{1<<32 + 5, 100, 1<<32 + 100, true},
		{1<<32 + 5, uint32(1<<32 + 5 - W + 1), 1<<32 + 5 - W + 1, true},
		// Higher subspaces.
		{7<<32 + 20, 1<<32 - 1, 6<<32 + 1<<32 - 1, true},
		{7<<32 + 1<<31, 1 << 31, 7<<32 + 1<<31, true},
		// The top of the 64-bit space.
		{1<<64 - 100, 5, 0, false},
		{1<<64 - 100, 1<<32 - 1, 1<<64 - 1, true},
	}
	for _, c := range cases {
		w := window{top: c.top}
		got, ok := w.infer(c.lo)
		if ok != c.ok || (ok && got != c.want) {
			t.Errorf("top %#x lo %#x: got %#x %v, want %#x %v", c.top, c.lo, got, ok, c.want, c.ok)
		}
	}
}

// TestInferAcrossBoundary sends a stream across several 2^32 boundaries
// with reordering, only the low 32 bits on the wire.
func TestInferAcrossBoundary(t *testing.T) {
	for _, start := range []uint64{1<<32 - 3000, 5<<32 - 3000} {
		w := window{top: start - 1}
		r := rand.New(rand.NewPCG(start, 9))
		seqs := make([]uint64, 8000)
		for i := range seqs {
			seqs[i] = start + uint64(i)
		}
		for b := 0; b < len(seqs); b += 500 {
			blk := seqs[b : b+500]
			r.Shuffle(len(blk), func(i, j int) { blk[i], blk[j] = blk[j], blk[i] })
		}
		for _, s := range seqs {
			got, ok := w.infer(uint32(s))
			if !ok || got != s {
				t.Fatalf("seq %#x (top %#x): inferred %#x %v", s, w.top, got, ok)
			}
			if !w.accept(got) {
				t.Fatalf("seq %#x refused", s)
			}
		}
	}
}
