package lb

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/packet"
)

// Verdict tells the caller what to do with a frame after Translate or
// Untranslate.
type Verdict uint8

// Verdicts.
const (
	// Pass: not the balancer's business (not to a VIP, or not a reply of a
	// translated flow); forward the frame unchanged.
	Pass Verdict = iota
	// Forward: the frame was translated in place; forward it by its
	// (new) destination MAC like any frame. Its offload metadata still
	// describes it.
	Forward
	// Reject: refuse the frame: write the reply with WriteReject into a buffer
	// of your own, send it to the client (out of the port the frame came
	// in), and drop the frame. Counted by reason.
	Reject
	// Drop: drop the frame. Counted by reason.
	Drop
	// Retry (from Untranslate): the frame, a backend's RST to a client's
	// SYN, is consumed and the connection moved to another backend; drop
	// it and send the SYN that WriteRetry writes (if it writes one)
	// towards the new backend. Counted as ReasonRetried.
	Retry
	// Hold: the frame, an IP fragment that came before its datagram's
	// first fragment, was copied and is held until the first comes (at
	// most the fragment timeout); drop it (it is not lost) and, after the
	// frame that is that first fragment, send what TakeHeld gives.
	// Counted by Conntrack.FragHeld, not as a drop: a held fragment is
	// counted as dropped only when it is given up (ReasonFragment,
	// ReasonFragTimeout, or its first fragment's reason).
	Hold
)

// Reason is why a frame was dropped or rejected.
type Reason uint8

// Reasons.
const (
	ReasonMalformed   Reason = iota + 1 // bad IPv4/TCP/UDP/ICMP header to a VIP
	ReasonFragment                      // a later IP fragment given up for room: held while its first fragment did not come, or its datagram forgotten (tables full)
	ReasonBadOffload                    // offload metadata that does not match the headers
	ReasonUnsupported                   // protocol or ICMP type not balanced
	ReasonNoConn                        // TCP non-SYN or ICMP error without a connection
	ReasonPort                          // port not among the service's ports
	ReasonNoBackend                     // no active backend
	ReasonRetried                       // a backend's RST to a SYN, hidden: the attempt moved on
	ReasonFragTiny                      // a first fragment without its whole L4 header, or a later one overlapping it (RFC 1858)
	ReasonFragTimeout                   // a later IP fragment after its datagram's entry expired, or held too long for its first
	numReasons
)

var reasonNames = [numReasons]string{"", "malformed", "fragment", "bad-offload", "unsupported", "no-conn", "port", "no-backend", "retried", "frag-tiny", "frag-timeout"}

// String returns the reason's metric label.
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Table is one network's balancer: its services (an immutable Snapshot
// behind an atomic pointer) on top of the host's shared Conntrack.
// Translate and Untranslate may be called concurrently from any number of
// goroutines; Swap from one control-plane goroutine at a time.
type Table struct {
	ct      *Conntrack
	net     uint32
	snap    atomic.Pointer[Snapshot]
	mu      sync.Mutex // serializes Swap
	reasons [numReasons]atomic.Uint64
}

// NewTable returns the balancer of network net (a host-local id, unique
// among the Tables sharing ct), with no services.
func NewTable(ct *Conntrack, net uint32) *Table {
	t := &Table{ct: ct, net: net}
	t.snap.Store(&Snapshot{})
	return t
}

// Swap publishes s: new connections use it from the next packet on.
// Counters and scheduler state of services (same VIP and name) and
// backends (same address) carry over; backends that left are marked
// removed, so their UDP flows move at once while their TCP connections
// stay until Flush.
func (t *Table) Swap(s *Snapshot) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s.inherit(t.snap.Load())
	t.snap.Store(s)
}

// Snapshot returns the published snapshot (read-only).
func (t *Table) Snapshot() *Snapshot { return t.snap.Load() }

// Flush removes the connections of this network to backend ip, at the
// end of a removed backend's stop grace period; it returns how many.
func (t *Table) Flush(ip netip.Addr) int {
	if !ip.Is4() {
		return 0
	}
	return t.ct.Flush(t.net, ip.As4())
}

// Reasons returns the drop and reject counters by reason label.
func (t *Table) Reasons() map[string]uint64 {
	m := make(map[string]uint64, numReasons)
	for r := Reason(1); r < numReasons; r++ {
		m[r.String()] = t.reasons[r].Load()
	}
	return m
}

