package packet

import "encoding/binary"

// VXLAN (RFC 7348) constants.
const (
	// VXLANHeaderLen is the length of the VXLAN header.
	VXLANHeaderLen = 8
	// VXLANFlagI is the "VNI present" flag, the only flag RFC 7348 defines.
	VXLANFlagI = 0x08
	// VXLANPort is the IANA-assigned UDP destination port for VXLAN.
	VXLANPort = 4789
	// VXLANMaxVNI is the largest 24-bit VXLAN network identifier.
	VXLANMaxVNI = 1<<24 - 1
)

// VXLAN is a view of a VXLAN header followed by the inner Ethernet frame
// (a UDP payload). Accessors require Valid.
type VXLAN []byte

// Valid reports whether v holds a whole header with the I flag set. The
// other flag bits and the reserved fields are ignored on receipt, as RFC
// 7348 requires.
func (v VXLAN) Valid() bool { return len(v) >= VXLANHeaderLen && v[0]&VXLANFlagI != 0 }

// Flags returns the flags byte.
func (v VXLAN) Flags() uint8 { return v[0] }

// VNI returns the 24-bit VXLAN network identifier.
func (v VXLAN) VNI() uint32 { return binary.BigEndian.Uint32(v[4:8]) >> 8 }

// Payload returns the inner frame, the bytes behind the header.
func (v VXLAN) Payload() []byte { return v[VXLANHeaderLen:] }

// PutVXLAN writes a VXLAN header for vni into b[:VXLANHeaderLen]: flags
// 0x08 (I), reserved fields zero. Bits of vni above 24 are ignored.
func PutVXLAN(b []byte, vni uint32) {
	_ = b[VXLANHeaderLen-1]
	binary.BigEndian.PutUint32(b[0:4], VXLANFlagI<<24)
	binary.BigEndian.PutUint32(b[4:8], (vni&VXLANMaxVNI)<<8)
}
