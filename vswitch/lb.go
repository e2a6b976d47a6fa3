package vswitch

import (
	"net/netip"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

// Balancer is a network's service load balancer as the switch uses it: an
// *lb.Table. Its snapshot is read once per batch, so a Swap is seen from
// the next batch on without touching the switch.
type Balancer interface {
	Snapshot() *lb.Snapshot
	Translate(frame []byte, o packet.Offload, now int64) lb.Verdict
	Untranslate(frame []byte, o packet.Offload, now int64) lb.Verdict
	WriteRetry(dst, frame []byte, now int64) int
	// TakeHeld gives the IP fragments held (Verdict Hold) for the
	// datagram whose first fragment frame is, after Translate or
	// Untranslate handled it.
	TakeHeld(dst, frame []byte) int
	// Peek is Translate without side effects, for Trace.
	Peek(frame []byte, o packet.Offload, now int64) lb.Peek
}

// balancer is what SetBalancer installs.
type balancer struct {
	b Balancer
	// vips is the VIP MACs of snap, built on the first batch that sees
	// snap: frames to them that the balancer passes are dropped, never
	// flooded.
	vips atomic.Pointer[vipMACs]
}

type vipMACs struct {
	snap *lb.Snapshot
	macs map[packet.MAC]netip.Addr
	// maybe has bit vipBit(mac) set for every VIP MAC: a frame whose bit
	// is clear (almost every frame: VIP MACs are 02:42 and the VIP, and
	// the network's other MACs differ from them in the last 12 bits in a
	// /20 or smaller) costs no map lookup.
	maybe *[64]uint64
}

// vipBit is the bit of mac in vipMACs.maybe.
func vipBit(mac packet.MAC) (word int, bit uint64) {
	i := int(mac[4]&0x0f)<<8 | int(mac[5])
	return i >> 6, 1 << (i & 63)
}

// SetBalancer installs b as the switch's balancer (nil removes it), from
// the next batch on. With a balancer:
//   - the switch answers ARP for every VIP of b's snapshot (with the MAC
//     Snapshot.VIP gives), from any port, like it answers for the gateway;
//   - a frame a port with Security (a container's) or the gateway port
//     sends goes, after port security, through b.Translate: Forward is
//     switched by its new destination MAC like any frame (see
//     SetGatewayHost for the gateway's), Reject is answered with lb.WriteReject's
//     reply out of the input port and dropped ("lb-reject"), Drop is
//     dropped ("lb-drop"); the balancer counts why;
//   - a frame to a VIP's MAC that is not translated is dropped: "vip-pass"
//     from a port with Security (the balancer passed it: not IPv4, or to
//     another IP), "vip-remote" from other ports (the tunnel: a remote
//     client's frames are translated at the client's own host);
//   - every frame delivered to a port with Security or the gateway port
//     alone (owned) goes through b.Untranslate before the write; Retry (a
//     backend's RST to a SYN, hidden) drops it ("lb-retry") and sends the SYN b.WriteRetry
//     writes towards the new backend as if the client's port had sent it.
//     Flooded (shared) frames are delivered unchanged: a reply of a
//     translated flow is addressed to the client's MAC, a local entry, so
//     it is never flooded.
func (s *Switch) SetBalancer(b Balancer) {
	if b == nil {
		s.lb.Store(nil)
		return
	}
	s.lb.Store(&balancer{b: b})
}

// lbState is a batch's view of the balancer: nil fields when there is
// none.
type lbState struct {
	b        Balancer
	snap     *lb.Snapshot
	vips     map[packet.MAC]netip.Addr // nil or empty: no VIPs
	vipMaybe *[64]uint64               // see vipMACs.maybe
	now      int64                     // the balancer's clock
	v        *view                     // the batch's switch view
	swNow    int64                     // the switch clock
}

// loadLB returns the balancer's state for a batch with view v at switch
// clock swNow and balancer clock now.
func (s *Switch) loadLB(v *view, swNow, now int64) lbState {
	bl := s.lb.Load()
	if bl == nil {
		return lbState{v: v, swNow: swNow}
	}
	snap := bl.b.Snapshot()
	vm := bl.vips.Load()
	if vm == nil || vm.snap != snap {
		// A new snapshot: index its VIP MACs once (this allocates,
		// once per Swap).
		vm = &vipMACs{snap: snap, macs: map[packet.MAC]netip.Addr{}, maybe: new([64]uint64)}
		if snap != nil {
			for _, svc := range snap.Services() {
				if mac, ok := snap.VIP(svc.VIP); ok {
					vm.macs[mac] = svc.VIP
					w, b := vipBit(mac)
					vm.maybe[w] |= b
				}
			}
		}
		bl.vips.Store(vm)
	}
	return lbState{b: bl.b, snap: snap, vips: vm.macs, vipMaybe: vm.maybe, now: now, v: v, swNow: swNow}
}

// isVIPMAC reports whether mac is a VIP's.
func (l *lbState) isVIPMAC(mac packet.MAC) bool {
	if len(l.vips) == 0 {
		return false
	}
	if w, b := vipBit(mac); l.vipMaybe[w]&b == 0 {
		return false
	}
	_, ok := l.vips[mac]
	return ok
}

// vipARP returns the MAC to answer an ARP request for ip with if ip is a
// VIP.
func (l *lbState) vipARP(ip netip.Addr) (packet.MAC, bool) {
	if l.snap == nil {
		return packet.MAC{}, false
	}
	return l.snap.VIP(ip)
}

// genLen is the room genBuf gives for a reject reply or a retried SYN.
const genLen = max(lb.RejectBufLen, lb.RetryBufLen)

// genBuf returns a buffer the switch owns for a frame it writes itself (a
// reject reply, a retried SYN, a held fragment), valid until the batch is
// flushed, with room for offset plus n bytes.
func (sc *scratch) genBuf(offset, n int) []byte {
	need := offset + n
	if sc.ngen == len(sc.gen) {
		sc.gen = append(sc.gen, nil)
	}
	b := sc.gen[sc.ngen]
	if cap(b) < need {
		b = make([]byte, need)
		sc.gen[sc.ngen] = b
	}
	sc.ngen++
	return b[:need]
}

// reject answers frame (in buf), which the balancer refused, with
// lb.WriteReject's reply out of r.
func (r *Port) reject(buf []byte, offset, batch int) {
	sc := &r.sc
	g := sc.genBuf(offset, genLen)
	n := lb.WriteReject(g[offset:], buf[offset:])
	if n == 0 {
		sc.ngen--
		return
	}
	packet.ClearOffload(g)
	if sc.add(r, g[:offset+n], false, batch) {
		r.sw.c.lbRejects.Add(1)
	}
}

// deliver queues buf, owned, for out; a port with Security or the
// gateway port gets it through the balancer's Untranslate first, and the
// gateway port from the tunnel only what Untranslate rewrote (the reply
// of a routing-mesh flow), with the gateway MAC as its destination. It
// returns why the frame was dropped instead, or true.
func (r *Port) deliver(l *lbState, out *Port, buf []byte, offset, batch int) (reason, bool) {
	sc := &r.sc
	v := lb.Pass
	if l.b != nil && (out.security || out.gateway) {
		switch v = l.b.Untranslate(buf[offset:], packet.OffloadOf(buf), l.now); v {
		case lb.Retry:
			r.retry(l, buf, offset, batch)
			return dropLBRetry, false
		case lb.Drop, lb.Reject:
			return dropLB, false
		case lb.Hold:
			return dropLBHeld, false
		}
	}
	if out.gateway {
		// Only replies of the gateway's own balanced flows come to it
		// from the tunnel (to its host MAC); the stack sees its own MAC.
		if !r.security && v != lb.Forward {
			return dropIngressStray, false
		}
		packet.Ethernet(buf[offset:]).SetDst(r.sw.gwMAC)
	}
	if !sc.add(out, buf, false, batch) {
		return dropPortDown, false
	}
	if l.b != nil && (out.security || out.gateway) && isFirstFragment(buf[offset:]) {
		// The reply path's held fragments (the client path's went
		// with balance).
		r.sendHeld(l, buf[offset:], offset, batch, out)
	}
	return 0, true
}

// isFirstFragment reports whether frame is an IPv4 first fragment (offset
// 0, more fragments): after the balancer handled one, the fragments it
// held for it may go.
func isFirstFragment(frame []byte) bool {
	return len(frame) >= packet.EthernetHeaderLen+packet.IPv4MinHeaderLen && frame[12] == 0x08 && frame[13] == 0x00 &&
		lb.FragOf(frame[packet.EthernetHeaderLen:]) == lb.First
}

// sendHeld sends the fragments the balancer held for first's datagram
// (rewritten as first was): to out (first's port, on the reply path), or
// switched by their destination like first (out nil).
func (r *Port) sendHeld(l *lbState, first []byte, offset, batch int, out *Port) {
	sc := &r.sc
	for {
		n := l.b.TakeHeld(nil, first)
		if n >= 0 {
			return
		}
		g := sc.genBuf(offset, -n)
		if n = l.b.TakeHeld(g[offset:], first); n <= 0 {
			sc.ngen-- // another batch took it (0: the last) or a larger one is next
			if n == 0 {
				return
			}
			continue
		}
		packet.ClearOffload(g)
		g = g[:offset+n]
		if out == nil {
			r.sendGen(l, g, offset, batch)
			continue
		}
		if out.gateway {
			packet.Ethernet(g[offset:]).SetDst(r.sw.gwMAC)
		}
		sc.add(out, g, false, batch)
	}
}

// retry sends the SYN the balancer writes for frame (in buf), a backend's
// RST it hid, towards the connection's new backend, as the client's port
// would have.
func (r *Port) retry(l *lbState, buf []byte, offset, batch int) {
	sc := &r.sc
	g := sc.genBuf(offset, genLen)
	n := l.b.WriteRetry(g[offset:], buf[offset:], l.now)
	if n < packet.EthernetHeaderLen {
		sc.ngen--
		return
	}
	packet.ClearOffload(g)
	// The SYN goes to the backend by its MAC, not through Untranslate:
	// it is the client's, never a reply of a translated flow.
	if r.sendGen(l, g[:offset+n], offset, batch) {
		r.sw.c.lbRetries.Add(1)
	}
}

// sendGen switches g, a frame the switch wrote for r's client (the last
// genBuf), by its destination MAC, as r would have sent it translated; it
// reports whether it was queued.
func (r *Port) sendGen(l *lbState, g []byte, offset, batch int) bool {
	sc := &r.sc
	eth := packet.Ethernet(g[offset:])
	out := r.sw.lookup(l.v, eth.Dst(), l.swNow)
	if out == nil || out.removed.Load() {
		sc.ngen-- // a retried SYN: the client's own retransmission will find the backend
		return false
	}
	if eth.Src() == r.sw.gwMAC && !out.security && !out.gateway {
		// The gateway's routing-mesh frame to a backend behind the
		// tunnel: from this host's gateway-host MAC (meshIn).
		if l.v.hostMAC.IsZero() {
			sc.ngen--
			return false
		}
		eth.SetSrc(l.v.hostMAC)
	}
	return sc.add(out, g, false, batch)
}

// balance runs the balancer on frame buf from r, after port security: a
// port with Security and the gateway port have their frames translated
// (or refused), and no port may send to a VIP's MAC what the balancer did
// not translate. It returns whether the frame was translated, and why it
// is dropped, or true to switch it by its (new) destination.
func (r *Port) balance(l *lbState, buf []byte, offset, batch int) (translated bool, why reason, ok bool) {
	if l.b == nil {
		return false, 0, true
	}
	eth := packet.Ethernet(buf[offset:])
	v := lb.Pass
	if r.security || r.gateway {
		switch v = l.b.Translate(eth, packet.OffloadOf(buf), l.now); v {
		case lb.Forward:
			r.sc.translated++
			if isFirstFragment(eth) {
				r.sendHeld(l, eth, offset, batch, nil)
			}
		case lb.Reject:
			r.reject(buf, offset, batch)
		}
	}
	why, ok = r.lbOutcome(l, eth.Dst(), v)
	return v == lb.Forward, why, ok
}

// lbOutcome is what balance makes of the balancer's verdict v on a frame
// from r to dst (Pass for a port without Security, which is not
// translated): why it is dropped, or true. Trace uses it too. The
// gateway port's frames are translated like a container's.
func (r *Port) lbOutcome(l *lbState, dst packet.MAC, v lb.Verdict) (reason, bool) {
	switch v {
	case lb.Forward:
		return 0, true
	case lb.Reject:
		return dropLBReject, false
	case lb.Drop, lb.Retry:
		return dropLB, false
	case lb.Hold:
		return dropLBHeld, false
	}
	switch {
	case !l.isVIPMAC(dst):
		return 0, true
	case r.security || r.gateway:
		return dropVIPPass, false
	}
	return dropVIPRemote, false
}
