package gateway

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/internal/hashmix"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

// The routing mesh's ingress host without TCP termination (see
// docs/architecture.md, "Routing mesh: per-packet NAT on the ingress host"): the client's
// segments to a steered published TCP port are taken off the host's
// uplinks before the kernel sees them (Uplinks), rewritten from the
// host's address and published port to the service's VIP and target
// port, and handed to the network's switch as the gateway's own frames
// (from the gateway MAC to the VIP's, the client's address and port as
// source), so the switch balances them as it balances the gateway
// stack's dials. The replies that reach the gateway port and belong to a
// NAT flow are rewritten back and sent out of the uplink the SYN came in
// on instead of being given to the stack. TCP runs end to end between
// the client and the backend.

// DefaultNATMax is the NAT table's size of a NATConfig that sets none.
const DefaultNATMax = 65536

// natShards is the number of NAT table shards, each with its own lock.
const natShards = 16

// NAT entry states, with the conntrack's timeouts.
const (
	natSyn     = iota // client SYN seen, no answer yet
	natEst            // answered
	natClosing        // a FIN seen
	natClosed         // a RST seen, or both FINs
	natStates
)

// NAT drop reasons, the keys of NATStats.Drops.
const (
	NATDropMalformed   = "malformed"    // not an IPv4 TCP frame the NAT can rewrite
	NATDropNoPort      = "no-port"      // a steered frame to a port the NAT no longer serves
	NATDropNoFlow      = "no-flow"      // a segment other than a SYN with no entry (answered with a RST)
	NATDropNoTarget    = "no-target"    // the port has no gateway or VIP now
	NATDropUnspoofable = "unspoofable"  // a client address that cannot enter the overlay as itself
	NATDropFull        = "full"         // a new flow met a shard full of open flows
	NATDropUplink      = "uplink-write" // a reply the uplink refused
)

var natDropNames = [...]string{NATDropMalformed, NATDropNoPort, NATDropNoFlow, NATDropNoTarget, NATDropUnspoofable, NATDropFull, NATDropUplink}

const (
	natDropMalformed = iota
	natDropNoPort
	natDropNoFlow
	natDropNoTarget
	natDropUnspoofable
	natDropFull
	natDropUplink
	natDrops
)

// Uplinks is the NAT's steering: it takes the frames of the published
// ports it is told off the host's uplinks (to the NAT's Input) and sends
// the replies out of them.
type Uplinks interface {
	// Sync steers exactly ports (TCP, to this host's own addresses) from
	// now on, re-checking which uplinks and addresses there are.
	Sync(ports []uint16) error
	// Write sends frames bufs[i][offset:] (offload metadata in front)
	// out of uplink ifindex.
	Write(ifindex int, bufs [][]byte, offset int) (int, error)
}

// NATConfig configures a NAT.
type NATConfig struct {
	// Max bounds the flows; 0 means DefaultNATMax.
	Max int
	// Timeouts are the conntrack's (zero fields: lb.DefaultTimeouts).
	Timeouts lb.Timeouts
	// TCPSecret is the cluster's (EgressConfig.TCPSecret): the
	// timestamps the backend sees are those a gateway stack of the
	// cluster would send for the flow (nil: a random secret).
	TCPSecret []byte
	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
}

// NATStats are the NAT's counters.
type NATStats struct {
	// Flows are the entries now (closing ones too), Max the bound, Open
	// the connections open (no RST, not both FINs seen).
	Flows int64 `json:"flows"`
	Open  int64 `json:"open"`
	Max   int   `json:"max"`
	// Total counts the flows started (SYNs that made an entry),
	// Evicted the closing flows freed early to make room.
	Total   uint64 `json:"total"`
	Evicted uint64 `json:"evicted"`
	// In and Out count the frames translated towards the network and
	// towards the clients.
	In  uint64 `json:"frames_in"`
	Out uint64 `json:"frames_out"`
	// Ports are the published ports steered now.
	Ports int `json:"ports"`
	// Drops count dropped frames by reason (NATDrop*); Resets the RSTs
	// sent to clients for their segments of no flow (NATDropNoFlow).
	Drops  map[string]uint64 `json:"drops,omitempty"`
	Resets uint64            `json:"resets"`
}

