package lb

import (
	"encoding/binary"

	"github.com/vxmesh/vxmesh/packet"
)

const (
	protoICMP = packet.ProtoICMP
	protoTCP  = packet.ProtoTCP
	protoUDP  = packet.ProtoUDP
)

// ICMPv4 types handled.
const (
	icmpEchoReply   = 0
	icmpUnreachable = 3
	icmpEcho        = 8
	icmpTimeExceed  = 11
)

// Frame offsets of an untagged IPv4 frame.
const (
	offIP      = packet.EthernetHeaderLen
	offIPCsum  = offIP + 10
	offIPSrc   = offIP + 12
	offIPDst   = offIP + 16
	minIPFrame = offIP + packet.IPv4MinHeaderLen
)

// flowKey is a flow as the client sees it (client -> VIP).
type flowKey struct {
	net         uint32
	proto       uint8
	client, vip [4]byte
	cport       uint16
	vport       uint16
}

// revKey is a translated flow as the backend answers it (backend -> client).
type revKey struct {
	net             uint32
	proto           uint8
	backend, client [4]byte
	bport, cport    uint16
}

// maglevHash is a fixed (host-independent) hash of the flow.
func (k *flowKey) maglevHash() uint64 {
	x := uint64(binary.BigEndian.Uint32(k.client[:]))<<32 | uint64(binary.BigEndian.Uint32(k.vip[:]))
	y := uint64(k.proto)<<32 | uint64(k.cport)<<16 | uint64(k.vport)
	return mix64(mix64(x) ^ y)
}

// pkt is a parsed IPv4 frame: offsets into f and the fields the balancer
// needs. For ICMP echo, both ports are the echo identifier.
type pkt struct {
	f            []byte
	l4, end      int // L4 header offset, end of the IP packet
	proto        uint8
	sport, dport uint16
	flags        uint8 // TCP flags
	icmpType     uint8
	csum         int  // offset of a TCP/UDP checksum to update, or -1
	partial      bool // the L4 (or ICMP) checksum field holds a partial sum (NEEDS_CSUM)
	frag         Frag // Whole, First (L4 header parsed) or Later (no L4 header: ports zero)
}

// parse checks an untagged IPv4 frame and its offload metadata o (may be
// nil). The metadata is not trusted: NEEDS_CSUM must point at the
// checksum field of the parsed L4 header, and a GSO type must match it.
// A fragment carries no offload metadata (the kernel completes checksums
// before it fragments). A first fragment must hold the whole L4 header
// and a later one must not start inside the bytes the balancer rewrites
// (RFC 1858, RFC 3128): ReasonFragTiny; a later fragment is not parsed
// further (p.frag is Later, ports zero).
func parse(f []byte, o packet.Offload) (pkt, Reason) {
	p := pkt{f: f, csum: -1}
	ip := packet.IPv4(f[offIP:])
	if !ip.Valid() {
		return p, ReasonMalformed
	}
	p.l4, p.end, p.proto = offIP+ip.HeaderLen(), offIP+ip.TotalLen(), ip.Protocol()
	if p.frag = FragOf(ip); p.frag != Whole {
		switch {
		case len(o) >= packet.OffloadLen && !o.IsNone():
			return p, ReasonBadOffload
		case p.frag == Later:
			if int(binary.BigEndian.Uint16(ip[6:8])&0x1fff)*8 < minLaterFrag {
				return p, ReasonFragTiny
			}
			return p, 0
		case p.parseL4() != 0:
			return p, ReasonFragTiny
		}
		if p.proto == protoUDP && binary.BigEndian.Uint16(f[p.csum:]) == 0 {
			p.csum = -1
		}
		return p, 0
	}
	r := p.parseL4()
	if r != 0 {
		return p, r
	}
	return p, p.checkOffload(o)
}

func (p *pkt) parseL4() Reason {
	f, n := p.f, p.end-p.l4
	switch p.proto {
	case protoTCP:
		if n < 20 {
			return ReasonMalformed
		}
		if doff := int(f[p.l4+12]>>4) * 4; doff < 20 || doff > n {
			return ReasonMalformed
		}
		p.flags, p.csum = f[p.l4+13], p.l4+16
	case protoUDP:
		if n < 8 {
			return ReasonMalformed
		}
		p.csum = p.l4 + 6
	case protoICMP:
		if n < 8 {
			return ReasonMalformed
		}
		p.icmpType = f[p.l4]
		if p.icmpType == icmpEcho || p.icmpType == icmpEchoReply {
			id := binary.BigEndian.Uint16(f[p.l4+4:])
			p.sport, p.dport = id, id
		}
		return 0
	default:
		return 0
	}
	p.sport = binary.BigEndian.Uint16(f[p.l4:])
	p.dport = binary.BigEndian.Uint16(f[p.l4+2:])
	return 0
}

