package packet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// ARPRequestFrame returns a broadcast ARP request from src (MAC and IPv4
// address) for target, as a host's stack sends it.
func ARPRequestFrame(src MAC, srcIP, target netip.Addr) []byte {
	f := make([]byte, EthernetHeaderLen+ARPLen)
	e := Ethernet(f)
	e.SetDst(Broadcast)
	e.SetSrc(src)
	binary.BigEndian.PutUint16(f[12:], EtherTypeARP)
	a := f[EthernetHeaderLen:]
	copy(a, []byte{0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, ARPRequest})
	copy(a[8:14], src[:])
	s, t := srcIP.As4(), target.As4()
	copy(a[14:18], s[:])
	copy(a[24:28], t[:])
	return f
}

// Probe describes the first packet of a flow, for ProbeFrame.
type Probe struct {
	DstMAC, SrcMAC MAC
	Src, Dst       netip.Addr // IPv4
	// Proto is ProtoTCP (a SYN), ProtoUDP or ProtoICMP (an echo request,
	// ports ignored).
	Proto        uint8
	SPort, DPort uint16
	// Size is the IP packet's length (the payload is zeros); 0 means the
	// headers alone.
	Size int
}

// ProbeFrame builds p's Ethernet frame with valid checksums, or says why
// it cannot.
func ProbeFrame(p Probe) ([]byte, error) {
	if !p.Src.Is4() || !p.Dst.Is4() {
		return nil, fmt.Errorf("probe %s -> %s: not IPv4", p.Src, p.Dst)
	}
	l4 := map[uint8]int{ProtoTCP: 20, ProtoUDP: 8, ProtoICMP: 8}[p.Proto]
	if l4 == 0 {
		return nil, fmt.Errorf("probe: protocol %d is not tcp, udp or icmp", p.Proto)
	}
	size := max(p.Size, IPv4MinHeaderLen+l4)
	if size > 65535 {
		return nil, fmt.Errorf("probe: an IP packet of %d bytes is longer than 65535", size)
	}
	f := make([]byte, EthernetHeaderLen+size)
	e := Ethernet(f)
	e.SetDst(p.DstMAC)
	e.SetSrc(p.SrcMAC)
	binary.BigEndian.PutUint16(f[12:], EtherTypeIPv4)
	ip := IPv4(f[EthernetHeaderLen:])
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(size))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8], ip[9] = 64, p.Proto
	ip.SetSrc(p.Src)
	ip.SetDst(p.Dst)
	ip.SetChecksum(ip.HeaderChecksum())
	t := ip[IPv4MinHeaderLen:]
	csum := 0
	switch p.Proto {
	case ProtoTCP:
		binary.BigEndian.PutUint16(t[0:], p.SPort)
		binary.BigEndian.PutUint16(t[2:], p.DPort)
		binary.BigEndian.PutUint32(t[4:], 1)
		t[12], t[13] = 5<<4, 0x02 // SYN
		binary.BigEndian.PutUint16(t[14:], 64240)
		csum = 16
	case ProtoUDP:
		binary.BigEndian.PutUint16(t[0:], p.SPort)
		binary.BigEndian.PutUint16(t[2:], p.DPort)
		binary.BigEndian.PutUint16(t[4:], uint16(len(t)))
		csum = 6
	case ProtoICMP:
		t[0] = 8 // echo request
		binary.BigEndian.PutUint16(t[4:], p.SPort)
		binary.BigEndian.PutUint16(t[6:], 1)
		binary.BigEndian.PutUint16(t[2:], Checksum(t))
		return f, nil
	}
	c := Fold(Sum(t, PseudoHeaderSum(p.Src, p.Dst, p.Proto, len(t))))
	if p.Proto == ProtoUDP && c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(t[csum:], c)
	return f, nil
}
