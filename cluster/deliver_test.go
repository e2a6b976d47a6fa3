package cluster

import (
	"bytes"
	"fmt"
	"strings"
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
	waitFor(t, 10*time.Second, "the second version on every node", everywhere(big('b')))
	t.Logf("the second version reached every node in %v; n3 dropped %d streams", time.Since(start), dropped.Load())
	if dropped.Load() == 0 {
		t.Fatal("n3 dropped no stream: the test did not test anything")
	}
	if n := n1.Drops()["entry-resent"]; n == 0 {
		t.Fatal("n1 counted no resent entry")
	}
	waitFor(t, 5*time.Second, "n1's deliveries all acknowledged", func() bool { return pendingDeliveries(n1) == 0 })
}

func pendingDeliveries(n *testNode) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.outbox) + len(n.acks)
}

// TestDeliveryEndsWhenTheMemberIsGone: a member that never reads its
// streams is sent to until it is declared dead, not for ever; a newer
// write replaces the delivery of the older one instead of adding to it.
func TestDeliveryEndsWhenTheMemberIsGone(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 3, func(c *Config) { c.PushPullInterval = time.Minute })
	n1, n3 := nodes[0], nodes[2]
	drop := func() bool { return true }
	n3.tr.dropStream.Store(&drop)
	for _, b := range []byte("abc") {
		if err := n1.Put("endpoints", "n1", bytes.Repeat([]byte{b}, 3*maxBroadcast)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "n2 has the last version", func() bool {
		e, _ := nodes[1].Get("endpoints", "n1")
		return len(e.Value) > 0 && e.Value[0] == 'c'
	})
	waitFor(t, 5*time.Second, "n1's one pending delivery, to n3", func() bool {
		n1.mu.Lock()
		defer n1.mu.Unlock()
		return len(n1.outbox) == 1 && n1.outbox[outKey{"n3", tkey{"endpoints", "n1"}}] != nil
	})
	n3.Close()
	waitFor(t, 10*time.Second, "n1's delivery to n3 ended", func() bool { return pendingDeliveries(n1) == 0 })
	if e, _ := n3.Get("endpoints", "n1"); len(e.Value) > 0 && e.Value[0] == 'c' {
		t.Fatal("n3 got the entry while dropping every stream")
	}
}

