package gateway

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/vswitch"
)

// TestAttachSendsInSendersGoroutine: once the switch port is attached, a
// frame the stack sends in reply reaches the switch before the call that
// made the stack send it returns: a ping the switch delivers to the
// gateway is answered back to the pinger within the pinger's own Input,
// with no goroutine between the stack and the switch.
func TestAttachSendsInSendersGoroutine(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	rec, ref, mac, ip := h.pinger(t)
	// The first ping also resolves the pinger's MAC (the stack's ARP
	// request leaves from a timer goroutine).
	sendFrame(ref, echoFrame(mac, ip, gwAddr.Addr(), 7, 1))
	deadline := time.Now().Add(5 * time.Second)
	for !hasReply(rec, gwAddr.Addr(), 7, 1) {
		if time.Now().After(deadline) {
			t.Fatal("no echo reply from the gateway")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for seq := uint16(2); seq < 50; seq++ {
		sendFrame(ref, echoFrame(mac, ip, gwAddr.Addr(), 7, seq))
		if !hasReply(rec, gwAddr.Addr(), 7, seq) {
			t.Fatalf("echo %d: the reply had not reached the switch when the request's Input returned", seq)
		}
	}
}

// echoOutput is an Output standing for a switch that answers the
// gateway's ARP requests and pings it again on each echo reply, within
// Input, as the switch writes its ARP replies back to the gateway. It
// records how many callers were in Input at once and the replies' seqs
// per id.
type echoOutput struct {
	t       *testing.T
	gw      *Gateway
	upTo    uint16 // the last seq to send
	in, max atomic.Int32
	mu      sync.Mutex
	seqs    map[uint16][]uint16
}

var (
	peerMAC = packet.MAC{0x02, 0x42, 10, 0, 1, 9}
	peerIP  = netip.MustParseAddr("10.0.1.9")
)

func (o *echoOutput) Input(bufs [][]byte, sizes []int, offset int) {
	if n := o.in.Add(1); n > o.max.Load() {
		o.max.Store(n)
	}
	defer o.in.Add(-1)
	for i := range bufs {
		frame := bufs[i][offset : offset+sizes[i]]
		eth := packet.Ethernet(frame)
		switch eth.EtherType() {
		case packet.EtherTypeARP:
			a := packet.ARP(eth.Payload())
			if !a.Valid() || a.Op() != packet.ARPRequest || a.TargetIP() != peerIP {
				continue
			}
			a.MakeReply(peerMAC, peerIP)
			eth.SetDst(eth.Src())
			eth.SetSrc(peerMAC)
			o.write(frame)
		case packet.EtherTypeIPv4:
			ip := packet.IPv4(eth.Payload())
			icmp := ip.Payload()
			if ip.Protocol() != packet.ProtoICMP || len(icmp) < 8 || icmp[0] != 0 {
				continue
			}
			id, seq := uint16(icmp[4])<<8|uint16(icmp[5]), uint16(icmp[6])<<8|uint16(icmp[7])
			o.mu.Lock()
			o.seqs[id] = append(o.seqs[id], seq)
			o.mu.Unlock()
			if seq < o.upTo {
				o.write(echoFrame(peerMAC, peerIP, gwAddr.Addr(), id, seq+1))
			}
		}
	}
}

// write hands frame to the gateway as the switch does.
func (o *echoOutput) write(frame []byte) {
	buf := make([]byte, packet.Headroom+len(frame))
	copy(buf[packet.Headroom:], frame)
	if _, err := o.gw.Device().Write([][]byte{buf}, packet.Headroom); err != nil {
		o.t.Error(err)
	}
}

// TestAttachReentrantAndSerial: frames written back to the gateway from
// within Input (ARP replies, and here a new ping for each echo reply)
// are taken, and the stack's answers to them delivered, without a
// deadlock; Input is never called by two goroutines at once, though
// several goroutines make the stack send; each sender's frames arrive in
// order.
func TestAttachReentrantAndSerial(t *testing.T) {
	gw, err := New(Config{Name: "web", Addr: gwAddr, MAC: gwMAC, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	o := &echoOutput{t: t, gw: gw, upTo: 200, seqs: map[uint16][]uint16{}}
	gw.Attach(o)
	const pingers = 8
	var wg sync.WaitGroup
	for id := range uint16(pingers) {
		wg.Go(func() { o.write(echoFrame(peerMAC, peerIP, gwAddr.Addr(), id, 0)) })
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		o.mu.Lock()
		done := 0
		for _, s := range o.seqs {
			if len(s) > 0 && s[len(s)-1] == o.upTo {
				done++
			}
		}
		o.mu.Unlock()
		if done == pingers {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d ping chains completed: %v", done, pingers, o.seqs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if m := o.max.Load(); m != 1 {
		t.Errorf("Input had %d callers at once, want 1", m)
	}
	for id, s := range o.seqs {
		for i, seq := range s {
			if seq != uint16(i) {
				t.Fatalf("id %d: replies %v, want 0..%d in order", id, s, o.upTo)
			}
		}
	}
}

// countOutput counts the frames it is given.
type countOutput struct{ n int }

func (c *countOutput) Input(bufs [][]byte, sizes []int, offset int) { c.n += len(bufs) }

// TestOutputNoAllocs: handing the stack's frames to the attached output
// allocates nothing per frame once the batch exists, alone or queued
// behind a sender in Input.
func TestOutputNoAllocs(t *testing.T) {
	gw, err := New(Config{Name: "web", Addr: gwAddr, MAC: gwMAC, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	c := &countOutput{}
	var o Output = c
	gw.Attach(o)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(make([]byte, 100))})
	defer pkt.DecRef()
	pkts := []*stack.PacketBuffer{pkt, pkt}
	gw.dev.output(o, pkts)
	if n := testing.AllocsPerRun(1000, func() { gw.dev.output(o, pkts) }); n != 0 {
		t.Errorf("output: %v allocations per call, want 0", n)
	}
	// Queued: the lock is held as by a sender inside Input.
	s := &gw.dev.out
	if n := testing.AllocsPerRun(1000, func() {
		s.mu.Lock()
		gw.dev.output(o, pkts)
		s.mu.Unlock()
		gw.dev.output(o, nil)
	}); n != 0 {
		t.Errorf("queued output: %v allocations per call, want 0", n)
	}
	if want := 2 * (1 + 1000 + 1 + 1000 + 1); c.n != want {
		t.Errorf("output got %d frames, want %d", c.n, want)
	}
}

// TestAttachBurstThroughSwitch: with the stack's output attached to a
// real switch, a burst of published connections (the stack's frames sent
// from its processors, from the flows' goroutines and from dialIn) runs
// while several ports ping the gateway, whose replies leave within the
// pinging port's own Input (switch -> stack -> output -> switch, nested)
// and whose ARP requests the switch answers within the gateway port's
// Input (switch -> stack -> output, reentrant). Every connection is
// echoed whole with the client's address, every ping chain completes,
// nothing deadlocks, and the port counts each connection.
func TestAttachBurstThroughSwitch(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	ha := publicAddr(t)
	serveEcho(t, h, 80)
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp"}
	p := h.publish(t, spec)
	const (
		clients  = 8
		conns    = 40 // per client
		pingers  = 4
		pingSeqs = 100
	)
	errs := make(chan error, clients+pingers)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			for j := range conns {
				if err := echoOnce(netip.AddrPortFrom(ha, spec.HostPort), fmt.Sprintf("c%d-%d", i, j)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := range pingers {
		mac, ip := packet.MAC{0x02, 0x42, 10, 0, 2, byte(i + 1)}, netip.AddrFrom4([4]byte{10, 0, 1, byte(100 + i)})
		rec := &netdevtest.Recorder{}
		ref, err := h.sw.AddPort(rec, vswitch.PortConfig{Name: fmt.Sprintf("p%d", i), MAC: mac, IP: ip, Security: true})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			id := uint16(100 + i)
			for seq := range uint16(pingSeqs) {
				deadline := time.Now().Add(10 * time.Second)
				for !hasReply(rec, gwAddr.Addr(), id, seq) {
					if time.Now().After(deadline) {
						errs <- fmt.Errorf("pinger %d: no reply to echo %d", i, seq)
						return
					}
					sendFrame(ref, echoFrame(mac, ip, gwAddr.Addr(), id, seq))
					time.Sleep(time.Millisecond)
				}
				rec.Reset()
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		buf := make([]byte, 1<<20)
		t.Fatalf("burst still running after a minute (a deadlock?):\n%s", buf[:runtime.Stack(buf, true)])
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := p.Stats(); st.Total != clients*conns || st.Failed != 0 {
		t.Errorf("port stats %+v: want %d connections, none failed", st, clients*conns)
	}
}

// echoOnce sends msg to addr's echo server (serveEcho) and checks the
// answer: the client's own address, then msg.
func echoOnce(addr netip.AddrPort, msg string) error {
	c, err := net.DialTimeout("tcp4", addr.String(), 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if want := c.LocalAddr().String() + "\n" + msg; err != nil || string(got) != want {
		return fmt.Errorf("container answered %q (%v), want %q", got, err, want)
	}
	return nil
}
