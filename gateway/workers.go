package gateway

import (
	"sync"
	"time"
)

// workerIdle is how long an idle worker waits for its next function
// before it exits.
const workerIdle = 5 * time.Second

// workers runs functions on goroutines that outlive them. A TCP flow's
// goroutines (its dial and its two copy directions) go through gVisor's
// deep call paths, which grow a new goroutine's stack several times,
// copying it each time; a worker keeps the stack it grew for the next
// flow. Workers idle for workerIdle exit, so a quiet host holds none;
// after stop, every worker exits once its function returns.
type workers struct {
	// bufs are the flows' copy buffers (copyConn), kept as the
	// goroutines are.
	bufs     *copyBufs
	next     chan func()
	idle     time.Duration // workerIdle
	quit     chan struct{}
	stopOnce sync.Once
}

func newWorkers() *workers {
	return &workers{bufs: newCopyBufs(), next: make(chan func()), idle: workerIdle, quit: make(chan struct{})}
}

// stop makes idle workers exit now, and busy ones when they finish.
func (w *workers) stop() { w.stopOnce.Do(func() { close(w.quit) }) }

// Go runs f on an idle worker, or on a new one if none is idle.
func (w *workers) Go(f func()) {
	select {
	case w.next <- f:
	default:
		go w.run(f)
	}
}

func (w *workers) run(f func()) {
	t := time.NewTimer(w.idle)
	defer t.Stop()
	for {
		f()
		f = nil
		t.Reset(w.idle)
		select {
		case f = <-w.next:
		case <-t.C:
			return
		case <-w.quit:
			return
		}
	}
}
