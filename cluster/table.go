package cluster

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefineTable declares a table before it is written. Defining a table again
// changes its options. Entries of tables that are not defined here are still
// stored and relayed, as not node-scoped; when a node-scoped table is first
// defined, the entries of it that name this node as owner, received from
// peers meanwhile, are refuted.
func (c *Cluster) DefineTable(name string, opt TableOptions) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("table name %q: must be 1 to %d bytes", name, maxNameLen)
	}
	c.mu.Lock()
	_, redefined := c.tables[name]
	c.tables[name] = opt
	var refuted []Entry
	if opt.NodeScoped && !redefined {
		refuted = c.refuteHeldLocked(name)
	}
	c.mu.Unlock()
	for _, e := range refuted {
		c.broadcast(e)
	}
	return nil
}

// refuteHeldLocked overwrites with tombstones the live entries of table
// that name this node as owner and returns them to spread. This node
// never writes a table before defining it, so such entries were received
// before table was defined node-scoped (a restarted node that peers
// pushed their state to at once): copies left over from an earlier run,
// which applyLocked refutes when they arrive later. c.mu must be held.
func (c *Cluster) refuteHeldLocked(table string) []Entry {
	var out []Entry
	for k, r := range c.entries {
		if k.table != table || r.Owner != c.cfg.NodeName || r.Deleted {
			continue
		}
		ne, err := c.writeLocked(Entry{Table: k.table, Key: k.key, Deleted: true})
		if err != nil {
			break
		}
		out = append(out, ne)
	}
	return out
}

func (c *Cluster) checkWrite(table, key string, value []byte) error {
	if _, ok := c.tables[table]; !ok {
		return fmt.Errorf("table %q is not defined", table)
	}
	if len(key) > maxKeyLen {
		return fmt.Errorf("table %q: key longer than %d bytes", table, maxKeyLen)
	}
	if len(value) > maxValueLen {
		return fmt.Errorf("table %q key %q: value of %d bytes exceeds %d", table, key, len(value), maxValueLen)
	}
	return nil
}

// Put writes value under key in table, owned by this node, with a version
// above every version this node has seen, and spreads it.
func (c *Cluster) Put(table, key string, value []byte) error {
	c.mu.Lock()
	if err := c.checkWrite(table, key, value); err != nil {
		c.mu.Unlock()
		return err
	}
	e, err := c.writeLocked(Entry{Table: table, Key: key, Value: slices.Clone(value)})
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.broadcast(e)
	return nil
}

// Delete removes key from table by writing a tombstone. Deleting a key that
// has no live entry is a no-op.
func (c *Cluster) Delete(table, key string) error {
	c.mu.Lock()
	if err := c.checkWrite(table, key, nil); err != nil {
		c.mu.Unlock()
		return err
	}
	if r := c.entries[tkey{table, key}]; r == nil || r.Deleted {
		c.mu.Unlock()
		return nil
	}
	e, err := c.writeLocked(Entry{Table: table, Key: key, Deleted: true})
	c.mu.Unlock()
	if err != nil {
		return err
	}
	c.broadcast(e)
	return nil
}

// writeLocked stamps e as a new local write, stores it and returns a copy.
// It refuses to write rather than wrap the clock.
func (c *Cluster) writeLocked(e Entry) (Entry, error) {
	if c.clock >= maxVersion {
		return Entry{}, fmt.Errorf("table %q key %q: the Lamport clock is exhausted", e.Table, e.Key)
	}
	c.clock++
	e.Owner = c.cfg.NodeName
	e.Version = c.clock
	c.setLocked(tkey{e.Table, e.Key}, &record{Entry: e, stamp: time.Now()})
	c.notifyLocked()
	return e.clone(), nil
}

// Bounds on Lamport versions from the wire. An honest node's versions grow
// by one per write, so they are never far ahead of the clock of a node that
// has merged the cluster's state.
const (
	// maxVersionLead is how far ahead of the local clock a received
	// version or clock may be.
	maxVersionLead = 1 << 32
	// maxVersion is the highest version accepted or written, far below
	// 2^64 so that no increment can wrap.
	maxVersion = math.MaxUint64 - maxVersionLead
)

// versionOKLocked reports whether a version received from a peer is within
// the bounds; c.mu must be held.
func (c *Cluster) versionOKLocked(v uint64) bool {
	return v <= maxVersion && (v <= c.clock || v-c.clock <= maxVersionLead)
}

