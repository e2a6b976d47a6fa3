package cluster

import (
	"math/rand/v2"
	"time"

	"github.com/hashicorp/memberlist"
)

// Catch-up after a burst. memberlist's broadcasts send each entry a fixed
// number of times (RetransmitMult * ceil(log10(N+1))) to random members, so
// after a burst of C changes about N*C*e^-(that number) (member, entry)
// pairs are missed: measured, 13 of 300 simulated nodes lacked 1-3 of 1,000
// new endpoints. Own-write re-gossip (regossipDue) repairs small bursts but
// waits while the queue is long, and periodic push/pull comes every 30 s
// times log2(N/32) (3 minutes at 1,000 nodes). So a node whose broadcast
// queue went over regossipQueueMax, or that queued more than that many
// broadcasts (its own writes and relays) between two moments the queue
// was empty (noteQueueDepth), asks one random member, once the queue
// has drained, whether their tables differ: a catch-up request carries a
// digest of the sender's table state (one 64-bit sum), and a member whose
// own digest differs answers with its full table state (the push/pull
// state, over a stream, with its digest), which the sender merges and, if
// its own digest still differs, returns (returnState): either side may be
// the one that missed entries. One whose digest is the same says so in a
// small packet. A node that caught everything costs
// two small packets per burst.
const (
	// catchUpGap is the least time between two catch-up requests of a
	// node (stretched by TimeScale): a node that is busy all the time
	// asks no more often than memberlist's base push/pull interval.
	catchUpGap = 30 * time.Second
	// catchUpQuietTicks is how many maintain ticks in a row the queue
	// must be empty before the request: the last relays of a burst from
	// other members arrive for a few gossip intervals after this node's
	// queue drained.
	catchUpQuietTicks = 2
	// maxCatchUpAnswers bounds the full-state answers in flight at once;
	// a request beyond it is counted as "catchup-busy" and not answered.
	maxCatchUpAnswers = 4
	// catchUpWait is how long a catch-up request waits for its answer
	// (stretched by TimeScale), and catchUpTries how many requests one
	// catch-up sends at most.
	catchUpWait  = 2 * time.Second
	catchUpTries = 3
)

// noteQueueDepth, called for each broadcast queued, marks a burst when the
// broadcast queue is longer than regossipQueueMax, or more than that many
// broadcasts were queued since maintain last found it empty: a node that
// relays a burst's news as fast as they come (a small cluster, whose
// gossip carries them off at once) took part in a burst as much as one
// whose queue grew, and may as well have missed some of it.
func (c *Cluster) noteQueueDepth() {
	n := c.queuedSinceEmpty.Add(1)
	if n > regossipQueueMax || c.queue.NumQueued() > regossipQueueMax {
		c.burst.Store(true)
	}
}

// catchUpDue starts a catch-up (catchUp) when a burst's broadcasts have
// drained; maintain's goroutine only.
func (c *Cluster) catchUpDue(now time.Time) {
	empty := c.queue.NumQueued() == 0
	if empty {
		c.queuedSinceEmpty.Store(0)
	}
	if !c.burst.Load() {
		return
	}
	if !empty {
		c.quietTicks = 0
		return
	}
	if c.quietTicks++; c.quietTicks < catchUpQuietTicks || now.Before(c.nextCatchUp) {
		return
	}
	if !c.catchUpOn.CompareAndSwap(false, true) {
		return
	}
	c.burst.Store(false)
	c.quietTicks = 0
	c.nextCatchUp = now.Add(c.dur(catchUpGap))
	c.spawn(c.catchUp)
}

// catchUp sends catch-up requests to random alive members, each asked
// once: again to another when none answers within catchUpWait (a lost
// packet), when the answer brought entries this node lacked (that member
// may have missed some too), or when the first answer brought nothing
// (that member may be as far behind as this node), at most catchUpTries
// times. A catch-up that brought entries is followed by another one
// catchUpGap later: the members it asked may still have been receiving the
// same burst, and one as far behind as this node answers "the same".
func (c *Cluster) catchUp() {
	defer c.catchUpOn.Store(false)
	gotNews := false
	defer func() {
		if gotNews {
			c.burst.Store(true)
		}
	}()
	asked := map[string]bool{}
	empty := 0 // answers that brought nothing
	for range catchUpTries {
		var peers []*memberlist.Node
		for _, p := range c.alivePeers() {
			if !asked[p.Name] {
				peers = append(peers, p)
			}
		}
		if len(peers) == 0 {
			return
		}
		to := peers[rand.IntN(len(peers))]
		asked[to.Name] = true
		c.mu.Lock()
		msg := (&message{Type: msgCatchUp, From: c.cfg.NodeName, Clock: c.clock, ID: c.digestLocked()}).encode()
		c.drops["catchup-asked"]++
		c.mu.Unlock()
		select {
		case <-c.catchUpAns: // a late answer to an earlier request
		default:
		}
		if ml := c.ml.Load(); ml != nil {
			if err := ml.SendBestEffort(to, msg); err != nil {
				c.log.Debug("send catch-up request", "node", to.Name, "err", err)
			}
		}
		t := time.NewTimer(c.dur(catchUpWait))
		select {
		case <-c.stop:
			t.Stop()
			return
		case news := <-c.catchUpAns:
			t.Stop()
			if news {
				gotNews = true
			} else if empty++; empty == 2 {
				return
			}
		case <-t.C:
		}
	}
}

