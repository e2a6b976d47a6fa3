package hashmix

import (
	"math/bits"
	"testing"
)

// TestMixAvalanches: flipping one input bit flips about half the output
// bits, on average over many inputs, which is what the tables' shard (low
// bits) and bucket (high bits) choices rely on.
func TestMixAvalanches(t *testing.T) {
	if Mix(0) != 0 {
		t.Errorf("Mix(0) = %#x, want 0 (fmix64 fixes zero)", Mix(0))
	}
	const inputs = 2000
	for bit := range 64 {
		flips := 0
		for i := range uint64(inputs) {
			x := i * 0x9e3779b97f4a7c15
			flips += bits.OnesCount64(Mix(x) ^ Mix(x^1<<bit))
		}
		if avg := float64(flips) / inputs; avg < 28 || avg > 36 {
			t.Errorf("input bit %d flips %.1f output bits on average, want about 32", bit, avg)
		}
	}
}
