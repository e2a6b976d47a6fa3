package netstack

import (
	"context"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

// wire copies frames from one device to the other until a Read fails.
func wire(from, to netdev.Device) {
	b := packet.NewBatch(from.BatchSize())
	for {
		n, err := from.Read(b.Bufs, b.Sizes, packet.Headroom)
		if err != nil {
			return
		}
		bufs := b.Bufs[:n]
		for i := range bufs {
			bufs[i] = bufs[i][:packet.Headroom+b.Sizes[i]]
		}
		to.Write(bufs, packet.Headroom)
		for i := range bufs {
			bufs[i] = bufs[i][:cap(bufs[i])]
		}
	}
}

func TestTwoContainersBackToBack(t *testing.T) {
	a, err := New("a", packet.MAC{2, 0, 0, 0, 0, 1}, netip.MustParsePrefix("10.9.0.1/24"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New("b", packet.MAC{2, 0, 0, 0, 0, 2}, netip.MustParsePrefix("10.9.0.2/24"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer a.Close()
	defer b.Close()
	wg.Go(func() { wire(a.Device(), b.Device()) })
	wg.Go(func() { wire(b.Device(), a.Device()) })

	ln, err := b.Listen(7)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c) // echo
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := a.Dial(ctx, netip.MustParseAddrPort("10.9.0.2:7"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("hello over netstack")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("hello over netstack"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello over netstack" {
		t.Fatalf("echo: %q, %v", buf, err)
	}
	if _, err := New("v6", packet.MAC{2, 0, 0, 0, 0, 3}, netip.MustParsePrefix("fd00::1/64")); err == nil {
		t.Error("IPv6 address accepted")
	}
}
