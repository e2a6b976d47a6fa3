package lb

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

// DefaultFragMax is the default number of fragmented datagrams a
// FragTable follows at once.
const DefaultFragMax = 4096

// DefaultFragTimeout is how long a FragTable remembers a datagram's first
// fragment by default. Linux keeps fragments 30 s (ipfrag_time) for
// reassembly; a datagram's fragments arrive within microseconds of each
// other, so a few seconds lose nothing but stale entries.
const DefaultFragTimeout = 5 * time.Second

// fragShards is the number of FragTable shards, each with its own lock.
const fragShards = 16

// minLaterFrag is the smallest byte offset a later fragment may have: a
// fragment below it would overlap the ports or checksum of the L4 header
// the first fragment carried and the balancer translated (the
// tiny-fragment and overlapping-fragment attacks of RFC 1858 and RFC
// 3128). No sender fragments that small (RFC 791 makes 68 bytes the
// smallest MTU: a first fragment carries at least 48 bytes).
const minLaterFrag = 24

// FragVal is what a datagram's first fragment decided, for its later
// fragments (which carry no ports): the address and MAC to write.
type FragVal struct {
	Addr [4]byte
	MAC  packet.MAC
}

// fragKey identifies one IPv4 datagram (RFC 791: source, destination,
// protocol, identification) within a caller's namespace (the balancer:
// its network and direction).
type fragKey struct {
	ns       uint32
	id       uint16
	proto    uint8
	src, dst [4]byte
}

type fragEntry struct {
	k       fragKey
	v       FragVal
	be      *beState // the balancer's backend, for its counters (nil for others)
	seen    uint32   // payload bytes of the fragments seen (duplicates count twice)
	total   uint32   // the datagram's payload length, once its last fragment was seen
	expires int64    // 0: free
	next    uint32   // hash chain
	refused Reason   // the balancer refused the first fragment for this reason: drop the later ones
}

type fragShard struct {
	mu   sync.Mutex
	e    []fragEntry // e[0] is the nil sentinel
	idx  []uint32
	mask uint32
	ring uint32 // the slot the next datagram takes: the oldest
	_    [40]byte
}

// FragTable follows IPv4 datagrams that arrive in fragments without
// reassembling them: a caller that has translated a first fragment
// (offset 0, more fragments), which carries the L4 header, remembers what
// it wrote (Remember), and rewrites the later fragments from that
// (Recall). It is a fixed slab allocated at once, sharded with a lock
// each; a shard hands out its slots in a ring, so a new datagram takes
// the oldest slot: free, expired, or (counted in Evictions) the oldest
// datagram still incomplete. A datagram's entry is freed once fragments
// covering its whole payload were seen, so a table of N follows N
// datagrams in flight. Nothing allocates after NewFragTable.
type FragTable struct {
	shards    [fragShards]fragShard
	seed      uint64
	ttl       int64
	evictions atomic.Uint64
	expired   atomic.Uint64
}

// NewFragTable returns a table of max datagrams (0: DefaultFragMax) that
// remembers each for ttl (0: DefaultFragTimeout).
func NewFragTable(max int, ttl time.Duration) *FragTable {
	if max <= 0 {
		max = DefaultFragMax
	}
	if ttl <= 0 {
		ttl = DefaultFragTimeout
	}
	t := &FragTable{ttl: int64(ttl)}
	var s [8]byte
	rand.Read(s[:])
	t.seed = binary.LittleEndian.Uint64(s[:])
	per := (max + fragShards - 1) / fragShards
	b := 1
	for b < per {
		b <<= 1
	}
	for i := range t.shards {
		sh := &t.shards[i]
		sh.e = make([]fragEntry, per+1)
		sh.idx = make([]uint32, b)
		sh.mask = uint32(b - 1)
		sh.ring = 1
	}
	return t
}

// Evictions returns how many incomplete datagrams were forgotten to make
// room for new ones (their later fragments then find nothing).
func (t *FragTable) Evictions() uint64 { return t.evictions.Load() }

// Expired returns how many later fragments came after their datagram's
// entry expired.
func (t *FragTable) Expired() uint64 { return t.expired.Load() }

