package lb

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// Shards is the number of conntrack shards, each with its own lock.
const Shards = 64

// DefaultMax is the default conntrack size.
const DefaultMax = 262144

// Timeouts of conntrack entries and of the health logic. Zero fields take
// the defaults (DefaultTimeouts).
type Timeouts struct {
	TCPEstablished time.Duration // 24h
	TCPSyn         time.Duration // 30s: SYN seen, no answer yet
	TCPClosing     time.Duration // 2m: FIN seen
	TCPClose       time.Duration // 10s: RST seen
	UDP            time.Duration // 120s
	ICMP           time.Duration // 30s: echo
	// SynRetry is how long a SYN may go unanswered before a retransmitted
	// SYN is sent to another backend. The default, 900ms, is just under
	// the client's own retransmission timeout (1s in Linux), so that the
	// first retransmission moves even though the clock is read once per
	// batch.
	SynRetry time.Duration
	// Eject is how long a backend is skipped after EjectAfter consecutive
	// failed connection attempts (10s).
	Eject time.Duration
}

// DefaultTimeouts are the defaults of every Timeouts field.
var DefaultTimeouts = Timeouts{
	TCPEstablished: 24 * time.Hour,
	TCPSyn:         30 * time.Second,
	TCPClosing:     2 * time.Minute,
	TCPClose:       10 * time.Second,
	UDP:            120 * time.Second,
	ICMP:           30 * time.Second,
	SynRetry:       900 * time.Millisecond,
	Eject:          10 * time.Second,
}

// Health constants.
const (
	// MaxRetries is how many times one connection attempt is moved to
	// another backend.
	MaxRetries = 2
	// EjectAfter consecutive failed attempts eject a backend.
	EjectAfter = 3
)

func (t *Timeouts) fill() {
	d := DefaultTimeouts
	for _, f := range []struct{ p, def *time.Duration }{
		{&t.TCPEstablished, &d.TCPEstablished}, {&t.TCPSyn, &d.TCPSyn},
		{&t.TCPClosing, &d.TCPClosing}, {&t.TCPClose, &d.TCPClose},
		{&t.UDP, &d.UDP}, {&t.ICMP, &d.ICMP}, {&t.SynRetry, &d.SynRetry}, {&t.Eject, &d.Eject},
	} {
		if *f.p <= 0 {
			*f.p = *f.def
		}
	}
}

// Config configures a Conntrack.
type Config struct {
	Max         int // entries; 0 means DefaultMax
	AffinityMax int // client-IP affinity slots; 0 means DefaultAffinityMax
	SynSlots    int // remembered SYNs for WriteRetry; 0 means DefaultSynSlots
	// FragMax is how many fragmented datagrams (each way) are followed at
	// once; 0 means DefaultFragMax (see FragTable).
	FragMax int
	// FragTimeout is how long a datagram's first fragment is remembered
	// for its later fragments; 0 means DefaultFragTimeout.
	FragTimeout time.Duration
	// FragHeld is how many later fragments that came before their first
	// are held at once (Hold); 0 means DefaultFragHeld.
	FragHeld int
	Timeouts Timeouts
}

// Conntrack is a host's connection table, shared by the Tables of all its
// networks (keys include the network). It is sharded by client address
// and port; each shard has a fixed slab of entries, two hash indexes
// (client-side key and backend-side key) and an LRU list, all in uint32
// slab indexes, so lookups and inserts never allocate.
type Conntrack struct {
	shards [Shards]shard
	seed   uint64
	to     timeouts
	aff    *affinity
	syns   *synStore
	frags  *FragTable
	hold   fragHold
	// sources counts entries by a hash of (network, backend IP), so
	// Untranslate passes frames from addresses that are no entry's
	// backend (most frames to a local port) after one atomic load.
	sources [sourceSlots]atomic.Int32
}

// sourceSlots is the size of Conntrack.sources.
const sourceSlots = 4096

func (c *Conntrack) sourceSlot(net uint32, ip [4]byte) *atomic.Int32 {
	return &c.sources[mix64(c.seed^uint64(net)<<32^uint64(binary.BigEndian.Uint32(ip[:])))%sourceSlots]
}

// mayBeBackend reports whether some entry of net might have backend ip.
func (c *Conntrack) mayBeBackend(net uint32, ip [4]byte) bool {
	return c.sourceSlot(net, ip).Load() != 0
}

