package dataplane

import (
	"sync"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/packet"
)

const (
	// pooledBatch is the size of the batches the pool lends: a TAP's
	// batch (netdev.TAPBatchSize), about 1 MiB of 64 KiB buffers.
	pooledBatch = 16
	// poolKeep is how many free batches the pool keeps for reuse; more
	// readers than that reading at once allocate, and their batches go
	// to the garbage collector afterwards.
	poolKeep = 32
)

// batchPool lends read batches to the loops of devices that can wait for
// frames (netdev.ReadWaiter): a loop takes a batch only once frames are
// there and gives it back when the switch is done with them, so an idle
// port holds no buffers and memory grows with the ports reading at once,
// not with the ports.
//
// The free batches are a stack: get lends the batch given back last,
// whose buffers the switch has just written out and are still in the
// CPU's cache, so a busy reader keeps reading into the same warm
// buffers instead of cycling through every batch the pool ever made.
type batchPool struct {
	mu   sync.Mutex
	free []*packet.Batch // top of the stack last
	made atomic.Uint64   // batches allocated, for tests
}

func newBatchPool() *batchPool {
	return &batchPool{free: make([]*packet.Batch, 0, poolKeep)}
}

// get takes the free batch given back last, or allocates one.
func (bp *batchPool) get() *packet.Batch {
	bp.mu.Lock()
	if n := len(bp.free); n > 0 {
		b := bp.free[n-1]
		bp.free[n-1] = nil
		bp.free = bp.free[:n-1]
		bp.mu.Unlock()
		return b
	}
	bp.mu.Unlock()
	bp.made.Add(1)
	return packet.NewBatch(pooledBatch)
}

// put gives b back; past poolKeep free batches it is dropped.
func (bp *batchPool) put(b *packet.Batch) {
	bp.mu.Lock()
	if len(bp.free) < poolKeep {
		bp.free = append(bp.free, b)
	}
	bp.mu.Unlock()
}
