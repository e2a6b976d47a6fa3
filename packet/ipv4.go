package packet

import (
	"encoding/binary"
	"net/netip"
)

// IPv4 protocol numbers used by the data plane.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// IPv4MinHeaderLen is the length of an IPv4 header without options.
const IPv4MinHeaderLen = 20

// IPv4 is a view of an IPv4 packet (an Ethernet payload, which may carry
// padding behind the packet). Accessors require Valid.
type IPv4 []byte

// Valid reports whether p holds a whole IPv4 header of version 4 with
// IHL >= 5 and a total length that covers the header and fits in p.
func (p IPv4) Valid() bool {
	if len(p) < IPv4MinHeaderLen || p[0]>>4 != 4 {
		return false
	}
	hl, tl := p.HeaderLen(), p.TotalLen()
	return hl >= IPv4MinHeaderLen && hl <= tl && tl <= len(p)
}

// HeaderLen returns the header length in bytes (IHL * 4).
func (p IPv4) HeaderLen() int { return int(p[0]&0x0f) * 4 }

// TotalLen returns the total length field: header plus payload.
func (p IPv4) TotalLen() int { return int(binary.BigEndian.Uint16(p[2:4])) }

// TTL returns the time to live.
func (p IPv4) TTL() uint8 { return p[8] }

// Protocol returns the upper-layer protocol number.
func (p IPv4) Protocol() uint8 { return p[9] }

// Checksum returns the header checksum field.
func (p IPv4) Checksum() uint16 { return binary.BigEndian.Uint16(p[10:12]) }

// SetChecksum writes the header checksum field.
func (p IPv4) SetChecksum(c uint16) { binary.BigEndian.PutUint16(p[10:12], c) }

// Src returns the source address.
func (p IPv4) Src() netip.Addr { return netip.AddrFrom4([4]byte(p[12:16])) }

// Dst returns the destination address.
func (p IPv4) Dst() netip.Addr { return netip.AddrFrom4([4]byte(p[16:20])) }

// SetSrc writes the source address; the checksum is left unchanged (see
// UpdateChecksumAddr).
func (p IPv4) SetSrc(a netip.Addr) { a4 := a.As4(); copy(p[12:16], a4[:]) }

// SetDst writes the destination address; the checksum is left unchanged.
func (p IPv4) SetDst(a netip.Addr) { a4 := a.As4(); copy(p[16:20], a4[:]) }

// HeaderChecksum computes the correct header checksum for the header as it
// is now, treating the checksum field as zero.
func (p IPv4) HeaderChecksum() uint16 {
	h := p[:p.HeaderLen()]
	return Fold(Sum(h[12:], Sum(h[:10], 0)))
}

// ChecksumValid reports whether the header checksum field is correct.
func (p IPv4) ChecksumValid() bool { return Checksum(p[:p.HeaderLen()]) == 0 }

// Payload returns the bytes between the header and the total length.
func (p IPv4) Payload() []byte { return p[p.HeaderLen():p.TotalLen()] }