func (t *Table) count(r Reason, v Verdict) Verdict {
	t.reasons[r].Add(1)
	return v
}

// Translate handles a frame from a client's port: frame is the Ethernet
// frame, o its offload metadata (nil for none), now the batch's clock in
// nanoseconds (any monotonic origin, > 0). A frame to a VIP gets its
// connection-tracking entry (a new one from the scheduler for a TCP SYN,
// a UDP datagram or an ICMP echo) and is rewritten in place: destination
// MAC, IP and port become the backend's, checksums are updated
// incrementally (partial checksums and super-segments included). ICMP
// errors the client sends about a VIP flow are translated too.
func (t *Table) Translate(frame []byte, o packet.Offload, now int64) Verdict {
	// t.service(frame), by hand: the compiler does not inline it, and
	// this is all that most frames cost.
	if len(frame) < minIPFrame || frame[12] != 0x08 || frame[13] != 0x00 {
		return Pass
	}
	c := t.snap.Load().get([4]byte(frame[offIPDst : offIPDst+4]))
	if c == nil {
		return Pass
	}
	var p pkt
	bport, v, r := c.match(frame, o, &p)
	switch {
	case v == Reject:
		t.refused(&p, r, now)
		return t.reject(c, r)
	case v == Drop:
		t.refused(&p, r, now)
		return t.count(r, Drop)
	case p.frag == Later:
		return t.forwardLater(c, &p, now)
	case p.isICMPError():
		return t.translateICMP(c, &p, now)
	}
	k := flowKey{net: t.net, proto: p.proto, client: [4]byte(frame[offIPSrc:]), cport: p.sport, vip: c.vip, vport: p.dport}
	return t.forward(c, &p, &k, bport, now)
}

// service returns the service of frame's destination if it is an
// untagged IPv4 frame to a VIP, else nil (Pass), as Translate decides it.
func (t *Table) service(frame []byte) *service {
	if len(frame) < minIPFrame || frame[12] != 0x08 || frame[13] != 0x00 {
		return nil
	}
	return t.snap.Load().get([4]byte(frame[offIPDst : offIPDst+4]))
}

// match is Translate's decision on a frame to c's VIP before connection
// tracking, shared with Peek: it parses the frame into p and returns
// Reject or Drop with the reason, or Forward with the backend port (an
// ICMP error goes on to translateICMP).
func (c *service) match(frame []byte, o packet.Offload, p *pkt) (bport uint16, v Verdict, r Reason) {
	var ok bool
	if *p, r = parse(frame, o); r != 0 {
		return 0, Drop, r
	}
	switch {
	case p.frag == Later:
		return 0, Forward, 0 // forwardLater decides
	case p.frag == First && p.proto == protoICMP && p.icmpType != icmpEcho:
		return 0, Drop, ReasonUnsupported // an ICMP error is never that long
	case p.isICMPError():
		return 0, Forward, 0
	case p.proto == protoICMP && p.icmpType != icmpEcho:
		return 0, Drop, ReasonUnsupported
	case p.proto != protoTCP && p.proto != protoUDP && p.proto != protoICMP:
		return 0, Reject, ReasonUnsupported
	case p.proto == protoICMP:
		return p.dport, Forward, 0
	}
	if bport, ok = c.port(p.proto, p.dport); !ok {
		return 0, Reject, ReasonPort
	}
	return bport, Forward, 0
}

func (t *Table) reject(c *service, r Reason) Verdict {
	c.st.rejects.Add(1)
	return t.count(r, Reject)
}

// forward finds or creates k's entry under its shard lock, updates it and
// rewrites the frame.
func (t *Table) forward(c *service, p *pkt, k *flowKey, bport uint16, now int64) Verdict {
	s := t.ct.shardOf(k.net, k.proto, k.client, k.cport)
	s.mu.Lock()
	i := t.ct.findFwd(s, k, now)
	if i == 0 {
		var r Reason
		if i, r = t.create(s, c, p, k, bport, now); i == 0 {
			s.mu.Unlock()
			t.refused(p, r, now)
			if r == ReasonNoConn && p.flags&packet.TCPRST != 0 {
				return t.count(r, Drop) // never answer a RST
			}
			return t.reject(c, r)
		}
	} else {
		t.hit(s, i, c, p, k, now)
	}
	e := &s.e[i]
	e.expires = now + t.ct.timeout(e.proto, e.state)
	s.touch(i)
	addr, port, mac, be := e.backend, e.bport, e.mac, e.be
	s.mu.Unlock()
	switch {
	case p.frag == First:
		t.ct.frags.remember(fragNS(t.net, dirFwd), packet.IPv4(p.f[offIP:p.end]), FragVal{Addr: addr, MAC: mac}, be, now)
		t.releaseFirst(p, dirFwd, false, now)
	case p.proto == protoTCP && p.flags&(packet.TCPSYN|packet.TCPACK|packet.TCPRST) == packet.TCPSYN:
		t.ct.syns.put(t.net, p, now)
	}
	p.rewriteDst(addr, port, mac)
	n := uint64(len(p.f))
	be.packets.Add(1)
	be.bytes.Add(n)
	c.st.packets.Add(1)
	c.st.bytes.Add(n)
	return Forward
}