// advanceClockLocked moves the clock towards a peer's clock by at most
// maxVersionLead, so that a node far behind catches up over a few
// anti-entropy rounds but no single message can exhaust the clock.
func (c *Cluster) advanceClockLocked(v uint64) {
	if v <= c.clock {
		return
	}
	c.clock += min(v-c.clock, maxVersionLead, maxVersion-c.clock)
}

// Get returns the live entry of key in table.
func (c *Cluster) Get(table, key string) (Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.entries[tkey{table, key}]
	if r == nil || r.Deleted {
		return Entry{}, false
	}
	return r.Entry.clone(), true
}

// List returns the live entries of table sorted by key.
func (c *Cluster) List(table string) []Entry {
	c.mu.Lock()
	var out []Entry
	if t := c.byTable[table]; t != nil {
		out = t.liveLocked()
	}
	c.mu.Unlock()
	sortEntries(out)
	return out
}

// applyLocked merges an entry received from a peer. It returns whether the
// local state changed and, when this node had to refute a stale copy of one
// of its own node-scoped entries, the new entry to spread.
func (c *Cluster) applyLocked(e Entry) (changed bool, refute *Entry) {
	if !c.versionOKLocked(e.Version) {
		c.refuseLocked("version-ahead", e, fmt.Sprintf("version %d is more than 2^32 ahead of the local clock %d", e.Version, c.clock))
		return false, nil
	}
	if e.Version > c.clock {
		c.clock = e.Version
	}
	k := tkey{e.Table, e.Key}
	cur := c.entries[k]
	if c.tables[e.Table].NodeScoped {
		if e.Owner == c.cfg.NodeName {
			if cur != nil && !e.beats(&cur.Entry) {
				return false, nil
			}
			if e.Deleted && (cur == nil || cur.Deleted) {
				c.setLocked(k, &record{Entry: e, stamp: time.Now()})
				return true, nil
			}
			// A copy of "our" entry that we do not hold: left over from an
			// earlier run. This node is the authority; overwrite it.
			ne := Entry{Table: e.Table, Key: e.Key, Deleted: true}
			if cur != nil && cur.Owner == c.cfg.NodeName && !cur.Deleted {
				ne = cur.Entry.clone()
				ne.Deleted = false
			}
			ne, err := c.writeLocked(ne)
			if err != nil {
				return false, nil
			}
			return true, &ne
		}
		if c.gone[e.Owner] {
			return false, nil
		}
	}
	if cur != nil && !e.beats(&cur.Entry) {
		return false, nil
	}
	if cur == nil && e.Version <= c.marks[e.Table] {
		c.refuseLocked("replayed", e, fmt.Sprintf("no newer than the table's reaped tombstones (version %d)", c.marks[e.Table]))
		return false, nil
	}
	c.setLocked(k, &record{Entry: e, stamp: time.Now()})
	return true, nil
}

// marksLocked returns the watermarks sorted by table; c.mu must be held.
func (c *Cluster) marksLocked() []mark {
	out := make([]mark, 0, len(c.marks))
	for t, v := range c.marks {
		out = append(out, mark{t, v})
	}
	slices.SortFunc(out, func(a, b mark) int { return strings.Compare(a.Table, b.Table) })
	return out
}

// mergeMarks adopts a peer's watermarks (never above the local clock) and
// writes again, above them, this node's own live entries that the peer's
// state lacks and its watermark would refuse: entries written while this
// node was cut off or restarting would otherwise never spread.
func (c *Cluster) mergeMarks(m *message) {
	has := make(map[tkey]uint64, len(m.Entries))
	for _, e := range m.Entries {
		has[tkey{e.Table, e.Key}] = e.Version
	}
	var out []Entry
	c.mu.Lock()
	peer := map[string]uint64{}
	for _, mk := range m.Marks {
		if len(c.marks) >= maxMarks && c.marks[mk.Table] == 0 {
			continue
		}
		peer[mk.Table] = mk.Version
		if v := min(mk.Version, c.clock); v > c.marks[mk.Table] {
			c.marks[mk.Table] = v
		}
	}
	for k, r := range c.entries {
		pv, ok := has[k]
		if r.Deleted || r.Owner != c.cfg.NodeName || (ok && pv >= r.Version) || r.Version > peer[k.table] {
			continue
		}
		ne, err := c.writeLocked(r.Entry.clone())
		if err != nil {
			break
		}
		out = append(out, ne)
	}
	c.mu.Unlock()
	for _, e := range out {
		c.broadcast(e)
	}
}

