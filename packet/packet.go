// Package packet holds the data plane's shared vocabulary: buffer geometry
// (headroom for in-place encapsulation), the ownership of buffers handed
// to ports (Frames), header views over
// raw bytes and Internet checksums. It imports no other project package.
package packet

// Buffer layout (every data-path buffer, from the start):
//
//	[0:OffloadLen]          offload metadata of the frame (see Offload)
//	[OffloadLen:Headroom]   free headroom: encapsulation headers (VXLAN,
//	                        outer UDP, ESP) are prepended here in place
//	[Headroom:Headroom+n]   the frame, n <= MaxGSOFrame
//	[...:+Tailroom]         ESP padding, trailer and ICV
const (
	// Headroom is the offset of the frame in every buffer read from a
	// device. The first OffloadLen bytes are the metadata slot; the
	// Headroom-OffloadLen bytes behind it are free for headers prepended in
	// place, without copying the payload.
	Headroom = 128
	// EncapRoom is the headroom free for prepended headers.
	EncapRoom = Headroom - OffloadLen
	// Tailroom is kept free behind the largest frame for ESP padding,
	// trailer and ICV.
	Tailroom = 64
	// MaxFrame is the largest Ethernet frame (without FCS) that goes on a
	// wire: a 9000-byte jumbo MTU plus Ethernet and VLAN headers. Network
	// MTUs are bounded by it.
	MaxFrame = 9216
	// MaxGSOFrame is the largest frame a buffer holds: a TCP/UDP
	// super-segment handed over with segmentation offload (IP total length
	// up to 65535) plus Ethernet and VLAN headers. Such a frame carries GSO
	// metadata and is segmented to at most the MTU before it reaches a
	// wire; its byte length is never checked against the MTU.
	MaxGSOFrame = 65535 + 18
	// BufferSize is the length of every data-path buffer (about 64 KiB).
	BufferSize = Headroom + MaxGSOFrame + Tailroom
	// BatchSize is the default number of frames moved per batch.
	BatchSize = 64
)

// Batch is a set of buffers owned by one reader and reused for every read:
// Bufs[i][Headroom:Headroom+Sizes[i]] holds frame i after a read and
// Bufs[i][0:OffloadLen] its offload metadata. A batch of n buffers takes
// n*BufferSize bytes (64 KiB per buffer), so readers size n by the
// device's BatchSize.
type Batch struct {
	Bufs  [][]byte
	Sizes []int
}

// NewBatch allocates a batch of n BufferSize buffers.
func NewBatch(n int) *Batch {
	b := &Batch{Bufs: make([][]byte, n), Sizes: make([]int, n)}
	for i := range b.Bufs {
		b.Bufs[i] = make([]byte, BufferSize)
	}
	return b
}