// create schedules a new flow and inserts its entry; 0 and the reason if
// the flow cannot be created.
func (t *Table) create(s *shard, c *service, p *pkt, k *flowKey, bport uint16, now int64) (uint32, Reason) {
	bi, st, r := t.schedule(&flowPick{s: s, c: c, k: k, bport: bport, now: now}, p)
	if r != 0 {
		return 0, r
	}
	b := &c.backends[bi]
	tmpl := entry{
		client: k.client, vip: k.vip, backend: b.ip, cport: k.cport, vport: k.vport, bport: bport,
		proto: k.proto, state: st, mac: b.mac, net: k.net, since: now, be: b.st,
	}
	b.st.newConns.Add(1)
	c.st.newConns.Add(1)
	return t.ct.insert(s, &tmpl), 0
}

// flowPick is the choice of a backend for flow k to service c, with
// backend port bport, at now, under k's shard s (locked). With peek
// (Peek) the choice changes nothing: scheduler positions, weights and
// affinity stay as they are.
type flowPick struct {
	s     *shard
	c     *service
	k     *flowKey
	bport uint16
	now   int64
	peek  bool
}

// schedule decides the new flow of d, whose first packet is p: its
// backend index and first state, or why it gets none.
func (t *Table) schedule(d *flowPick, p *pkt) (int32, uint8, Reason) {
	c := d.c
	st := uint8(stOther)
	if p.proto == protoTCP {
		switch {
		case p.flags&(packet.TCPSYN|packet.TCPACK|packet.TCPRST) == packet.TCPSYN:
			st = stSynSent
		case c.sched == Maglev && p.flags&packet.TCPRST == 0:
			st = stEstablished // the backend any host would pick
		default:
			return none, 0, ReasonNoConn
		}
	}
	// A client that is a backend of the service is not sent to itself: the
	// translated packet would arrive with its own address as the source,
	// which its kernel drops as martian (there is no SNAT to avoid it).
	var av avoid
	if i, ok := c.index(d.k.client); ok {
		av.add(i)
	}
	bi := t.chooseFree(d, &av)
	if bi == none {
		return none, 0, ReasonNoBackend
	}
	return bi, st, 0
}

// chooseFree is choose for d's client port and backend port: if the
// backend chosen already has a connection from that port (revTaken), it
// is added to av and a second one is chosen; none if that one has too.
func (t *Table) chooseFree(d *flowPick, av *avoid) int32 {
	c := d.c
	bi := t.choose(c, d.k, d.now, av, d.peek)
	if bi == none || !t.revTaken(d, c.backends[bi].ip) {
		return bi
	}
	av.add(bi)
	bi = t.choose(c, d.k, d.now, av, d.peek)
	if bi != none && t.revTaken(d, c.backends[bi].ip) {
		return none
	}
	return bi
}

// revTaken reports whether another connection of d's client port
// already goes to backend ip at d's backend port (the same client port
// to two VIPs that share a backend): the backend could not tell the two
// apart, and neither could the reply path.
// With peek an expired entry is left for the sweeper.
func (t *Table) revTaken(d *flowPick, ip [4]byte) bool {
	k := d.k
	r := revKey{net: k.net, proto: k.proto, backend: ip, bport: d.bport, client: k.client, cport: k.cport}
	if d.peek {
		i := t.ct.lookupRev(d.s, &r)
		return i != 0 && d.s.e[i].expires > d.now
	}
	return t.ct.findRev(d.s, &r, d.now) != 0
}

