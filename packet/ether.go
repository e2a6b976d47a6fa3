package packet

import (
	"encoding/binary"
	"fmt"
	"net"
)

// EtherType values used by the data plane.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeVLAN = 0x8100
	EtherTypeIPv6 = 0x86DD
)

// EthernetHeaderLen is the length of an untagged Ethernet header.
const EthernetHeaderLen = 14

// MAC is an Ethernet address usable as a map key.
type MAC [6]byte

// Broadcast is ff:ff:ff:ff:ff:ff.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// IsMulticast reports whether the group bit is set (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&1 == 1 }

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

// String formats m as aa:bb:cc:dd:ee:ff.
func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// ParseMAC parses an IEEE 802 MAC-48 address.
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return MAC{}, err
	}
	if len(hw) != 6 {
		return MAC{}, fmt.Errorf("mac %q: not a 6-byte Ethernet address", s)
	}
	return MAC(hw), nil
}

// Ethernet is a view of an Ethernet frame. Accessors require
// len >= EthernetHeaderLen; check with Valid first.
type Ethernet []byte

// Valid reports whether the frame is long enough to hold a header.
func (e Ethernet) Valid() bool { return len(e) >= EthernetHeaderLen }

// Dst returns the destination address.
func (e Ethernet) Dst() MAC { return MAC(e[0:6]) }

// Src returns the source address.
func (e Ethernet) Src() MAC { return MAC(e[6:12]) }

// SetDst writes the destination address.
func (e Ethernet) SetDst(m MAC) { copy(e[0:6], m[:]) }

// SetSrc writes the source address.
func (e Ethernet) SetSrc(m MAC) { copy(e[6:12], m[:]) }

// EtherType returns the EtherType field (the outer one for tagged frames).
func (e Ethernet) EtherType() uint16 { return binary.BigEndian.Uint16(e[12:14]) }

// Payload returns the bytes after the untagged header.
func (e Ethernet) Payload() []byte { return e[EthernetHeaderLen:] }