func (p *pkt) checkOffload(o packet.Offload) Reason {
	if len(o) < packet.OffloadLen || o.IsNone() {
		if p.proto == protoUDP && binary.BigEndian.Uint16(p.f[p.csum:]) == 0 {
			p.csum = -1 // no UDP checksum
		}
		return 0
	}
	if o.NeedsCsum() {
		at := p.csum
		if p.proto == protoICMP {
			at = p.l4 + 2
		}
		if at < 0 || o.CsumStart() != p.l4 || o.CsumStart()+o.CsumOffset() != at {
			return ReasonBadOffload
		}
		p.partial = true
	} else if p.proto == protoUDP && binary.BigEndian.Uint16(p.f[p.csum:]) == 0 {
		p.csum = -1
	}
	switch o.GSOType() &^ packet.GSOECN {
	case packet.GSONone:
	case packet.GSOTCPv4:
		if p.proto != protoTCP {
			return ReasonBadOffload
		}
	case packet.GSOUDPL4:
		if p.proto != protoUDP {
			return ReasonBadOffload
		}
	default:
		return ReasonBadOffload
	}
	return 0
}

// isICMPError reports whether p is an ICMP error the balancer translates.
func (p *pkt) isICMPError() bool {
	return p.proto == protoICMP && (p.icmpType == icmpUnreachable || p.icmpType == icmpTimeExceed)
}

// put16 writes v at b and returns the ones' complement change it makes to
// any checksum covering b (RFC 1624: ~m + m').
func put16(b []byte, v uint16) uint64 {
	old := binary.BigEndian.Uint16(b)
	binary.BigEndian.PutUint16(b, v)
	return uint64(^old) + uint64(v)
}

// put4 writes an IPv4 address at b and returns the checksum change.
func put4(b []byte, a [4]byte) uint64 {
	return put16(b, binary.BigEndian.Uint16(a[0:])) + put16(b[2:], binary.BigEndian.Uint16(a[2:]))
}

// fix updates the complete checksum at b for a change d of the data it
// covers (HC' = ~(~HC + d)) and returns the change of the field itself.
func fix(b []byte, d uint64) uint64 {
	hc := binary.BigEndian.Uint16(b)
	return put16(b, packet.Fold(uint64(^hc)+d))
}

// fixPartial updates a partial checksum at b (the uncomplemented
// pseudo-header sum of CHECKSUM_PARTIAL) for a change d of the
// pseudo-header and returns the change of the field itself.
func fixPartial(b []byte, d uint64) uint64 {
	return put16(b, ^packet.Fold(uint64(binary.BigEndian.Uint16(b))+d))
}

// rewriteL4 updates p's TCP/UDP checksum for a pseudo-header change da and
// a port word change dp. A partial checksum covers the pseudo-header only:
// the device sums the ports itself later.
func (p *pkt) rewriteL4(da, dp uint64) {
	if p.csum < 0 {
		return
	}
	b := p.f[p.csum:]
	if p.partial {
		fixPartial(b, da)
		return
	}
	fix(b, da+dp)
	if p.proto == protoUDP && binary.BigEndian.Uint16(b) == 0 {
		binary.BigEndian.PutUint16(b, 0xffff) // 0 means "no checksum"
	}
}

// rewriteDst sends p to addr:port at mac (client -> backend).
func (p *pkt) rewriteDst(addr [4]byte, port uint16, mac [6]byte) {
	copy(p.f[0:6], mac[:])
	da := put4(p.f[offIPDst:], addr)
	fix(p.f[offIPCsum:], da)
	var dp uint64
	if p.proto != protoICMP {
		dp = put16(p.f[p.l4+2:], port)
	}
	p.rewriteL4(da, dp)
}

// rewriteSrc makes p come from addr:port at mac (backend -> client).
func (p *pkt) rewriteSrc(addr [4]byte, port uint16, mac [6]byte) {
	copy(p.f[6:12], mac[:])
	da := put4(p.f[offIPSrc:], addr)
	fix(p.f[offIPCsum:], da)
	var dp uint64
	if p.proto != protoICMP {
		dp = put16(p.f[p.l4:], port)
	}
	p.rewriteL4(da, dp)
}
