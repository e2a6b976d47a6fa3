package netdevtest

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

// Recorder is a write-only port that keeps a copy of every frame written to
// it. Err, if set before use, makes every Write fail with it.
type Recorder struct {
	Err error

	mu      sync.Mutex
	frames  [][]byte
	writes  int
	changed chan struct{} // closed and replaced on every Write
}

// WriteFrames is Write: it only copies the frames.
func (r *Recorder) WriteFrames(f packet.Frames) (int, error) { return r.Write(f.Bufs(), f.Offset()) }

// Write records a copy of bufs[i][offset:] for every i.
func (r *Recorder) Write(bufs [][]byte, offset int) (int, error) {
	if r.Err != nil {
		return 0, r.Err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range bufs {
		r.frames = append(r.frames, append([]byte(nil), b[offset:]...))
	}
	r.writes++
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
	return len(bufs), nil
}

// Frames returns the frames recorded so far, oldest first.
func (r *Recorder) Frames() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.frames...)
}

// Writes returns how many Write calls delivered frames.
func (r *Recorder) Writes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes
}

// Reset forgets the recorded frames and writes.
func (r *Recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.frames, r.writes = nil, 0
}

// Wait returns the recorded frames once there are at least n, or what there
// is when timeout expires (the caller checks the length).
func (r *Recorder) Wait(n int, timeout time.Duration) [][]byte {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		if len(r.frames) >= n {
			defer r.mu.Unlock()
			return append([][]byte(nil), r.frames...)
		}
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			return r.Frames()
		}
	}
}

// Counter is a write-only port that counts frames without keeping them, so
// it does not allocate: use it in allocation tests and benchmarks. It keeps
// a copy of the last frame written in a preallocated buffer.
type Counter struct {
	writes, frames, bytes atomic.Uint64

	mu   sync.Mutex
	last []byte
}

// WriteFrames is Write: it only copies the frames.
func (c *Counter) WriteFrames(f packet.Frames) (int, error) { return c.Write(f.Bufs(), f.Offset()) }

// Write counts bufs and keeps a copy of the last frame.
func (c *Counter) Write(bufs [][]byte, offset int) (int, error) {
	var n uint64
	for _, b := range bufs {
		n += uint64(len(b) - offset)
	}
	c.writes.Add(1)
	c.frames.Add(uint64(len(bufs)))
	c.bytes.Add(n)
	if len(bufs) > 0 {
		c.mu.Lock()
		if c.last == nil {
			c.last = make([]byte, 0, packet.BufferSize)
		}
		c.last = append(c.last[:0], bufs[len(bufs)-1][offset:]...)
		c.mu.Unlock()
	}
	return len(bufs), nil
}

// Counts returns the number of Write calls, frames and bytes seen.
func (c *Counter) Counts() (writes, frames, bytes uint64) {
	return c.writes.Load(), c.frames.Load(), c.bytes.Load()
}

// Last returns a copy of the last frame written, or nil.
func (c *Counter) Last() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil {
		return nil
	}
	return append([]byte(nil), c.last...)
}
