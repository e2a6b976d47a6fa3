package packet

// Frames is a batch of frames handed to a port for one write, with who
// owns each buffer. Frame i is Buf(i)[Offset():] and its offload metadata
// the slot Buf(i)[0:OffloadLen]; the buffers are lent for the call only.
//
// Ownership, per frame:
//   - Owned (Owned(i) returns the buffer): this buffer goes to this port
//     only in this call. The port may change anything in it: frame, slot,
//     headroom and tailroom (seal it in place, complete a checksum).
//   - Shared (Owned(i) returns nil): the same buffer is also written to
//     other ports, one after another (never at the same time). The port
//     must leave the frame bytes and the slot byte-equal. It may write
//     into the headroom Buf(i)[OffloadLen:Offset()] and the tailroom
//     behind the frame up to cap (prepend an encapsulation header, as
//     the tunnel does), because no port reads them before writing them:
//     they carry nothing from one port to the next. Anything else that
//     needs a changed frame works on a copy in the port's own scratch
//     (CopyTo).
//
// Ports change buffers only through the slice Owned returns, so whether a
// change is allowed is decided in one place.
type Frames struct {
	bufs   [][]byte
	offset int
	shared []bool // shared[i]: frame i is shared; nil: every frame is owned
}

// OwnedFrames returns a batch whose every frame the receiving port owns.
func OwnedFrames(bufs [][]byte, offset int) Frames { return Frames{bufs: bufs, offset: offset} }

// NewFrames returns a batch where frame i is shared if shared[i] (shared
// is nil or as long as bufs).
func NewFrames(bufs [][]byte, offset int, shared []bool) Frames {
	return Frames{bufs: bufs, offset: offset, shared: shared}
}

// Len returns the number of frames.
func (f Frames) Len() int { return len(f.bufs) }

// Offset returns the offset of every frame in its buffer.
func (f Frames) Offset() int { return f.offset }

// Buf returns frame i's buffer, to read (see Frames for what a port may
// write).
func (f Frames) Buf(i int) []byte { return f.bufs[i] }

// Bufs returns the buffers, to read: for a port that never changes a
// frame (a TAP device hands them to the kernel).
func (f Frames) Bufs() [][]byte { return f.bufs }

// Shared reports whether frame i's buffer also goes to other ports.
func (f Frames) Shared(i int) bool { return f.shared != nil && f.shared[i] }

// Owned returns frame i's buffer if the port owns it and may change it
// in place, or nil if the buffer is shared.
func (f Frames) Owned(i int) []byte {
	if f.Shared(i) {
		return nil
	}
	return f.bufs[i]
}

// Headroom returns the bytes in front of frame i that a port may write
// headers into, owned or shared: Buf(i)[OffloadLen:Offset()].
func (f Frames) Headroom(i int) []byte { return f.bufs[i][OffloadLen:f.offset] }

// CopyTo copies frame i and its slot into dst at the same layout (slot at
// 0, frame at Offset()) and returns dst[:Offset()+frame length], a buffer
// the port owns; dst must be long enough.
func (f Frames) CopyTo(i int, dst []byte) []byte {
	b := f.bufs[i]
	copy(dst, b[:OffloadLen])
	n := copy(dst[f.offset:], b[f.offset:])
	return dst[:f.offset+n]
}