// TestSmallEntryReachesAMemberThatLostItsGossip: an entry that fits a
// gossip packet spreads by memberlist broadcasts, each sent a few times
// within a second. A member that loses every gossiped entry for 2 s (a
// loaded underlay dropping a burst) still gets the writer's newest
// version within seconds, without waiting for push/pull (a minute here).
func TestSmallEntryReachesAMemberThatLostItsGossip(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 3, func(c *Config) { c.PushPullInterval = time.Minute })
	n1, n3 := nodes[0], nodes[2]
	everywhere := func(want string) func() bool {
		return func() bool {
			for _, e := range getAll(nodes, "networks", "web") {
				if string(e.Value) != want {
					return false
				}
			}
			return true
		}
	}
	if err := n1.Put("networks", "web", []byte("10.0.1.0/24")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the first version on every node", everywhere("10.0.1.0/24"))

	var dropped atomic.Int64
	until := time.Now().Add(2 * time.Second)
	drop := func() bool {
		if time.Now().Before(until) {
			dropped.Add(1)
			return true
		}
		return false
	}
	n3.dropEntries.Store(&drop)
	start := time.Now()
	if err := n1.Put("networks", "web", []byte("10.0.2.0/24")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the second version on every node", everywhere("10.0.2.0/24"))
	t.Logf("the second version reached every node in %v; n3 dropped %d gossip messages", time.Since(start), dropped.Load())
	if dropped.Load() == 0 {
		t.Fatal("n3 dropped no gossip: the test did not test anything")
	}
}

// TestRegossipWaitsWhileTheQueueIsBackedUp checks that a node whose
// broadcast queue still holds many unsent changes does not queue its
// writes again (that would push every waiting change back), and does once
// the queue has drained.
func TestRegossipWaitsWhileTheQueueIsBackedUp(t *testing.T) {
	n := startNode(t, "n1", mustKey(t), 0)
	for i := range regossipQueueMax + 8 {
		if err := n.Put("networks", fmt.Sprintf("net%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	rounds := func() (sum int) {
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, g := range n.regossip {
			sum += g.round
		}
		return sum
	}
	later := time.Now().Add(2 * time.Second)
	n.regossipDue(later)
	if r := rounds(); r != 0 {
		t.Fatalf("with %d broadcasts queued, %d writes were broadcast again", n.queue.NumQueued(), r)
	}
	n.queue.Reset()
	n.regossipDue(later)
	if r := rounds(); r != regossipQueueMax+8 {
		t.Fatalf("after the queue drained, %d of %d writes were broadcast again", r, regossipQueueMax+8)
	}
}

// deafToGossip starts three nodes, the third of which loses every gossiped
// entry (push/pull is a minute apart), and writes networks/web on the
// first: what reaches the third came by acknowledged delivery. drop is
// the third node's filter, for its streams too.
func deafToGossip(t *testing.T) (nodes []*testNode, drop *func() bool) {
	t.Helper()
	nodes = startCluster(t, mustKey(t), 3, func(c *Config) { c.PushPullInterval = time.Minute })
	f := func() bool { return true }
	nodes[2].dropEntries.Store(&f)
	if err := nodes[0].Put("networks", "web", []byte("10.0.1.0/24")); err != nil {
		t.Fatal(err)
	}
	return nodes, &f
}

// TestSpreadReturnsOnceEveryMemberHasTheWrite: a write that Spread
// returned for is on every alive member at that moment, even one that
// loses every gossiped entry; a member that reads no stream is named in
// the error once the wait is over.
func TestSpreadReturnsOnceEveryMemberHasTheWrite(t *testing.T) {
	nodes, drop := deafToGossip(t)
	n1, n3 := nodes[0], nodes[2]
	if err := n1.Spread(5*time.Second, Ref{"networks", "web"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if e, ok := n.Get("networks", "web"); !ok || string(e.Value) != "10.0.1.0/24" {
			t.Errorf("%s right after Spread: %q %v, want the write", n.cfg.NodeName, e.Value, ok)
		}
	}

	n3.tr.dropStream.Store(drop)
	if err := n1.Put("networks", "web", []byte("10.0.2.0/24")); err != nil {
		t.Fatal(err)
	}
	// n3 never acknowledges, so Spread waits the whole timeout: 2 s, for
	// n2's acknowledgement to come in time on a loaded machine (300 ms
	// did not, once at load 11 with the race detector).
	err := n1.Spread(2*time.Second, Ref{"networks", "web"})
	if err == nil || !strings.Contains(err.Error(), "n3") || strings.Contains(err.Error(), "n2") {
		t.Fatalf("Spread with n3 deaf: %v, want an error naming n3 alone", err)
	}
	if err := n1.Spread(time.Second, Ref{"networks", "nosuchkey"}); err == nil {
		t.Fatal("Spread of a key this node never wrote: no error")
	}
}

// TestPushReachesAMemberThatLosesItsGossip: a pushed write reaches a
// member that loses every gossiped entry (so over the acknowledged TCP
// delivery, not by gossip), without the writer waiting for it.
func TestPushReachesAMemberThatLosesItsGossip(t *testing.T) {
	nodes, _ := deafToGossip(t)
	n1, n3 := nodes[0], nodes[2]
	if err := n1.Push(Ref{"networks", "web"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the pushed write on n3", func() bool {
		e, ok := n3.Get("networks", "web")
		return ok && string(e.Value) == "10.0.1.0/24"
	})
	if err := n1.Push(Ref{"networks", "nosuchkey"}); err == nil {
		t.Fatal("Push of a key this node never wrote: no error")
	}
}
