package daemon

import (
	"strings"
	"testing"
)

func TestNewRefusesRxSocketsOutOfRange(t *testing.T) {
	for _, n := range []int{-1, MaxRxSockets + 1} {
		d, err := New(Config{Node: "h1", StateDir: t.TempDir(), RxSockets: n})
		if err == nil {
			d.Close()
			t.Fatalf("RxSockets %d accepted", n)
		}
		if !strings.Contains(err.Error(), "rx sockets") || !strings.Contains(err.Error(), "out of range 1-64") {
			t.Errorf("RxSockets %d: %v", n, err)
		}
	}
}