// choose applies client-IP affinity, then the scheduler, avoiding the
// backends of av if it can; with peek it changes neither (see schedule).
func (t *Table) choose(c *service, k *flowKey, now int64, av *avoid, peek bool) int32 {
	if c.affinity > 0 {
		if ip, ok := t.ct.aff.get(k.net, k.vip, k.client, now, c.affinity); ok {
			if bi, ok := c.index(ip); ok && !av.has(bi) && c.backends[bi].usable(now) {
				if !peek {
					t.ct.aff.put(k.net, k.vip, k.client, ip, now)
				}
				return bi
			}
		}
	}
	bi := c.pick(k, now, av, peek)
	if bi != none && c.affinity > 0 && !peek {
		t.ct.aff.put(k.net, k.vip, k.client, c.backends[bi].ip, now)
	}
	return bi
}

// hit updates entry i for a client packet: SYN retransmissions past
// SynRetry move the attempt to another backend, a SYN on a closed entry
// starts over, UDP and echo flows leave a backend that is gone.
func (t *Table) hit(s *shard, i uint32, c *service, p *pkt, k *flowKey, now int64) {
	e := &s.e[i]
	if p.proto != protoTCP {
		if st := e.be.cfg.Load(); st == removed || st == uint32(Ejected) {
			t.move(s, i, c, k, now)
		}
		return
	}
	switch {
	case p.flags&(packet.TCPSYN|packet.TCPACK) == packet.TCPSYN:
		t.clientSyn(s, i, c, k, now)
	case p.flags&packet.TCPRST != 0:
		e.tcpClose(true, 0)
	case p.flags&packet.TCPFIN != 0:
		e.tcpClose(false, flFinClient)
	}
}

func (t *Table) clientSyn(s *shard, i uint32, c *service, k *flowKey, now int64) {
	e := &s.e[i]
	switch {
	case e.state >= stClosing: // the tuple is reused for a new connection
		e.state, e.retries, e.flags, e.since = stSynSent, 0, e.flags&flCounted, now
		e.count()
		if e.be.cfg.Load() != uint32(Active) {
			t.move(s, i, c, k, now)
		}
	case e.state != stSynSent:
	case e.flags&flUnsent != 0: // first SYN to the backend it moved to
		e.flags &^= flUnsent
		e.since = now
	case now-e.since >= t.ct.to.synRetry && e.retries < MaxRetries:
		t.fail(e.be, now)
		if t.retry(s, i, c, k, now) {
			s.e[i].since = now
		}
	}
}

// retry moves entry i's attempt to another backend and counts it; the
// backend it leaves joins those the attempt avoids. Callers check
// retries < MaxRetries.
func (t *Table) retry(s *shard, i uint32, c *service, k *flowKey, now int64) bool {
	old, ip := s.e[i].be, s.e[i].backend
	if !t.move(s, i, c, k, now) {
		return false
	}
	e := &s.e[i]
	if int(e.retries) < len(e.tried) {
		e.tried[e.retries] = ip
		e.retries++
	}
	old.retries.Add(1)
	c.st.retries.Add(1)
	return true
}

// move re-schedules entry i to a backend other than its own and those
// that failed the attempt already, re-keying its backend-side index;
// like a new connection, it takes a second choice if the first already
// has a connection from the client's port. It reports false if there is
// none.
func (t *Table) move(s *shard, i uint32, c *service, k *flowKey, now int64) bool {
	e := &s.e[i]
	var av avoid
	if bi, ok := c.index(e.backend); ok {
		av.add(bi)
	}
	for _, ip := range e.tried[:e.retries] {
		if bi, ok := c.index(ip); ok {
			av.add(bi)
		}
	}
	bi := t.chooseFree(&flowPick{s: s, c: c, k: k, bport: e.bport, now: now}, &av)
	if bi == none || av.has(bi) {
		return false
	}
	b := &c.backends[bi]
	t.ct.unlinkRev(s, i)
	counted := e.flags&flCounted != 0
	e.uncount()
	e.backend, e.mac, e.be = b.ip, b.mac, b.st
	if counted {
		e.count()
	}
	e.be.newConns.Add(1)
	t.ct.linkRev(s, i)
	return true
}

// fail records a failed connection attempt on a backend: EjectAfter in a
// row eject it for Timeouts.Eject.
func (t *Table) fail(b *beState, now int64) {
	b.failures.Add(1)
	if b.fails.Add(1) >= EjectAfter {
		b.fails.Store(0)
		b.ejectedUntil.Store(now + t.ct.to.eject)
		b.ejections.Add(1)
	}
}
