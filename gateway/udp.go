package gateway

import (
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/vxmesh/vxmesh/packet"
)

// handleUDP is called by the stack for the first datagram of a new flow
// (no endpoint has its addresses yet). Returning false makes the stack
// answer with an ICMP port unreachable.
func (g *Gateway) handleUDP(r *udp.ForwarderRequest) bool {
	e := g.cfg.Egress
	f := endpointFlow(packet.ProtoUDP, r.ID())
	if e.admit(g, f) != "" {
		return false
	}
	ctx, cancel := context.WithTimeout(g.ctx, e.cfg.DialTimeout)
	out, err := e.cfg.Dial(ctx, "udp", f.Dst.String())
	cancel()
	if err != nil {
		e.done(f)
		e.refuse(RefuseConnect)
		return false
	}
	var wq waiter.Queue
	ep, tErr := r.CreateEndpoint(&wq)
	if tErr != nil {
		e.done(f)
		out.Close()
		return false
	}
	in := gonet.NewUDPConn(&wq, ep)
	fl := &flow{close: func() { in.Close(); out.Close() }}
	if !g.track(fl) {
		e.done(f)
		fl.abort()
		return true
	}
	go func() {
		defer g.untrack(fl)
		defer e.done(f)
		g.spliceUDP(in, out, fl)
	}()
	return true
}

// spliceUDP copies datagrams both ways until the flow was idle for
// UDPIdle (no datagram either way) or a side failed.
func (g *Gateway) spliceUDP(in *gonet.UDPConn, out net.Conn, fl *flow) {
	e := g.cfg.Egress
	var last atomic.Int64 // unix nanoseconds of the last datagram
	last.Store(time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer fl.abort()
		n := copyDatagrams(out, in, &last, e.cfg.UDPIdle)
		e.bytesOut.Add(n)
	}()
	n := copyDatagrams(in, out, &last, e.cfg.UDPIdle)
	e.bytesIn.Add(n)
	fl.abort()
	wg.Wait()
}

// copyDatagrams copies datagrams from src to dst until src fails or the
// flow has been idle (last, shared by both directions) for idle.
func copyDatagrams(dst io.Writer, src net.Conn, last *atomic.Int64, idle time.Duration) uint64 {
	buf := make([]byte, 65535)
	var n uint64
	for {
		src.SetReadDeadline(time.Unix(0, last.Load()).Add(idle))
		k, err := src.Read(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < idle {
				continue // the other direction was busy
			}
			return n
		}
		last.Store(time.Now().UnixNano())
		if _, err := dst.Write(buf[:k]); err == nil {
			n += uint64(k)
		}
	}
}
