package lb

import (
	"net/netip"

	"github.com/vxmesh/vxmesh/packet"
)

// Conn is a TCP connection to a VIP that its caller opened without a
// frame: a routing-mesh connection whose backend the caller picks before
// it dials (Table.Open). Its conntrack entry is the one the client's SYN
// through the switch would have made, so it counts where every
// connection counts (new and active connections of the service and the
// backend, least-connections, affinity, a client port's one connection
// per backend address), and a frame of the same flow that reaches
// Translate afterwards (the caller dialling the VIP after all) follows
// it to the same backend.
//
// When the caller reaches the backend by other means than frames through
// the switch (a local socket: the published-port fast path), no frame
// ever moves the entry, so the caller tells it what frames would have:
// Connected, Failed, Closed. When it dials the VIP instead, it tells it
// nothing: the frames do.
type Conn struct {
	t *Table
	k flowKey
	// Backend is where the connection goes now (the backend's address
	// and port).
	Backend netip.AddrPort
	// MAC is the backend's MAC.
	MAC packet.MAC
}

// Open picks the backend of a new TCP connection from client to vip (a
// VIP and one of its ports) at now, as Translate picks it for the
// client's SYN, and makes its conntrack entry: affinity, scheduler,
// health and ejection, draining, the avoidance of the client itself and
// of a backend the client's port already has a connection to, and the
// counters (new and active connections) are all Translate's. A client
// port whose entry lingers (closed, or still open) gets what a SYN on it
// would get. It reports false, counting nothing, when Translate would
// not forward such a SYN (no service on vip, a port the service does not
// list, no usable backend): the caller's frames then get Translate's
// answer and its counting. It does not allocate.
func (t *Table) Open(client, vip netip.AddrPort, now int64) (Conn, bool) {
	if !client.Addr().Is4() || !vip.Addr().Is4() {
		return Conn{}, false
	}
	c := t.snap.Load().get(vip.Addr().As4())
	if c == nil {
		return Conn{}, false
	}
	bport, ok := c.port(protoTCP, vip.Port())
	if !ok {
		return Conn{}, false
	}
	p := pkt{proto: protoTCP, flags: packet.TCPSYN, sport: client.Port(), dport: vip.Port(), csum: -1}
	k := flowKey{net: t.net, proto: protoTCP, client: client.Addr().As4(), cport: client.Port(), vip: c.vip, vport: vip.Port()}
	s := t.ct.shardOf(k.net, k.proto, k.client, k.cport)
	s.mu.Lock()
	defer s.mu.Unlock()
	i := t.ct.findFwd(s, &k, now)
	if i == 0 {
		if i, _ = t.create(s, c, &p, &k, bport, now); i == 0 {
			return Conn{}, false
		}
	} else {
		t.hit(s, i, c, &p, &k, now)
	}
	e := &s.e[i]
	e.expires = now + t.ct.timeout(e.proto, e.state)
	s.touch(i)
	return Conn{t: t, k: k, Backend: netip.AddrPortFrom(netip.AddrFrom4(e.backend), e.bport), MAC: e.mac}, true
}

// entry returns c's live entry, still to c.Backend, under its shard's
// lock (the caller unlocks s), or 0: the entry expired, was flushed or
// evicted, or moved to another backend meanwhile.
func (c *Conn) entry(now int64) (*shard, uint32) {
	s := c.t.ct.shardOf(c.k.net, c.k.proto, c.k.client, c.k.cport)
	s.mu.Lock()
	i := c.t.ct.findFwd(s, &c.k, now)
	if i != 0 {
		e := &s.e[i]
		if e.backend != c.Backend.Addr().As4() || e.bport != c.Backend.Port() || e.state >= stClosing {
			i = 0
		}
	}
	return s, i
}

// Connected records that the backend accepted c, as its SYN-ACK through
// the switch would: the entry is established and the backend's run of
// failed attempts ends.
func (c *Conn) Connected(now int64) {
	s, i := c.entry(now)
	defer s.mu.Unlock()
	if i == 0 {
		return
	}
	e := &s.e[i]
	e.state = stEstablished
	e.flags &^= flUnsent
	e.be.fails.Store(0)
	e.expires = now + c.t.ct.to.est
	s.touch(i)
}

// Failed records that the backend refused c or did not answer, as its
// RST to the SYN (or the SYN's retransmission timing out) through the
// switch would: a failed attempt of the backend (EjectAfter in a row
// eject it), and c moves to another backend, avoiding those that failed
// it, at most MaxRetries times. It reports whether c moved (c.Backend
// is the new one); if not, c is closed.
func (c *Conn) Failed(now int64) bool {
	s, i := c.entry(now)
	defer s.mu.Unlock()
	if i == 0 {
		return false
	}
	e := &s.e[i]
	c.t.fail(e.be, now)
	if e.retries < MaxRetries {
		if svc := c.t.snap.Load().get(e.vip); svc != nil && c.t.retry(s, i, svc, &c.k, now) {
			e = &s.e[i]
			e.flags |= flUnsent
			e.since = now
			e.expires = now + c.t.ct.to.syn
			c.Backend, c.MAC = netip.AddrPortFrom(netip.AddrFrom4(e.backend), e.bport), e.mac
			return true
		}
	}
	e.tcpClose(true, 0)
	e.expires = now + c.t.ct.to.close
	return false
}

// Closed records that c ended (both ways closed, or reset), as the last
// FIN or a RST through the switch would: it leaves the active
// connections, and its entry lingers for the closing timeout, as a
// closed connection's does, so that the client port's next connection
// through the switch or Open starts over on it.
func (c *Conn) Closed(now int64) {
	s, i := c.entry(now)
	defer s.mu.Unlock()
	if i == 0 {
		return
	}
	e := &s.e[i]
	e.tcpClose(false, flFinClient)
	e.tcpClose(false, flFinBack)
	e.expires = now + c.t.ct.to.closing
	s.touch(i)
}