// merge applies remote entries, relays the ones that were news (gossip) when
// relay is set, and spreads refutations.
func (c *Cluster) merge(entries []Entry, relay bool) bool {
	var out []Entry
	c.mu.Lock()
	anyChanged := false
	for _, e := range entries {
		changed, refute := c.applyLocked(e)
		anyChanged = anyChanged || changed
		switch {
		case refute != nil:
			out = append(out, *refute)
		case changed && relay:
			out = append(out, e)
		}
	}
	if anyChanged {
		c.notifyLocked()
	}
	c.mu.Unlock()
	for _, e := range out {
		c.broadcast(e)
	}
	return anyChanged
}

// broadcast spreads one entry: by gossip when it fits a packet (again
// after 1, 3 and 7 s when it is this node's own write: scheduleRegossip),
// else over TCP to every alive member, acknowledged and resent when it is
// this node's own write (deliverOwn).
func (c *Cluster) broadcast(e Entry) {
	msg := (&message{Type: msgEntries, From: c.cfg.NodeName, Entries: []Entry{e}}).encode()
	if len(msg) <= maxBroadcast {
		c.queue.QueueBroadcast(&broadcast{name: e.Table + "\x00" + e.Key, msg: msg})
		c.noteQueueDepth()
		if e.Owner == c.cfg.NodeName {
			c.scheduleRegossip(e)
		}
		return
	}
	if e.Owner == c.cfg.NodeName {
		c.deliverOwn(e)
		return
	}
	// A relay: one send per member; the writer resends until acknowledged.
	peers := c.alivePeers()
	c.spawn(func() {
		for _, n := range peers {
			if err := c.sendReliable(n, msg); err != nil {
				c.log.Debug("send entry", "node", n.Name, "err", err)
			}
		}
	})
}

// alivePeers returns the other alive (or suspect) members.
func (c *Cluster) alivePeers() []*memberlist.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*memberlist.Node
	for _, mi := range c.members {
		if mi.state == StateAlive && mi.name != c.cfg.NodeName {
			out = append(out, &memberlist.Node{Name: mi.name, Addr: mi.addr.Addr().AsSlice(), Port: mi.addr.Port()})
		}
	}
	return out
}

// broadcast is a memberlist broadcast of one entry; a newer one for the same
// table and key replaces it in the queue.
type broadcast struct {
	name string
	msg  []byte
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*broadcast)
	return ok && ob.name == b.name
}
func (b *broadcast) Name() string    { return b.name }
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}

// delegate implements memberlist's Delegate, EventDelegate and AliveDelegate.
// Its methods run on memberlist goroutines (some under memberlist's node
// lock): they never block and never call back into memberlist.
type delegate Cluster

func (d *delegate) c() *Cluster { return (*Cluster)(d) }

func (d *delegate) NodeMeta(limit int) []byte {
	b := encodeMeta(d.cfg.Meta)
	if len(b) > limit {
		return nil
	}
	return b
}

