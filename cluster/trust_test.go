package cluster

import (
	"math"
	"testing"
	"time"
)

// inject hands raw gossip bytes to n as memberlist would deliver them.
func inject(n *testNode, m *message) {
	(*delegate)(n.Cluster).NotifyMsg(m.encode())
}

func valueOf(n *testNode, table, key string) string {
	e, ok := n.Get(table, key)
	if !ok {
		return ""
	}
	return string(e.Value)
}

// TestHugeVersionDoesNotFreezeTables: one entry at version 2^64-1 (or a
// push/pull clock there) must not wrap the Lamport clock, after which every
// later write would lose to the older ones everywhere.
func TestHugeVersionDoesNotFreezeTables(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2)
	n1, n2 := nodes[0], nodes[1]
	if err := n1.Put("networks", "web", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "v1 on n2", func() bool { return valueOf(n2, "networks", "web") == "v1" })

	inject(n1, &message{Type: msgEntries, From: "evil", Entries: []Entry{
		{Table: "networks", Key: "evil", Value: []byte("x"), Owner: "evil", Version: math.MaxUint64},
	}})
	(*delegate)(n2.Cluster).MergeRemoteState((&message{Type: msgState, From: "evil", Clock: math.MaxUint64}).encode(), false)
	if _, ok := n1.Get("networks", "evil"); ok {
		t.Fatal("an entry 2^64-1 ahead of the clock was accepted")
	}
	if n1.Drops()["version-ahead"] == 0 {
		t.Fatalf("refused entry not counted: %v", n1.Drops())
	}

	for i, n := range []*testNode{n1, n2, n1} {
		v := []byte{'w', byte('2' + i)}
		if err := n.Put("networks", "web", v); err != nil {
			t.Fatal(err)
		}
		for _, m := range nodes {
			waitFor(t, 5*time.Second, "a later write everywhere", func() bool { return valueOf(m, "networks", "web") == string(v) })
		}
	}
}

// TestClockNeverWraps: at the end of the clock a write fails with an error
// instead of wrapping to a version that every older entry beats.
func TestClockNeverWraps(t *testing.T) {
	n := startNode(t, "n1", mustKey(t), 0)
	if err := n.Put("networks", "web", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	n.clock = maxVersion
	n.mu.Unlock()
	if err := n.Put("networks", "web", []byte("v2")); err == nil {
		t.Fatal("a write past the end of the clock succeeded")
	}
	if e, _ := n.Get("networks", "web"); string(e.Value) != "v1" || e.Version == 0 {
		t.Fatalf("entry after refused write: %+v", e)
	}
}
