package packet

import (
	"encoding/binary"
	"net/netip"
)

// ARP constants for Ethernet/IPv4 ARP (RFC 826).
const (
	ARPLen       = 28
	ARPRequest   = 1
	ARPReply     = 2
	arpHTEther   = 1
	arpPTypeIPv4 = 0x0800
)

// ARP is a view of an Ethernet/IPv4 ARP packet (the Ethernet payload).
type ARP []byte

// Valid reports whether a is a well-formed Ethernet/IPv4 ARP packet.
func (a ARP) Valid() bool {
	return len(a) >= ARPLen &&
		binary.BigEndian.Uint16(a[0:2]) == arpHTEther &&
		binary.BigEndian.Uint16(a[2:4]) == arpPTypeIPv4 &&
		a[4] == 6 && a[5] == 4
}

// Op returns the operation (ARPRequest or ARPReply).
func (a ARP) Op() uint16 { return binary.BigEndian.Uint16(a[6:8]) }

// SenderMAC returns the sender hardware address.
func (a ARP) SenderMAC() MAC { return MAC(a[8:14]) }

// SenderIP returns the sender protocol address.
func (a ARP) SenderIP() netip.Addr { return netip.AddrFrom4([4]byte(a[14:18])) }

// TargetMAC returns the target hardware address.
func (a ARP) TargetMAC() MAC { return MAC(a[18:24]) }

// TargetIP returns the target protocol address.
func (a ARP) TargetIP() netip.Addr { return netip.AddrFrom4([4]byte(a[24:28])) }

// MakeReply turns the request in a into the reply saying that ip is at mac,
// in place: the sender becomes the target and (mac, ip) the sender.
func (a ARP) MakeReply(mac MAC, ip netip.Addr) {
	binary.BigEndian.PutUint16(a[6:8], ARPReply)
	copy(a[18:28], a[8:18])
	copy(a[8:14], mac[:])
	ip4 := ip.As4()
	copy(a[14:18], ip4[:])
}