// natKey is a flow as the network sees it: client address and port, the
// VIP and port it was sent to.
type natKey struct {
	client, vip  [4]byte
	cport, vport uint16
}

// natEntry is one flow.
type natEntry struct {
	key      natKey
	local    [4]byte // the host address the client connected to
	lport    uint16  // the published port
	ifindex  int32   // the uplink the SYN came in on
	cmac     packet.MAC
	lmac     packet.MAC // the SYN's destination MAC (the uplink's)
	gw       *Gateway
	port     *Port
	tsDelta  uint32 // added to the client's TSval (0 without timestamps)
	state    uint8
	fins     uint8 // 1: the client's FIN, 2: the backend's
	open     bool  // counted in port.active
	next     uint32
	expires  int64
	finnedAt int64
}

type natShard struct {
	mu   sync.Mutex
	e    []natEntry // e[0] is the nil sentinel
	idx  []uint32
	mask uint32
	free uint32
	n    int
	_    [40]byte
}

// NAT is the per-packet translation of the routing mesh's steered
// published TCP ports: a bounded flow table (a fixed slab per shard,
// allocated at once; no packet allocates) and the two rewrites.
type NAT struct {
	shards  [natShards]natShard
	seed    uint64
	to      [natStates]int64
	now     func() time.Time
	max     int
	tsKey   [16]byte
	n       atomic.Int64 // entries
	open    atomic.Int64 // entries counted open in their ports
	total   atomic.Uint64
	evicted atomic.Uint64
	in, out atomic.Uint64
	resets  atomic.Uint64
	drops   [natDrops]atomic.Uint64

	ports atomic.Pointer[map[uint16]*Port] // steered ports by published port
	// targets has a bit set for each steered port's target port: a
	// frame to the gateway from another source port is no reply of a
	// NAT flow (egress traffic skips the lookup).
	targets atomic.Pointer[[1024]uint64]
	pmu     sync.Mutex // serializes port changes and uplink syncs
	uplinks atomic.Pointer[uplinksBox]
	outPool sync.Pool // *natOut
}

type uplinksBox struct{ u Uplinks }

// NewNAT returns an empty NAT with its table allocated.
func NewNAT(cfg NATConfig) *NAT {
	max := cfg.Max
	if max <= 0 {
		max = DefaultNATMax
	}
	per := (max + natShards - 1) / natShards
	buckets := 1
	for buckets < per {
		buckets <<= 1
	}
	n := &NAT{now: cfg.Now, max: per * natShards}
	if n.now == nil {
		n.now = time.Now
	}
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	n.seed = binary.LittleEndian.Uint64(seed[:])
	if len(cfg.TCPSecret) >= tcpSecretLen {
		copy(n.tsKey[:], cfg.TCPSecret[16:32])
	} else {
		_, _ = rand.Read(n.tsKey[:])
	}
	d := lb.DefaultTimeouts
	pick := func(v, def time.Duration) int64 {
		if v > 0 {
			return int64(v)
		}
		return int64(def)
	}
	n.to[natSyn] = pick(cfg.Timeouts.TCPSyn, d.TCPSyn)
	n.to[natEst] = pick(cfg.Timeouts.TCPEstablished, d.TCPEstablished)
	n.to[natClosing] = pick(cfg.Timeouts.TCPClosing, d.TCPClosing)
	n.to[natClosed] = pick(cfg.Timeouts.TCPClose, d.TCPClose)
	for i := range n.shards {
		sh := &n.shards[i]
		sh.e = make([]natEntry, per+1)
		sh.idx = make([]uint32, buckets)
		sh.mask = uint32(buckets - 1)
		for j := 1; j < per; j++ {
			sh.e[j].next = uint32(j + 1)
		}
		sh.free = 1
	}
	n.setPorts(map[uint16]*Port{})
	n.outPool.New = func() any { return &natOut{} }
	return n
}

// SetUplinks gives the NAT its steering; ports steered before are
// steered on it at once.
func (n *NAT) SetUplinks(u Uplinks) error {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	n.uplinks.Store(&uplinksBox{u})
	return u.Sync(n.portList())
}

// Resync has the uplinks re-check interfaces and addresses (the daemon
// calls it at every reconcile).
func (n *NAT) Resync() error {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	b := n.uplinks.Load()
	if b == nil {
		return nil
	}
	return b.u.Sync(n.portList())
}

