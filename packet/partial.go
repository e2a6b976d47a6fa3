package packet

import "encoding/binary"

// CompletePartialChecksum finishes the TCP or UDP checksum of an unfragmented
// IPv4 or IPv6 packet in Ethernet frame f when the checksum field holds only
// the pseudo-header's sum, as a sending kernel leaves it for the NIC to
// finish (CHECKSUM_PARTIAL). That happens on the wire when a Linux VXLAN
// device with checksum offload sends over a veth, which hands the packet on
// unfinished: the inner checksum is never completed, and the receiving
// container's kernel would drop the frame. It reports whether it changed f.
//
// The field equals the pseudo-header sum in a complete packet too, once in
// 65,536 packets; finishing the checksum of such a packet writes the value
// it already holds (the sum over the packet, checksum included, is then
// that of the pseudo-header), so a correct packet is never changed. Only a
// corrupt packet whose field happens to equal the pseudo-header sum would be
// given a valid checksum. It does not allocate.
func CompletePartialChecksum(f []byte) bool {
	e := Ethernet(f)
	if !e.Valid() {
		return false
	}
	var (
		l4     []byte
		proto  uint8
		pseudo uint64
	)
	switch e.EtherType() {
	case EtherTypeIPv4:
		p := IPv4(e.Payload())
		if !p.Valid() || binary.BigEndian.Uint16(p[6:8])&0x3fff != 0 { // MF or an offset: a fragment
			return false
		}
		l4, proto = p[p.HeaderLen():p.TotalLen()], p.Protocol()
		pseudo = PseudoHeaderSum(p.Src(), p.Dst(), proto, len(l4))
	case EtherTypeIPv6:
		p := IPv6(e.Payload())
		if !p.Valid() {
			return false
		}
		var off int
		var frag, ok bool
		if proto, off, frag, ok = p.Transport(); !ok || frag {
			return false
		}
		l4 = p[off : IPv6HeaderLen+p.PayloadLen()]
		pseudo = PseudoHeaderSum(p.Src(), p.Dst(), proto, len(l4))
	default:
		return false
	}
	at := 0
	switch {
	case proto == ProtoTCP && len(l4) >= 20:
		at = 16
	case proto == ProtoUDP && len(l4) >= 8:
		at = 6
	default:
		return false
	}
	field := binary.BigEndian.Uint16(l4[at:])
	if field != ^Fold(pseudo) {
		return false
	}
	c := Fold(Sum(l4, 0))
	if c == field {
		return false // complete already (see above)
	}
	if proto == ProtoUDP && c == 0 {
		c = 0xffff // 0 means no checksum in UDP (RFC 768)
	}
	binary.BigEndian.PutUint16(l4[at:], c)
	return true
}
