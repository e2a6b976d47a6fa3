package gateway

import (
	"bytes"
	"runtime"
	"testing"
	"time"
)

// goroutineID is the running goroutine's number, from its stack trace.
func goroutineID() string {
	b := make([]byte, 64)
	b = b[:runtime.Stack(b, false)]
	f := bytes.Fields(b)
	return string(f[1]) // "goroutine N [running]:"
}

// A flow after another runs on the goroutine the first one left idle
// (whose stack it grew), not on a new one each time.
func TestWorkersReuseIdleGoroutine(t *testing.T) {
	w := newWorkers()
	ids := map[string]bool{}
	for range 20 {
		done := make(chan string)
		w.Go(func() { done <- goroutineID() })
		ids[<-done] = true
		for range 100 {
			runtime.Gosched() // let the worker get back to waiting
		}
	}
	if len(ids) > 10 {
		t.Fatalf("20 flows one after another ran on %d goroutines, want the idle one reused", len(ids))
	}
}

// Idle workers exit, so a quiet host keeps no goroutines for flows.
func TestWorkersExitWhenIdle(t *testing.T) {
	base := runtime.NumGoroutine()
	w := newWorkers()
	w.idle = 10 * time.Millisecond
	done := make(chan struct{})
	for range 5 {
		w.Go(func() { <-done })
	}
	if n := runtime.NumGoroutine(); n < base+5 {
		t.Fatalf("%d goroutines running 5 blocked flows, want at least %d", n, base+5)
	}
	close(done)
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after the flows ended and the workers idled, want %d", runtime.NumGoroutine(), base)
		}
		time.Sleep(time.Millisecond)
	}
}