// portList lists the steered ports; callers hold pmu.
func (n *NAT) portList() []uint16 {
	m := *n.ports.Load()
	out := make([]uint16, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	return out
}

// steer adds p's published port: its entry first, then the filters.
func (n *NAT) steer(p *Port) error {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	old := *n.ports.Load()
	m := make(map[uint16]*Port, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[p.spec.HostPort] = p
	n.setPorts(m)
	if b := n.uplinks.Load(); b != nil {
		return b.u.Sync(n.portList())
	}
	return nil
}

// unsteer removes p's published port: the filters first, then the port
// and its flows.
func (n *NAT) unsteer(p *Port) {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	old := *n.ports.Load()
	if old[p.spec.HostPort] != p {
		return
	}
	m := make(map[uint16]*Port, len(old))
	for k, v := range old {
		if v != p {
			m[k] = v
		}
	}
	if b := n.uplinks.Load(); b != nil {
		ports := make([]uint16, 0, len(m))
		for k := range m {
			ports = append(ports, k)
		}
		_ = b.u.Sync(ports)
	}
	n.setPorts(m)
	n.forget(func(e *natEntry) bool { return e.port == p })
}

// setPorts publishes the steered ports m and their target ports.
func (n *NAT) setPorts(m map[uint16]*Port) {
	var t [1024]uint64
	for _, p := range m {
		t[p.spec.Port>>6] |= 1 << (p.spec.Port & 63)
	}
	n.targets.Store(&t)
	n.ports.Store(&m)
}

// Ports returns the steered published ports.
func (n *NAT) Ports() []uint16 {
	n.pmu.Lock()
	defer n.pmu.Unlock()
	return n.portList()
}

// Stats returns the NAT's counters.
func (n *NAT) Stats() NATStats {
	st := NATStats{Flows: n.n.Load(), Open: n.open.Load(), Max: n.max, Total: n.total.Load(), Evicted: n.evicted.Load(),
		In: n.in.Load(), Out: n.out.Load(), Ports: len(*n.ports.Load()), Resets: n.resets.Load()}
	for i := range n.drops {
		if v := n.drops[i].Load(); v > 0 {
			if st.Drops == nil {
				st.Drops = map[string]uint64{}
			}
			st.Drops[natDropNames[i]] = v
		}
	}
	return st
}

func (n *NAT) hash(k *natKey) uint64 {
	a := uint64(binary.BigEndian.Uint32(k.client[:]))<<32 | uint64(binary.BigEndian.Uint32(k.vip[:]))
	b := uint64(k.cport)<<16 | uint64(k.vport)
	return hashmix.Mix(a ^ hashmix.Mix(b^n.seed))
}

func (sh *natShard) bucket(h uint64) *uint32 { return &sh.idx[uint32(h>>32)&sh.mask] }

// find returns the index of k's live entry in sh (0: none), freeing the
// expired entries of its chain it meets; callers hold sh.mu.
func (n *NAT) find(sh *natShard, k *natKey, h uint64, now int64) uint32 {
	p := sh.bucket(h)
	for i := *p; i != 0; {
		e := &sh.e[i]
		if e.expires <= now {
			next := e.next
			n.remove(sh, p, i)
			i = next
			continue
		}
		if e.key == *k {
			return i
		}
		p, i = &e.next, e.next
	}
	return 0
}

// remove unlinks entry i (*p points at it) and frees it, ending its flow
// in its port's counters; callers hold sh.mu.
func (n *NAT) remove(sh *natShard, p *uint32, i uint32) {
	e := &sh.e[i]
	*p = e.next
	n.end(e)
	*e = natEntry{next: sh.free}
	sh.free = i
	sh.n--
	n.n.Add(-1)
}

// end takes e out of its port's open flows (a SYN never answered counts
// as failed).
func (n *NAT) end(e *natEntry) {
	if e.port == nil || !e.open {
		return
	}
	e.open = false
	e.port.active.Add(-1)
	n.open.Add(-1)
	if e.state == natSyn {
		e.port.failed.Add(1)
	}
}

// unlink finds entry i's chain link in sh and removes it; callers hold
// sh.mu.
func (n *NAT) unlink(sh *natShard, i uint32) {
	h := n.hash(&sh.e[i].key)
	p := sh.bucket(h)
	for *p != 0 && *p != i {
		p = &sh.e[*p].next
	}
	if *p == i {
		n.remove(sh, p, i)
	}
}

// reclaim makes room in a full shard from closed flows: the expired, the
// reset and those whose FINs were seen at least half the closing timeout
// ago, or else the one closing entry nearest its expiry; callers hold
// sh.mu. It reports whether it freed any.
func (n *NAT) reclaim(sh *natShard, now int64) bool {
	var best uint32
	var bestExp int64
	freed := false
	for i := uint32(1); i < uint32(len(sh.e)); i++ {
		e := &sh.e[i]
		if e.expires == 0 {
			continue
		}
		switch {
		case e.expires <= now, e.state == natClosed,
			e.state == natClosing && now-e.finnedAt >= n.to[natClosing]/2:
			n.unlink(sh, i)
			n.evicted.Add(1)
			freed = true
		case e.state == natClosing && (best == 0 || e.expires < bestExp):
			best, bestExp = i, e.expires
		}
	}
	if !freed && best != 0 {
		n.unlink(sh, best)
		n.evicted.Add(1)
		freed = true
	}
	return freed
}

// Sweep frees the expired entries (the data plane's sweeper calls it
// every second) and returns how many.
func (n *NAT) Sweep() int {
	now := n.now().UnixNano()
	return n.forget(func(e *natEntry) bool { return e.expires <= now })
}

// forget frees the entries f selects and returns how many.
func (n *NAT) forget(f func(*natEntry) bool) int {
	freed := 0
	for s := range n.shards {
		sh := &n.shards[s]
		sh.mu.Lock()
		for i := uint32(1); i < uint32(len(sh.e)); i++ {
			if e := &sh.e[i]; e.expires != 0 && f(e) {
				n.unlink(sh, i)
				freed++
			}
		}
		sh.mu.Unlock()
	}
	return freed
}

// natPkt is a parsed IPv4 TCP frame: offsets into it.
type natPkt struct {
	l3, l4, end int
	flags       uint8
	ts          int // offset of the timestamp option's TSval, 0: none
	payload     int // TCP payload bytes
}

// parseNAT parses an Ethernet frame carrying an unfragmented IPv4 TCP
// segment (the frames the NAT rewrites, from outside in both
// directions); ok is false for anything else.
func parseNAT(f []byte) (p natPkt, ok bool) {
	const l3 = packet.EthernetHeaderLen
	if len(f) < l3+20 || binary.BigEndian.Uint16(f[12:14]) != packet.EtherTypeIPv4 || f[l3]>>4 != 4 {
		return p, false
	}
	ihl := int(f[l3]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(f[l3+2:]))
	if ihl < 20 || total < ihl+20 || l3+total > len(f) || f[l3+9] != packet.ProtoTCP ||
		binary.BigEndian.Uint16(f[l3+6:])&0x3fff != 0 {
		return p, false
	}
	p.l3, p.l4, p.end = l3, l3+ihl, l3+total
	doff := int(f[p.l4+12]>>4) * 4
	if doff < 20 || p.l4+doff > p.end {
		return p, false
	}
	p.flags = f[p.l4+13]
	p.payload = p.end - p.l4 - doff
	// The timestamp option: Linux puts it at once behind two NOPs.
	opts := f[p.l4+20 : p.l4+doff]
	if len(opts) >= 12 && opts[0] == 1 && opts[1] == 1 && opts[2] == 8 && opts[3] == 10 {
		p.ts = p.l4 + 24
		return p, true
	}
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0:
			return p, true
		case 1:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return p, false
		}
		if opts[i] == 8 && opts[i+1] == 10 {
			p.ts = p.l4 + 20 + i + 2
			return p, true
		}
		i += int(opts[i+1])
	}
	return p, true
}

