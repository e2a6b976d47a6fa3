package tunnel

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/vxmesh/vxmesh/packet"
)

// Kernel UDP tunnel segmentation. A TCP super-segment to one peer is
// normally split here (packet.GSO) and sent as a run of VXLAN datagrams
// with one UDP segmentation send. A SuperWriter instead hands the kernel
// the whole VXLAN super-packet, outer headers included, with a virtio
// header of GSO type UDP_TUNNEL_IPV4|TCP (Linux 6.17+); the kernel
// segments it at the underlay device (in software, or in a NIC with
// tunnel segmentation offload) into RFC 7348 datagrams with complete inner
// and outer checksums, or carries it whole where the underlay device
// carries tunnel GSO packets (veth between namespaces), and the receiving
// VTEP then reads it in one datagram (packet.ParseTunnelSuper).
// KernelTunnel (Linux) is the implementation: a TAP device in the host
// namespace whose frames the kernel forwards to the underlay.

// SuperWriter sends VXLAN super-packets through the kernel.
type SuperWriter interface {
	// WriteSuper sends frame, a TCP super-segment described by its offload
	// slot o, in one VXLAN super-packet of network vni to dst, the outer
	// UDP source port derived from the flow hash. It returns an error,
	// and sends nothing, if it cannot; the caller then splits the frame
	// itself. frame is not modified.
	WriteSuper(frame []byte, o packet.Offload, vni uint32, dst netip.AddrPort, hash uint32) error
	// Close releases it.
	Close() error
}

// Virtio header of the UDP tunnel GSO extension (struct
// virtio_net_hdr_v1_hash_tunnel, include/uapi/linux/virtio_net.h, Linux
// 6.17): struct virtio_net_hdr_v1 (12 bytes), hash value and report (8),
// then the outer transport and inner network header offsets, all little
// endian.
const (
	vnetTunnelHdrLen    = 24
	vnetGSOTunnelIPv4   = 0x20 // VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4
	vnetFlagTunnelCsum  = 0x08 // VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM
	superOuterLen       = packet.EthernetHeaderLen + 20 + 8 + packet.VXLANHeaderLen
	superHeaderLen      = vnetTunnelHdrLen + superOuterLen
	superMaxFrame       = 65535 - 20 - 8 - packet.VXLANHeaderLen
	superDefaultTTL     = 64
	superIPv4DontFrag   = 0x4000
	superInnerNetOffset = superOuterLen + packet.EthernetHeaderLen
)

// superAddrs are the fixed parts of a super-packet's outer headers.
type superAddrs struct {
	dstMAC, srcMAC packet.MAC // outer Ethernet: the TAP's MAC, any unicast source
	src            [4]byte    // outer IPv4 source: this node's underlay address
}

// putSuperHeader writes into h (superHeaderLen bytes) the virtio header
// and the outer Ethernet, IPv4, UDP and VXLAN headers of a super-packet
// carrying frame to dst from source port sport, and reports whether frame
// can go that way: an untagged IPv4 or IPv6 TCP super-segment of more
// than one segment whose offload slot o asks for a partial checksum (as a
// TAP hands them), short enough for one outer IPv4 packet, to an IPv4
// destination. A frame of one segment with GSO metadata (the gateway's
// netstack marks every TCP packet) is refused: the kernel takes a packet
// no longer than its segment size as not GSO (virtio_net_hdr_to_skb) and
// then completes neither the outer UDP nor the inner TCP checksum. The outer UDP
// checksum field holds the pseudo-header sum, which the kernel completes
// per segment (VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM).
func putSuperHeader(h []byte, a *superAddrs, frame []byte, o packet.Offload, vni uint32, dst netip.AddrPort, sport uint16) bool {
	gso := o.GSOType() &^ packet.GSOECN
	d := dst.Addr().Unmap()
	if (gso != packet.GSOTCPv4 && gso != packet.GSOTCPv6) || !o.NeedsCsum() || !d.Is4() ||
		len(frame) > superMaxFrame || len(frame) < packet.EthernetHeaderLen || !o.CsumFits(len(frame)) ||
		len(frame)-o.HdrLen() <= o.GSOSize() {
		return false
	}
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case packet.EtherTypeIPv4, packet.EtherTypeIPv6:
	default:
		return false // VLAN tags and the like: the inner network header offset would be wrong
	}
	h = h[:superHeaderLen]
	clear(h[:vnetTunnelHdrLen])
	h[0] = packet.OffloadNeedsCsum | vnetFlagTunnelCsum
	h[1] = o.GSOType() | vnetGSOTunnelIPv4
	binary.LittleEndian.PutUint16(h[2:4], uint16(superOuterLen+o.HdrLen()))
	binary.LittleEndian.PutUint16(h[4:6], uint16(o.GSOSize()))
	binary.LittleEndian.PutUint16(h[6:8], uint16(superOuterLen+o.CsumStart()))
	binary.LittleEndian.PutUint16(h[8:10], uint16(o.CsumOffset()))
	binary.LittleEndian.PutUint16(h[20:22], packet.EthernetHeaderLen+20) // outer transport header
	binary.LittleEndian.PutUint16(h[22:24], superInnerNetOffset)         // inner network header

	e := h[vnetTunnelHdrLen:]
	copy(e[0:6], a.dstMAC[:])
	copy(e[6:12], a.srcMAC[:])
	binary.BigEndian.PutUint16(e[12:14], packet.EtherTypeIPv4)
	ip := e[packet.EthernetHeaderLen:]
	udpLen := 8 + packet.VXLANHeaderLen + len(frame)
	ip[0], ip[1] = 0x45, 0
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+udpLen))
	binary.BigEndian.PutUint16(ip[4:6], 0) // the kernel numbers the segments from here
	binary.BigEndian.PutUint16(ip[6:8], superIPv4DontFrag)
	ip[8], ip[9] = superDefaultTTL, packet.ProtoUDP
	ip[10], ip[11] = 0, 0
	copy(ip[12:16], a.src[:])
	d4 := d.As4()
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:12], packet.Checksum(ip[:20]))
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:2], sport)
	binary.BigEndian.PutUint16(udp[2:4], dst.Port())
	binary.BigEndian.PutUint16(udp[4:6], uint16(udpLen))
	acc := packet.Sum(ip[12:20], uint64(packet.ProtoUDP)+uint64(udpLen))
	binary.BigEndian.PutUint16(udp[6:8], ^packet.Fold(acc))
	packet.PutVXLAN(udp[8:], vni)
	return true
}

// superSourcePort returns the outer UDP source port for flow hash: one of
// ports (the underlay's transmit sockets, so the kernel sees the same
// ports whichever way a flow's datagrams go), or from the dynamic range
// (RFC 7348 section 5) if there are none.
func superSourcePort(ports []uint16, hash uint32) uint16 {
	if len(ports) > 0 {
		return ports[hash%uint32(len(ports))]
	}
	return uint16(txPortMin + hash%(txPortMax-txPortMin+1))
}

// errSuperUnsuitable is returned by WriteSuper for a frame that cannot go
// as one super-packet.
var errSuperUnsuitable = errors.New("frame unsuitable for a VXLAN super-packet")
