package cluster

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Acknowledged delivery of large entries. An entry over the gossip packet
// limit cannot ride memberlist's broadcasts; it goes to each member over
// TCP. memberlist's SendReliable reports success once the bytes are in the
// local socket, not once the peer has read them, and a loaded peer may
// drop the stream unread (its read deadline passes), so a node's own large
// writes carry an id that the receiver acknowledges once it has merged
// them, and the writer resends with backoff until each alive member has
// acknowledged, the member is gone, or a newer write of the key replaces
// the delivery. Relays by other nodes stay one send per member.
const (
	// ackWaitFirst is how long the first send waits for its
	// acknowledgement; each resend waits twice as long, up to ackWaitMax.
	ackWaitFirst = 500 * time.Millisecond
	ackWaitMax   = 8 * time.Second
	// maxDeliverSends bounds the sends of one delivery (about 100 s with
	// the waits above); push/pull anti-entropy repairs what is left.
	maxDeliverSends = 16
)

// outKey names one delivery: a member and one of this node's keys.
type outKey struct {
	peer string
	k    tkey
}

// delivery is the pending delivery of this node's newest write of one large
// entry to one member. Its fields are guarded by Cluster.mu.
type delivery struct {
	key     outKey
	version uint64 // of the entry in msg
	id      uint64 // acknowledgement id carried by msg
	msg     []byte // encoded msgEntries
	done    bool   // acknowledged
	wake    chan struct{}
	fin     chan struct{} // closed once the delivery is forgotten (finishLocked)
}

func (d *delivery) signal() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// deliverOwn sends e, one of this node's own writes over the gossip packet
// limit, to every alive member, each until it acknowledges. A delivery of
// an older version of the same key to the same member is replaced, so there
// is at most one per member and key. It returns the deliveries that carry
// e or a newer write of its key.
func (c *Cluster) deliverOwn(e Entry) []*delivery {
	var out []*delivery
	for _, p := range c.alivePeers() {
		c.mu.Lock()
		if c.closing {
			c.mu.Unlock()
			return out
		}
		c.nextID++
		id := c.nextID
		msg := (&message{Type: msgEntries, ID: id, From: c.cfg.NodeName, Entries: []Entry{e}}).encode()
		ok := outKey{p.Name, tkey{e.Table, e.Key}}
		if d := c.outbox[ok]; d != nil {
			if d.version <= e.Version {
				delete(c.acks, d.id)
				d.version, d.id, d.msg = e.Version, id, msg
				c.acks[id] = d
				d.signal()
			}
			c.mu.Unlock()
			out = append(out, d)
			continue
		}
		d := &delivery{key: ok, version: e.Version, id: id, msg: msg, wake: make(chan struct{}, 1), fin: make(chan struct{})}
		c.outbox[ok] = d
		c.acks[id] = d
		c.mu.Unlock()
		out = append(out, d)
		c.spawn(func() { c.deliver(d) })
	}
	return out
}

// Ref names one entry: a table and a key.
type Ref struct {
	Table, Key string
}

// ClaimRef names this node's entry of a claim on resource of group in
// table (what Claim writes and ReleaseClaim deletes), for Spread.
func (c *Cluster) ClaimRef(table, group, resource string) Ref {
	return Ref{table, claimKey(group, resource) + c.cfg.NodeName}
}

