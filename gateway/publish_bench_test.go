package gateway

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkPublishConns: one short connection per iteration through a
// published port to the (netstack) container, which answers 64 bytes and
// closes, as wrk with Connection: close does.
func BenchmarkPublishConns(b *testing.B) {
	t := &testing.T{}
	_ = t
	h := newHarness(&testing.T{}, false, EgressConfig{})
	b.Cleanup(func() { h.ctr.Close(); h.gw.Close() })
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
	var dial, first, rest time.Duration
	for range 300 {
		t0 := time.Now()
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		c.Read(make([]byte, 1))
		t2 := time.Now()
		io.Copy(io.Discard, c)
		t3 := time.Now()
		c.Close()
		dial += t1.Sub(t0)
		first += t2.Sub(t1)
		rest += t3.Sub(t2)
	}
	b.Logf("per conn: dial %v, first byte %v, to EOF %v", dial/300, first/300, rest/300)
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
