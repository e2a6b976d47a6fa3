package cluster

import (
	"fmt"
	"testing"
	"time"
)

// A node that missed a burst's gossip catches up once its own broadcasts
// have drained, without periodic push/pull: here n4 loses every gossiped
// entries message it receives (so neither the relays nor n1's own
// re-gossip reach it) while its own writes go out, and push/pull comes
// only every hour. Before the catch-up request, n4 never held the 100
// endpoints written on n1. (With 70% of the messages lost instead, n4
// missed 9 to 12 of them in five runs, but a slow run let n1's re-gossip
// fill them in.)
func TestBurstCatchUpWithoutPushPull(t *testing.T) {
	// The daemon's gossip interval (not the tests' 20 ms), so that the
	// writes below outrun the queue's drain even under the race detector.
	nodes := startCluster(t, mustKey(t), 4, func(c *Config) {
		c.PushPullInterval = time.Hour
		c.GossipInterval = 200 * time.Millisecond
	})
	n1, n4 := nodes[0], nodes[3]
	drop := func() bool { return true }
	n4.dropEntries.Store(&drop)
	for i := range 100 { // a burst: every queue holds over regossipQueueMax
		if err := n1.Put("endpoints", fmt.Sprintf("n1/e%03d", i), []byte(`{"ip":"10.0.1.1"}`)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 40 {
		if err := n4.Put("endpoints", fmt.Sprintf("n4/e%03d", i), []byte(`{"ip":"10.0.4.1"}`)); err != nil {
			t.Fatal(err)
		}
	}
	// n4's catch-up starts as soon as its own queue has drained; a member
	// it asks may still be receiving n1's burst and answer with part of
	// it, and then n4 asks again catchUpGap later: allow for one such
	// round.
	deadline := time.Now().Add(catchUpGap + 15*time.Second)
	for len(n4.List("endpoints")) != 140 || len(n1.List("endpoints")) != 140 {
		if time.Now().After(deadline) {
			t.Fatalf("n4 holds %d endpoints and n1 %d, want 140 each; n4's counters %v, n1's %v",
				len(n4.List("endpoints")), len(n1.List("endpoints")), n4.Drops(), []any{n1.Drops(), nodes[1].Drops(), nodes[2].Drops()})
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := n4.Drops(); d["catchup-asked"] == 0 {
		t.Fatalf("n4 caught up without asking: %v", d)
	}
	// Converged nodes have the same digest: a catch-up request between
	// them is not answered.
	n1.mu.Lock()
	d1 := n1.digestLocked()
	n1.mu.Unlock()
	n4.mu.Lock()
	d4 := n4.digestLocked()
	n4.mu.Unlock()
	if d1 != d4 {
		t.Fatalf("digests of converged nodes differ: %x %x", d1, d4)
	}
}

// The digest changes with every entry's version and deletion, and not
// with the order the entries arrived in.
func TestDigestFollowsEntries(t *testing.T) {
	a := startNode(t, "a", mustKey(t), 0)
	b := startNode(t, "b", mustKey(t), 0)
	digest := func(n *testNode) uint64 {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.digestLocked()
	}
	e1 := Entry{Table: "endpoints", Key: "x/1", Owner: "x", Value: []byte("1"), Version: 5}
	e2 := Entry{Table: "endpoints", Key: "x/2", Owner: "x", Value: []byte("2"), Version: 6}
	a.merge([]Entry{e1, e2}, false)
	b.merge([]Entry{e2}, false)
	if digest(a) == digest(b) {
		t.Fatal("a node missing an entry has the same digest")
	}
	b.merge([]Entry{e1}, false)
	if digest(a) != digest(b) {
		t.Fatal("the same entries, merged in another order, give another digest")
	}
	e1.Version, e1.Deleted = 7, true
	a.merge([]Entry{e1}, false)
	if digest(a) == digest(b) {
		t.Fatal("a deletion did not change the digest")
	}
}

// A catch-up whose first answer brings nothing asks one more member: the
// first it asked may be as far behind as itself. Here n2 and n3 lose every
// gossiped entry, so each new entry of n1 is held by n1 alone, and n3's
// catch-up asks n2 (which answers "the same") or n1 (which sends its
// state) first, at random. Before, a catch-up that asked n2 first ended
// there (about one round in two): ten rounds all passed about once in a
// thousand runs.
func TestCatchUpAsksAgainAfterEmptyAnswer(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 3, func(c *Config) { c.PushPullInterval = time.Hour })
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	drop := func() bool { return true }
	n2.dropEntries.Store(&drop)
	n3.dropEntries.Store(&drop)
	for round := range 10 {
		key := fmt.Sprintf("n1/e%02d", round)
		if err := n1.Put("endpoints", key, []byte(`{"ip":"10.0.1.1"}`)); err != nil {
			t.Fatal(err)
		}
		// Run one catch-up of n3's to its end, as catchUpDue would.
		waitFor(t, 10*time.Second, "n3's earlier catch-up to end", func() bool {
			return n3.catchUpOn.CompareAndSwap(false, true)
		})
		n3.burst.Store(false)
		n3.catchUp()
		n3.burst.Store(false) // no catch-up of maintain's in between
		if _, ok := n3.Get("endpoints", key); !ok {
			t.Fatalf("round %d: n3's catch-up ended without %s; n3's counters %v", round, key, n3.Drops())
		}
	}
}

// A catch-up heals the member it asks as well as the asker: here n2 loses
// every gossiped entry, so n1's new entry reaches n3 but not n2, and n1's
// catch-up finds n2's digest different. n2 answers with its state, which
// brings n1 nothing; n1 returns its own, and n2 holds the entry. Before,
// n2 stayed without it until periodic push/pull (an hour here): the cause
// of TestHealthyClusterDoesNotFlush's rare time-outs.
func TestCatchUpAnswerGetsTheAskersState(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 3, func(c *Config) { c.PushPullInterval = time.Hour })
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	drop := func() bool { return true }
	n2.dropEntries.Store(&drop)
	if err := n1.Put("endpoints", "n1/e", []byte(`{"ip":"10.0.1.1"}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "n3 to hold n1's entry", func() bool {
		_, ok := n3.Get("endpoints", "n1/e")
		return ok
	})
	waitFor(t, 10*time.Second, "n1's earlier catch-up to end", func() bool {
		return n1.catchUpOn.CompareAndSwap(false, true)
	})
	n1.burst.Store(false)
	n1.catchUp()
	waitFor(t, 10*time.Second, "n2 to hold n1's entry", func() bool {
		_, ok := n2.Get("endpoints", "n1/e")
		return ok
	})
	if d := n1.Drops(); d["catchup-returned"] != 1 {
		t.Fatalf("n1's counters %v, want one catchup-returned", d)
	}
}
