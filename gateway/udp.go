package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/vxmesh/vxmesh/packet"
)

// handleUDP is called by the stack for the first datagram of a new flow
// (no endpoint has its addresses yet). Returning false makes the stack
// answer with an ICMP port unreachable. An outside socket that cannot be
// opened (no route, a firewall) is reflected as the matching ICMP
// destination unreachable.
func (g *Gateway) handleUDP(r *udp.ForwarderRequest) bool {
	e := g.cfg.Egress
	f := endpointFlow(packet.ProtoUDP, r.ID())
	if e.admit(g, f) != "" {
		return false
	}
	var wq waiter.Queue
	ep, tErr := r.CreateEndpoint(&wq)
	if tErr != nil {
		e.done(f)
		return false
	}
	ttl := firstTTL(ep)
	in := gonet.NewUDPConn(&wq, ep)
	ctx, cancel := context.WithTimeout(g.ctx, e.cfg.DialTimeout)
	out, err := e.cfg.Dial(ctx, "udp", f.Dst.String())
	cancel()
	if err != nil {
		e.done(f)
		e.refuse(RefuseConnect)
		g.reflectDialError(ep, f, err)
		in.Close()
		return true
	}
	setRecvErr(out)
	setTTL(out, hostTTL(ttl))
	fl := &flow{close: func() { in.Close(); out.Close() }}
	if !g.track(fl) {
		e.done(f)
		fl.abort()
		return true
	}
	go func() {
		defer g.untrack(fl)
		defer e.done(f)
		g.spliceUDP(in, out, f, fl)
	}()
	return true
}

// reflectDialError answers the first datagram of a flow whose outside
// socket could not be opened with the destination unreachable its error
// stands for (a port unreachable if it stands for none).
func (g *Gateway) reflectDialError(ep tcpip.Endpoint, f Flow, err error) {
	code, ok := errnoCode(err)
	if !ok {
		code = codePortUnreachable
	}
	var last lastDatagram
	w := tcpip.SliceWriter(make([]byte, 65535))
	res, rerr := ep.Read(&w, tcpip.ReadOptions{}) // CreateEndpoint queued the datagram
	if rerr != nil {
		return
	}
	last.record(w[:res.Count])
	if q, ok := last.udpQuote(f); ok {
		g.sendUnreachable(g.errorSource(code, f.Dst.Addr(), netip.Addr{}), f, code, 0, q)
	}
}

// spliceUDP copies datagrams both ways until the flow was idle for
// UDPIdle (no datagram either way) or a side failed. ICMP errors the
// outside socket gets are reflected to the container; the flow goes on,
// as a NAT's mapping does.
func (g *Gateway) spliceUDP(in *gonet.UDPConn, out net.Conn, f Flow, fl *flow) {
	e := g.cfg.Egress
	var last atomic.Int64 // unix nanoseconds of the last datagram
	last.Store(time.Now().UnixNano())
	sent := &lastDatagram{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer fl.abort()
		copyDatagramsRecord(out, in, &last, e.cfg.UDPIdle, sent, &e.bytesOut)
	}()
	g.copyReplies(in, out, f, &last, sent, &e.bytesIn)
	fl.abort()
	wg.Wait()
}

// copyDatagramsRecord is copyDatagrams for a container's datagrams to
// the outside, remembering the last one in sent (for reflected errors).
func copyDatagramsRecord(dst io.Writer, src net.Conn, last *atomic.Int64, idle time.Duration, sent *lastDatagram, bytes *atomic.Uint64) {
	buf := make([]byte, 65535)
	for {
		src.SetReadDeadline(time.Unix(0, last.Load()).Add(idle))
		k, err := src.Read(buf)
		if err != nil {
			if timedOut(err) && time.Since(time.Unix(0, last.Load())) < idle {
				continue // the other direction was busy
			}
			return
		}
		last.Store(time.Now().UnixNano())
		sent.record(buf[:k])
		if _, err := dst.Write(buf[:k]); err == nil {
			bytes.Add(uint64(k))
		}
	}
}

// copyReplies copies the outside's datagrams to the container until the
// flow has been idle for UDPIdle or the outside socket fails with
// something other than an ICMP error, which it reflects.
func (g *Gateway) copyReplies(in net.Conn, out net.Conn, f Flow, last *atomic.Int64, sent *lastDatagram, bytes *atomic.Uint64) {
	idle := g.cfg.Egress.cfg.UDPIdle
	buf := make([]byte, 65535)
	var errs [4]extErr
	for {
		out.SetReadDeadline(time.Unix(0, last.Load()).Add(idle))
		k, err := out.Read(buf)
		if err != nil {
			if timedOut(err) && time.Since(time.Unix(0, last.Load())) < idle {
				continue // the other direction was busy
			}
			if g.reflect(out, err, f, sent, errs[:]) {
				continue
			}
			return
		}
		last.Store(time.Now().UnixNano())
		if _, err := in.Write(buf[:k]); err == nil {
			bytes.Add(uint64(k))
		}
	}
}

// reflect sends the container the ICMP errors behind a read error of the
// outside socket (queued with IP_RECVERR, or told by the errno alone); it
// reports false for an error that is not one (the socket was closed).
func (g *Gateway) reflect(out net.Conn, err error, f Flow, sent *lastDatagram, errs []extErr) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return false // closed
	}
	k := readErrQueue(out, errs)
	if k == 0 {
		code, ok := errnoCode(errno)
		if !ok {
			return false // not an ICMP error: the flow ends
		}
		errs[0], k = extErr{typ: uint8(header.ICMPv4DstUnreachable), code: code}, 1
	}
	q, ok := sent.udpQuote(f)
	if !ok {
		return true
	}
	for _, ee := range errs[:k] {
		switch {
		case ee.typ == icmpTimeExceeded:
			// The TTL the flow got from the container's first
			// datagram (less the gateway's hop) expired at the
			// offender: traceroute's next hops.
			if ee.offender.Is4() {
				g.sendICMPError(ee.offender, f.Src.Addr(), icmpTimeExceeded, ee.code, 0, q)
			}
		case ee.code == codeFragNeeded:
			continue // the host's socket fragments; the container's datagram fitted its MTU
		default:
			g.sendUnreachable(g.errorSource(ee.code, f.Dst.Addr(), ee.offender), f, ee.code, 0, q)
		}
	}
	return true
}

func timedOut(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// copyDatagrams copies datagrams from src to dst until src fails or the
// flow has been idle (last, shared by both directions) for idle, adding
// each datagram's size to bytes as it goes (a flow's counters move while
// it is open, not only when it ends after idle).
func copyDatagrams(dst io.Writer, src net.Conn, last *atomic.Int64, idle time.Duration, bytes ...*atomic.Uint64) {
	buf := make([]byte, 65535)
	for {
		src.SetReadDeadline(time.Unix(0, last.Load()).Add(idle))
		k, err := src.Read(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() && time.Since(time.Unix(0, last.Load())) < idle {
				continue // the other direction was busy
			}
			return
		}
		last.Store(time.Now().UnixNano())
		if _, err := dst.Write(buf[:k]); err == nil {
			for _, b := range bytes {
				b.Add(uint64(k))
			}
		}
	}
}
