// Package netdev defines the batched frame device the data plane reads and
// writes (a TAP device on Linux, channel fakes in netdevtest) and opens TAP
// devices with golang.org/x/sys/unix.
package netdev

import "github.com/vxmesh/vxmesh/packet"

// Device moves Ethernet frames in batches, with their offload metadata.
//
// Buffers follow packet's layout: frame i is bufs[i][offset:offset+sizes[i]]
// after Read and bufs[i][offset:] for Write, and its offload metadata
// (struct virtio_net_hdr, see packet.Offload) is the slot
// bufs[i][0:packet.OffloadLen], whatever offset is. offset must be at least
// packet.OffloadLen; the bytes between the slot and offset are headroom the
// device does not touch.
//
// Read sets the slot of every frame it returns: "no offload" (all zero) for
// a complete frame, or what the kernel handed over (a partial checksum to
// complete, a TCP super-segment of up to 64 KiB to segment). Write sends
// each frame with the metadata found in its slot, unchanged; callers that
// create or rewrite a frame must clear the slot (packet.ClearOffload)
// first. A device that cannot honour some metadata refuses that frame.
// Buffers are borrowed for the duration of the call only, and must be long
// enough for the largest frame the device may return (packet.BufferSize
// for a TAP device with offloads).
type Device interface {
	// Name is the interface name (as seen where the device was created).
	Name() string
	// Read fills up to len(bufs) frames, blocking until at least one is
	// available, and returns how many were read. sizes[i] receives the
	// length of frame i.
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	// Write sends every frame and returns how many were accepted. A frame
	// that is refused is dropped; the error describes the first refusal.
	// Write never changes a frame or its slot, so the same buffer may go
	// to other ports.
	Write(bufs [][]byte, offset int) (int, error)
	// WriteFrames is Write for a batch a switch hands over (a
	// vswitch.Sink); it changes no frame either, owned or shared.
	WriteFrames(f packet.Frames) (int, error)
	// BatchSize is the largest batch Read can fill in one call.
	BatchSize() int
	// Close releases the device; a blocked Read returns an error.
	Close() error
}

// ReadWaiter is a Device that can wait for frames without reading them, so
// that its reader holds read buffers only while frames are there.
type ReadWaiter interface {
	// WaitRead blocks until Read has a frame to return (or would fail);
	// it returns an error once the device is closed. It must not be
	// called concurrently with Read.
	WaitRead() error
}

// VirtioNetHdrLen is the length of struct virtio_net_hdr, which a TAP
// device opened with IFF_VNET_HDR puts in front of every frame; it is the
// metadata slot at the start of every buffer.
const VirtioNetHdrLen = packet.OffloadLen