// Frag describes the fragment an IPv4 packet is: First (offset 0, more
// fragments), Later (offset > 0), or Whole (not a fragment).
type Frag uint8

// Fragment kinds.
const (
	Whole Frag = iota
	First
	Later
)

// FragOf returns what kind of fragment the IPv4 header ip (at least 20
// bytes) is.
func FragOf(ip []byte) Frag {
	w := binary.BigEndian.Uint16(ip[6:8])
	switch {
	case w&0x1fff != 0:
		return Later
	case w&0x2000 != 0:
		return First
	}
	return Whole
}

// fragInfo is the key of the fragment ip (a valid IPv4 header, packet
// trimmed to its total length) in namespace ns, its payload's byte offset
// and length, and whether it is the last.
func fragInfo(ns uint32, ip packet.IPv4) (k fragKey, off, n uint32, last bool) {
	w := binary.BigEndian.Uint16(ip[6:8])
	k = fragKey{ns: ns, id: binary.BigEndian.Uint16(ip[4:6]), proto: ip.Protocol(), src: [4]byte(ip[12:16]), dst: [4]byte(ip[16:20])}
	return k, uint32(w&0x1fff) * 8, uint32(ip.TotalLen() - ip.HeaderLen()), w&0x2000 == 0
}

func (t *FragTable) shard(k *fragKey) (*fragShard, uint32) {
	x := uint64(binary.BigEndian.Uint32(k.src[:]))<<32 | uint64(binary.BigEndian.Uint32(k.dst[:]))
	h := mix64(mix64(x^t.seed) ^ uint64(k.ns)<<24 ^ uint64(k.proto)<<16 ^ uint64(k.id))
	return &t.shards[h%fragShards], uint32(h >> 32)
}

// lookup returns k's entry in sh (h its hash), or 0; an expired one is
// freed (and expired set).
func (sh *fragShard) lookup(k *fragKey, h uint32, now int64) (i uint32, expired bool) {
	for i = sh.idx[h&sh.mask]; i != 0; i = sh.e[i].next {
		if sh.e[i].k == *k {
			if sh.e[i].expires <= now {
				sh.free(i, h)
				return 0, true
			}
			return i, false
		}
	}
	return 0, false
}

// free unlinks entry i (hash h) and marks it free.
func (sh *fragShard) free(i, h uint32) {
	for p := &sh.idx[h&sh.mask]; *p != 0; p = &sh.e[*p].next {
		if *p == i {
			*p = sh.e[i].next
			break
		}
	}
	sh.e[i] = fragEntry{}
}

// account adds a fragment of n payload bytes at off to entry i (hash h)
// and frees it once fragments covering the whole datagram were seen.
func (sh *fragShard) account(i, h, off, n uint32, last bool) {
	e := &sh.e[i]
	e.seen += n
	if last {
		e.total = off + n
	}
	if e.total != 0 && e.seen >= e.total {
		sh.free(i, h)
	}
}

// remember records v for the datagram of the first fragment ip (valid,
// trimmed) in namespace ns at now.
func (t *FragTable) remember(ns uint32, ip packet.IPv4, v FragVal, be *beState, now int64) {
	t.put(ns, ip, v, be, 0, now)
}

// refuse records that the first fragment ip (valid, trimmed) in
// namespace ns was refused for reason r at now: its later fragments are
// to be dropped, counted under r.
func (t *FragTable) refuse(ns uint32, ip packet.IPv4, r Reason, now int64) {
	t.put(ns, ip, FragVal{}, nil, r, now)
}

// put records what the first fragment ip (valid, trimmed) in namespace
// ns decided at now: v and be, or the reason it was refused.
func (t *FragTable) put(ns uint32, ip packet.IPv4, v FragVal, be *beState, refused Reason, now int64) {
	k, off, n, last := fragInfo(ns, ip)
	sh, h := t.shard(&k)
	sh.mu.Lock()
	i, _ := sh.lookup(&k, h, now)
	if i == 0 {
		i = sh.ring
		if sh.ring++; int(sh.ring) == len(sh.e) {
			sh.ring = 1
		}
		if e := &sh.e[i]; e.expires != 0 {
			if e.expires > now {
				t.evictions.Add(1)
			}
			_, oh := t.shard(&e.k)
			sh.free(i, oh)
		}
		e := &sh.e[i]
		e.k, e.expires = k, now+t.ttl
		e.next, sh.idx[h&sh.mask] = sh.idx[h&sh.mask], i
	}
	sh.e[i].v, sh.e[i].be, sh.e[i].refused = v, be, refused
	sh.account(i, h, off, n, last)
	sh.mu.Unlock()
}