// natPut16 writes v at b and returns the ones' complement change it
// makes to a sum covering b (RFC 1624: ~m + m').
func natPut16(b []byte, v uint16) uint64 {
	old := binary.BigEndian.Uint16(b)
	binary.BigEndian.PutUint16(b, v)
	return uint64(^old) + uint64(v)
}

func natPut32(b []byte, v uint32) uint64 {
	return natPut16(b, uint16(v>>16)) + natPut16(b[2:], uint16(v))
}

// natFix updates the complete checksum at b for a change d of what it
// covers.
func natFix(b []byte, d uint64) {
	binary.BigEndian.PutUint16(b, packet.Fold(uint64(^binary.BigEndian.Uint16(b))+d))
}

// natEdit is one direction's rewrite of a NAT segment: the address at
// addrAt, the port at portAt and, if tsAt is not 0, the 32-bit timestamp
// word at tsAt.
type natEdit struct {
	addrAt int
	addr   [4]byte
	portAt int
	port   uint16
	tsAt   int
	ts     uint32
}

// apply makes e in f (parsed as p), updating the checksums: a partial
// TCP checksum (offload) covers the pseudo-header only.
func (e *natEdit) apply(f []byte, p *natPkt, partial bool) {
	da := natPut32(f[e.addrAt:], binary.BigEndian.Uint32(e.addr[:]))
	natFix(f[p.l3+10:], da)
	d := natPut16(f[e.portAt:], e.port)
	if e.tsAt != 0 {
		d += natPut32(f[e.tsAt:], e.ts)
	}
	cs := f[p.l4+16:]
	if partial {
		binary.BigEndian.PutUint16(cs, ^packet.Fold(uint64(binary.BigEndian.Uint16(cs))+da))
		return
	}
	natFix(cs, da+d)
}

