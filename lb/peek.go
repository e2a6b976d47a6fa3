package lb

import (
	"net/netip"

	"github.com/vxmesh/vxmesh/packet"
)

// Peek is what Translate would do with a frame, as Table.Peek reports it.
type Peek struct {
	// Verdict is Translate's: Pass (not to a VIP), Forward, Reject or
	// Drop.
	Verdict Verdict
	// Reason is why a Reject or Drop.
	Reason Reason
	// Service, VIP and Scheduler name the service of the frame's VIP
	// (empty for Pass).
	Service   string
	VIP       netip.Addr
	Scheduler Scheduler
	// Backend, BackendMAC and BackendPort are where a Forward goes;
	// Backend is invalid for an ICMP error, which follows the connection
	// it quotes, and for a later IP fragment, which follows its first
	// fragment (neither is looked up).
	Backend     netip.Addr
	BackendMAC  packet.MAC
	BackendPort uint16
	// Existing is set when an existing connection decided the backend,
	// clear when the scheduler did (the next new connection's pick).
	Existing bool
}

// Peek reports what Translate would do with frame (offload metadata o)
// at now, through the same decisions (service match, port, conntrack
// lookup, affinity, scheduler), without their side effects: no entry is
// created, touched or expired, no counter moves and no scheduler
// position or weight advances (PowerOfTwo still samples two backends at
// random, so its answer is one of the picks it could make). A frame that
// Translate would forward is rewritten in place as Translate would
// (destination MAC, IP, port and checksums), so pass a copy. It is for
// tracing (vswitch.Switch.Trace), not the packet path.
func (t *Table) Peek(frame []byte, o packet.Offload, now int64) Peek {
	c := t.service(frame)
	if c == nil {
		return Peek{Verdict: Pass}
	}
	var p pkt
	bport, v, r := c.match(frame, o, &p)
	out := Peek{Verdict: v, Reason: r, Service: c.cfg.Name, VIP: c.cfg.VIP, Scheduler: c.sched}
	if v != Forward || p.isICMPError() || p.frag == Later {
		return out
	}
	k := flowKey{net: t.net, proto: p.proto, client: [4]byte(frame[offIPSrc:]), cport: p.sport, vip: c.vip, vport: p.dport}
	s := t.ct.shardOf(k.net, k.proto, k.client, k.cport)
	s.mu.Lock()
	var addr [4]byte
	var mac [6]byte
	if i := t.ct.lookupFwd(s, &k); i != 0 && s.e[i].expires > now {
		e := &s.e[i]
		addr, bport, mac, out.Existing = e.backend, e.bport, e.mac, true
	} else if bi, _, why := t.schedule(&flowPick{s: s, c: c, k: &k, bport: bport, now: now, peek: true}, &p); why != 0 {
		s.mu.Unlock()
		out.Verdict, out.Reason = Reject, why
		if why == ReasonNoConn && p.flags&packet.TCPRST != 0 {
			out.Verdict = Drop // never answer a RST
		}
		return out
	} else {
		addr, mac = c.backends[bi].ip, c.backends[bi].mac
	}
	s.mu.Unlock()
	p.rewriteDst(addr, bport, mac)
	out.Backend, out.BackendMAC, out.BackendPort = netip.AddrFrom4(addr), mac, bport
	return out
}

// String returns the verdict's name: pass, forward, reject, drop or
// retry.
func (v Verdict) String() string {
	switch v {
	case Pass:
		return "pass"
	case Forward:
		return "forward"
	case Reject:
		return "reject"
	case Drop:
		return "drop"
	case Retry:
		return "retry"
	}
	return "unknown"
}
