package lb

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev/netdevtest/netstack"
	"github.com/vxmesh/vxmesh/packet"
)

// fabric is a minimal stand-in for the switch, for tests with real TCP
// stacks (gVisor netstack containers): it answers ARP (VIPs from the
// table's snapshot), runs Translate on the client's frames and
// Untranslate on frames to the client, acts on the verdicts as the switch
// will, and delivers by destination MAC.
type fabric struct {
	tb     *Table
	client packet.MAC
	mu     sync.Mutex
	devs   map[packet.MAC]*netstack.Container
	ips    map[netip.Addr]packet.MAC
}

func (f *fabric) add(c *netstack.Container) {
	f.mu.Lock()
	f.devs[c.MAC()], f.ips[c.Addr()] = c, c.MAC()
	f.mu.Unlock()
	go f.run(c)
}

func (f *fabric) deliver(buf []byte, n int) {
	f.mu.Lock()
	c := f.devs[packet.MAC(buf[packet.Headroom:packet.Headroom+6])]
	f.mu.Unlock()
	if c != nil {
		c.Device().Write([][]byte{buf[:packet.Headroom+n]}, packet.Headroom)
	}
}

func (f *fabric) run(c *netstack.Container) {
	b := packet.NewBatch(16)
	out := make([]byte, packet.BufferSize)
	for {
		n, err := c.Device().Read(b.Bufs, b.Sizes, packet.Headroom)
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		for i := range n {
			f.frame(c, b.Bufs[i], b.Sizes[i], out, now)
		}
	}
}

func (f *fabric) frame(from *netstack.Container, buf []byte, n int, out []byte, now int64) {
	frame := buf[packet.Headroom : packet.Headroom+n]
	if packet.Ethernet(frame).EtherType() == packet.EtherTypeARP {
		f.arp(from, buf, n)
		return
	}
	o := packet.OffloadOf(buf)
	if from.MAC() == f.client {
		switch f.tb.Translate(frame, o, now) {
		case Reject:
			packet.ClearOffload(out)
			if m := WriteReject(out[packet.Headroom:], frame); m > 0 {
				f.deliver(out, m)
			}
			return
		case Drop:
			return
		}
		f.deliver(buf, n)
		return
	}
	if packet.Ethernet(frame).Dst() == f.client {
		switch f.tb.Untranslate(frame, o, now) {
		case Retry:
			packet.ClearOffload(out)
			if m := f.tb.WriteRetry(out[packet.Headroom:], frame, now); m > 0 {
				f.deliver(out, m)
			}
			return
		case Drop:
			return
		}
	}
	f.deliver(buf, n)
}

func (f *fabric) arp(from *netstack.Container, buf []byte, n int) {
	frame := packet.Ethernet(buf[packet.Headroom : packet.Headroom+n])
	a := packet.ARP(frame.Payload())
	if !a.Valid() || a.Op() != packet.ARPRequest {
		return
	}
	mac, ok := f.tb.Snapshot().VIP(a.TargetIP())
	if !ok {
		f.mu.Lock()
		mac, ok = f.ips[a.TargetIP()]
		f.mu.Unlock()
	}
	if !ok {
		return
	}
	a.MakeReply(mac, a.TargetIP())
	frame.SetDst(frame.Src())
	frame.SetSrc(mac)
	from.Device().Write([][]byte{buf[:packet.Headroom+n]}, packet.Headroom)
}

func container(t *testing.T, name string, mac packet.MAC, ip netip.Addr) *netstack.Container {
	c, err := netstack.New(name, mac, netip.PrefixFrom(ip, 16))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// serve echoes on port 80 and reports each connection's remote address.
func serve(t *testing.T, c *netstack.Container, seen chan<- netip.Addr) {
	ln, err := c.Listen(80)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			seen <- conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			go func() { io.Copy(conn, conn); conn.Close() }()
		}
	}()
}

// Real TCP stacks through the balancer: connections to the VIP reach the
// backends round robin, backends see the client's own address, data
// flows both ways, and a backend that refuses (no listener: RST) is
// hidden from the client: every connect succeeds at once, through the
// re-sent SYN, and the refusing backend gets ejected.
func TestRealTCPThroughVIP(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 3)
	f := &fabric{tb: tb, client: clientMAC, devs: map[packet.MAC]*netstack.Container{}, ips: map[netip.Addr]packet.MAC{}}
	client := container(t, "client", clientMAC, clientIP)
	f.add(client)
	seen := make(chan netip.Addr, 100)
	for i := 1; i <= 3; i++ {
		b := container(t, "b", beMAC(i), beIP(i))
		if i != 3 { // beIP(3) has no listener: it answers SYNs with RST
			serve(t, b, seen)
		}
		f.add(b)
	}
	count := map[netip.Addr]int{}
	for i := range 12 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		conn, err := client.Dial(ctx, netip.AddrPortFrom(vip, 80))
		cancel()
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if d := time.Since(start); d > 900*time.Millisecond { // the client would retransmit at 1s
			t.Errorf("connection %d took %v: the refused SYN was not re-sent at once", i, d)
		}
		msg := []byte("hello through the VIP")
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, got); err != nil || string(got) != string(msg) {
			t.Fatalf("echo: %q, %v", got, err)
		}
		if ra := conn.RemoteAddr().(*net.TCPAddr).AddrPort(); ra.Addr().Unmap() != vip || ra.Port() != 80 {
			t.Fatalf("client sees its peer as %v, want the VIP", ra)
		}
		conn.Close()
		if src := <-seen; src != clientIP {
			t.Fatalf("backend saw %v, want the client's own address %v", src, clientIP)
		}
	}
	for _, s := range tb.Stats(time.Now().UnixNano())[0].Backends {
		count[s.IP] = int(s.Failures)
	}
	st := tb.Stats(time.Now().UnixNano())[0]
	if st.Retries == 0 || count[beIP(3)] < EjectAfter || st.Backends[2].Ejections != 1 {
		t.Fatalf("refusing backend: %+v, service retries %d", st.Backends[2], st.Retries)
	}
}