// tsTarget is the TSval a gateway stack of the cluster would send now
// on a connection from client to vip (gVisor: milliseconds of its
// wall-clock time plus a hash of the addresses, tcpsync.go), so the
// backend sees one clock for the client's port whichever host it came
// through.
func (n *NAT) tsTarget(client, vip [4]byte, now time.Time) uint32 {
	var b [24]byte
	copy(b[:16], n.tsKey[:])
	copy(b[16:20], client[:])
	copy(b[20:24], vip[:])
	h := sha256.Sum256(b[:])
	return uint32(now.UnixMilli()) + binary.LittleEndian.Uint32(h[:4])
}

// natBatch is what the frames of one Input call share.
type natBatch struct {
	ifindex int // the uplink they came from
	ports   map[uint16]*Port
	t       time.Time
	now     int64   // t in Unix nanoseconds
	resets  *natOut // the RSTs answering segments of no flow
}

// Input translates frames steered from uplink ifindex (bufs[i][offset:
// offset+sizes[i]], offload metadata in front) and hands them to their
// networks' switches as the gateways' own frames; the buffers are only
// borrowed. Frames it cannot translate are dropped and counted.
func (n *NAT) Input(ifindex int, bufs [][]byte, sizes []int, offset int) {
	b := natBatch{ifindex: ifindex, ports: *n.ports.Load(), t: n.now()}
	b.now = b.t.UnixNano()
	var run *Gateway
	start, k := 0, 0
	flush := func() {
		if k > start && run != nil {
			if !run.inject(bufs[start:k], sizes[start:k], offset) {
				n.drops[natDropNoTarget].Add(uint64(k - start))
			} else {
				n.in.Add(uint64(k - start))
			}
		}
		start = k
	}
	for i := range bufs {
		g := n.forward(&b, bufs[i], offset, sizes[i])
		if g == nil {
			continue
		}
		if g != run {
			flush()
			run = g
		}
		bufs[i], bufs[k] = bufs[k], bufs[i]
		sizes[i], sizes[k] = sizes[k], sizes[i]
		k++
	}
	flush()
	if b.resets != nil {
		n.flush(b.resets, offset, &n.resets)
	}
}

