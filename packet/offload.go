package packet

import "encoding/binary"

// Offload metadata: every buffer of the data path starts with a slot of
// OffloadLen bytes, buf[0:OffloadLen], that describes the frame at the
// buffer's offset. Its layout is struct virtio_net_hdr in the host's byte
// order (what a TAP device opened with IFF_VNET_HDR reads and writes in
// front of every frame, see netdev), so TAP devices move it with the frame
// in the same read or write. All zero means "no offload": a complete frame
// with complete checksums.
//
// The slot is separate from the encapsulation headroom in front of the
// frame, so a frame flooded to a TAP and to the tunnel keeps its metadata
// while the tunnel writes its headers in front of the frame.
//
// Who sets it: a device's Read sets it for every frame it returns; any
// code that creates a frame or rewrites one so the metadata no longer
// describes it (switch ARP replies, tunnel decapsulation, test fakes) must
// call ClearOffload. Code that completes a partial checksum in place
// clears the NeedsCsum flag (CompleteChecksum does both).

// OffloadLen is the length of the metadata slot (struct virtio_net_hdr).
const OffloadLen = 10

// Offload flags (virtio_net_hdr.flags).
const (
	// OffloadNeedsCsum says the TCP/UDP checksum at CsumStart+CsumOffset
	// holds only the pseudo-header sum and must be completed over the
	// frame's bytes from CsumStart on (CHECKSUM_PARTIAL).
	OffloadNeedsCsum = 1
	// OffloadDataValid says the receiver already validated the checksum.
	OffloadDataValid = 2
)

// GSO types (virtio_net_hdr.gso_type).
const (
	GSONone  = 0
	GSOTCPv4 = 1
	GSOUDP   = 3 // UFO (IP fragmentation), never produced by current kernels
	GSOTCPv6 = 4
	GSOUDPL4 = 5 // USO
	// GSOECN is or-ed into a TCP GSO type when the super-segment carries
	// ECN's CWR flag, which only the first segment may keep.
	GSOECN = 0x80
)

// Offload is a view of a buffer's metadata slot. Create it with OffloadOf.
type Offload []byte

// OffloadOf returns the metadata slot of buf (buf[0:OffloadLen]).
func OffloadOf(buf []byte) Offload { return Offload(buf[:OffloadLen:OffloadLen]) }

// ClearOffload sets buf's metadata slot to "no offload".
func ClearOffload(buf []byte) { clear(buf[:OffloadLen]) }

// Flags returns the flags byte.
func (o Offload) Flags() uint8 { return o[0] }

// GSOType returns the GSO type, ECN bit included.
func (o Offload) GSOType() uint8 { return o[1] }

// HdrLen returns the header length the sender claims (L2 to end of L4).
func (o Offload) HdrLen() int { return int(binary.NativeEndian.Uint16(o[2:4])) }

// GSOSize returns the payload bytes per segment (the MSS for TCP).
func (o Offload) GSOSize() int { return int(binary.NativeEndian.Uint16(o[4:6])) }

// CsumStart returns the frame offset the partial checksum covers from.
func (o Offload) CsumStart() int { return int(binary.NativeEndian.Uint16(o[6:8])) }

// CsumOffset returns where, from CsumStart, the checksum field is.
func (o Offload) CsumOffset() int { return int(binary.NativeEndian.Uint16(o[8:10])) }

// NeedsCsum reports whether OffloadNeedsCsum is set.
func (o Offload) NeedsCsum() bool { return o[0]&OffloadNeedsCsum != 0 }

// IsGSO reports whether the frame is a super-segment to be segmented.
func (o Offload) IsGSO() bool { return o[1] != GSONone }

// IsNone reports whether the slot says "no offload" (flags and GSO type
// zero; the other fields then mean nothing).
func (o Offload) IsNone() bool { return o[0] == 0 && o[1] == GSONone }

// Set writes every field.
func (o Offload) Set(flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset int) {
	o[0], o[1] = flags, gsoType
	binary.NativeEndian.PutUint16(o[2:4], uint16(hdrLen))
	binary.NativeEndian.PutUint16(o[4:6], uint16(gsoSize))
	binary.NativeEndian.PutUint16(o[6:8], uint16(csumStart))
	binary.NativeEndian.PutUint16(o[8:10], uint16(csumOffset))
}

// CsumFits reports whether the partial checksum's offsets fit a frame of
// n bytes (what CompleteChecksum checks before changing anything).
func (o Offload) CsumFits(n int) bool {
	start := o.CsumStart()
	return start < n && start+o.CsumOffset()+2 <= n
}

// CompleteChecksum completes the partial checksum of a frame whose slot o
// has NeedsCsum and no GSO: the ones' complement sum of frame[CsumStart:]
// (whose checksum field holds the pseudo-header sum) is stored in the
// field, and NeedsCsum is cleared so the frame is a complete one. It changes
// the frame and its slot, so a port does it only on a buffer it owns (see
// Frames). It reports false, changing nothing, if the offsets do not
// fit the frame. A slot without NeedsCsum is left alone (true).
func CompleteChecksum(frame []byte, o Offload) bool {
	if !o.NeedsCsum() {
		return true
	}
	if !o.CsumFits(len(frame)) {
		return false
	}
	o.FillChecksum(frame)
	o[0] &^= OffloadNeedsCsum
	return true
}

// FillChecksum stores the completed partial checksum in frame (a copy of
// the frame o describes), leaving o as it is: for a port completing a
// copy of a shared frame. o must have NeedsCsum and fit the frame
// (CsumFits).
func (o Offload) FillChecksum(frame []byte) {
	start := o.CsumStart()
	binary.BigEndian.PutUint16(frame[start+o.CsumOffset():], Fold(Sum(frame[start:], 0)))
}