func (d *delegate) NotifyMsg(b []byte) {
	c := d.c()
	m, err := decode(b)
	if err != nil {
		c.log.Debug("dropping malformed gossip message", "err", err)
		return
	}
	switch m.Type {
	case msgEntries:
		if f := c.dropEntries.Load(); f != nil && m.ID == 0 && (*f)() {
			return
		}
		c.merge(m.Entries, true)
		if m.ID != 0 {
			c.ack(m.From, m.ID)
		}
	case msgAck:
		c.acked(m.From, m.ID)
	case msgCatchUp:
		if m.Held { // an answer: the same digest
			c.caughtUp(false)
		} else {
			c.answerCatchUp(m)
		}
	case msgState: // an answer to this node's catch-up request, or a return
		c.caughtUp(c.mergeState(m))
		if m.Held {
			c.returnState(m)
		}
	case msgClaimReq:
		c.merge(m.Entries, false)
		c.answerClaim(m)
	case msgLeave:
		c.mu.Lock()
		if len(c.leaving) < 4096 {
			c.leaving[m.From] = true
		}
		if mi := c.members[m.From]; mi != nil && mi.state == StateDead {
			mi.state = StateLeft
			c.expireOwnerLocked(m.From, time.Now())
			c.notifyLocked()
		}
		c.mu.Unlock()
	case msgClaimResp:
		c.merge(m.Entries, false)
		c.mu.Lock()
		if ch := c.waiters[m.ID]; ch != nil {
			select {
			case ch <- m:
			default:
			}
		}
		c.mu.Unlock()
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	out := d.queue.GetBroadcasts(overhead, limit)
	d.c().noteServed(limit, len(out))
	return out
}

func (d *delegate) LocalState(join bool) []byte {
	c := d.c()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stateLocked().encode()
}

// stateLocked returns this node's table state as a push/pull message.
// c.mu must be held.
func (c *Cluster) stateLocked() *message {
	m := &message{Type: msgState, From: c.cfg.NodeName, Clock: c.clock, Entries: make([]Entry, 0, len(c.entries)), Marks: c.marksLocked()}
	for _, r := range c.entries {
		if !r.expired {
			m.Entries = append(m.Entries, r.Entry)
		}
	}
	return m
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	c := d.c()
	m, err := decode(buf)
	if err != nil || m.Type != msgState {
		c.log.Debug("dropping malformed push/pull state", "err", err)
		return
	}
	c.mergeState(m)
}

func memberAddr(n *memberlist.Node) netip.AddrPort {
	a, _ := netip.AddrFromSlice(n.Addr)
	return netip.AddrPortFrom(a.Unmap(), n.Port)
}

func (d *delegate) NotifyJoin(n *memberlist.Node) {
	c := d.c()
	meta, err := decodeMeta(n.Meta)
	if err != nil {
		c.log.Warn("node meta", "node", n.Name, "err", err)
	}
	c.mu.Lock()
	prev := c.members[n.Name]
	rejoin := prev != nil && prev.state != StateAlive
	if prev == nil || prev.state != StateAlive {
		c.alive.Add(1)
	}
	c.members[n.Name] = &memberInfo{name: n.Name, addr: memberAddr(n), meta: meta, state: StateAlive, since: time.Now()}
	delete(c.unknown, n.Name)
	delete(c.leaving, n.Name)
	// A member whose entries this node expired (dead for NodeGrace, or
	// left) and whose writes it refused meanwhile: this node holds none of
	// them now, and the member may not know (only this node declared it
	// dead, its probes lost on a loaded host), so it does not announce them
	// again. Exchange states with it (a push/pull), rather than wait for the
	// periodic one.
	refetch := c.gone[n.Name] && n.Name != c.cfg.NodeName
	if c.gone[n.Name] {
		delete(c.gone, n.Name)
		for k, r := range c.entries {
			if r.expired && r.Owner == n.Name {
				c.dropLocked(k)
			}
		}
	}
	var own []Entry
	if rejoin && n.Name != c.cfg.NodeName {
		// The returning node may have expired our entries: re-announce.
		for k, r := range c.entries {
			if r.Owner == c.cfg.NodeName && c.tables[k.table].NodeScoped {
				own = append(own, r.Entry.clone())
			}
		}
	}
	c.notifyLocked()
	c.mu.Unlock()
	if n.Name != c.cfg.NodeName {
		c.log.Info("node joined", "node", n.Name, "addr", memberAddr(n), "rejoin", rejoin)
	}
	if len(own) > 0 {
		// Not here: memberlist holds its node lock while calling us.
		c.spawn(func() {
			for _, e := range own {
				c.broadcast(e)
			}
		})
	}
	if refetch {
		// n is memberlist's: read it here, not on the goroutine.
		name, addr := n.Name, memberAddr(n)
		c.spawn(func() { c.pullFrom(name, addr) })
	}
}

// pullSpreadPerMember and pullSpreadMax spread the pulls of the members
// that all expired a returning node's entries (a node back after a long
// outage): each waits a random time up to pullSpreadPerMember times the
// alive members, at most pullSpreadMax (stretched by TimeScale), so that
// the node does not answer every member's push/pull at once.
const (
	pullSpreadPerMember = 10 * time.Millisecond
	pullSpreadMax       = 10 * time.Second
)

// pullFrom exchanges table states with the member name at addr (a
// push/pull, through memberlist's Join), after a random spread (see
// pullSpreadPerMember), counted as "state-pulled"; a failure is left to
// the periodic push/pull.
func (c *Cluster) pullFrom(name string, addr netip.AddrPort) {
	spread := c.dur(min(pullSpreadPerMember*time.Duration(c.alive.Load()), pullSpreadMax))
	t := time.NewTimer(rand.N(spread + 1))
	select {
	case <-c.stop:
		t.Stop()
		return
	case <-t.C:
	}
	ml := c.ml.Load()
	if ml == nil {
		return
	}
	c.mu.Lock()
	c.drops["state-pulled"]++
	c.mu.Unlock()
	if _, err := ml.Join([]string{addr.String()}); err != nil {
		c.log.Debug("pull the state of a member back from gone", "node", name, "err", err)
	}
}

func (d *delegate) NotifyLeave(n *memberlist.Node) {
	c := d.c()
	st := StateDead
	now := time.Now()
	c.mu.Lock()
	if c.leaving[n.Name] {
		st = StateLeft
	}
	mi := c.members[n.Name]
	if mi == nil {
		mi = &memberInfo{name: n.Name, addr: memberAddr(n)}
		c.members[n.Name] = mi
	}
	if mi.state == StateAlive {
		c.alive.Add(-1)
	}
	mi.state, mi.suspect, mi.since = st, false, now
	if st == StateLeft {
		c.expireOwnerLocked(n.Name, now)
	}
	c.notifyLocked()
	c.mu.Unlock()
	c.log.Info("node "+st, "node", n.Name)
}

func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	c := d.c()
	meta, err := decodeMeta(n.Meta)
	if err != nil {
		c.log.Warn("node meta", "node", n.Name, "err", err)
	}
	c.mu.Lock()
	if mi := c.members[n.Name]; mi != nil {
		mi.meta, mi.addr = meta, memberAddr(n)
	}
	c.notifyLocked()
	c.mu.Unlock()
}

