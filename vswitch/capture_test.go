package vswitch

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

// drain returns the frames queued in c.
func drain(c *Capture) []CapturedFrame {
	var out []CapturedFrame
	for {
		select {
		case f := <-c.Frames():
			out = append(out, f)
		default:
			return out
		}
	}
}

// TestCaptureBothDirections: a capture on b sees the frames b sends into
// the switch and the frames the switch writes to b (unicast and flooded),
// byte-equal to what b's device received or sent.
func TestCaptureBothDirections(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	var ra, rb netdevtest.Recorder
	a := addPort(t, s, &ra, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	b := addPort(t, s, &rb, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
	c := NewCapture(0, 16)
	if err := b.StartCapture(c); err != nil {
		t.Fatal(err)
	}
	if err := b.StartCapture(NewCapture(0, 1)); !errors.Is(err, errCaptureBusy) {
		t.Errorf("second capture on b: %v, want busy", err)
	}
	toB := ipv4Frame(macB, macA, ipA, ipB)
	flood := ipv4Frame(packet.MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, macA, ipA, ipB)
	fromB := ipv4Frame(macA, macB, ipB, ipA)
	notB := ipv4Frame(macA, macA, ipA, ipB) // same port: never reaches b
	input(a, toB, flood, notB)
	input(b, fromB)
	got := drain(c)
	want := []struct {
		frame []byte
		out   bool
	}{{toB, true}, {flood, true}, {fromB, false}}
	if len(got) != len(want) {
		t.Fatalf("captured %d frames, want %d", len(got), len(want))
	}
	for i, w := range want {
		if !bytes.Equal(got[i].Data, w.frame) || got[i].Out != w.out || got[i].Len != len(w.frame) || got[i].Time.IsZero() {
			t.Errorf("frame %d: out=%v len=%d % x, want out=%v % x", i, got[i].Out, got[i].Len, got[i].Data, w.out, w.frame)
		}
	}
	if rx := rb.Frames(); len(rx) != 2 || !bytes.Equal(rx[0], got[0].Data) || !bytes.Equal(rx[1], got[1].Data) {
		t.Errorf("b's device got %d frames, not the captured ones", len(rx))
	}
	if ra.Frames() == nil || !bytes.Equal(ra.Frames()[0], got[2].Data) {
		t.Errorf("a's device did not get the captured frame from b")
	}
	b.StopCapture(c)
	input(a, toB)
	if n := len(drain(c)); n != 0 {
		t.Errorf("stopped capture still got %d frames", n)
	}
}

// TestCaptureFullQueueDrops: the data path never waits for a capture; what
// does not fit its queue is counted, and the switch forwards everything.
func TestCaptureFullQueueDrops(t *testing.T) {
	s := New(Config{Name: "web"})
	var rb netdevtest.Recorder
	a := addPort(t, s, &netdevtest.Counter{}, PortConfig{Name: "a", MAC: macA, IP: ipA})
	b := addPort(t, s, &rb, PortConfig{Name: "b", MAC: macB, IP: ipB})
	c := NewCapture(20, 3)
	if err := b.StartCapture(c); err != nil {
		t.Fatal(err)
	}
	frames := make([][]byte, 10)
	for i := range frames {
		frames[i] = ipv4Frame(macB, macA, ipA, ipB)
	}
	input(a, frames...)
	if got := len(rb.Frames()); got != 10 {
		t.Errorf("b got %d frames, want 10", got)
	}
	got := drain(c)
	if len(got) != 3 || c.Dropped() != 7 {
		t.Errorf("captured %d, dropped %d; want 3 and 7", len(got), c.Dropped())
	}
	if len(got) > 0 && (len(got[0].Data) != 20 || got[0].Len != len(frames[0])) {
		t.Errorf("snaplen 20: kept %d of %d bytes", len(got[0].Data), got[0].Len)
	}
}

// TestCaptureOffDoesNotAllocate: after a capture stopped, the data path is
// back to zero allocations per batch, flooding included.
func TestCaptureOffDoesNotAllocate(t *testing.T) {
	s := New(Config{Name: "web", StormLimit: -1})
	a := addPort(t, s, &netdevtest.Counter{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	b := addPort(t, s, &netdevtest.Counter{}, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
	c := NewCapture(0, 1)
	for _, p := range []*Port{a, b} {
		if err := p.StartCapture(c); err != nil {
			t.Fatal(err)
		}
		p.StopCapture(c)
	}
	bufs, sizes := batch(ipv4Frame(macB, macA, ipA, ipB), ipv4Frame(packet.MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, macA, ipA, ipB))
	if allocs := testing.AllocsPerRun(200, func() { a.Input(bufs, sizes, off) }); allocs != 0 {
		t.Errorf("capture off: %.1f allocations per batch", allocs)
	}
	if n := len(drain(c)); n != 0 {
		t.Errorf("stopped capture got %d frames", n)
	}
}

// TestCaptureStartStopWhileForwarding starts and stops captures on a port
// while two ports forward to each other (run with -race).
func TestCaptureStartStopWhileForwarding(t *testing.T) {
	s := New(Config{Name: "web"})
	a := addPort(t, s, &netdevtest.Counter{}, PortConfig{Name: "a", MAC: macA, IP: ipA})
	b := addPort(t, s, &netdevtest.Counter{}, PortConfig{Name: "b", MAC: macB, IP: ipB})
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, tc := range []struct {
		p     *Port
		frame []byte
	}{{a, ipv4Frame(macB, macA, ipA, ipB)}, {b, ipv4Frame(macA, macB, ipB, ipA)}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs, sizes := batch(tc.frame, tc.frame)
			for {
				select {
				case <-done:
					return
				default:
					tc.p.Input(bufs, sizes, off)
				}
			}
		}()
	}
	for i := range 200 {
		c := NewCapture(0, 8)
		if err := b.StartCapture(c); err != nil {
			t.Fatal(err)
		}
		if i%20 == 0 { // every tenth capture waits for a frame
			select {
			case <-c.Frames():
			case <-time.After(5 * time.Second):
				t.Fatal("a capture during forwarding saw no frame in 5s")
			}
		}
		drain(c)
		b.StopCapture(c)
	}
	close(done)
	wg.Wait()
}