// timeouts is Timeouts in nanoseconds.
type timeouts struct {
	est, syn, closing, close, udp, icmp, synRetry, eject int64
}

// TCP states of an entry.
const (
	stSynSent     = iota // client SYN seen, backend not answered
	stEstablished        // backend answered (or a maglev mid-flow pickup)
	stClosing            // FIN seen
	stClosed             // RST seen
	stOther              // UDP and ICMP
)

// Entry flags.
const (
	flUnsent    = 1 // moved to another backend that has not seen the SYN yet
	flCounted   = 2 // counted in be.active: open (not reset, not FIN both ways)
	flFinClient = 4 // the client sent a FIN
	flFinBack   = 8 // the backend sent a FIN
)

// count adds entry e to its backend's active connections unless it is
// counted already.
func (e *entry) count() {
	if e.flags&flCounted == 0 {
		e.flags |= flCounted
		e.be.active.Add(1)
	}
}

// uncount takes entry e out of its backend's active connections: the
// connection was reset, closed both ways, or its entry goes.
func (e *entry) uncount() {
	if e.flags&flCounted != 0 {
		e.flags &^= flCounted
		e.be.active.Add(-1)
	}
}

// tcpClose records a RST or FIN (fin is flFinClient or flFinBack) of
// entry e: a RST, or FINs from both sides, end the connection, which
// leaves the active count though its entry lingers until it expires.
func (e *entry) tcpClose(rst bool, fin uint8) {
	switch {
	case rst:
		e.state = stClosed
		e.uncount()
		return
	case fin == 0:
		return
	}
	e.flags |= fin
	if e.state < stClosing {
		e.state = stClosing
	}
	if e.flags&(flFinClient|flFinBack) == flFinClient|flFinBack {
		e.uncount()
	}
}

// entry is one connection. Its size, with the per-entry share of the two
// hash indexes, is measured by TestEntrySize (<= 128 bytes).
type entry struct {
	client, vip, backend [4]byte
	cport, vport, bport  uint16
	proto, state         uint8
	retries, flags       uint8
	mac                  [6]byte
	net                  uint32
	fnext, rnext         uint32 // hash chains
	prev, next           uint32 // LRU list (head = most recent); next also links the free list
	expires              int64  // 0: free
	since                int64  // when the last SYN went to the backend
	be                   *beState
	// tried are the backends that failed this connection attempt before
	// the current one (tried[:retries]): a move avoids them all.
	tried [MaxRetries][4]byte
}

type shard struct {
	mu         sync.Mutex
	e          []entry // e[0] is the nil sentinel
	fwd, rev   []uint32
	mask       uint32
	free       uint32
	head, tail uint32
	n          int
	evictions  atomic.Uint64
	expired    atomic.Uint64
	_          [64]byte
}

// NewConntrack returns an empty table of cfg.Max entries, all allocated
// now.
func NewConntrack(cfg Config) *Conntrack {
	if cfg.Max <= 0 {
		cfg.Max = DefaultMax
	}
	cfg.Timeouts.fill()
	t := cfg.Timeouts
	c := &Conntrack{to: timeouts{
		est: int64(t.TCPEstablished), syn: int64(t.TCPSyn), closing: int64(t.TCPClosing),
		close: int64(t.TCPClose), udp: int64(t.UDP), icmp: int64(t.ICMP),
		synRetry: int64(t.SynRetry), eject: int64(t.Eject),
	}}
	var s [8]byte
	rand.Read(s[:])
	c.seed = binary.LittleEndian.Uint64(s[:])
	per := (cfg.Max + Shards - 1) / Shards
	for i := range c.shards {
		c.shards[i].init(per)
	}
	c.aff = newAffinity(cfg.AffinityMax)
	c.syns = newSynStore(cfg.SynSlots, c.seed)
	c.frags = NewFragTable(cfg.FragMax, cfg.FragTimeout)
	if cfg.FragHeld <= 0 {
		cfg.FragHeld = DefaultFragHeld
	}
	c.hold.slots = make([]heldFrag, cfg.FragHeld)
	return c
}

func (s *shard) init(n int) {
	b := 1
	for b < n {
		b <<= 1
	}
	s.e = make([]entry, n+1)
	s.fwd = make([]uint32, b)
	s.rev = make([]uint32, b)
	s.mask = uint32(b - 1)
	for i := 1; i < n; i++ {
		s.e[i].next = uint32(i + 1)
	}
	s.free = 1
}

