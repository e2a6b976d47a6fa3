package lb

import (
	"github.com/vxmesh/vxmesh/packet"
)

// Untranslate handles a frame heading to a client's port (call it for
// every frame delivered to a local port, whatever its origin, before the
// port's write): a reply of a translated flow (found by its backend-side
// key) gets its source IP and port back to the VIP's and its source MAC
// to the VIP's MAC (the one the client's ARP cache holds for the VIP),
// with incremental checksum updates. ICMP errors about a translated flow
// (from the backend or a router between) are translated too. A backend's
// RST to a SYN is hidden when the attempt could move to another backend:
// the verdict is Retry, and the SYN WriteRetry writes (or, failing that,
// the client's own retransmission) goes there. Frames of no translated
// flow get Pass.
func (t *Table) Untranslate(frame []byte, o packet.Offload, now int64) Verdict {
	if len(frame) < minIPFrame || frame[12] != 0x08 || frame[13] != 0x00 {
		return Pass
	}
	if !t.ct.mayBeBackend(t.net, [4]byte(frame[offIPSrc:])) && !t.mayQuoteBackend(frame) {
		return Pass
	}
	p, r := parse(frame, o)
	switch {
	case r != 0:
		t.passFirst(&p, now) // its later fragments pass too, not held
		return Pass          // not ours to judge: the switch delivers it as it would without a balancer
	case p.frag == Later:
		return t.untranslateLater(&p, now)
	case p.isICMPError() && p.frag == First:
		t.passFirst(&p, now)
		return Pass // no ICMP error is that long
	case p.isICMPError():
		return t.untranslateICMP(&p, now)
	}
	if p.proto != protoTCP && p.proto != protoUDP && !(p.proto == protoICMP && p.icmpType == icmpEchoReply) {
		t.passFirst(&p, now)
		return Pass
	}
	k := revKey{net: t.net, proto: p.proto, backend: [4]byte(frame[offIPSrc:]), bport: p.sport,
		client: [4]byte(frame[offIPDst:]), cport: p.dport}
	s := t.ct.shardOf(k.net, k.proto, k.client, k.cport)
	s.mu.Lock()
	i := t.ct.findRev(s, &k, now)
	if i == 0 {
		s.mu.Unlock()
		t.passFirst(&p, now)
		return Pass
	}
	e := &s.e[i]
	if p.proto == protoTCP && t.backendTCP(s, i, p.flags, now) {
		s.mu.Unlock()
		return t.count(ReasonRetried, Retry)
	}
	e.expires = now + t.ct.timeout(e.proto, e.state)
	s.touch(i)
	vip, vport, be := e.vip, e.vport, e.be
	s.mu.Unlock()
	c := t.snap.Load().get(vip)
	mac := VIPMAC(netipFrom4(vip))
	if c != nil {
		mac = c.mac
		c.st.packets.Add(1)
		c.st.bytes.Add(uint64(len(frame)))
	}
	if p.frag == First {
		t.ct.frags.remember(fragNS(t.net, dirRev), packet.IPv4(p.f[offIP:p.end]), FragVal{Addr: vip, MAC: mac}, be, now)
		t.releaseFirst(&p, dirRev, false, now)
	}
	p.rewriteSrc(vip, vport, mac)
	be.packets.Add(1)
	be.bytes.Add(uint64(len(frame)))
	return Forward
}

// backendTCP updates entry i's state for a TCP packet from the backend.
// It reports true if the packet is a RST to a SYN that was hidden because
// the attempt moved to another backend.
func (t *Table) backendTCP(s *shard, i uint32, flags uint8, now int64) bool {
	e := &s.e[i]
	switch {
	case e.state == stSynSent && flags&packet.TCPRST != 0:
		t.fail(e.be, now)
		if e.retries < MaxRetries {
			if c := t.snap.Load().get(e.vip); c != nil {
				k := flowKey{net: e.net, proto: e.proto, client: e.client, cport: e.cport, vip: e.vip, vport: e.vport}
				if t.retry(s, i, c, &k, now) {
					s.e[i].flags |= flUnsent
					s.e[i].expires = now + t.ct.to.syn
					return true
				}
			}
		}
		e.tcpClose(true, 0)
	case flags&packet.TCPRST != 0:
		e.tcpClose(true, 0)
	case e.state == stSynSent && flags&packet.TCPACK != 0:
		e.state = stEstablished
		e.be.fails.Store(0)
		if flags&packet.TCPFIN != 0 {
			e.tcpClose(false, flFinBack)
		}
	case flags&packet.TCPFIN != 0:
		e.tcpClose(false, flFinBack)
	}
	return false
}

// mayQuoteBackend reports whether frame might be an ICMP error quoting a
// packet to a backend of some entry (errors may come from a router, whose
// address is no backend).
func (t *Table) mayQuoteBackend(f []byte) bool {
	hl := int(f[offIP]&0x0f) * 4
	q := offIP + hl + 8 // the quoted IP header
	if f[offIP+9] != protoICMP || hl < 20 || len(f) < q+20 || (f[offIP+hl] != icmpUnreachable && f[offIP+hl] != icmpTimeExceed) {
		return false
	}
	return t.ct.mayBeBackend(t.net, [4]byte(f[q+16:q+20]))
}
