// Package netdev defines the batched frame device the data plane reads and
// writes (a TAP device on Linux, channel fakes in netdevtest) and opens TAP
// devices with golang.org/x/sys/unix.
package netdev

// Device moves Ethernet frames in batches.
//
// Frames live at a fixed offset inside caller-owned buffers: a frame is
// bufs[i][offset:offset+sizes[i]] after Read and bufs[i][offset:] for
// Write. The bytes in front of offset are headroom the device may use (a TAP
// device with IFF_VNET_HDR reads and writes its virtio-net header at
// bufs[i][offset-VirtioNetHdrLen:offset]), so offset must be at least
// VirtioNetHdrLen. Buffers are borrowed for the duration of the call only.
type Device interface {
	// Name is the interface name (as seen where the device was created).
	Name() string
	// Read fills up to len(bufs) frames, blocking until at least one is
	// available, and returns how many were read. sizes[i] receives the
	// length of frame i.
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	// Write sends every frame and returns how many were accepted. A frame
	// that is refused is dropped; the error describes the first refusal.
	Write(bufs [][]byte, offset int) (int, error)
	// BatchSize is the largest batch Read can fill in one call.
	BatchSize() int
	// Close releases the device; a blocked Read returns an error.
	Close() error
}

// VirtioNetHdrLen is the length of struct virtio_net_hdr, which a TAP
// device opened with IFF_VNET_HDR puts in front of every frame.
const VirtioNetHdrLen = 10