// timeout returns how long an entry in state st of proto lives idle.
func (c *Conntrack) timeout(proto, st uint8) int64 {
	switch {
	case proto == protoICMP:
		return c.to.icmp
	case proto != protoTCP:
		return c.to.udp
	case st == stSynSent:
		return c.to.syn
	case st == stEstablished:
		return c.to.est
	case st == stClosing:
		return c.to.closing
	}
	return c.to.close
}

// shardOf picks the shard from what both directions' keys share.
func (c *Conntrack) shardOf(net uint32, proto uint8, client [4]byte, cport uint16) *shard {
	h := mix64(c.seed ^ uint64(net)<<32 ^ uint64(proto)<<16 ^ uint64(cport) ^ uint64(binary.BigEndian.Uint32(client[:]))<<24)
	return &c.shards[h%Shards]
}

func (c *Conntrack) hash(net uint32, proto uint8, a [4]byte, ap uint16, b [4]byte, bp uint16) uint32 {
	x := uint64(binary.BigEndian.Uint32(a[:]))<<32 | uint64(binary.BigEndian.Uint32(b[:]))
	y := uint64(net)<<32 | uint64(proto)<<24 ^ uint64(ap)<<16 | uint64(bp)
	return uint32(mix64(mix64(x^c.seed) ^ y))
}

func (c *Conntrack) fwdHash(e *entry) uint32 {
	return c.hash(e.net, e.proto, e.client, e.cport, e.vip, e.vport)
}

func (c *Conntrack) revHash(e *entry) uint32 {
	return c.hash(e.net, e.proto, e.backend, e.bport, e.client, e.cport)
}

// findFwd returns the live entry for the client-side key, or 0. An
// expired entry found on the way is freed.
func (c *Conntrack) findFwd(s *shard, k *flowKey, now int64) uint32 {
	return c.live(s, c.lookupFwd(s, k), now)
}

// findRev returns the live entry for the backend-side key, or 0. An
// expired entry found on the way is freed.
func (c *Conntrack) findRev(s *shard, k *revKey, now int64) uint32 {
	return c.live(s, c.lookupRev(s, k), now)
}

// live returns i if its entry has not expired at now; an expired one is
// freed and 0 returned.
func (c *Conntrack) live(s *shard, i uint32, now int64) uint32 {
	if i != 0 && s.e[i].expires <= now {
		c.remove(s, i)
		s.expired.Add(1)
		return 0
	}
	return i
}

// lookupFwd returns the entry for the client-side key, live or not, or 0.
func (c *Conntrack) lookupFwd(s *shard, k *flowKey) uint32 {
	h := c.hash(k.net, k.proto, k.client, k.cport, k.vip, k.vport)
	for i := s.fwd[h&s.mask]; i != 0; i = s.e[i].fnext {
		e := &s.e[i]
		if e.net == k.net && e.proto == k.proto && e.client == k.client && e.cport == k.cport && e.vip == k.vip && e.vport == k.vport {
			return i
		}
	}
	return 0
}

// lookupRev returns the entry for the backend-side key, live or not, or 0.
func (c *Conntrack) lookupRev(s *shard, k *revKey) uint32 {
	h := c.hash(k.net, k.proto, k.backend, k.bport, k.client, k.cport)
	for i := s.rev[h&s.mask]; i != 0; i = s.e[i].rnext {
		e := &s.e[i]
		if e.net == k.net && e.proto == k.proto && e.backend == k.backend && e.bport == k.bport && e.client == k.client && e.cport == k.cport {
			return i
		}
	}
	return 0
}

// insert takes a free entry (evicting the least recently used one if the
// shard is full), fills it from tmpl and links it everywhere.
func (c *Conntrack) insert(s *shard, tmpl *entry) uint32 {
	if s.free == 0 {
		c.remove(s, s.tail)
		s.evictions.Add(1)
	}
	i := s.free
	s.free = s.e[i].next
	s.e[i] = *tmpl
	e := &s.e[i]
	fb := c.fwdHash(e) & s.mask
	e.fnext, s.fwd[fb] = s.fwd[fb], i
	c.linkRev(s, i)
	e.prev, e.next = 0, s.head
	if s.head != 0 {
		s.e[s.head].prev = i
	} else {
		s.tail = i
	}
	s.head = i
	s.n++
	e.flags &^= flCounted
	e.count()
	return i
}

