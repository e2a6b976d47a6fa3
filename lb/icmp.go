package lb

import (
	"encoding/binary"
	"net/netip"
)

// inner is the packet an ICMP error quotes: offsets into the frame.
type inner struct {
	ip, l4, end  int // quoted IP header, its L4 header, end of the quote
	proto        uint8
	sport, dport uint16
}

// parseInner finds the quoted IPv4 header and the first 8 bytes of its
// TCP, UDP or ICMP echo header in the ICMP error p.
func (p *pkt) parseInner() (inner, bool) {
	f := p.f
	in := inner{ip: p.l4 + 8, end: p.end}
	if in.end-in.ip < 20 || f[in.ip]>>4 != 4 {
		return in, false
	}
	in.l4 = in.ip + int(f[in.ip]&0x0f)*4
	in.proto = f[in.ip+9]
	if in.l4 < in.ip+20 || in.end-in.l4 < 8 {
		return in, false
	}
	switch in.proto {
	case protoTCP, protoUDP:
		in.sport = binary.BigEndian.Uint16(f[in.l4:])
		in.dport = binary.BigEndian.Uint16(f[in.l4+2:])
	case protoICMP:
		if t := f[in.l4]; t != icmpEcho && t != icmpEchoReply {
			return in, false
		}
		in.sport = binary.BigEndian.Uint16(f[in.l4+4:])
		in.dport = in.sport
	default:
		return in, false
	}
	return in, true
}

// csumAt returns the offset of the quoted TCP/UDP checksum if the quote
// holds it and it is in use, or -1.
func (in *inner) csumAt(f []byte) int {
	at := -1
	switch in.proto {
	case protoTCP:
		at = in.l4 + 16
	case protoUDP:
		at = in.l4 + 6
	}
	if at < 0 || at+2 > in.end || (in.proto == protoUDP && binary.BigEndian.Uint16(f[at:]) == 0) {
		return -1
	}
	return at
}

// rewrite writes addr at the quoted address at addrAt and port at the
// quoted port at portAt, fixing the quoted checksums, and returns the
// change to the ICMP checksum.
func (in *inner) rewrite(f []byte, addrAt int, addr [4]byte, portAt int, port uint16) uint64 {
	da := put4(f[addrAt:], addr)
	d := da + fix(f[in.ip+10:], da)
	var dp uint64
	if in.proto != protoICMP {
		dp = put16(f[portAt:], port)
	}
	d += dp
	if at := in.csumAt(f); at >= 0 {
		d += fix(f[at:], da+dp)
	}
	return d
}

// translateICMP handles an ICMP error a client sends to a VIP about a
// packet it got from the VIP (quoted: VIP:vport -> client:cport): the
// outer destination and the quoted source become the backend's.
func (t *Table) translateICMP(c *service, p *pkt, now int64) Verdict {
	in, ok := p.parseInner()
	f := p.f
	if !ok || [4]byte(f[in.ip+12:]) != c.vip {
		return t.count(ReasonUnsupported, Drop)
	}
	k := flowKey{net: t.net, proto: in.proto, client: [4]byte(f[in.ip+16:]), cport: in.dport, vip: c.vip, vport: in.sport}
	s := t.ct.shardOf(k.net, k.proto, k.client, k.cport)
	s.mu.Lock()
	i := t.ct.findFwd(s, &k, now)
	if i == 0 {
		s.mu.Unlock()
		return t.count(ReasonNoConn, Drop)
	}
	e := &s.e[i]
	addr, port, mac := e.backend, e.bport, e.mac
	s.mu.Unlock()
	d := in.rewrite(f, in.ip+12, addr, in.l4, port)
	p.fixICMP(d)
	copy(f[0:6], mac[:])
	fix(f[offIPCsum:], put4(f[offIPDst:], addr))
	return Forward
}

// untranslateICMP handles an ICMP error heading to a client about a
// translated packet (quoted: client:cport -> backend:bport): the quote's
// destination becomes the VIP's, and so does the outer source (and source
// MAC) if the error comes from the backend itself.
func (t *Table) untranslateICMP(p *pkt, now int64) Verdict {
	in, ok := p.parseInner()
	if !ok {
		return Pass
	}
	f := p.f
	k := revKey{net: t.net, proto: in.proto, backend: [4]byte(f[in.ip+16:]), bport: in.dport,
		client: [4]byte(f[in.ip+12:]), cport: in.sport}
	s := t.ct.shardOf(k.net, k.proto, k.client, k.cport)
	s.mu.Lock()
	i := t.ct.findRev(s, &k, now)
	if i == 0 {
		s.mu.Unlock()
		return Pass
	}
	e := &s.e[i]
	vip, vport, backendIP := e.vip, e.vport, e.backend
	s.mu.Unlock()
	d := in.rewrite(f, in.ip+16, vip, in.l4+2, vport)
	p.fixICMP(d)
	if [4]byte(f[offIPSrc:]) == backendIP {
		mac := VIPMAC(netipFrom4(vip))
		if c := t.snap.Load().get(vip); c != nil {
			mac = c.mac
		}
		copy(f[6:12], mac[:])
		fix(f[offIPCsum:], put4(f[offIPSrc:], vip))
	}
	return Forward
}

// fixICMP applies a change d of the ICMP message to its checksum, unless
// the checksum is partial (the device sums the message later).
func (p *pkt) fixICMP(d uint64) {
	if !p.partial {
		fix(p.f[p.l4+2:], d)
	}
}

func netipFrom4(a [4]byte) netip.Addr { return netip.AddrFrom4(a) }
