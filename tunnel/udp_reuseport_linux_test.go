//go:build linux

package tunnel

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/packet"
)

func listenUDPQueues(t *testing.T, addr string, port uint16, rx int) *UDP {
	t.Helper()
	u, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddr(addr), Port: port, RxSockets: rx, TxSockets: 32})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

// sendFlows sends n datagrams from ua to to, with hashes 0..n-1 (so
// spread over ua's transmit sockets, that is over source ports).
func sendFlows(t *testing.T, ua *UDP, to netip.AddrPort, n int) {
	t.Helper()
	out := make([]Message, n)
	for i := range out {
		out[i] = Message{Buf: fmt.Appendf(nil, "datagram %d", i), Addr: to, Hash: uint32(i)}
	}
	if k, err := ua.WriteBatch(out); k != n || err != nil {
		t.Fatalf("WriteBatch = %d, %v", k, err)
	}
}

func TestUDPReceiveQueuesShareThePortAndSplitBySourcePort(t *testing.T) {
	port := freeUDPPort(t)
	ua := listenUDPQueues(t, "127.0.0.1", port, 1)
	ub := listenUDPQueues(t, "127.0.0.2", port, 2)
	if ub.RxQueues() != 2 || ub.LocalAddr().Port() != port {
		t.Fatalf("RxQueues %d, local %s", ub.RxQueues(), ub.LocalAddr())
	}
	const n = 32 // one per transmit socket of ua
	sendFlows(t, ua, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port), n)
	var mu sync.Mutex
	perQueue := make([]int, 2)
	ports := make([]map[uint16]bool, 2)
	got := map[string]bool{}
	var wg sync.WaitGroup
	for q := range 2 {
		ports[q] = map[uint16]bool{}
		wg.Go(func() {
			msgs := make([]Message, 16)
			for i := range msgs {
				msgs[i].Buf = make([]byte, 2048)
			}
			for {
				k, err := ub.ReadBatchQueue(q, msgs)
				if err != nil {
					return // closed below
				}
				mu.Lock()
				for _, m := range msgs[:k] {
					perQueue[q]++
					ports[q][m.Addr.Port()] = true
					got[string(m.Buf[:m.N])] = true
				}
				mu.Unlock()
			}
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		k := len(got)
		mu.Unlock()
		if k == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	ub.Close()
	wg.Wait()
	if len(got) != n {
		t.Fatalf("received %d of %d datagrams", len(got), n)
	}
	if perQueue[0] == 0 || perQueue[1] == 0 {
		t.Errorf("datagrams from %d source ports all reached one queue: %v", n, perQueue)
	}
	for p := range ports[0] {
		if ports[1][p] {
			t.Errorf("source port %d reached both queues: one flow would be reordered", p)
		}
	}
}

func TestUDPReceiveQueuesRefuseATakenPort(t *testing.T) {
	port := freeUDPPort(t)
	listenUDPQueues(t, "127.0.0.1", port, 2)
	// A second daemon with several queues must not join the first one's
	// SO_REUSEPORT group and take half its datagrams.
	for _, rx := range []int{1, 2} {
		u, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddr("127.0.0.1"), Port: port, RxSockets: rx})
		want := fmt.Sprintf("data port %d: address already in use (is a kernel VXLAN device bound to it?)", port)
		if err == nil || err.Error() != want {
			if u != nil {
				u.Close()
			}
			t.Errorf("RxSockets %d on a taken port: err = %v, want %q", rx, err, want)
		}
	}
}

func TestVTEPReadsEveryReceiveQueue(t *testing.T) {
	port := freeUDPPort(t)
	ua := listenUDPQueues(t, "127.0.0.1", port, 1)
	ub := listenUDPQueues(t, "127.0.0.3", port, 2)
	va := New(Config{Underlay: ua, DataPort: port})
	na, _ := va.AddSegment(testVNI, 0)
	na.SetPeers([]netip.Addr{netip.MustParseAddr("127.0.0.3")})
	vb := New(Config{Underlay: ub, DataPort: port})
	nb, _ := vb.AddSegment(testVNI, 0)
	nb.SetPeers([]netip.Addr{netip.MustParseAddr("127.0.0.1")})
	sink := newSink()
	nb.SetInput(sink.input)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- vb.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	const flows = 32
	var frames [][]byte
	for i := range flows {
		frames = append(frames, udpFrame(macB, macA, uint16(10000+i), 80, 64))
	}
	if k, err := na.Write(withHeadroom(frames...), packet.Headroom); k != flows || err != nil {
		t.Fatalf("Write = %d, %v", k, err)
	}
	got := sink.wait(t, flows)
	for _, f := range frames {
		found := false
		for _, g := range got {
			found = found || bytes.Equal(f, g)
		}
		if !found {
			t.Fatalf("a frame was not delivered (got %d)", len(got))
		}
	}
}

func TestUDPReceiveQueueIODoesNotAllocate(t *testing.T) {
	port := freeUDPPort(t)
	ua := listenUDPQueues(t, "127.0.0.1", port, 1)
	ub := listenUDPQueues(t, "127.0.0.2", port, 2)
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port)
	out := []Message{{Buf: make([]byte, 1000), Addr: to}}
	in := make([]Message, 4)
	for i := range in {
		in[i].Buf = make([]byte, 2048)
	}
	// Hash 0 keeps to one transmit socket, so one source port and one
	// queue: find it by the datagram waiting in its socket.
	ua.WriteBatch(out)
	q := -1
	for deadline := time.Now().Add(5 * time.Second); q < 0; {
		for c := range ub.RxQueues() {
			if n, _ := unix.IoctlGetInt(int(ub.rx[c].fd), unix.SIOCINQ); n > 0 {
				q = c
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the datagram reached no queue")
		}
	}
	if k, err := ub.ReadBatchQueue(q, in); k != 1 || err != nil {
		t.Fatalf("ReadBatchQueue = %d, %v", k, err)
	}
	step := func() {
		ua.WriteBatch(out)
		if k, err := ub.ReadBatchQueue(q, in); k != 1 || err != nil {
			t.Fatalf("ReadBatchQueue = %d, %v", k, err)
		}
	}
	if allocs := testing.AllocsPerRun(100, step); allocs != 0 {
		t.Errorf("round trip over a receive queue allocates %.1f times", allocs)
	}
}