// Spread sends this node's newest write of each entry named to every
// alive member over TCP, each until it acknowledges (as large entries
// are delivered), and waits up to timeout for those acknowledgements. A
// caller that is about to report a write as done (a network or service
// created or removed) calls it, so that a command run next on another
// host finds the write there rather than a moment later by gossip. The
// writes keep spreading after timeout; the error then names the members
// that had not merged them yet.
func (c *Cluster) Spread(timeout time.Duration, refs ...Ref) error {
	ds, err := c.push(refs)
	if err != nil {
		return err
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
wait:
	for _, d := range ds {
		select {
		case <-d.fin:
		case <-c.stop:
			return errors.New("cluster is closed")
		case <-t.C:
			break wait
		}
	}
	var late []string
	for _, d := range ds {
		select {
		case <-d.fin:
		default:
			if !slices.Contains(late, d.key.peer) {
				late = append(late, d.key.peer)
			}
		}
	}
	if len(late) > 0 {
		slices.Sort(late)
		return fmt.Errorf("not yet acknowledged by %s after %v", strings.Join(late, ", "), timeout)
	}
	return nil
}

// Push starts what Spread does and returns at once: this node's newest
// write of each entry named goes to every alive member over TCP, each
// until it acknowledges. A node pushes a write that other members need
// promptly but that no command waits for here (its key state, which the
// command on the host that created an encrypted network waits to see).
func (c *Cluster) Push(refs ...Ref) error {
	_, err := c.push(refs)
	return err
}

// push starts the deliveries of Spread and Push and returns them.
func (c *Cluster) push(refs []Ref) ([]*delivery, error) {
	var ds []*delivery
	for _, ref := range refs {
		c.mu.Lock()
		r := c.entries[tkey{ref.Table, ref.Key}]
		mine := r != nil && r.Owner == c.cfg.NodeName
		var e Entry
		if mine {
			e = r.Entry.clone()
		}
		c.mu.Unlock()
		if !mine {
			return ds, fmt.Errorf("table %q, key %q: no write of this node's to spread", ref.Table, ref.Key)
		}
		ds = append(ds, c.deliverOwn(e)...)
	}
	return ds, nil
}

// deliver sends d until it is acknowledged, replaced by nothing newer
// worth sending, or given up.
func (c *Cluster) deliver(d *delivery) {
	wait, sends := c.dur(ackWaitFirst), 0
	for {
		c.mu.Lock()
		to, why := c.deliveryTargetLocked(d)
		if to == nil {
			c.finishLocked(d)
			c.mu.Unlock()
			if why != "" {
				c.log.Debug("stop delivering entry", "node", d.key.peer, "table", d.key.k.table, "key", d.key.k.key, "why", why)
			}
			return
		}
		if sends == maxDeliverSends {
			c.drops["entry-undelivered"]++
			c.finishLocked(d)
			c.mu.Unlock()
			c.log.Warn("a member did not acknowledge an entry; leaving it to anti-entropy", "node", d.key.peer,
				"table", d.key.k.table, "key", d.key.k.key, "sends", sends)
			return
		}
		if sends > 0 {
			c.drops["entry-resent"]++
		}
		msg, id := d.msg, d.id
		c.mu.Unlock()
		sends++
		if err := c.sendReliable(to, msg); err != nil {
			c.log.Debug("send entry", "node", to.Name, "err", err)
		}
		closing, replaced := c.await(d, id, wait)
		switch {
		case closing:
			c.mu.Lock()
			c.finishLocked(d)
			c.mu.Unlock()
			return
		case replaced: // a newer write: send it now
			wait, sends = c.dur(ackWaitFirst), 0
		default:
			wait = min(2*wait, c.dur(ackWaitMax))
		}
	}
}

// await waits up to wait for the acknowledgement of d's send id or for a
// newer write replacing it; it reports whether the node is closing and
// whether d was replaced.
func (c *Cluster) await(d *delivery, id uint64, wait time.Duration) (closing, replaced bool) {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return true, false
		case <-t.C:
			return false, false
		case <-d.wake:
			c.mu.Lock()
			done, cur := d.done, d.id
			c.mu.Unlock()
			if done {
				return false, false
			}
			if cur != id {
				return false, true
			}
		}
	}
}

// deliveryTargetLocked returns the member to send d to, or nil and why not
// when d is acknowledged, the member is no longer alive, or this node no
// longer holds the version d carries as its newest write; c.mu must be held.
func (c *Cluster) deliveryTargetLocked(d *delivery) (*memberlist.Node, string) {
	if d.done {
		return nil, ""
	}
	if c.closing {
		return nil, "closing"
	}
	mi := c.members[d.key.peer]
	if mi == nil || mi.state != StateAlive {
		return nil, "member not alive"
	}
	if r := c.entries[d.key.k]; r == nil || r.Owner != c.cfg.NodeName || r.Version != d.version {
		return nil, "superseded"
	}
	return &memberlist.Node{Name: mi.name, Addr: mi.addr.Addr().AsSlice(), Port: mi.addr.Port()}, ""
}