// touch moves entry i to the LRU head.
func (s *shard) touch(i uint32) {
	if s.head == i {
		return
	}
	e := &s.e[i]
	s.e[e.prev].next = e.next // e.prev != 0: i is not the head
	if e.next != 0 {
		s.e[e.next].prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.prev, e.next = 0, s.head
	s.e[s.head].prev = i
	s.head = i
}

// remove unlinks entry i and frees it.
func (c *Conntrack) remove(s *shard, i uint32) {
	e := &s.e[i]
	c.unlinkRev(s, i)
	unlink(&s.fwd[c.fwdHash(e)&s.mask], i, s.e, func(e *entry) *uint32 { return &e.fnext })
	if e.prev != 0 {
		s.e[e.prev].next = e.next
	} else {
		s.head = e.next
	}
	if e.next != 0 {
		s.e[e.next].prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.uncount()
	*e = entry{next: s.free}
	s.free = i
	s.n--
}

func (c *Conntrack) unlinkRev(s *shard, i uint32) {
	c.sourceSlot(s.e[i].net, s.e[i].backend).Add(-1)
	unlink(&s.rev[c.revHash(&s.e[i])&s.mask], i, s.e, func(e *entry) *uint32 { return &e.rnext })
}

// linkRev links entry i into the backend-side index (after a move).
func (c *Conntrack) linkRev(s *shard, i uint32) {
	rb := c.revHash(&s.e[i]) & s.mask
	s.e[i].rnext, s.rev[rb] = s.rev[rb], i
	c.sourceSlot(s.e[i].net, s.e[i].backend).Add(1)
}

func unlink(head *uint32, i uint32, es []entry, next func(*entry) *uint32) {
	p := head
	for *p != 0 {
		if *p == i {
			*p = *next(&es[i])
			return
		}
		p = next(&es[*p])
	}
}

// Sweep frees every entry that expired before now and returns how many.
// Call it periodically (say every second); lookups also drop expired
// entries they meet, but only Sweep takes every idle connection out of
// the active counts. It also gives up the IP fragments held past the
// fragment timeout (counted as "frag-timeout" on their network's
// balancer), so that they are counted within one sweep interval of
// expiring.
func (c *Conntrack) Sweep(now int64) int {
	c.hold.sweep(now)
	n := 0
	for k := range c.shards {
		s := &c.shards[k]
		m := 0
		s.mu.Lock()
		for i := 1; i < len(s.e); i++ {
			if e := &s.e[i]; e.expires != 0 && e.expires <= now {
				c.remove(s, uint32(i))
				m++
			}
		}
		s.mu.Unlock()
		s.expired.Add(uint64(m))
		n += m
	}
	return n
}

// Flush removes every entry of network net whose backend is ip (after a
// removed backend's stop grace period) and returns how many.
func (c *Conntrack) Flush(net uint32, ip [4]byte) int {
	n := 0
	for k := range c.shards {
		s := &c.shards[k]
		s.mu.Lock()
		for i := 1; i < len(s.e); i++ {
			if e := &s.e[i]; e.expires != 0 && e.net == net && e.backend == ip {
				c.remove(s, uint32(i))
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// Len returns the number of entries (live or expired but not swept).
func (c *Conntrack) Len() int {
	n := 0
	for k := range c.shards {
		s := &c.shards[k]
		s.mu.Lock()
		n += s.n
		s.mu.Unlock()
	}
	return n
}

// FragEvictions returns how many fragmented datagrams still incomplete
// were forgotten to make room for new ones (see FragTable): their later
// fragments are dropped ("fragment").
func (c *Conntrack) FragEvictions() uint64 { return c.frags.Evictions() }

// FragHeld returns how many later fragments were held because they came
// before their datagram's first fragment (Verdict Hold). A held fragment
// is sent when its first comes; one given up is counted as a drop of its
// network's balancer ("fragment", "frag-timeout", or the reason its
// first fragment was refused).
func (c *Conntrack) FragHeld() uint64 { return c.hold.held.Load() }

// Evictions returns how many live entries were evicted because the table
// was full.
func (c *Conntrack) Evictions() uint64 {
	var n uint64
	for k := range c.shards {
		n += c.shards[k].evictions.Load()
	}
	return n
}
