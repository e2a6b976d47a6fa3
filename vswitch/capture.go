package vswitch

import (
	"errors"
	"sync/atomic"
	"time"
)

// DefaultSnaplen is the most bytes of a frame a Capture keeps when its
// snaplen is not set.
const DefaultSnaplen = 65535

// CapturedFrame is a copy of a frame seen at a captured port.
type CapturedFrame struct {
	// Time is when the frame's batch was switched (read once per batch).
	Time time.Time
	// Data is the frame's first bytes, at most the capture's snaplen.
	Data []byte
	// Len is the frame's full length.
	Len int
	// Out is true for a frame the switch wrote to the port, false for one
	// that entered the switch from it.
	Out bool
}

// Capture receives copies of the frames at one port, both directions,
// once started with Port.StartCapture. Copies go into a bounded queue
// that the data path never waits for: a frame that finds it full is
// dropped and counted (Dropped). While no capture runs, a port's data path
// does one atomic load per batch and direction, nothing else.
type Capture struct {
	snaplen int
	ch      chan CapturedFrame
	dropped atomic.Uint64
}

// NewCapture returns a capture keeping at most snaplen bytes of a frame
// (DefaultSnaplen if snaplen <= 0) and queueing up to queue frames
// (at least 1).
func NewCapture(snaplen, queue int) *Capture {
	if snaplen <= 0 {
		snaplen = DefaultSnaplen
	}
	return &Capture{snaplen: snaplen, ch: make(chan CapturedFrame, max(queue, 1))}
}

// Frames returns the queue of captured frames. It is never closed: stop
// reading after StopCapture.
func (c *Capture) Frames() <-chan CapturedFrame { return c.ch }

// Dropped returns how many frames were not captured because the queue was
// full.
func (c *Capture) Dropped() uint64 { return c.dropped.Load() }

// add queues a copy of each frame bufs[i][offset:], with time t.
func (c *Capture) add(t time.Time, bufs [][]byte, offset int, out bool) {
	for _, b := range bufs {
		c.addFrame(t, b[offset:], out)
	}
}

// addFrame queues a copy of frame f, or counts it dropped if the queue is
// full.
func (c *Capture) addFrame(t time.Time, f []byte, out bool) {
	data := make([]byte, min(len(f), c.snaplen))
	copy(data, f)
	select {
	case c.ch <- CapturedFrame{Time: t, Data: data, Len: len(f), Out: out}:
	default:
		c.dropped.Add(1)
	}
}

// errCaptureBusy is StartCapture's error for a port already captured.
var errCaptureBusy = errors.New("a capture is already running on this port")

// StartCapture starts copying r's frames, both directions, into c. One
// capture runs on a port at a time.
func (r *Port) StartCapture(c *Capture) error {
	if !r.capture.CompareAndSwap(nil, c) {
		return r.sw.errorf("port %q: %w", r.name, errCaptureBusy)
	}
	return nil
}

// StopCapture stops c if it runs on r. An Input already running may still
// queue frames into c once.
func (r *Port) StopCapture(c *Capture) { r.capture.CompareAndSwap(c, nil) }
