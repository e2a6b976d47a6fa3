// Package netdevtest provides in-memory fakes of netdev.Device and of the
// switch's Port for tests that run without root: Pipe connects two devices
// like the two sides of a TAP device, Recorder keeps copies of the frames
// written to it and Counter only counts them (for allocation tests).
package netdevtest

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

// DefaultQueue is the number of batches a Pipe end buffers before Write
// starts dropping.
const DefaultQueue = 1024

// Device is one end of a Pipe. Write copies the frames with their offload
// metadata slot (they cross a simulated kernel boundary, like a TAP device
// with IFF_VNET_HDR) and queues them as one batch for the other end's Read,
// which restores the slot; a full queue drops the batch and Write reports
// an error.
type Device struct {
	name string
	in   chan [][]byte // batches written by the peer
	peer *Device
	done chan struct{}
	once sync.Once

	rmu     sync.Mutex // serialises readers over pending
	pending [][]byte   // rest of a batch that did not fit the last Read

	written, read, dropped atomic.Uint64
}

var _ netdev.Device = (*Device)(nil)

// Pipe returns two connected devices named "pipe0" and "pipe1": frames
// written to one are read from the other.
func Pipe() (*Device, *Device) { return NewPipe("pipe0", "pipe1", DefaultQueue) }

// NewPipe returns two connected devices with the given names, each
// buffering up to queue batches.
func NewPipe(nameA, nameB string, queue int) (*Device, *Device) {
	a := &Device{name: nameA, in: make(chan [][]byte, queue), done: make(chan struct{})}
	b := &Device{name: nameB, in: make(chan [][]byte, queue), done: make(chan struct{})}
	a.peer, b.peer = b, a
	return a, b
}

// Name returns the device name.
func (d *Device) Name() string { return d.name }

// BatchSize returns packet.BatchSize.
func (d *Device) BatchSize() int { return packet.BatchSize }

// WriteFrames is Write: it only copies the frames.
func (d *Device) WriteFrames(f packet.Frames) (int, error) { return d.Write(f.Bufs(), f.Offset()) }

// Write copies the slot bufs[i][0:packet.OffloadLen] and the frame
// bufs[i][offset:] for every i and queues them for the peer.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	select {
	case <-d.done:
		return 0, fmt.Errorf("%s: write: %w", d.name, net.ErrClosed)
	case <-d.peer.done:
		return 0, fmt.Errorf("%s: write: peer %w", d.name, net.ErrClosed)
	default:
	}
	if offset < packet.OffloadLen {
		return 0, fmt.Errorf("%s: write offset %d smaller than the offload slot", d.name, offset)
	}
	total := 0
	for _, b := range bufs {
		total += packet.OffloadLen + len(b) - offset
	}
	store := make([]byte, total)
	batch := make([][]byte, len(bufs))
	for i, b := range bufs {
		copy(store, b[:packet.OffloadLen])
		n := packet.OffloadLen + copy(store[packet.OffloadLen:], b[offset:])
		batch[i], store = store[:n:n], store[n:]
	}
	select {
	case d.peer.in <- batch:
		d.written.Add(uint64(len(bufs)))
		return len(bufs), nil
	default:
		d.dropped.Add(uint64(len(bufs)))
		return 0, fmt.Errorf("%s: write: queue full", d.name)
	}
}

// Read blocks until at least one frame is available, then copies up to
// len(bufs) frames to bufs[i][offset:], their metadata to
// bufs[i][0:packet.OffloadLen] and their lengths to sizes. A frame longer
// than the buffer is truncated. After Close it returns net.ErrClosed.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.rmu.Lock()
	defer d.rmu.Unlock()
	if len(d.pending) == 0 {
		select {
		case b := <-d.in:
			d.pending = b
		case <-d.done:
			return 0, fmt.Errorf("%s: read: %w", d.name, net.ErrClosed)
		}
	}
	n := 0
	for n < len(bufs) {
		if len(d.pending) == 0 {
			select {
			case b := <-d.in:
				d.pending = b
				continue
			default:
			}
			break
		}
		copy(bufs[n][:packet.OffloadLen], d.pending[0])
		sizes[n] = copy(bufs[n][offset:], d.pending[0][packet.OffloadLen:])
		d.pending[0] = nil
		d.pending = d.pending[1:]
		n++
	}
	d.read.Add(uint64(n))
	return n, nil
}

// Close makes a blocked or later Read return an error, and Writes from
// either end fail.
func (d *Device) Close() error {
	d.once.Do(func() { close(d.done) })
	return nil
}

// Stats reports how many frames this end wrote and read, and how many of its
// writes were dropped because the peer's queue was full.
func (d *Device) Stats() (written, read, dropped uint64) {
	return d.written.Load(), d.read.Load(), d.dropped.Load()
}
