package vswitch

import (
	"crypto/rand"
	"encoding/binary"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/internal/hashmix"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

// The routing mesh with client-ip=preserve (see docs/architecture.md,
// "Routing mesh: keeping the client's address across hosts"): another
// host's gateway (the ingress host) dials a service VIP from an outside
// client's own address; its switch translates the flow to a backend on
// this host and sends it through the tunnel with the ingress host's
// gateway-host MAC as the source. The backend answers the client through
// its default gateway, this host's; the ingress-return table remembers,
// per flow, which host's gateway the flow came in through, so that the
// switch sends the replies back there instead.

// DefaultIngressReturnMax is the ingress-return table's size of a Config
// that sets none, in flows.
const DefaultIngressReturnMax = 65536

// meshShards is the number of ingress-return shards, each with its own
// lock.
const meshShards = 16

// meshClientSlots is the size of meshTable.clients.
const meshClientSlots = 4096

// Entry states, with the conntrack's timeouts.
const (
	meshSyn     = iota // client SYN seen, no answer yet
	meshEst            // answered, or picked up mid-flow
	meshClosing        // FIN seen
	meshClosed         // RST seen
	meshUDP            // UDP
)

// meshKey is a flow as the backend answers it: proto, backend IP/port,
// client IP/port.
type meshKey struct {
	backend, client [4]byte
	bport, cport    uint16
	proto           uint8
}

// meshEntry is one flow: where its replies go.
type meshEntry struct {
	key     meshKey
	mac     packet.MAC // the ingress host's gateway-host MAC
	state   uint8
	next    uint32 // hash chain, or free list
	expires int64  // switch clock; 0: free
}

type meshShard struct {
	mu   sync.Mutex
	e    []meshEntry // e[0] is the nil sentinel
	idx  []uint32
	mask uint32
	free uint32
	n    int
	_    [40]byte
}

// meshTable is the ingress-return table: a fixed slab per shard (all
// allocated by newMeshTable), hash chains in slab indexes, so no packet
// allocates. A full shard refuses new flows.
type meshTable struct {
	shards [meshShards]meshShard
	seed   uint64
	to     [5]int64 // timeout by state
	n      atomic.Int64
	// evicted counts live entries of closed flows (FIN or RST seen) freed
	// early to make room for a new flow in a full shard.
	evicted atomic.Uint64
	// clients counts entries by a hash of the client address, so a frame
	// to the gateway from a local port (egress, mostly) to an address no
	// entry has costs one atomic load.
	clients [meshClientSlots]atomic.Int32
	// frags follows replies fragmented by a local backend: the first
	// fragment (ports) is steered by the table, the later ones (no
	// ports) by what it was steered to.
	frags *lb.FragTable
}

// meshFragMax is how many fragmented replies a switch's routing mesh
// steers at once.
const meshFragMax = 1024

func newMeshTable(max int, to lb.Timeouts) *meshTable {
	if max <= 0 {
		max = DefaultIngressReturnMax
	}
	d := lb.DefaultTimeouts
	pick := func(v, def int64) int64 {
		if v > 0 {
			return v
		}
		return def
	}
	t := &meshTable{frags: lb.NewFragTable(meshFragMax, 0)}
	t.to[meshSyn] = pick(int64(to.TCPSyn), int64(d.TCPSyn))
	t.to[meshEst] = pick(int64(to.TCPEstablished), int64(d.TCPEstablished))
	t.to[meshClosing] = pick(int64(to.TCPClosing), int64(d.TCPClosing))
	t.to[meshClosed] = pick(int64(to.TCPClose), int64(d.TCPClose))
	t.to[meshUDP] = pick(int64(to.UDP), int64(d.UDP))
	var s [8]byte
	rand.Read(s[:])
	t.seed = binary.LittleEndian.Uint64(s[:])
	per := (max + meshShards - 1) / meshShards
	for i := range t.shards {
		sh := &t.shards[i]
		b := 1
		for b < per {
			b <<= 1
		}
		sh.e = make([]meshEntry, per+1)
		sh.idx = make([]uint32, b)
		sh.mask = uint32(b - 1)
		for j := 1; j < per; j++ {
			sh.e[j].next = uint32(j + 1)
		}
		sh.free = 1
	}
	return t
}

func (t *meshTable) hash(k *meshKey) uint64 {
	x := uint64(binary.BigEndian.Uint32(k.backend[:]))<<32 | uint64(binary.BigEndian.Uint32(k.client[:]))
	y := uint64(k.proto)<<32 | uint64(k.bport)<<16 | uint64(k.cport)
	return hashmix.Mix(hashmix.Mix(x^t.seed) ^ y)
}

// bucket returns the head of hash h's chain in sh. Its index takes h's
// high half: the shard is h's low bits (h % meshShards), so an index from
// those would leave all but 1/meshShards of each shard's buckets empty.
func (sh *meshShard) bucket(h uint64) *uint32 { return &sh.idx[uint32(h>>32)&sh.mask] }

func (t *meshTable) clientSlot(ip [4]byte) *atomic.Int32 {
	return &t.clients[hashmix.Mix(t.seed^uint64(binary.BigEndian.Uint32(ip[:])))%meshClientSlots]
}

// find returns k's live entry in sh (locked) and its chain link, or 0.
// An expired entry found is freed.
func (t *meshTable) find(sh *meshShard, k *meshKey, h uint64, now int64) uint32 {
	p := sh.bucket(h)
	for i := *p; i != 0; i = *p {
		e := &sh.e[i]
		if e.key == *k {
			if e.expires <= now {
				t.remove(sh, p, i)
				return 0
			}
			return i
		}
		p = &e.next
	}
	return 0
}

// remove unlinks entry i (linked from *p) and frees it.
func (t *meshTable) remove(sh *meshShard, p *uint32, i uint32) {
	e := &sh.e[i]
	*p = e.next
	t.clientSlot(e.key.client).Add(-1)
	*e = meshEntry{next: sh.free}
	sh.free = i
	sh.n--
	t.n.Add(-1)
}

// reclaim makes room in sh (locked, full) for a new flow and reports
// whether it did. It frees, in one pass over the shard, the expired
// entries and those of closed flows: RST seen, or FIN seen at least half
// the closing timeout ago; failing those, the closing entry nearest its
// expiry. Established and UDP flows are never evicted: a shard full of
// them refuses new flows. Only a full shard pays for the pass, and it
// frees a batch, so a table churning with short connections does not
// scan once per new flow.
func (t *meshTable) reclaim(sh *meshShard, now int64) bool {
	cut := now + t.to[meshClosing]/2
	var victim uint32
	var link *uint32
	soonest := int64(math.MaxInt64)
	for b := range sh.idx {
		p := &sh.idx[b]
		for i := *p; i != 0; i = *p {
			e := &sh.e[i]
			closed := e.state == meshClosed || e.state == meshClosing && e.expires <= cut
			if e.expires <= now || closed {
				if e.expires > now {
					t.evicted.Add(1)
				}
				t.remove(sh, p, i)
				continue
			}
			if e.state == meshClosing && e.expires < soonest {
				victim, link, soonest = i, p, e.expires
			}
			p = &e.next
		}
	}
	if sh.free == 0 && victim != 0 {
		// Nothing was freed above, so link is still victim's.
		t.evicted.Add(1)
		t.remove(sh, link, victim)
	}
	return sh.free != 0
}

// timeout returns the idle timeout of an entry in state st.
func (t *meshTable) timeout(st uint8) int64 { return t.to[st] }

// learn creates or refreshes k's entry, sending its replies to mac, for a
// frame from the ingress host's gateway (client to backend) with TCP
// flags flags. It reports false if the flow is new and the table has no
// room. A TCP RST never creates an entry.
func (t *meshTable) learn(k *meshKey, mac packet.MAC, flags uint8, now int64) bool {
	h := t.hash(k)
	sh := &t.shards[h%meshShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i := t.find(sh, k, h, now)
	if i == 0 {
		if k.proto == packet.ProtoTCP && flags&packet.TCPRST != 0 {
			return true
		}
		if sh.free == 0 && !t.reclaim(sh, now) {
			return false
		}
		i = sh.free
		e := &sh.e[i]
		sh.free = e.next
		b := sh.bucket(h)
		*e = meshEntry{key: *k, next: *b, state: meshUDP}
		*b = i
		sh.n++
		t.n.Add(1)
		t.clientSlot(k.client).Add(1)
		if k.proto == packet.ProtoTCP {
			e.state = meshEst // picked up mid-flow (this host restarted)
			if flags&(packet.TCPSYN|packet.TCPACK) == packet.TCPSYN {
				e.state = meshSyn
			}
		}
	}
	e := &sh.e[i]
	e.mac = mac
	if k.proto == packet.ProtoTCP {
		switch {
		case flags&packet.TCPRST != 0:
			e.state = meshClosed
		case flags&(packet.TCPSYN|packet.TCPACK) == packet.TCPSYN && e.state >= meshClosing:
			e.state = meshSyn // the tuple is reused for a new connection
		case flags&packet.TCPFIN != 0 && e.state < meshClosing:
			e.state = meshClosing
		}
	}
	e.expires = now + t.timeout(e.state)
	return true
}

// steer looks up k for a reply from a local backend with TCP flags flags:
// it returns the MAC of the gateway the flow came in through, refreshing
// the entry, or false.
func (t *meshTable) steer(k *meshKey, flags uint8, now int64) (packet.MAC, bool) {
	if t.n.Load() == 0 || t.clientSlot(k.client).Load() == 0 {
		return packet.MAC{}, false
	}
	h := t.hash(k)
	sh := &t.shards[h%meshShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i := t.find(sh, k, h, now)
	if i == 0 {
		return packet.MAC{}, false
	}
	e := &sh.e[i]
	if k.proto == packet.ProtoTCP {
		switch {
		case flags&packet.TCPRST != 0:
			e.state = meshClosed
		case flags&packet.TCPFIN != 0 && e.state < meshClosing:
			e.state = meshClosing
		case e.state == meshSyn && flags&packet.TCPACK != 0:
			e.state = meshEst
		}
	}
	e.expires = now + t.timeout(e.state)
	return e.mac, true
}

// drop removes k's entry, if any: the flow comes in through this host's
// own gateway now (a client port used again through this host), which
// must get its replies, not the ingress host of the tuple's previous use.
func (t *meshTable) drop(k *meshKey) {
	if t.n.Load() == 0 || t.clientSlot(k.client).Load() == 0 {
		return
	}
	h := t.hash(k)
	sh := &t.shards[h%meshShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	p := sh.bucket(h)
	for i := *p; i != 0; i = *p {
		if sh.e[i].key == *k {
			t.remove(sh, p, i)
			return
		}
		p = &sh.e[i].next
	}
}

// sweep frees the entries that expired before now and returns how many.
func (t *meshTable) sweep(now int64) int {
	n := 0
	for k := range t.shards {
		sh := &t.shards[k]
		sh.mu.Lock()
		for b := range sh.idx {
			p := &sh.idx[b]
			for i := *p; i != 0; i = *p {
				if sh.e[i].expires <= now {
					t.remove(sh, p, i)
					n++
					continue
				}
				p = &sh.e[i].next
			}
		}
		sh.mu.Unlock()
	}
	return n
}

// forget removes the entries whose replies go to mac (a gateway that left).
func (t *meshTable) forget(mac packet.MAC) {
	for k := range t.shards {
		sh := &t.shards[k]
		sh.mu.Lock()
		for b := range sh.idx {
			p := &sh.idx[b]
			for i := *p; i != 0; i = *p {
				if sh.e[i].mac == mac {
					t.remove(sh, p, i)
					continue
				}
				p = &sh.e[i].next
			}
		}
		sh.mu.Unlock()
	}
}

// meshFlow parses an untagged IPv4 TCP or UDP frame that is not a
// fragment, or is a first fragment: its addresses, ports and TCP flags.
func meshFlow(eth packet.Ethernet) (src, dst [4]byte, sport, dport uint16, proto, flags uint8, ok bool) {
	if eth.EtherType() != packet.EtherTypeIPv4 {
		return
	}
	ip := packet.IPv4(eth.Payload())
	if !ip.Valid() || lb.FragOf(ip) == lb.Later {
		return
	}
	proto = ip.Protocol()
	l4 := ip[ip.HeaderLen():]
	if tl := ip.TotalLen(); tl >= ip.HeaderLen() && tl <= len(ip) {
		l4 = ip[ip.HeaderLen():tl]
	}
	switch {
	case proto == packet.ProtoTCP && len(l4) >= 20:
		flags = l4[13]
	case proto == packet.ProtoUDP && len(l4) >= 8:
	default:
		return
	}
	src, dst = [4]byte(ip[12:16]), [4]byte(ip[16:20])
	return src, dst, binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:]), proto, flags, true
}

// max returns the table's size.
func (t *meshTable) max() int { return meshShards * (len(t.shards[0].e) - 1) }

// SweepIngressReturn frees the ingress-return entries that expired and
// returns how many; lookups free the expired entries they meet, but only
// a sweep makes room in a full table and Stats exact. Call it
// periodically (the data plane does, with its conntrack).
func (s *Switch) SweepIngressReturn() int {
	mt := s.mesh.Load()
	if mt == nil {
		return 0
	}
	return mt.sweep(s.clock())
}

// steer is the reply path of the routing mesh: a frame from local port r
// to the gateway MAC that is the reply of a flow in the ingress-return
// table is re-addressed, in place, to the gateway-host MAC of the host the
// flow came in through; steer returns that MAC, or false for a miss (the
// frame goes to this host's gateway, as egress).
//
// A reply the backend fragmented is steered by its first fragment (which
// carries the ports); its later fragments go where the first went
// (lb.FragTable), as long as the first came before them.
func (r *Port) steer(v *view, mt *meshTable, eth packet.Ethernet, now int64) (packet.MAC, bool) {
	var mac packet.MAC
	if p := eth.Payload(); eth.EtherType() == packet.EtherTypeIPv4 && len(p) >= packet.IPv4MinHeaderLen && lb.FragOf(p) == lb.Later {
		if mt.n.Load() == 0 {
			return mac, false
		}
		fv, ok := mt.frags.Recall(0, eth, now)
		if !ok {
			return mac, false
		}
		mac = fv.MAC
	} else {
		src, dst, sport, dport, proto, flags, ok := meshFlow(eth)
		if !ok {
			return mac, false
		}
		k := meshKey{backend: src, client: dst, bport: sport, cport: dport, proto: proto}
		if mac, ok = mt.steer(&k, flags, now); !ok {
			return mac, false
		}
		if lb.FragOf(eth.Payload()) == lb.First {
			mt.frags.Remember(0, eth, lb.FragVal{MAC: mac}, now)
		}
	}
	if _, live := v.gwHosts[mac]; !live {
		return packet.MAC{}, false
	}
	eth.SetDst(mac)
	return mac, true
}

// meshIn is the routing mesh at r's input, for a frame going to one port,
// out, that the balancer translated or not. A frame from this host's
// gateway translated to a backend behind the tunnel leaves with this
// host's gateway-host MAC as its source (no host MAC: "no-route"). A TCP
// SYN or a UDP datagram from this host's gateway to a local port ends the
// flow's ingress-return entry, if another host's gateway brought the
// same tuple before: the replies are this gateway's now. A
// frame from the tunnel whose source is another host's gateway-host MAC,
// from an outside client's address (or the gateway address), to a local
// port creates or refreshes the flow's ingress-return entry (a full
// table: "ingress-full").
func (r *Port) meshIn(v *view, mt *meshTable, eth packet.Ethernet, out *Port, translated bool, now int64) (reason, bool) {
	switch {
	case r.gateway && translated && !out.security && !out.gateway:
		if v.hostMAC.IsZero() {
			return dropNoRoute, false
		}
		eth.SetSrc(v.hostMAC)
	case mt != nil && r.gateway && out.security:
		if src, dst, sport, dport, proto, flags, ok := meshFlow(eth); ok && (proto == packet.ProtoUDP || flags&(packet.TCPSYN|packet.TCPACK) == packet.TCPSYN) {
			mt.drop(&meshKey{backend: dst, client: src, bport: dport, cport: sport, proto: proto})
		}
	case mt != nil && !r.security && !r.gateway && out.security && len(v.gwHosts) > 0:
		mac := eth.Src()
		if _, ok := v.gwHosts[mac]; !ok {
			return 0, true
		}
		src, dst, sport, dport, proto, flags, ok := meshFlow(eth)
		if !ok {
			return 0, true
		}
		if a := netip.AddrFrom4(src); r.sw.subnet.Contains(a) && a != r.sw.gwIP {
			return 0, true // snat: the source is the gateway's host address, replies find it
		}
		k := meshKey{backend: dst, client: src, bport: dport, cport: sport, proto: proto}
		if !mt.learn(&k, mac, flags, now) {
			return dropIngressFull, false
		}
	}
	return 0, true
}
