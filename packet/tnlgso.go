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
// describes it into o (GSOTCPv4, NeedsCsum at the TCP checksum, GSOSize
// the largest payload one MTU-sized segment carries), so a TAP hands it to
// the receiving kernel as one GSO packet. It accepts only untagged
// Ethernet, IPv4 without options with a valid header checksum, not a
// fragment, IP total length equal to the frame's, TCP without SYN, RST or
// URG, a frame longer than mtu plus the Ethernet header, within the GSO
// bounds (GSOMinSizeIPv4, GSOMaxSegments of that GSOSize), and a TCP
// checksum field equal to the pseudo-header sum: a datagram reassembled
// from IP fragments carries a complete checksum there instead, so it is
// not taken for one (except with the 2^-16 chance of a collision). o is
// not written when it returns false.
func ParseTunnelSuper(frame []byte, mtu int, o Offload) bool {
	if len(frame) <= mtu+EthernetHeaderLen || len(frame) < EthernetHeaderLen+40 ||
		binary.BigEndian.Uint16(frame[12:14]) != EtherTypeIPv4 {
		return false
	}
	ip := frame[EthernetHeaderLen:]
	if ip[0] != 0x45 || ip[9] != ProtoTCP || binary.BigEndian.Uint16(ip[6:8])&0xbfff != 0 ||
		int(binary.BigEndian.Uint16(ip[2:4])) != len(ip) || Checksum(ip[:20]) != 0 {
		return false
	}
	tcp := ip[20:]
	doff := int(tcp[12]>>4) * 4
	const synRstUrg = 0x02 | 0x04 | 0x20
	if doff < 20 || doff > len(tcp) || tcp[13]&synRstUrg != 0 {
		return false
	}
	mss, payload := mtu-20-doff, len(tcp)-doff
	if mss < GSOMinSizeIPv4 || payload <= mss || (payload+mss-1)/mss > GSOMaxSegments {
		return false // outside the GSO bounds (ParseGSO) the switch and the TAP keep to
	}
	acc := Sum(ip[12:20], uint64(ProtoTCP)+uint64(len(tcp)))
	if binary.BigEndian.Uint16(tcp[16:18]) != ^Fold(acc) {
		return false
	}
	l4 := EthernetHeaderLen + 20
	gso := uint8(GSOTCPv4)
	if tcp[13]&0x80 != 0 { // CWR: only the first segment may keep it
		gso |= GSOECN
	}
	o.Set(OffloadNeedsCsum, gso, l4+doff, mss, l4, 16)
	return true
}