// fragHit is what recall found for a later fragment.
type fragHit struct {
	v       FragVal
	be      *beState
	ok      bool   // the first fragment was seen
	expired bool   // its entry had expired
	refused Reason // the first fragment was refused for this reason
}

// recall returns what the first fragment of the later fragment ip
// (valid, trimmed) in namespace ns decided.
func (t *FragTable) recall(ns uint32, ip packet.IPv4, now int64) fragHit {
	k, off, n, last := fragInfo(ns, ip)
	sh, h := t.shard(&k)
	var hit fragHit
	sh.mu.Lock()
	i, exp := sh.lookup(&k, h, now)
	if i != 0 {
		e := &sh.e[i]
		hit = fragHit{v: e.v, be: e.be, ok: true, refused: e.refused}
		sh.account(i, h, off, n, last)
	}
	sh.mu.Unlock()
	if exp {
		t.expired.Add(1)
		hit.expired = true
	}
	return hit
}

// Remember records v for the datagram whose first fragment is the
// Ethernet frame f (an IPv4 first fragment: FragOf says First) in
// namespace ns, at now (nanoseconds, the caller's monotonic clock). It
// reports false, remembering nothing, if f is no valid first fragment.
func (t *FragTable) Remember(ns uint32, f []byte, v FragVal, now int64) bool {
	ip, ok := fragIP(f)
	if !ok || FragOf(ip) != First {
		return false
	}
	t.remember(ns, ip, v, nil, now)
	return true
}

// Recall returns what was remembered for the datagram of the later
// fragment f (an Ethernet frame) in namespace ns, or false: not a later
// fragment, one overlapping the L4 header (RFC 1858), or its first
// fragment was not seen, was forgotten or expired.
func (t *FragTable) Recall(ns uint32, f []byte, now int64) (FragVal, bool) {
	ip, ok := fragIP(f)
	if !ok || FragOf(ip) != Later || int(binary.BigEndian.Uint16(ip[6:8])&0x1fff)*8 < minLaterFrag {
		return FragVal{}, false
	}
	hit := t.recall(ns, ip, now)
	return hit.v, hit.ok
}

// fragIP returns the IPv4 packet of Ethernet frame f, trimmed to its
// total length, if it is valid.
func fragIP(f []byte) (packet.IPv4, bool) {
	if len(f) < minIPFrame || binary.BigEndian.Uint16(f[12:14]) != packet.EtherTypeIPv4 {
		return nil, false
	}
	ip := packet.IPv4(f[offIP:])
	if !ip.Valid() {
		return nil, false
	}
	return ip[:ip.TotalLen()], true
}

// Directions of the balancer's fragment namespaces.
const (
	dirFwd = 0 // client -> VIP: the backend's address and MAC
	dirRev = 1 // backend -> client: the VIP's address and MAC
)

// fragNS is the FragTable namespace of network net's direction dir.
func fragNS(net uint32, dir uint32) uint32 { return net<<1 | dir }

// forwardLater translates a later fragment to c's VIP as its first
// fragment was: destination MAC and IP (the L4 checksum, which covers the
// whole datagram, was updated in the first fragment).
func (t *Table) forwardLater(c *service, p *pkt, now int64) Verdict {
	ip := packet.IPv4(p.f[offIP:p.end])
	hit := t.ct.frags.recall(fragNS(t.net, dirFwd), ip, now)
	switch {
	case hit.expired:
		return t.count(ReasonFragTimeout, Drop)
	case !hit.ok:
		return t.holdLater(p, dirFwd, now)
	case hit.refused != 0:
		return t.count(hit.refused, Drop)
	}
	rewriteLater(p.f, dirFwd, hit.v)
	countFrag(c, hit.be, len(p.f))
	return Forward
}

