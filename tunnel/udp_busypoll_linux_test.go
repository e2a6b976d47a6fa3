//go:build linux

package tunnel

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/packet"
)

// busyPollUDP opens a receive socket on 127.0.0.1 with BusyPoll span and
// a plain socket that sends to it.
func busyPollUDP(t *testing.T, span time.Duration) (*UDP, func()) {
	t.Helper()
	port := freeUDPPort(t)
	u, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddr("127.0.0.1"), Port: port, BusyPoll: span})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return u, func() {
		if _, err := c.Write([]byte("datagram")); err != nil {
			t.Fatal(err)
		}
	}
}

// readOne starts one ReadBatch and returns its result channel.
func readOne(u *UDP) <-chan error {
	done := make(chan error, 1)
	go func() {
		msgs := []Message{{Buf: make([]byte, 2048)}}
		n, err := u.ReadBatch(msgs)
		if err == nil && n != 1 {
			err = errors.New("read no datagram")
		}
		done <- err
	}()
	return done
}

func wait(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no datagram read in 5 s", what)
	}
}

// A datagram that arrives while the receive queue is still polling after
// the previous one is read there, without a wake-up from the netpoller.
func TestUDPBusyPollCatchesNextDatagram(t *testing.T) {
	u, send := busyPollUDP(t, time.Minute)
	send()
	wait(t, readOne(u), "first datagram")
	if got := u.BusyPolled(); got != 0 {
		t.Fatalf("BusyPolled after the first datagram = %d, want 0 (it woke the reader)", got)
	}
	// The reader polls (the window after the last datagram is open): a
	// datagram sent once it burns CPU is caught there.
	done := readOne(u)
	waitPolling(t)
	send()
	wait(t, done, "second datagram")
	if got := u.BusyPolled(); got != 1 {
		t.Fatalf("BusyPolled = %d, want 1: the datagram sent while the reader polled was not caught by polling", got)
	}
}

// After the window the reader blocks: an idle socket costs no CPU, and the
// next datagram is read after a wake-up as without polling.
func TestUDPBusyPollIdleUsesNoCPU(t *testing.T) {
	const span = 20 * time.Millisecond
	u, send := busyPollUDP(t, span)
	send()
	wait(t, readOne(u), "first datagram")
	done := readOne(u)
	time.Sleep(2 * span) // the window closes while the reader waits
	// The process's CPU time counts every goroutine of the test binary
	// (in CI something other than the reader, under -race, took 240 ms of
	// one 300 ms window): a reader that kept polling burns a core in
	// every window, so one quiet window of three is enough.
	runtime.GC()
	var used time.Duration
	for range 3 {
		before := cpuTime(t)
		time.Sleep(300 * time.Millisecond)
		if used = cpuTime(t) - before; used <= 100*time.Millisecond {
			break
		}
	}
	if used > 100*time.Millisecond {
		t.Fatalf("the idle reader used %v of CPU in each of three 300 ms windows: it kept polling after the window", used)
	}
	send()
	wait(t, done, "datagram after the window")
	if got := u.BusyPolled(); got != 0 {
		t.Fatalf("BusyPolled = %d, want 0 (the datagram came after the window)", got)
	}
}

// Close ends a read that is polling at once, as it ends a blocked one.
func TestUDPBusyPollClose(t *testing.T) {
	u, send := busyPollUDP(t, time.Hour)
	send()
	wait(t, readOne(u), "first datagram")
	done := readOne(u)
	waitPolling(t)
	go u.Close() // waits for the read to end: with a read that polls on, it would hang the test

	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a polling read did not end within 5 s of Close")
	}
}

// waitPolling returns once a reader started just before polls: the
// process burns CPU (nothing else in the test does).
func waitPolling(t *testing.T) {
	t.Helper()
	start := cpuTime(t)
	for deadline := time.Now().Add(5 * time.Second); cpuTime(t)-start < 20*time.Millisecond; {
		if time.Now().After(deadline) {
			t.Fatal("the reader does not poll after a datagram")
		}
		runtime.Gosched()
	}
}

// cpuTime returns the process's user and system CPU time.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A lone frame crosses a VTEP pair over real sockets as soon as it is
// written: nothing on either side waits for a second frame or a timer to
// fill or flush a batch. Each of 20 frames is sent only after the one
// before arrived; the median delivery is microseconds, so the 20 ms bound
// only catches a frame held back (and, as a median, not a scheduling
// stall of a loaded machine).
func TestUDPLoneFrameIsNotHeldBack(t *testing.T) {
	port := freeUDPPort(t)
	a, b := newUDPNode(t, "127.0.0.1", port, "127.0.0.3"), newUDPNode(t, "127.0.0.3", port, "127.0.0.1")
	const frames = 20
	took := make([]time.Duration, frames)
	for i := range frames {
		f := udpFrame(macB, macA, 1, 2, 100)
		start := time.Now()
		if k, err := a.n.Write(withHeadroom(f), packet.Headroom); k != 1 || err != nil {
			t.Fatalf("Write = %d, %v", k, err)
		}
		b.sink.wait(t, i+1)
		took[i] = time.Since(start)
	}
	slices.Sort(took)
	if med := took[frames/2]; med > 20*time.Millisecond {
		t.Fatalf("a lone frame took %v (median of %d; all %v): held back waiting for more", med, frames, took)
	}
}
