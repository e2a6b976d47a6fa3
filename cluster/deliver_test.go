package cluster

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"
)

// TestLargeEntryReachesAMemberThatMissedItsStream: an entry over the
// gossip packet limit goes to each member over TCP. A member that cannot
// read its streams for a moment (a loaded host: the stream is closed
// unread) still gets the writer's newest version within seconds, without
// waiting for push/pull anti-entropy, which is set to a minute here.
func TestLargeEntryReachesAMemberThatMissedItsStream(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 3, func(c *Config) { c.PushPullInterval = time.Minute })
	n1, n3 := nodes[0], nodes[2]
	big := func(b byte) []byte { return bytes.Repeat([]byte{b}, 3*maxBroadcast) }
	everywhere := func(want []byte) func() bool {
		return func() bool {
			for _, e := range getAll(nodes, "endpoints", "n1") {
				if !bytes.Equal(e.Value, want) {
					return false
				}
			}
			return true
		}
	}
	if err := n1.Put("endpoints", "n1", big('a')); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the first version on every node", everywhere(big('a')))

	// n3 drops every stream for 2 s: n1's own send and n2's relay.
	var dropped atomic.Int64
	until := time.Now().Add(2 * time.Second)
	drop := func() bool {
		if time.Now().Before(until) {
			dropped.Add(1)
			return true
		}
		return false
	}
	n3.tr.dropStream.Store(&drop)
	start := time.Now()
	if err := n1.Put("endpoints", "n1", big('b')); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 8*time.Second, "the second version on every node", everywhere(big('b')))
	t.Logf("the second version reached every node in %v; n3 dropped %d streams", time.Since(start), dropped.Load())
	if dropped.Load() == 0 {
		t.Fatal("n3 dropped no stream: the test did not test anything")
	}
}