// caughtUp passes an answer to catchUp: whether it brought new entries.
func (c *Cluster) caughtUp(news bool) {
	select {
	case c.catchUpAns <- news:
	default:
	}
}

// answerCatchUp answers a catch-up request m: with this node's table state
// (over a stream) when their digests differ, else with a catch-up message
// that says so (Held).
func (c *Cluster) answerCatchUp(m *message) {
	c.mu.Lock()
	c.advanceClockLocked(m.Clock)
	to := c.aliveOtherLocked(m.From)
	if to == nil {
		c.mu.Unlock()
		return
	}
	if m.ID == c.digestLocked() {
		msg := (&message{Type: msgCatchUp, From: c.cfg.NodeName, Clock: c.clock, Held: true}).encode()
		c.mu.Unlock()
		// Not from the delegate's goroutine: it must not call back into
		// memberlist (as ack).
		c.spawn(func() {
			if ml := c.ml.Load(); ml != nil {
				if err := ml.SendBestEffort(to, msg); err != nil {
					c.log.Debug("answer catch-up request", "node", to.Name, "err", err)
				}
			}
		})
		return
	}
	if !c.takeAnswerLocked("catchup-answered") {
		c.mu.Unlock()
		return
	}
	st := c.stateLocked()
	st.ID, st.Held = c.digestLocked(), true
	c.mu.Unlock()
	c.sendState(to, st.encode(), "answer catch-up request")
}

// returnState completes a catch-up whose answer m (a msgState with Held)
// this node has merged: when this node's digest still differs from the
// answer's (m.ID), the member that answered lacks entries this node holds
// (the digests differed because either side missed some), and it gets
// this node's state in return, once: the return does not ask for another.
// Without it a member that missed part of a burst and answered another's
// catch-up stayed behind until periodic push/pull.
func (c *Cluster) returnState(m *message) {
	c.mu.Lock()
	to := c.aliveOtherLocked(m.From)
	if to == nil || c.digestLocked() == m.ID || !c.takeAnswerLocked("catchup-returned") {
		c.mu.Unlock()
		return
	}
	b := c.stateLocked().encode()
	c.mu.Unlock()
	c.sendState(to, b, "return catch-up state")
}

// aliveOtherLocked returns the alive member name as a memberlist node,
// or nil when it is this node, unknown or not alive. c.mu must be held.
func (c *Cluster) aliveOtherLocked(name string) *memberlist.Node {
	mi := c.members[name]
	if name == c.cfg.NodeName || mi == nil || mi.state != StateAlive {
		return nil
	}
	return &memberlist.Node{Name: mi.name, Addr: mi.addr.Addr().AsSlice(), Port: mi.addr.Port()}
}

// takeAnswerLocked takes one of the maxCatchUpAnswers state sends in
// flight, counting it as what (or the refusal as "catchup-busy"); the
// send's sendState gives it back. c.mu must be held.
func (c *Cluster) takeAnswerLocked(what string) bool {
	if c.catchUpAnswers >= maxCatchUpAnswers {
		c.drops["catchup-busy"]++
		return false
	}
	c.catchUpAnswers++
	c.drops[what]++
	return true
}

// sendState sends a table state to a member over a stream, off the
// delegate's goroutine (it must not call back into memberlist), within
// the catchUpAnswers taken by the caller.
func (c *Cluster) sendState(to *memberlist.Node, b []byte, what string) {
	c.spawn(func() {
		defer func() {
			c.mu.Lock()
			c.catchUpAnswers--
			c.mu.Unlock()
		}()
		if err := c.sendReliable(to, b); err != nil {
			c.log.Debug(what, "node", to.Name, "err", err)
		}
	})
}

// mergeState merges a table state (a push/pull's, or an answer to a
// catch-up request) and reports whether it changed an entry.
func (c *Cluster) mergeState(m *message) bool {
	c.mu.Lock()
	c.advanceClockLocked(m.Clock)
	c.mu.Unlock()
	changed := c.merge(m.Entries, false)
	c.mergeMarks(m)
	return changed
}

// digestLocked sums a 64-bit hash of the table, key, owner, version and
// deletion of every entry that LocalState sends: two nodes holding the
// same entries have the same digest. c.mu must be held.
func (c *Cluster) digestLocked() uint64 {
	var sum uint64
	for k, r := range c.entries {
		if r.expired {
			continue
		}
		h := fnvString(fnvOffset, k.table)
		h = fnvString(h^0xff, k.key)
		h = fnvString(h^0xfe, r.Owner)
		h = (h ^ r.Version) * fnvPrime
		if r.Deleted {
			h = (h ^ 1) * fnvPrime
		}
		// A final mix, so that sums of similar hashes do not cancel.
		h ^= h >> 33
		h *= 0xff51afd7ed558ccd
		h ^= h >> 33
		sum += h
	}
	return sum
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * fnvPrime
	}
	return h
}
