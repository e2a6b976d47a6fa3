// Package busypoll keeps a reader polling its descriptor for a short
// window after traffic instead of going back to the Go netpoller at once.
//
// Every frame that waits in the netpoller costs a wake-up: epoll returns,
// a thread (on a virtual machine, possibly a halted vCPU) wakes and the
// reader goroutine is scheduled. In a request/response exchange the next
// frame often arrives within tens of microseconds of the last one, so a
// reader that keeps polling (non-blocking reads, runtime.Gosched between
// them) for a window after its last frame catches it without the
// wake-up. Outside the window, and on an idle descriptor, the reader
// blocks as before, so an idle daemon spends no CPU; during traffic each
// polling reader keeps a CPU busy for up to the window after every frame.
package busypoll

import (
	"runtime"
	"sync/atomic"
	"time"
)

// Window is one reader's busy-poll state; a nil *Window never polls. Seen
// and Again are called by one reader at a time; Caught by anyone.
type Window struct {
	span   time.Duration
	epoch  time.Time
	last   time.Duration // since epoch: when the last read returned data
	polled bool          // Again said "read again" since the last Seen
	caught atomic.Uint64
	spins  atomic.Uint64
}

// New returns a window that polls for span after each read that returned
// data, or nil (never poll) if span <= 0.
func New(span time.Duration) *Window {
	if span <= 0 {
		return nil
	}
	return &Window{span: span, epoch: time.Now()}
}

// Seen records that a read returned data.
func (w *Window) Seen() {
	if w == nil {
		return
	}
	if w.polled {
		w.caught.Add(1)
		w.polled = false
	}
	w.last = time.Since(w.epoch)
}

// Again is called when a non-blocking read found nothing. It reports
// whether to read again, after yielding the processor to other
// goroutines (the window after the last data is still open), or to block.
func (w *Window) Again() bool {
	if w == nil {
		return false
	}
	if time.Since(w.epoch)-w.last >= w.span {
		w.polled = false
		return false
	}
	w.polled = true
	w.spins.Add(1)
	runtime.Gosched()
	return true
}

// Spins returns how many times Again said "read again": it grows while
// the reader polls, which is how a test knows that a frame it sends now
// meets a polling reader.
func (w *Window) Spins() uint64 {
	if w == nil {
		return 0
	}
	return w.spins.Load()
}

// Caught returns how many reads found data by polling, each a wake-up
// from the netpoller saved.
func (w *Window) Caught() uint64 {
	if w == nil {
		return 0
	}
	return w.caught.Load()
}
