package dataplane

import (
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
type batchPool struct {
	free chan *packet.Batch
	made atomic.Uint64 // batches allocated, for tests
}

func newBatchPool() *batchPool {
	return &batchPool{free: make(chan *packet.Batch, poolKeep)}
}

// get takes a free batch, or allocates one.
func (bp *batchPool) get() *packet.Batch {
	select {
	case b := <-bp.free:
		return b
	default:
		bp.made.Add(1)
		return packet.NewBatch(pooledBatch)
	}
}

// put gives b back; past poolKeep free batches it is dropped.
func (bp *batchPool) put(b *packet.Batch) {
	select {
	case bp.free <- b:
	default:
	}
}
