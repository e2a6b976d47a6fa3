package aging

import (
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

func mac(i int) packet.MAC { return packet.MAC{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)} }

func TestLearnLookupMoveAndExpire(t *testing.T) {
	tb := New[string](100, 1000)
	if !tb.Learn(mac(1), "a", 0) || !tb.Learn(mac(2), "b", 0) {
		t.Fatal("Learn refused below the limit")
	}
	if e := tb.Lookup(mac(1)); e == nil || e.Value != "a" || !tb.Live(e, 99) || tb.Live(e, 100) {
		t.Fatalf("entry %+v: live until 100 exclusive", e)
	}
	tb.Learn(mac(1), "c", 50) // moved
	if e := tb.Lookup(mac(1)); e.Value != "c" || e.Seen() != 50 {
		t.Errorf("moved entry %v seen %d", e.Value, e.Seen())
	}
	tb.Lookup(mac(2)).Touch(60)
	tb.Sweep(155)
	if tb.Lookup(mac(1)) != nil || tb.Lookup(mac(2)) == nil || tb.Len() != 1 {
		t.Errorf("after sweep at 155: mac1 %v mac2 %v len %d", tb.Lookup(mac(1)), tb.Lookup(mac(2)), tb.Len())
	}
}

func TestLimitSweepsExpiredFirst(t *testing.T) {
	tb := New[int](100, 3)
	for i := range 3 {
		tb.Learn(mac(i), i, 0)
	}
	if tb.Learn(mac(10), 10, 50) {
		t.Error("a fourth live MAC was learned over the limit of 3")
	}
	if !tb.Learn(mac(11), 11, 100) || tb.Len() != 1 {
		t.Errorf("expired entries were not swept to make room: len %d", tb.Len())
	}
}

// TestManyMACsAndChurn learns, removes and relearns many MACs (growing
// the table and leaving tombstones) and checks every lookup.
func TestManyMACsAndChurn(t *testing.T) {
	tb := New[int](1<<40, 1<<20)
	const n = 5000
	for round := range 3 {
		for i := range n {
			tb.Learn(mac(i), i+round, 0)
		}
		for i := range n {
			if e := tb.Lookup(mac(i)); e == nil || e.Value != i+round {
				t.Fatalf("round %d: mac %d -> %v", round, i, e)
			}
		}
		tb.Filter(func(e *Entry[int]) bool { return e.Value%2 == 0 })
		for i := range n {
			if got := tb.Lookup(mac(i)) != nil; got != ((i+round)%2 == 0) {
				t.Fatalf("round %d: mac %d present %v after filter", round, i, got)
			}
		}
	}
	count := 0
	tb.Range(func(*Entry[int]) { count++ })
	if count != tb.Len() {
		t.Errorf("Range saw %d entries, Len %d", count, tb.Len())
	}
}

func TestLookupAndTouchDoNotAllocate(t *testing.T) {
	tb := New[int](100, 100)
	tb.Learn(mac(1), 1, 0)
	if a := testing.AllocsPerRun(100, func() {
		tb.Lookup(mac(1)).Touch(5)
		tb.Lookup(mac(2))
	}); a != 0 {
		t.Errorf("Lookup allocates %.1f times", a)
	}
}