// forward translates one steered frame and returns the gateway it enters
// (nil: dropped). A segment of no flow is turned into the RST that
// answers it, queued in b.resets.
func (n *NAT) forward(b *natBatch, buf []byte, offset, size int) *Gateway {
	f := buf[offset : offset+size]
	p, ok := parseNAT(f)
	if !ok {
		n.drops[natDropMalformed].Add(1)
		return nil
	}
	port := b.ports[binary.BigEndian.Uint16(f[p.l4+2:])]
	if port == nil {
		n.drops[natDropNoPort].Add(1)
		return nil
	}
	var k natKey
	k.client = [4]byte(f[p.l3+12 : p.l3+16])
	k.cport = binary.BigEndian.Uint16(f[p.l4:])
	k.vport = port.spec.Port
	local := [4]byte(f[p.l3+16 : p.l3+20])
	var g *Gateway
	var tsDelta uint32
	if p.flags&(packet.TCPSYN|packet.TCPACK|packet.TCPRST) == packet.TCPSYN {
		if g, tsDelta, ok = n.openFlow(b, &k, local, port, f, &p); !ok {
			return nil
		}
	} else {
		// Not a SYN: the flow's entry, under the port's current VIP (the
		// key holds the VIP, which only the entry knows).
		var e natEntry
		if !n.lookupForward(&k, port, local, &p, b.now, &e) {
			n.drops[natDropNoFlow].Add(1)
			n.reset(b.ifindex, buf[:offset+size], offset, &p, &b.resets)
			return nil
		}
		g, k.vip, tsDelta = e.gw, e.key.vip, e.tsDelta
	}
	port.bytesIn.Add(uint64(p.payload))
	ed := natEdit{addrAt: p.l3 + 16, addr: k.vip, portAt: p.l4 + 2, port: k.vport}
	if p.ts != 0 && tsDelta != 0 {
		ed.tsAt, ed.ts = p.ts, binary.BigEndian.Uint32(f[p.ts:])+tsDelta
	}
	ed.apply(f, &p, packet.OffloadOf(buf).NeedsCsum())
	eth := packet.Ethernet(f)
	eth.SetDst(lb.VIPMAC(netip.AddrFrom4(k.vip)))
	eth.SetSrc(g.cfg.MAC)
	return g
}