// finishLocked forgets d; c.mu must be held.
func (c *Cluster) finishLocked(d *delivery) {
	select {
	case <-d.fin:
	default:
		close(d.fin)
	}
	if c.outbox[d.key] == d {
		delete(c.outbox, d.key)
	}
	if c.acks[d.id] == d {
		delete(c.acks, d.id)
	}
}

// acked records a member's acknowledgement of delivery id.
func (c *Cluster) acked(from string, id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.acks[id]
	if d == nil || d.key.peer != from {
		return
	}
	d.done = true
	c.finishLocked(d)
	d.signal()
}

// ack acknowledges delivery id to the member named from, by UDP: a lost
// acknowledgement only costs a resend of the entry.
func (c *Cluster) ack(from string, id uint64) {
	b := (&message{Type: msgAck, ID: id, From: c.cfg.NodeName}).encode()
	c.spawn(func() {
		c.mu.Lock()
		mi := c.members[from]
		c.mu.Unlock()
		ml := c.ml.Load()
		if mi == nil || ml == nil {
			return
		}
		to := &memberlist.Node{Name: mi.name, Addr: mi.addr.Addr().AsSlice(), Port: mi.addr.Port()}
		if err := ml.SendBestEffort(to, b); err != nil {
			c.log.Debug("acknowledge entry", "node", from, "err", err)
		}
	})
}

// An entry that fits a gossip packet rides memberlist's broadcasts, each
// sent RetransmitMult times within a few gossip intervals: a member whose
// packets are all lost in that second (a loaded underlay drops bursts)
// would wait for push/pull. So a node broadcasts its own small writes
// again at the delays of regossipDelays after the write, as long as the
// write is still its newest of the key: no per-member state, and a member
// that already holds the version neither changes nor relays it.
var regossipDelays = [...]time.Duration{time.Second, 3 * time.Second, 7 * time.Second}

// maxRegossip bounds the own writes scheduled for a broadcast again; a
// write beyond it is spread once, as before, and counted.
const maxRegossip = 4096

// regossipQueueMax is the backlog of broadcasts above which regossipDue
// waits: the first sends of recent writes are still going out (each
// gossip interval carries only a few packets), so a broadcast again would
// only replace one that has not gone yet and push every other change back.
// Under churn the queue, not a lost packet, is what delays a change.
const regossipQueueMax = 32

// regossip is the schedule of one own small write.
type regossip struct {
	version uint64
	round   int // index into regossipDelays of the next broadcast
	next    time.Time
}

// scheduleRegossip schedules e, a small own write just broadcast.
func (c *Cluster) scheduleRegossip(e Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := tkey{e.Table, e.Key}
	if c.regossip[k] == nil && len(c.regossip) >= maxRegossip {
		c.drops["regossip-full"]++
		return
	}
	c.regossip[k] = &regossip{version: e.Version, next: time.Now().Add(c.dur(regossipDelays[0]))}
}

// regossipDue broadcasts again the own small writes whose time has come.
func (c *Cluster) regossipDue(now time.Time) {
	if c.queue.NumQueued() > regossipQueueMax {
		return
	}
	var out [][]byte
	var names []string
	c.mu.Lock()
	for k, g := range c.regossip {
		r := c.entries[k]
		if r == nil || r.expired || r.Owner != c.cfg.NodeName || r.Version != g.version {
			delete(c.regossip, k)
			continue
		}
		if now.Before(g.next) {
			continue
		}
		out = append(out, (&message{Type: msgEntries, From: c.cfg.NodeName, Entries: []Entry{r.Entry}}).encode())
		names = append(names, k.table+"\x00"+k.key)
		g.round++
		if g.round == len(regossipDelays) {
			delete(c.regossip, k)
			continue
		}
		g.next = now.Add(c.dur(regossipDelays[g.round] - regossipDelays[g.round-1]))
	}
	c.mu.Unlock()
	for i, msg := range out {
		c.queue.QueueBroadcast(&broadcast{name: names[i], msg: msg})
	}
}
