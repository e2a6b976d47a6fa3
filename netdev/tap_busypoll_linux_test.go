//go:build linux

package netdev

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

// busyPollTAP returns a test TAP polling for span after traffic and a
// function that sends one UDP datagram out of it from its namespace.
func busyPollTAP(t *testing.T, span time.Duration) (*testTAP, func()) {
	t.Helper()
	tt := newTestTAP(t, false)
	tt.tap.SetBusyPoll(span)
	var c net.Conn
	inNetns(t, tt.ns, func() {
		var err error
		if c, err = net.Dial("udp4", netip.AddrPortFrom(peerIP, 9999).String()); err != nil {
			t.Error(err)
		}
	})
	if c == nil {
		t.FailNow()
	}
	t.Cleanup(func() { c.Close() })
	return tt, func() {
		if _, err := c.Write([]byte("frame")); err != nil {
			t.Fatal(err)
		}
	}
}

// readFrames starts WaitRead and Read, as the data plane's port loop does.
func readFrames(tap *TAP) <-chan error {
	done := make(chan error, 1)
	go func() {
		b := packet.NewBatch(4)
		if err := tap.WaitRead(); err != nil {
			done <- err
			return
		}
		_, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom)
		done <- err
	}()
	return done
}

func waitRead(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no frame read in 5 s")
	}
}

// A frame that comes while the reader still polls after the last one is
// read without a wake-up from the netpoller, and counted.
func TestTAPBusyPollCatchesNextFrame(t *testing.T) {
	tt, send := busyPollTAP(t, time.Minute)
	send()
	waitRead(t, readFrames(tt.tap))
	// A frame sent before the reader polls is read at once: try a few.
	for i := 0; i < 20 && tt.tap.Stats().RxBusyPolled == 0; i++ {
		done := readFrames(tt.tap)
		if !waitTAPPolling(t, tt.tap, done) {
			continue // a stray frame (IPv6 autoconfiguration) ended the read
		}
		send()
		waitRead(t, done)
	}
	if st := tt.tap.Stats(); st.RxBusyPolled == 0 {
		t.Fatalf("no frame caught by polling: %+v", st)
	}
}

// Close ends a WaitRead that is polling, as it ends a blocked one.
func TestTAPBusyPollClose(t *testing.T) {
	tt, send := busyPollTAP(t, time.Hour)
	send()
	waitRead(t, readFrames(tt.tap))
	done := make(chan error, 1)
	go func() {
		b := packet.NewBatch(4)
		for { // stray frames (IPv6 autoconfiguration) are read until Close
			err := tt.tap.WaitRead()
			if err == nil {
				_, err = tt.tap.Read(b.Bufs, b.Sizes, packet.Headroom)
			}
			if err != nil {
				done <- err
				return
			}
		}
	}()
	waitTAPPolling(t, tt.tap, nil)
	go tt.tap.Close() // waits for the read to end
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a polling read did not end within 5 s of Close")
	}
}

// waitTAPPolling returns true once tap's reader polls (its window
// spins), or false if the read that done reports ended first. (The
// process's CPU time, used before, also grows with the race detector's
// and other goroutines' work, so under load a frame could be sent before
// the reader polled, and be read through the netpoller.)
func waitTAPPolling(t *testing.T, tap *TAP, done <-chan error) bool {
	t.Helper()
	start := tap.poll.Spins()
	for deadline := time.Now().Add(5 * time.Second); tap.poll.Spins()-start < 2; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return false
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the reader does not poll after a frame")
		}
		runtime.Gosched()
	}
	return true
}
