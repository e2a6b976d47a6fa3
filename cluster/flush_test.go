package cluster

import (
	"strings"
	"testing"
	"time"
)

// After a mass join every node's memberlist queue holds the alive notices
// of every member, each to be gossiped RetransmitMult*log10(N) times, and
// memberlist fills each gossip packet with them before it asks for the
// table broadcasts: in the 1,000-node simulation a network create reached
// no other node for 32 simulated seconds. Here memberlist's queue is kept
// full for tens of seconds (its RetransmitMult raised to 300, and names of
// 100 bytes, so that about seven alive notices fill a packet and the room
// left is smaller than an entry), with push/pull only every hour: the
// entries written on one node must still reach every node within 100
// gossip intervals (before the flush: 253 intervals, when
// memberlist's queue had drained).
func TestTableBroadcastsNotStarvedByMemberlist(t *testing.T) {
	const count = 10
	gossip := 200 * time.Millisecond
	mem, cs := memCluster(t, count, func(c *Config) {
		c.NodeName = strings.Repeat("n", 100) + c.BindAddr.String()
		// LZW costs more CPU than the rest of this flood together.
		c.DisableCompression = true
		c.GossipInterval = gossip
		// Rare, patient probes: a loaded machine's late acks would make
		// suspicions, which keep members from counting as alive.
		c.ProbeInterval = 5 * time.Second
		c.ProbeTimeout = 2 * time.Second
		c.SuspicionMult = 6
		c.PushPullInterval = time.Hour
		c.RetransmitMult = 300
	})
	// Four entries: about two fit a flushed packet.
	value := []byte(strings.Repeat("v", 300))
	start := time.Now()
	for i := range 4 {
		if err := cs[0].Put("endpoints", "e"+itoa(i), value); err != nil {
			t.Fatal(err)
		}
	}
	// 100 intervals: a few hops of three members each (memberlist's gossip
	// fan-out), each hop within a few intervals (it took about 7 on a
	// quiet machine, 50 at load 20 with the race detector). memberlist's
	// own queue drains only after about 250 intervals.
	bound := 100 * gossip
	for {
		missing := 0
		for _, c := range cs {
			if len(c.List("endpoints")) != 4 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Since(start) > bound {
			t.Fatalf("after %v (%d gossip intervals) %d of %d nodes lack some of the 4 entries; packets lost on the network %d of %d; each node:%s",
				time.Since(start).Round(time.Millisecond), bound/gossip, missing, count, mem.Stats().Lost, mem.Stats().Packets,
				tableReport(cs, "endpoints", []string{"e0", "e1", "e2", "e3"}))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("every node held the entries after %v", time.Since(start).Round(time.Millisecond))
	if d := cs[0].Drops(); d["broadcast-flushed"] == 0 {
		t.Fatalf("the entry spread without the writer flushing its broadcasts: %v", d)
	}
}

// A healthy cluster never flushes: memberlist's queue is nearly empty, so
// it gives the table broadcasts the room of every gossip packet, even
// during a burst of writes that keeps the table queue long. (The daemon's
// gossip interval would be 200 ms; at 500 ms, the flush waits 1.5 s, which
// even memberlist's goroutines on a machine loaded past 20 with the race
// detector do not wait between two gossips: at 200 ms one node flushed
// once in about 4 runs there.)
func TestHealthyClusterDoesNotFlush(t *testing.T) {
	const count = 4
	_, cs := memCluster(t, count, func(c *Config) {
		c.GossipInterval = 500 * time.Millisecond
		c.PushPullInterval = time.Hour
	})
	for i := range 40 {
		if err := cs[0].Put("endpoints", "e"+itoa(i), []byte(strings.Repeat("v", 200))); err != nil {
			t.Fatal(err)
		}
	}
	var want []string
	for i := range 40 {
		want = append(want, "e"+itoa(i))
	}
	deadline := time.Now().Add(60 * time.Second)
	for !allHold(cs, "endpoints", len(want)) {
		if time.Now().After(deadline) {
			t.Fatalf("after 60 s not every node holds the 40 entries:%s", tableReport(cs, "endpoints", want))
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range cs {
		if n := c.Drops()["broadcast-flushed"]; n != 0 {
			t.Errorf("%s flushed %d packets of table broadcasts in a healthy cluster", c.LocalName(), n)
		}
	}
}

// allHold reports whether every node of cs holds n live entries of table.
func allHold(cs []*Cluster, table string, n int) bool {
	for _, c := range cs {
		if len(c.List(table)) != n {
			return false
		}
	}
	return true
}

// A flushed packet carries as many queued broadcasts as fit flushBudget,
// as one entries message, and each broadcast counts one transmission.
func TestFlushMessageBatchesWithinBudget(t *testing.T) {
	n := startNode(t, "a", mustKey(t), 0)
	for i := range 10 {
		n.broadcast(Entry{Table: "endpoints", Key: "k" + itoa(i), Owner: "a", Value: []byte(strings.Repeat("v", 200)), Version: uint64(i + 1)})
	}
	queued := n.queue.NumQueued()
	seen := map[string]int{}
	for range 100 {
		b := n.flushMessage()
		if b == nil {
			break
		}
		if len(b) > flushBudget {
			t.Fatalf("flushed message of %d bytes, budget %d", len(b), flushBudget)
		}
		m, err := decode(b)
		if err != nil || m.Type != msgEntries || m.From != "a" {
			t.Fatalf("flushed message %+v, %v", m, err)
		}
		if len(m.Entries) < 2 {
			t.Fatalf("a flushed message carries %d entries; 200-byte entries fit several", len(m.Entries))
		}
		for _, e := range m.Entries {
			seen[e.Key]++
		}
	}
	// A queue of one member: each broadcast is sent RetransmitMult*1 times.
	if queued != 10 || len(seen) != 10 {
		t.Fatalf("queued %d broadcasts, flushed %d distinct keys; want 10 each", queued, len(seen))
	}
	for k, c := range seen {
		if c != n.queue.RetransmitMult {
			t.Fatalf("%s flushed %d times, want %d (the queue's transmit limit)", k, c, n.queue.RetransmitMult)
		}
	}
}

// A node whose flush tick came late (its goroutines, memberlist's among
// them, not scheduled for a while on a loaded machine) starts the wait
// again instead of flushing; one whose ticks came on time flushes once the
// broadcasts have waited flushStarved intervals. Here memberlist gossips
// and probes only every hour, and the test calls flushDue itself.
func TestFlushWaitsAgainAfterLateTick(t *testing.T) {
	_, cs := memCluster(t, 2, func(c *Config) {
		c.GossipInterval = time.Hour
		c.ProbeInterval = time.Hour
		c.PushPullInterval = time.Hour
	})
	a, b := cs[0], cs[1]
	a.broadcast(Entry{Table: "endpoints", Key: "k", Owner: a.LocalName(), Value: []byte("v"), Version: 1})
	every := 20 * time.Millisecond
	now := time.Now()
	a.served.Store(now.Add(-time.Second).UnixNano())
	a.flushDue(now, every, true)
	if n := a.Drops()["broadcast-flushed"]; n != 0 {
		t.Fatalf("flushed %d packets on a late tick", n)
	}
	a.flushDue(now.Add(flushStarved*every-time.Millisecond), every, false)
	if n := a.Drops()["broadcast-flushed"]; n != 0 {
		t.Fatalf("flushed %d packets before the broadcasts waited %d intervals", n, flushStarved)
	}
	a.flushDue(now.Add(flushStarved*every), every, false)
	if n := a.Drops()["broadcast-flushed"]; n != 1 {
		t.Fatalf("flushed %d packets after %d intervals unserved, want 1 (one member)", n, flushStarved)
	}
	waitFor(t, 5*time.Second, "b holds the flushed entry", func() bool {
		_, ok := b.Get("endpoints", "k")
		return ok
	})
}