func (d *delegate) NotifyAlive(n *memberlist.Node) error {
	c := d.c()
	c.mu.Lock()
	if mi := c.members[n.Name]; mi != nil && mi.suspect {
		mi.suspect = false
		c.notifyLocked()
	}
	c.mu.Unlock()
	return nil
}

// Known reports whether this node holds an entry for key in table, live or
// as a tombstone: a caller restoring its own copy of an entry can tell
// "deleted elsewhere" from "never seen".
func (c *Cluster) Known(table, key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries[tkey{table, key}] != nil
}

// maxRefusalLogs bounds the remembered refusals that were already logged.
const maxRefusalLogs = 4096

// refuseLocked counts an entry refused from the wire under reason and logs
// it once per entry version; c.mu must be held.
func (c *Cluster) refuseLocked(reason string, e Entry, detail string) {
	c.drops[reason]++
	id := fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%d", reason, e.Table, e.Key, e.Owner, e.Version)
	if c.logged[id] {
		return
	}
	if len(c.logged) >= maxRefusalLogs {
		clear(c.logged)
	}
	c.logged[id] = true
	c.log.Warn("refusing a replicated entry (logged once per entry version)", "reason", reason,
		"table", e.Table, "key", e.Key, "owner", e.Owner, "version", e.Version, "detail", detail)
}

// Drops returns how many received entries and packets were refused, by
// reason: "version-ahead" (a Lamport version more than 2^32 ahead of the
// local clock), "replayed" (an entry no newer than a reaped tombstone of its
// table) and "gossip-version" (a memberlist packet or stream not encrypted
// with encryption version 1); and how this node's own entries over the
// gossip packet limit fared: "entry-resent" (a send to a member that had
// not acknowledged the previous one in time) and "entry-undelivered" (a
// member that acknowledged none of maxDeliverSends sends, left to
// anti-entropy); "claim-resent" counts claim requests sent again to a
// member that had not answered the previous one in time; "regossip-full" counts own small writes broadcast only
// once because maxRegossip writes were already scheduled again;
// "catchup-asked" counts catch-up requests sent after a burst,
// "catchup-answered" the table states sent in answer to a member whose
// digest differed, "catchup-returned" the states sent back to a member
// whose answer lacked entries (returnState), and "catchup-busy" the
// requests and returns left undone because maxCatchUpAnswers answers were
// in flight; "state-pulled" counts the push/pulls with a member back from
// gone (its entries expired here: NotifyJoin); "broadcast-flushed" counts the
// packets of table broadcasts this node sent itself because memberlist's
// own broadcasts left them no room for flushStarved gossip intervals
// (flush.go).
func (c *Cluster) Drops() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(c.drops))
	for k, v := range c.drops {
		out[k] = v
	}
	return out
}