// rewriteLater gives the later fragment f (an Ethernet frame) going in
// direction dir what its first fragment got: the destination MAC and
// address (the backend's) towards a VIP, the source ones (the VIP's) on
// a reply.
func rewriteLater(f []byte, dir uint32, v FragVal) {
	mac, addr := 0, offIPDst
	if dir == dirRev {
		mac, addr = 6, offIPSrc
	}
	copy(f[mac:mac+6], v.MAC[:])
	fix(f[offIPCsum:], put4(f[addr:], v.Addr))
}

// countFrag counts a translated later fragment of n bytes on its service
// and backend (either may be nil).
func countFrag(c *service, be *beState, n int) {
	if be != nil {
		be.packets.Add(1)
		be.bytes.Add(uint64(n))
	}
	if c != nil {
		c.st.packets.Add(1)
		c.st.bytes.Add(uint64(n))
	}
}

// holdLater holds the later fragment p, whose first fragment has not
// come, until it comes (see TakeHeld); it is counted as held
// (Conntrack.FragHeld), not as a drop.
func (t *Table) holdLater(p *pkt, dir uint32, now int64) Verdict {
	k, _, _, _ := fragInfo(fragNS(t.net, dir), packet.IPv4(p.f[offIP:p.end]))
	t.ct.hold.hold(t, k, p.f, now, t.ct.frags.ttl)
	return Hold
}

// refused is called with a frame to a VIP that Translate refuses (Drop
// or Reject) for reason r: when it is a first fragment, its datagram's
// later fragments are refused as well, counted under r, those held now
// at once and those still to come as they come, instead of being held
// for a first fragment that will not come again.
func (t *Table) refused(p *pkt, r Reason, now int64) {
	if p.frag == First && p.end != 0 {
		t.refuseFirst(p, r, now)
	}
}

func (t *Table) refuseFirst(p *pkt, r Reason, now int64) {
	ip := packet.IPv4(p.f[offIP:p.end])
	ns := fragNS(t.net, dirFwd)
	t.ct.frags.refuse(ns, ip, r, now)
	if t.ct.hold.n.Load() != 0 {
		k, _, _, _ := fragInfo(ns, ip)
		t.ct.hold.discard(t, k, r)
	}
}

// releaseFirst is called for the first fragment p of a datagram as it
// came (before any rewrite) to net's direction dir: it readies the
// fragments held for it, rewritten (or unchanged with pass).
func (t *Table) releaseFirst(p *pkt, dir uint32, pass bool, now int64) {
	if t.ct.hold.n.Load() == 0 {
		return
	}
	k, _, _, _ := fragInfo(fragNS(t.net, dir), packet.IPv4(p.f[offIP:p.end]))
	t.ct.hold.release(t, k, pass, now)
}

// passFirst notes that p, if a first fragment from a possible backend,
// is no translated flow's: its later fragments pass too (and those held
// go as they came).
func (t *Table) passFirst(p *pkt, now int64) {
	if p.frag == First {
		t.ct.frags.remember(fragNS(t.net, dirRev), packet.IPv4(p.f[offIP:p.end]), FragVal{}, nil, now)
		t.releaseFirst(p, dirRev, true, now)
	}
}

// untranslateLater gives a later fragment of a backend's reply the
// source its first fragment got (the VIP's address and MAC); a fragment
// of no translated datagram gets Pass.
func (t *Table) untranslateLater(p *pkt, now int64) Verdict {
	hit := t.ct.frags.recall(fragNS(t.net, dirRev), packet.IPv4(p.f[offIP:p.end]), now)
	switch {
	case hit.expired:
		return Pass
	case !hit.ok:
		return t.holdLater(p, dirRev, now)
	case hit.v.Addr == [4]byte{}:
		return Pass // its first fragment was no translated flow's
	}
	rewriteLater(p.f, dirRev, hit.v)
	countFrag(t.snap.Load().get(hit.v.Addr), hit.be, len(p.f))
	return Forward
}
