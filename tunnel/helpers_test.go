package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

var (
	macA  = packet.MAC{0x02, 0x42, 0x0a, 0, 1, 2}
	macB  = packet.MAC{0x02, 0x42, 0x0a, 0, 1, 3}
	macX  = packet.MAC{0x02, 0xee, 0, 0, 0, 9} // behind an external VTEP
	vtepA = netip.MustParseAddr("192.168.50.1")
	vtepB = netip.MustParseAddr("192.168.50.2")
	vtepC = netip.MustParseAddr("192.168.50.3")
	vtepE = netip.MustParseAddr("192.168.50.99") // external VTEP
)

const testVNI = 4097

// udpFrame builds an Ethernet/IPv4/UDP frame with payload bytes of 0xab.
func udpFrame(dst, src packet.MAC, sport, dport uint16, payload int) []byte {
	f := make([]byte, packet.EthernetHeaderLen+20+8+payload)
	e := packet.Ethernet(f)
	e.SetDst(dst)
	e.SetSrc(src)
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeIPv4)
	ip := packet.IPv4(f[14:])
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+payload))
	ip[8], ip[9] = 64, packet.ProtoUDP
	ip.SetSrc(netip.MustParseAddr("10.0.1.2"))
	ip.SetDst(netip.MustParseAddr("10.0.1.3"))
	ip.SetChecksum(ip.HeaderChecksum())
	binary.BigEndian.PutUint16(f[34:], sport)
	binary.BigEndian.PutUint16(f[36:], dport)
	binary.BigEndian.PutUint16(f[38:], uint16(8+payload))
	for i := 42; i < len(f); i++ {
		f[i] = 0xab
	}
	return f
}

// withHeadroom copies frames into buffers where each starts at
// packet.Headroom, as a TAP read leaves them.
func withHeadroom(frames ...[]byte) [][]byte {
	bufs := make([][]byte, len(frames))
	for i, f := range frames {
		b := make([]byte, packet.Headroom+len(f), packet.BufferSize)
		copy(b[packet.Headroom:], f)
		bufs[i] = b
	}
	return bufs
}

// vxlanDatagram builds a VXLAN datagram carrying frame.
func vxlanDatagram(vni uint32, frame []byte) []byte {
	d := make([]byte, packet.VXLANHeaderLen+len(frame))
	packet.PutVXLAN(d, vni)
	copy(d[packet.VXLANHeaderLen:], frame)
	return d
}

// sink collects the frames a network delivers.
type sink struct {
	mu     sync.Mutex
	frames [][]byte
	calls  int
	ch     chan struct{}
}

func newSink() *sink { return &sink{ch: make(chan struct{}, 1024)} }

func (s *sink) input(bufs [][]byte, sizes []int, offset int) {
	s.mu.Lock()
	s.calls++
	for i := range bufs {
		if offset != packet.Headroom || len(bufs[i]) != packet.BufferSize {
			panic("frame not at packet.Headroom in a BufferSize buffer")
		}
		s.frames = append(s.frames, bytes.Clone(bufs[i][offset:offset+sizes[i]]))
	}
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

func (s *sink) wait(t *testing.T, n int) [][]byte {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		s.mu.Lock()
		got := len(s.frames)
		s.mu.Unlock()
		if got >= n {
			s.mu.Lock()
			defer s.mu.Unlock()
			return append([][]byte(nil), s.frames...)
		}
		select {
		case <-s.ch:
		case <-deadline:
			t.Fatalf("got %d frames, want %d", got, n)
		}
	}
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.frames)
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1700000000, 0)} }

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *fakeClock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// node is a VTEP on a MemNetwork with one network and a sink.
type node struct {
	v    *VTEP
	u    *MemUnderlay
	n    *Segment
	sink *sink
}

func newNode(t *testing.T, mn *MemNetwork, addr netip.Addr, clock *fakeClock, peers ...netip.Addr) *node {
	t.Helper()
	u, err := mn.Listen(netip.AddrPortFrom(addr, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Underlay: u}
	if clock != nil {
		cfg.Now = clock.Now
	}
	v := New(cfg)
	n, err := v.AddSegment(testVNI, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.SetPeers(peers); err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		if p == vtepE { // the external VTEP of the tests
			if err := n.SetExternal([]netip.Addr{vtepE}); err != nil {
				t.Fatal(err)
			}
		}
	}
	s := newSink()
	n.SetInput(s.input)
	return &node{v: v, u: u, n: n, sink: s}
}

// run starts the node's receive loop and stops it at the end of the test.
func (nd *node) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- nd.v.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})
}

// raw is a plain endpoint on the MemNetwork (an external VTEP or a sniffer).
type raw struct {
	u *MemUnderlay
}

func newRaw(t *testing.T, mn *MemNetwork, addr netip.Addr) *raw {
	u, err := mn.Listen(netip.AddrPortFrom(addr, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return &raw{u: u}
}

// recv reads exactly want datagrams (failing after a timeout).
func (r *raw) recv(t *testing.T, want int) []Message {
	t.Helper()
	var out []Message
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(out) < want {
			msgs := []Message{{Buf: make([]byte, packet.BufferSize)}}
			n, err := r.u.ReadBatch(msgs)
			if err != nil {
				return
			}
			m := msgs[0]
			m.Buf = m.Buf[:m.N]
			out = append(out, msgs[:n]...)
			out[len(out)-1] = m
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		r.u.Close()
		<-done
		t.Fatalf("received %d datagrams, want %d", len(out), want)
	}
	return out
}

// pending reports how many datagrams wait at r.
func (r *raw) pending() int {
	r.u.mu.Lock()
	defer r.u.mu.Unlock()
	return r.u.n
}

func (r *raw) send(t *testing.T, to netip.Addr, hash uint32, dgrams ...[]byte) {
	t.Helper()
	msgs := make([]Message, len(dgrams))
	for i, d := range dgrams {
		msgs[i] = Message{Buf: d, Addr: netip.AddrPortFrom(to, packet.VXLANPort), Hash: hash}
	}
	if n, err := r.u.WriteBatch(msgs); n != len(msgs) || err != nil {
		t.Fatalf("raw send: %d, %v", n, err)
	}
}
