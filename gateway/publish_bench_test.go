package gateway

import (
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// BenchmarkPublishConns: one short connection per iteration through a
// published port to the (netstack) container, which answers 64 bytes and
// closes, as wrk with Connection: close does. The fake container's stack
// and the harness's goroutines are in the numbers; -benchmem shows the
// gateway's allocations per connection, cpu-ns/op the process's CPU time
// (user + system) per connection.
//
// snat: the client is on loopback, so the flow enters from the gateway's
// address and an ephemeral port (run -p's loopback rule). preserve: the
// client connects to a non-loopback address of this host, so the flow
// enters with the client's own address and port, as the routing mesh's
// client-ip=preserve does for an outside client (skipped without such an
// address).
func BenchmarkPublishConns(b *testing.B) {
	b.Run("snat", func(b *testing.B) {
		benchPublishConns(b, netip.MustParseAddr("127.0.0.1"), ClientIPContainer)
	})
	b.Run("preserve", func(b *testing.B) {
		a, ok := hostIPv4()
		if !ok {
			b.Skip("no non-loopback IPv4 address on this host")
		}
		benchPublishConns(b, a, ClientIPPreserve)
	})
}

// hostIPv4 returns a non-loopback IPv4 address of this host.
func hostIPv4() (netip.Addr, bool) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() && p.Addr().IsGlobalUnicast() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

func benchPublishConns(b *testing.B, host netip.Addr, mode ClientIP) {
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
	p, err := h.eg.Publish(Publish{HostPort: port, Port: 80, Proto: "tcp", ClientIP: mode}, h.target())
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	addr := netip.AddrPortFrom(host, port).String()
	b.ResetTimer()
	cpu0 := cpuTime(b)
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
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime is the process's CPU time so far (user + system).
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
