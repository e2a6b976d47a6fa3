package e2e

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
)

// This file decodes tcpdump captures of the underlay independently of
// vxmesh's own packet code, so a test that reads them checks the wire
// format against RFC 7348 rather than against the implementation.

// vxlanPacket is one captured outer Ethernet/IPv4/UDP datagram to the
// VXLAN port, with its VXLAN header and inner frame decoded.
type vxlanPacket struct {
	OuterSrc, OuterDst     netip.Addr
	SrcPort, DstPort       uint16
	Flags                  byte   // VXLAN flags byte (0x08: VNI present)
	Reserved1              uint32 // the 24 reserved bits after the flags
	VNI                    uint32
	Reserved2              byte // the 8 reserved bits after the VNI
	InnerDst, InnerSrc     [6]byte
	InnerType              uint16
	InnerIPSrc, InnerIPDst netip.Addr // zero unless the inner frame is IPv4
	InnerICMPType          int        // -1 unless the inner packet is ICMP
}

// broadcast reports whether the inner frame is an Ethernet broadcast.
func (p vxlanPacket) broadcast() bool {
	return p.InnerDst == [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
}

func (p vxlanPacket) String() string {
	return fmt.Sprintf("%v:%d > %v:%d vxlan flags %#02x vni %d inner %x > %x type %#04x %v > %v icmp %d",
		p.OuterSrc, p.SrcPort, p.OuterDst, p.DstPort, p.Flags, p.VNI, p.InnerSrc, p.InnerDst,
		p.InnerType, p.InnerIPSrc, p.InnerIPDst, p.InnerICMPType)
}

// readVXLANCapture reads a classic pcap file of Ethernet frames (what
// `tcpdump -w` writes) and returns the UDP datagrams to or from port
// as VXLAN packets. Frames that are not IPv4/UDP on that port are skipped;
// a datagram too short for a VXLAN header and an inner Ethernet header is
// an error. A record cut off at the end of the file (tcpdump still
// writing) ends the capture.
func readVXLANCapture(path string, port uint16) ([]vxlanPacket, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	frames, err := pcapFrames(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []vxlanPacket
	for _, frame := range frames {
		p, ok, err := decodeVXLANFrame(frame, port)
		if err != nil {
			return out, err
		}
		if ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// pcapFrames returns the complete records of a pcap file of Ethernet
// frames; nil if tcpdump has not written its header yet. A record still
// being written ends the list.
func pcapFrames(b []byte) ([][]byte, error) {
	if len(b) < 24 {
		return nil, nil
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("not a pcap file (magic %x)", b[:4])
	}
	if lt := bo.Uint32(b[20:]); lt != 1 {
		return nil, fmt.Errorf("link type %d, want 1 (Ethernet)", lt)
	}
	var out [][]byte
	for off := 24; off+16 <= len(b); {
		incl := int(bo.Uint32(b[off+8:]))
		if off+16+incl > len(b) {
			break
		}
		out = append(out, b[off+16:off+16+incl])
		off += 16 + incl
	}
	return out, nil
}

// decodeVXLANFrame decodes one outer Ethernet frame; ok is false if it is
// not IPv4/UDP to or from port.
func decodeVXLANFrame(f []byte, port uint16) (p vxlanPacket, ok bool, err error) {
	p.InnerICMPType = -1
	if len(f) < 14 {
		return p, false, nil
	}
	et, l3 := binary.BigEndian.Uint16(f[12:]), f[14:]
	if et == 0x8100 && len(f) >= 18 { // one VLAN tag
		et, l3 = binary.BigEndian.Uint16(f[16:]), f[18:]
	}
	if et != 0x0800 || len(l3) < 20 || l3[0]>>4 != 4 || l3[9] != 17 {
		return p, false, nil
	}
	ihl := int(l3[0]&0x0f) * 4
	if ihl < 20 || len(l3) < ihl+8 || binary.BigEndian.Uint16(l3[6:])&0x3fff != 0 {
		return p, false, nil // fragments are not VXLAN datagrams we can read whole
	}
	p.OuterSrc = netip.AddrFrom4([4]byte(l3[12:16]))
	p.OuterDst = netip.AddrFrom4([4]byte(l3[16:20]))
	udp := l3[ihl:]
	p.SrcPort, p.DstPort = binary.BigEndian.Uint16(udp), binary.BigEndian.Uint16(udp[2:])
	if p.SrcPort != port && p.DstPort != port {
		return p, false, nil
	}
	v := udp[8:]
	if len(v) < 8+14 {
		return p, true, fmt.Errorf("UDP datagram %v:%d > %v:%d of %d bytes is too short for VXLAN and an inner frame",
			p.OuterSrc, p.SrcPort, p.OuterDst, p.DstPort, len(udp))
	}
	p.Flags = v[0]
	p.Reserved1 = uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3])
	p.VNI = uint32(v[4])<<16 | uint32(v[5])<<8 | uint32(v[6])
	p.Reserved2 = v[7]
	in := v[8:]
	copy(p.InnerDst[:], in[0:6])
	copy(p.InnerSrc[:], in[6:12])
	p.InnerType = binary.BigEndian.Uint16(in[12:])
	if ip := in[14:]; p.InnerType == 0x0800 && len(ip) >= 20 {
		p.InnerIPSrc = netip.AddrFrom4([4]byte(ip[12:16]))
		p.InnerIPDst = netip.AddrFrom4([4]byte(ip[16:20]))
		if ihl := int(ip[0]&0x0f) * 4; ip[9] == 1 && len(ip) > ihl {
			p.InnerICMPType = int(ip[ihl])
		}
	}
	return p, true, nil
}
