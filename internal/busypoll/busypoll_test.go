package busypoll

import (
	"testing"
	"time"
)

func TestOffNeverPolls(t *testing.T) {
	for _, span := range []time.Duration{0, -time.Second} {
		w := New(span)
		w.Seen()
		if w.Again() {
			t.Errorf("span %v: Again after a read = true, want false", span)
		}
		if w.Caught() != 0 {
			t.Errorf("span %v: Caught = %d", span, w.Caught())
		}
	}
}

// Within the window after a read Again says "read again"; a read that
// then finds data counts as caught; once the window has passed, Again
// says "block" and the next read is not counted.
func TestWindow(t *testing.T) {
	const span = 20 * time.Millisecond
	w := New(span)
	w.Seen() // first data: came after a block, not caught
	if w.Caught() != 0 {
		t.Fatalf("Caught after the first read = %d, want 0", w.Caught())
	}
	if !w.Again() {
		t.Fatal("Again right after a read = false, want true")
	}
	w.Seen()
	if w.Caught() != 1 {
		t.Fatalf("Caught after a read found by polling = %d, want 1", w.Caught())
	}
	deadline := time.Now().Add(5 * time.Second)
	for w.Again() {
		if time.Now().After(deadline) {
			t.Fatal("Again still true 5 s after the last read")
		}
	}
	w.Seen() // after a block
	if w.Caught() != 1 {
		t.Fatalf("Caught after a read that followed a block = %d, want 1", w.Caught())
	}
}
