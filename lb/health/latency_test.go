package health

import (
	"testing"
	"time"
)

// A check's duration lands in its group's histogram; a group without
// targets is forgotten.
func TestLatencyByGroup(t *testing.T) {
	p, _ := newProber(t)
	s := newScripted(t)
	if err := p.SetTargets([]Target{{Key: "a", Addr: loopback, Spec: fast(TCP, 80, ""), Dial: s.dial, Group: "web"}}); err != nil {
		t.Fatal(err)
	}
	call := s.next(t)
	time.Sleep(30 * time.Millisecond) // what the check takes: the measured quantity
	call <- nil
	var l Latency
	waitFor(t, "a check in the histogram", func() bool { l = p.Latencies()["web"]; return l.Count == 1 })
	want := 0 // the bucket of the check's duration
	for want < len(LatencyBounds) && l.Sum > LatencyBounds[want] {
		want++
	}
	if len(l.Buckets) != len(LatencyBounds)+1 || l.Buckets[want] != 1 || l.Sum < 30*time.Millisecond || want < 3 {
		t.Fatalf("a check of at least 30ms: %+v, want it counted in bucket %d (past 25ms)", l, want)
	}
	if err := p.SetTargets(nil); err != nil {
		t.Fatal(err)
	}
	if n := len(p.Latencies()); n != 0 {
		t.Fatalf("%d groups after the targets left", n)
	}
}
