// Package packet holds the data plane's shared vocabulary: buffer geometry
// (headroom for in-place encapsulation), pooled buffers, header views over
// raw bytes and Internet checksums. It imports no other project package.
package packet

import "sync"

const (
	// Headroom is the number of bytes kept free in front of every frame read
	// from a device, so that a virtio-net header, outer UDP, ESP and VXLAN
	// headers can be prepended in place without copying the payload.
	Headroom = 128
	// Tailroom is kept free behind the largest frame for ESP padding,
	// trailer and ICV.
	Tailroom = 64
	// MaxFrame is the largest Ethernet frame (without FCS) a buffer holds:
	// a 9000-byte jumbo MTU plus Ethernet and VLAN headers.
	MaxFrame = 9216
	// BufferSize is the length of every pooled buffer.
	BufferSize = Headroom + MaxFrame + Tailroom
	// BatchSize is the default number of frames moved per batch.
	BatchSize = 64
)

// Pool is a free list of BufferSize byte slices. Get hands a buffer to a new
// owner; the last owner returns it with Put. The zero value is not usable;
// create one with NewPool.
type Pool struct {
	p sync.Pool
}

// NewPool returns a pool of BufferSize buffers.
func NewPool() *Pool {
	pl := &Pool{}
	pl.p.New = func() any {
		b := make([]byte, BufferSize)
		return &b
	}
	return pl
}

// Get returns a buffer of length BufferSize owned by the caller.
func (pl *Pool) Get() *[]byte { return pl.p.Get().(*[]byte) }

// Put returns a buffer obtained from Get. The caller must not use it after.
func (pl *Pool) Put(b *[]byte) {
	*b = (*b)[:cap(*b)]
	pl.p.Put(b)
}

// Batch is a set of buffers owned by one reader and reused for every read:
// Bufs[i][Headroom:Headroom+Sizes[i]] holds frame i after a read.
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
