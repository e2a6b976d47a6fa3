package packet

import "encoding/binary"

// Kernel UDP tunnel segmentation (GSO over UDP tunnels, Linux 6.17+): a
// sender that hands the kernel a whole VXLAN super-packet (an inner TCP
// super-segment behind one outer IPv4/UDP/VXLAN header, virtio GSO type
// UDP_TUNNEL|TCP) has it segmented at the underlay device, in software or
// by the NIC, into RFC 7348 datagrams. Between namespaces on one host
// (veth) and over links with tunnel segmentation offload, the kernel
// carries it whole instead, and the receiving UDP socket reads it as one
// datagram (no UDP_GRO size: it is not a UDP_L4 GSO packet) whose inner
// frame is the super-segment as the sender wrote it: longer than the
// network MTU, its TCP checksum field holding only the pseudo-header sum
// (CHECKSUM_PARTIAL). ParseTunnelSuper recognises such a frame.

// ParseTunnelSuper reports whether frame, received in one VXLAN datagram
// on a network of the given MTU, is a TCP super-segment that the sending
// kernel left unsegmented, and if so writes the offload metadata that
// describes it into o (GSOTCPv4 or v6, NeedsCsum at the TCP checksum, GSOSize
// the largest payload one MTU-sized segment carries), so a TAP hands it to
// the receiving kernel as one GSO packet. It accepts only untagged
// Ethernet, IPv4 without options with a valid header checksum and not a
// fragment or IPv6 without extension headers, IP length equal to the
// frame's, TCP without SYN, RST or URG, a frame longer than mtu plus the
// Ethernet header, within the GSO
// bounds (GSOMinSizeIPv4 or v6, GSOMaxSegments of that GSOSize), and a TCP
// checksum field equal to the pseudo-header sum: a datagram reassembled
// from IP fragments carries a complete checksum there instead, so it is
// not taken for one (except with the 2^-16 chance of a collision). o is
// not written when it returns false.
func ParseTunnelSuper(frame []byte, mtu int, o Offload) bool {
	if len(frame) <= mtu+EthernetHeaderLen || len(frame) < EthernetHeaderLen+40 {
		return false
	}
	ip := frame[EthernetHeaderLen:]
	var l3, minSize int
	var gso uint8
	var acc uint64
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case EtherTypeIPv4:
		if ip[0] != 0x45 || ip[9] != ProtoTCP || binary.BigEndian.Uint16(ip[6:8])&0xbfff != 0 ||
			int(binary.BigEndian.Uint16(ip[2:4])) != len(ip) || Checksum(ip[:20]) != 0 {
			return false
		}
		l3, minSize, gso = 20, GSOMinSizeIPv4, GSOTCPv4
		acc = Sum(ip[12:20], uint64(ProtoTCP)+uint64(len(ip)-l3))
	case EtherTypeIPv6:
		if len(ip) < 60 || ip[0]>>4 != 6 || ip[6] != ProtoTCP || 40+int(binary.BigEndian.Uint16(ip[4:6])) != len(ip) {
			return false // extension headers are not expected in a super-segment
		}
		l3, minSize, gso = 40, GSOMinSizeIPv6, GSOTCPv6
		acc = Sum(ip[8:40], uint64(ProtoTCP)+uint64(len(ip)-l3))
	default:
		return false
	}
	tcp := ip[l3:]
	doff := int(tcp[12]>>4) * 4
	const synRstUrg = 0x02 | 0x04 | 0x20
	if doff < 20 || doff > len(tcp) || tcp[13]&synRstUrg != 0 {
		return false
	}
	mss, payload := mtu-l3-doff, len(tcp)-doff
	if mss < minSize || payload <= mss || (payload+mss-1)/mss > GSOMaxSegments {
		return false // outside the GSO bounds (ParseGSO) the switch and the TAP keep to
	}
	if binary.BigEndian.Uint16(tcp[16:18]) != ^Fold(acc) {
		return false
	}
	if tcp[13]&0x80 != 0 { // CWR: only the first segment may keep it
		gso |= GSOECN
	}
	l4 := EthernetHeaderLen + l3
	o.Set(OffloadNeedsCsum, gso, l4+doff, mss, l4, 16)
	return true
}
