package gateway

import "time"

// workerIdle is how long an idle worker waits for its next function
// before it exits.
const workerIdle = 5 * time.Second

// workers runs functions on goroutines that outlive them. A TCP flow's
// goroutines (its dial and its two copy directions) go through gVisor's
// deep call paths, which grow a new goroutine's stack several times,
// copying it each time; a worker keeps the stack it grew for the next
// flow. Workers idle for workerIdle exit, so a quiet host holds none.
type workers struct {
	next chan func()
	idle time.Duration // workerIdle
}

func newWorkers() *workers { return &workers{next: make(chan func()), idle: workerIdle} }

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
		}
	}
}
