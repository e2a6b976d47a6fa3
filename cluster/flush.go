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
// node for 32 simulated seconds. So when memberlist has neither taken a
// table broadcast nor offered them flushRoom bytes for flushStarved gossip
// intervals (memberlist asks at every gossip, whether or not some wait)
// and some wait, the node sends them itself, as memberlist's gossip
// would: in user messages (SendBestEffort, encrypted with the
// cluster key like every memberlist packet) to memberlist's GossipNodes
// random alive members that are not suspected, one packet of at most
// flushBudget bytes each, once per gossip interval, taking them from the
// same queue so that each still goes out its RetransmitMult*log10(N)
// times in all. (memberlist does not even ask when the room left is a few
// bytes, which packets of equal-sized alive notices can leave every time:
// being asked without room is no condition.) A healthy cluster never gets
// here: memberlist asks for the broadcasts at every gossip and probe, with
// its own queue empty or nearly so; and a node whose own ticks came late
// (its goroutines not scheduled, on a loaded machine: memberlist's were
// late too) starts the wait again. Each flushed packet is counted as
// "broadcast-flushed".
const (
	// flushRoom is the room memberlist must offer the table broadcasts
	// (the limit it passes to GetBroadcasts) for them to count as served
	// even when it took none.
	flushRoom = 512
	// flushStarved is how many gossip intervals the table broadcasts may
	// wait unserved before the node sends them itself.
	flushStarved = 3
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
	}
}

// flushLoop runs flushDue every gossip interval.
func (c *Cluster) flushLoop(every time.Duration) {
	defer c.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			// The tick's own time is when it was due, not when this
			// goroutine got to run.
			now := time.Now()
			c.flushDue(now, every, now.Sub(last) > every*3/2)
			last = now
		}
	}
}

// flushDue sends the waiting table broadcasts itself when memberlist has
// not served them for flushStarved gossip intervals (every); late says
// that this tick came over half an interval late.
func (c *Cluster) flushDue(now time.Time, every time.Duration, late bool) {
	if late || c.alive.Load() < 2 {
		// The node was not running, or has no one to gossip with (then
		// memberlist does not ask): the wait starts now.
		c.served.Store(now.UnixNano())
		return
	}
	// memberlist asks for the broadcasts at every gossip even with none
	// queued, so served tells whether it would have room for them, and a
	// node that has seen it leave none for a while sends a relay it has
	// just queued at the next tick, not flushStarved intervals later.
	if now.Sub(time.Unix(0, c.served.Load())) < flushStarved*every || c.queue.NumQueued() == 0 {
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
