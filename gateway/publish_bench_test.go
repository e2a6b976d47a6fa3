package gateway

import (
	"io"
	"net"
	"net/netip"
	"testing"
)

// BenchmarkPublishConns: one short connection per iteration through a
// published port to the (netstack) container, which answers 64 bytes and
// closes, as wrk with Connection: close does. The fake container's stack
// and the harness's goroutines are in the numbers; -benchmem shows the
// gateway's allocations per connection.
func BenchmarkPublishConns(b *testing.B) {
	h := newHarness(b, false, EgressConfig{})
	ln, err := h.ctr.Listen(80)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	resp := make([]byte, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.Read(make([]byte, 512))
				c.Write(resp)
				c.Close()
			}()
		}
	}()
	l, _ := net.Listen("tcp4", ":0")
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	p, err := h.eg.Publish(Publish{HostPort: port, Port: 80, Proto: "tcp"}, h.target())
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c, err := net.Dial("tcp4", addr)
			if err != nil {
				b.Error(err)
				return
			}
			c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
			io.Copy(io.Discard, c)
			c.Close()
		}
	})
}
