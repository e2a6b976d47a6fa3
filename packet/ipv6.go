package packet

import (
	"encoding/binary"
	"net/netip"
)

// IPv6 next-header values the data plane looks at.
const (
	ProtoHopByHop = 0
	ProtoRouting  = 43
	ProtoFragment = 44
	ProtoAH       = 51
	ProtoICMPv6   = 58
	ProtoNoNext   = 59
	ProtoDestOpts = 60
)

// ICMPv6 types of Neighbor Discovery (RFC 4861).
const (
	ICMPv6RouterSolicit   = 133
	ICMPv6RouterAdvert    = 134
	ICMPv6NeighborSolicit = 135
	ICMPv6NeighborAdvert  = 136
	ICMPv6Redirect        = 137
)

// Neighbor Discovery option types carrying a link-layer address.
const (
	NDOptSourceLinkAddr = 1
	NDOptTargetLinkAddr = 2
)

// IPv6HeaderLen is the length of the fixed IPv6 header.
const IPv6HeaderLen = 40

// MaxIPv6ExtHeaders bounds how many extension headers Transport walks; a
// longer chain is refused (no legitimate packet carries more than a few).
const MaxIPv6ExtHeaders = 8

// IPv6 is a view of an IPv6 packet (an Ethernet payload, which may carry
// padding behind the packet). Accessors require Valid.
type IPv6 []byte

// Valid reports whether p holds a whole fixed header of version 6 whose
// payload length fits in p.
func (p IPv6) Valid() bool {
	return len(p) >= IPv6HeaderLen && p[0]>>4 == 6 && IPv6HeaderLen+p.PayloadLen() <= len(p)
}

// PayloadLen returns the payload length field (extension headers
// included).
func (p IPv6) PayloadLen() int { return int(binary.BigEndian.Uint16(p[4:6])) }

// NextHeader returns the next-header field of the fixed header.
func (p IPv6) NextHeader() uint8 { return p[6] }

// HopLimit returns the hop limit.
func (p IPv6) HopLimit() uint8 { return p[7] }

// Src returns the source address.
func (p IPv6) Src() netip.Addr { return netip.AddrFrom16([16]byte(p[8:24])) }

// Dst returns the destination address.
func (p IPv6) Dst() netip.Addr { return netip.AddrFrom16([16]byte(p[24:40])) }

// Transport walks p's extension headers (hop-by-hop, routing, fragment,
// destination options, AH: those a receiving Linux kernel walks) and
// returns the upper-layer protocol and the offset of its header in p. Any
// other next-header value is taken as the upper layer. fragment reports
// whether p is a fragment; for a fragment that is not the first, the
// upper-layer header is not in p and off is -1 (proto is the fragment
// header's next header). ok is false when the chain cannot be walked to its
// end inside the packet: a header running past the payload length, more
// than MaxIPv6ExtHeaders headers, or a first fragment that ends inside the
// chain. Transport does not allocate.
func (p IPv6) Transport() (proto uint8, off int, fragment, ok bool) {
	end := IPv6HeaderLen + p.PayloadLen()
	next, off := p.NextHeader(), IPv6HeaderLen
	for range MaxIPv6ExtHeaders + 1 {
		var hl int
		switch next {
		case ProtoHopByHop, ProtoRouting, ProtoDestOpts:
			if off+8 > end {
				return next, off, fragment, false
			}
			hl = (int(p[off+1]) + 1) * 8
		case ProtoAH:
			if off+8 > end {
				return next, off, fragment, false
			}
			hl = (int(p[off+1]) + 2) * 4
		case ProtoFragment:
			if off+8 > end {
				return next, off, fragment, false
			}
			fragment = true
			if binary.BigEndian.Uint16(p[off+2:off+4])>>3 != 0 {
				return p[off], -1, true, true // the upper layer is in the first fragment
			}
			hl = 8
		default:
			return next, off, fragment, true
		}
		if off+hl > end {
			return next, off, fragment, false
		}
		next = p[off]
		off += hl
	}
	return next, off, fragment, false
}

// LinkLocalEUI64 returns the link-local address a host derives from mac
// with modified EUI-64 (RFC 4291 appendix A), the Linux default.
func LinkLocalEUI64(mac MAC) netip.Addr {
	return netip.AddrFrom16([16]byte{
		0: 0xfe, 1: 0x80,
		8: mac[0] ^ 0x02, 9: mac[1], 10: mac[2], 11: 0xff,
		12: 0xfe, 13: mac[3], 14: mac[4], 15: mac[5],
	})
}

// NDMessage is a view of an ICMPv6 Neighbor Discovery message (RS, RA, NS,
// NA or redirect) from its ICMPv6 header to the end of the IPv6 payload.
// Accessors require Valid.
type NDMessage []byte

// ndFixedLen returns the length of the fixed part (before the options) of
// an ND message of type typ, or 0 for other types.
func ndFixedLen(typ uint8) int {
	switch typ {
	case ICMPv6RouterSolicit:
		return 8
	case ICMPv6RouterAdvert:
		return 16
	case ICMPv6NeighborSolicit, ICMPv6NeighborAdvert:
		return 24
	case ICMPv6Redirect:
		return 40
	}
	return 0
}

// Valid reports whether m is an ND message long enough for its type's
// fixed part.
func (m NDMessage) Valid() bool {
	if len(m) < 4 {
		return false
	}
	n := ndFixedLen(m[0])
	return n > 0 && len(m) >= n
}

// Type returns the ICMPv6 type.
func (m NDMessage) Type() uint8 { return m[0] }

// Target returns the target address of an NS, NA or redirect.
func (m NDMessage) Target() netip.Addr { return netip.AddrFrom16([16]byte(m[8:24])) }

// LinkAddrsAre reports whether m's options are well formed (every option
// has a non-zero length and fits in m, a link-layer address option is 8
// bytes long) and every source or target link-layer address option holds
// mac.
func (m NDMessage) LinkAddrsAre(mac MAC) bool {
	opts := m[ndFixedLen(m[0]):]
	for len(opts) > 0 {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			return false
		}
		n := int(opts[1]) * 8
		if t := opts[0]; t == NDOptSourceLinkAddr || t == NDOptTargetLinkAddr {
			if n != 8 || MAC(opts[2:8]) != mac {
				return false
			}
		}
		opts = opts[n:]
	}
	return true
}