// openFlow makes (or, for a SYN sent again, finds) the entry of a client's
// SYN to port, keyed k (its VIP filled in here), from local, and returns
// the gateway it enters and its timestamp delta; false: dropped, counted.
func (n *NAT) openFlow(b *natBatch, k *natKey, local [4]byte, port *Port, f []byte, p *natPkt) (*Gateway, uint32, bool) {
	g, dst, ok := port.target()
	if !ok || g == nil || !dst.Is4() {
		n.drops[natDropNoTarget].Add(1)
		return nil, 0, false
	}
	if _, spoofed := port.e.ingressSource(g, netip.AddrPortFrom(netip.AddrFrom4(k.client), k.cport)); !spoofed {
		n.drops[natDropUnspoofable].Add(1)
		return nil, 0, false
	}
	k.vip = dst.As4()
	if v := port.natVIP.Load(); v == nil || *v != k.vip {
		port.setVIP(k.vip)
	}
	h := n.hash(k)
	sh := &n.shards[h&(natShards-1)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i := n.find(sh, k, h, b.now)
	if i != 0 && (sh.e[i].state != natSyn || sh.e[i].local != local || sh.e[i].lport != port.spec.HostPort) {
		// The client's port used again: the old flow ends.
		n.unlink(sh, i)
		i = 0
	}
	if i == 0 {
		if sh.free == 0 && !n.reclaim(sh, b.now) {
			n.drops[natDropFull].Add(1)
			return nil, 0, false
		}
		var tsDelta uint32
		if p.ts != 0 {
			tsDelta = n.tsTarget(k.client, k.vip, b.t) - binary.BigEndian.Uint32(f[p.ts:])
		}
		i = sh.free
		e := &sh.e[i]
		sh.free = e.next
		*e = natEntry{key: *k, local: local, lport: port.spec.HostPort, ifindex: int32(b.ifindex),
			cmac: packet.Ethernet(f).Src(), lmac: packet.Ethernet(f).Dst(), gw: g, port: port,
			tsDelta: tsDelta, state: natSyn, open: true}
		bk := sh.bucket(h)
		e.next, *bk = *bk, i
		sh.n++
		n.n.Add(1)
		n.total.Add(1)
		port.total.Add(1)
		port.active.Add(1)
		n.open.Add(1)
	}
	e := &sh.e[i]
	e.expires = b.now + n.to[natSyn]
	return g, e.tsDelta, true
}

// lookupForward finds the entry of a client's non-SYN segment: its key's
// VIP is the port's current destination; it updates the entry's state
// from the segment's flags and copies it to out.
func (n *NAT) lookupForward(k *natKey, port *Port, local [4]byte, p *natPkt, now int64, out *natEntry) bool {
	vip, ok := port.vip()
	if !ok {
		return false
	}
	k.vip = vip
	h := n.hash(k)
	sh := &n.shards[h&(natShards-1)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i := n.find(sh, k, h, now)
	if i == 0 {
		return false
	}
	e := &sh.e[i]
	if e.local != local || e.port != port {
		return false
	}
	n.track(e, p.flags, 1, now)
	*out = *e
	return true
}

// track moves e's state for a segment with flags from side (1: client,
// 2: backend).
func (n *NAT) track(e *natEntry, flags, side uint8, now int64) {
	switch {
	case flags&packet.TCPRST != 0:
		if side == 1 {
			e.state = natClosed // the client giving up is no failure
		}
		n.end(e)
		e.state = natClosed
	case flags&packet.TCPFIN != 0:
		if e.fins == 0 {
			e.finnedAt = now
		}
		e.fins |= side
		if e.state != natClosed {
			e.state = natClosing
		}
		if e.fins == 3 {
			n.end(e)
		}
	case e.state == natSyn && side == 2 && flags&(packet.TCPSYN|packet.TCPACK) == packet.TCPSYN|packet.TCPACK:
		e.state = natEst
	case e.state == natSyn && side == 1 && flags&packet.TCPACK != 0 && flags&packet.TCPSYN == 0:
		e.state = natEst
	}
	e.expires = now + n.to[e.state]
}

// vip is the port's VIP now (its target's destination), as a key part.
func (p *Port) vip() ([4]byte, bool) {
	if v := p.natVIP.Load(); v != nil {
		return *v, true
	}
	return [4]byte{}, false
}

// setVIP records the VIP the port's flows go to now.
func (p *Port) setVIP(vip [4]byte) {
	v := vip
	p.natVIP.Store(&v)
}

// reset turns the steered segment p in buf[offset:], which belongs to
// no flow, into the RST a TCP without that connection answers it with
// (RFC 9293, 3.10.7.1), and queues it in *o for uplink ifindex: the
// client of a flow the NAT does not know (its daemon restarted, the
// entry expired) learns at once that the connection is gone, as it
// would from the kernel or the gateway's stack, instead of
// retransmitting into silence. A RST is not answered.
func (n *NAT) reset(ifindex int, buf []byte, offset int, p *natPkt, o **natOut) {
	f := buf[offset:]
	if p.flags&packet.TCPRST != 0 {
		return
	}
	l3, l4 := p.l3, p.l4
	src, dst := [4]byte(f[l3+12:l3+16]), [4]byte(f[l3+16:l3+20])
	sport, dport := binary.BigEndian.Uint16(f[l4:]), binary.BigEndian.Uint16(f[l4+2:])
	seq, ack := binary.BigEndian.Uint32(f[l4+4:]), binary.BigEndian.Uint32(f[l4+8:])
	flags := uint8(packet.TCPRST)
	if p.flags&packet.TCPACK != 0 {
		seq, ack = ack, 0
	} else {
		ack = seq + uint32(p.payload)
		if p.flags&packet.TCPSYN != 0 {
			ack++
		}
		if p.flags&packet.TCPFIN != 0 {
			ack++
		}
		seq, flags = 0, packet.TCPRST|packet.TCPACK
	}
	eth := packet.Ethernet(f)
	cmac, lmac := eth.Src(), eth.Dst()
	eth.SetDst(cmac)
	eth.SetSrc(lmac)
	ip := f[l3 : l3+20]
	ip[0], ip[1] = 0x45, 0
	binary.BigEndian.PutUint16(ip[2:], 40)
	binary.BigEndian.PutUint32(ip[4:], 0x4000) // id 0, DF
	ip[8], ip[9] = 64, packet.ProtoTCP
	binary.BigEndian.PutUint16(ip[10:], 0)
	copy(ip[12:16], dst[:])
	copy(ip[16:20], src[:])
	binary.BigEndian.PutUint16(ip[10:], packet.Checksum(ip))
	tcp := f[l3+20 : l3+40]
	binary.BigEndian.PutUint16(tcp[0:], dport)
	binary.BigEndian.PutUint16(tcp[2:], sport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12], tcp[13] = 5<<4, flags
	clear(tcp[14:])
	sum := packet.Sum(tcp, packet.PseudoHeaderSum(netip.AddrFrom4(dst), netip.AddrFrom4(src), packet.ProtoTCP, 20))
	binary.BigEndian.PutUint16(tcp[16:], packet.Fold(sum))
	packet.OffloadOf(buf).Set(0, packet.GSONone, 0, 0, 0, 0)
	if *o == nil {
		*o = n.outPool.Get().(*natOut)
	}
	(*o).ifindex = append((*o).ifindex, ifindex)
	(*o).bufs = append((*o).bufs, buf[:offset+l3+40])
}

// natOut collects the replies of one WriteFrames call for the uplinks.
type natOut struct {
	ifindex []int
	bufs    [][]byte
}

// reply rewrites a frame the switch gives the gateway if it is a reply of
// a NAT flow (source VIP:port -> the host's address and published port,
// the client's MACs) and queues it in o for its uplink; false leaves the
// frame to the stack.
func (n *NAT) reply(buf []byte, offset int, o **natOut) bool {
	f := buf[offset:]
	if len(f) < packet.EthernetHeaderLen+40 || f[23] != packet.ProtoTCP || binary.BigEndian.Uint16(f[12:14]) != packet.EtherTypeIPv4 {
		return false
	}
	p, ok := parseNAT(f)
	if !ok {
		return false
	}
	var k natKey
	k.vport = binary.BigEndian.Uint16(f[p.l4:])
	if n.targets.Load()[k.vport>>6]&(1<<(k.vport&63)) == 0 {
		return false
	}
	k.vip = [4]byte(f[p.l3+12 : p.l3+16])
	k.client = [4]byte(f[p.l3+16 : p.l3+20])
	k.cport = binary.BigEndian.Uint16(f[p.l4+2:])
	h := n.hash(&k)
	sh := &n.shards[h&(natShards-1)]
	now := n.now().UnixNano()
	sh.mu.Lock()
	i := n.find(sh, &k, h, now)
	if i == 0 {
		sh.mu.Unlock()
		return false
	}
	e := &sh.e[i]
	n.track(e, p.flags, 2, now)
	local, lport, ifindex, cmac, lmac, tsDelta, port := e.local, e.lport, int(e.ifindex), e.cmac, e.lmac, e.tsDelta, e.port
	sh.mu.Unlock()
	port.bytesOut.Add(uint64(p.payload))
	ed := natEdit{addrAt: p.l3 + 12, addr: local, portAt: p.l4, port: lport}
	if p.ts != 0 && tsDelta != 0 {
		// TSecr echoes the client's (rewritten) TSval.
		ed.tsAt, ed.ts = p.ts+4, binary.BigEndian.Uint32(f[p.ts+4:])-tsDelta
	}
	ed.apply(f, &p, packet.OffloadOf(buf).NeedsCsum())
	eth := packet.Ethernet(f)
	eth.SetDst(cmac)
	eth.SetSrc(lmac)
	if *o == nil {
		*o = n.outPool.Get().(*natOut)
	}
	(*o).ifindex = append((*o).ifindex, ifindex)
	(*o).bufs = append((*o).bufs, buf)
	return true
}

// flush sends o's frames out of their uplinks, counts those sent in
// sent (nil: the NAT's frames out) and returns o to the pool.
func (n *NAT) flush(o *natOut, offset int, sent *atomic.Uint64) {
	if sent == nil {
		sent = &n.out
	}
	b := n.uplinks.Load()
	for start := 0; start < len(o.bufs); {
		end := start + 1
		for end < len(o.bufs) && o.ifindex[end] == o.ifindex[start] {
			end++
		}
		w := 0
		if b != nil {
			w, _ = b.u.Write(o.ifindex[start], o.bufs[start:end], offset)
		}
		sent.Add(uint64(w))
		if w < end-start {
			n.drops[natDropUplink].Add(uint64(end - start - w))
		}
		start = end
	}
	clear(o.bufs)
	o.bufs, o.ifindex = o.bufs[:0], o.ifindex[:0]
	n.outPool.Put(o)
}
