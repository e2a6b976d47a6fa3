package cluster

import (
	"math/rand/v2"
	"time"

	"github.com/hashicorp/memberlist"
)

// Table broadcasts when memberlist's own fill the packets. memberlist
// builds each gossip packet from its own queue first (alive, suspect and
// dead notices) and asks the delegate for the table broadcasts only with
// the room left. After a mass join every node queues every member's alive
// notice RetransmitMult*log10(N) times, so for tens of seconds no packet
// has room: in the 1,000-node simulation a network create reached no other
// node for 32 simulated seconds. So when memberlist has not offered the
// table broadcasts room (or taken one) for flushStarved gossip intervals
// while some wait, and has asked for them meanwhile with less room than
// flushRoom, the node sends them itself, as memberlist's gossip
// would: in user messages (SendBestEffort, encrypted with the cluster key
// like every memberlist packet) to flushFanout random alive members that
// are not suspected, one packet of at most flushBudget bytes each, once per
// gossip interval, taking them from the same queue so that each still goes
// out its RetransmitMult*log10(N) times in all. A healthy cluster never
// gets here: memberlist asks for the broadcasts at every gossip and probe,
// with its own queue empty or nearly so. Each flushed packet is counted as
// "broadcast-flushed".
const (
	// flushRoom is the room memberlist must offer the table broadcasts
	// (the limit it passes to GetBroadcasts) for them to count as served
	// even when it took none.
	flushRoom = 512
	// flushStarved is how many gossip intervals the table broadcasts may
	// wait unserved before the node sends them itself.
	flushStarved = 2
	// flushBudget is the most bytes of one flushed message: memberlist's
	// UDP packet budget (1,400) less its encryption (29), user message (1)
	// and checksum (5) overheads, with a margin.
	flushBudget = 1300
)

// noteServed records that memberlist offered the table broadcasts limit
// bytes and took n of them; GetBroadcasts calls it.
func (c *Cluster) noteServed(limit, n int) {
	if n > 0 || limit >= flushRoom {
		c.served.Store(time.Now().UnixNano())
	} else {
		c.starved.Store(time.Now().UnixNano())
	}
}

// flushLoop runs flushDue every gossip interval.
func (c *Cluster) flushLoop(every time.Duration) {
	defer c.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			c.flushDue(now, every)
		}
	}
}

// flushDue sends the waiting table broadcasts itself when memberlist has
// not served them for flushStarved gossip intervals (every).
func (c *Cluster) flushDue(now time.Time, every time.Duration) {
	if c.queue.NumQueued() == 0 || c.alive.Load() < 2 {
		// Nothing waits (or no one to send to): the wait starts now.
		c.served.Store(now.UnixNano())
		return
	}
	// Starved: not served for flushStarved intervals, and memberlist did
	// ask since, with too little room. (A node whose goroutines were not
	// scheduled for a while, on a loaded machine, was not asked at all.)
	served := c.served.Load()
	if now.Sub(time.Unix(0, served)) < flushStarved*every || c.starved.Load() <= served {
		return
	}
	for _, to := range c.flushPeers(c.fanout) {
		msg := c.flushMessage()
		if msg == nil {
			return
		}
		ml := c.ml.Load()
		if ml == nil {
			return
		}
		c.mu.Lock()
		c.drops["broadcast-flushed"]++
		c.mu.Unlock()
		if err := ml.SendBestEffort(to, msg); err != nil {
			c.log.Debug("send table broadcasts", "node", to.Name, "err", err)
		}
	}
}

// flushPeers returns up to n random alive members that are not suspected:
// a member that is slow to answer probes gets no flushed packets.
func (c *Cluster) flushPeers(n int) []*memberlist.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*memberlist.Node
	seen := 0
	for _, mi := range c.members {
		if mi.state != StateAlive || mi.suspect || mi.name == c.cfg.NodeName {
			continue
		}
		// Reservoir sampling: each candidate is kept with probability n/seen.
		seen++
		nd := &memberlist.Node{Name: mi.name, Addr: mi.addr.Addr().AsSlice(), Port: mi.addr.Port()}
		if len(out) < n {
			out = append(out, nd)
		} else if j := rand.IntN(seen); j < n {
			out[j] = nd
		}
	}
	return out
}

// flushMessage takes one packet's worth of table broadcasts from the queue
// (one transmission each) and returns them as one entries message, or nil
// when none is queued.
func (c *Cluster) flushMessage() []byte {
	msgs := c.queue.GetBroadcasts(0, flushBudget)
	if len(msgs) == 0 {
		return nil
	}
	if len(msgs) == 1 {
		return msgs[0]
	}
	out := &message{Type: msgEntries, From: c.cfg.NodeName}
	for _, b := range msgs {
		m, err := decode(b)
		if err != nil || m.Type != msgEntries || m.ID != 0 {
			continue // only plain entries messages are queued
		}
		out.Entries = append(out.Entries, m.Entries...)
	}
	return out.encode()
}
