package gateway

import (
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// udpIn is one published UDP flow: one outside client's datagrams to the
// container and back.
type udpIn struct {
	in   *gonet.UDPConn
	last atomic.Int64 // unix nanoseconds of the last datagram either way
}

// replyWriter sends a flow's replies to its client from the host socket.
type replyWriter struct {
	pc *net.UDPConn
	to netip.AddrPort
}

func (w replyWriter) Write(b []byte) (int, error) { return w.pc.WriteToUDPAddrPort(b, w.to) }

// serveUDP reads the host socket: each client address is a flow, made on
// its first datagram and ended after UDPIdle without a datagram either
// way.
func (p *Port) serveUDP() {
	defer p.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, client, err := p.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if ok := asNetError(err, &ne); ok && ne.Timeout() {
				continue
			}
			return // closed
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		p.mu.Lock()
		f := p.udp[client]
		p.mu.Unlock()
		if f == nil {
			if f = p.newUDPFlow(client); f == nil {
				continue
			}
		}
		f.last.Store(time.Now().UnixNano())
		if _, err := f.in.Write(buf[:n]); err == nil {
			p.e.ingressBytesIn.Add(uint64(n))
			p.bytesIn.Add(uint64(n))
		}
	}
}

// newUDPFlow dials client's flow into the network; nil if it cannot or
// MaxFlows flows are open (the datagram is dropped).
func (p *Port) newUDPFlow(client netip.AddrPort) *udpIn {
	e := p.e
	if !e.ingressSlot() {
		return nil
	}
	f := p.dialUDPFlow(client)
	if f == nil {
		e.ingressSlotDone()
	}
	return f
}

// dialUDPFlow is newUDPFlow once the flow has its slot, which the flow
// releases when it ends; nil (the slot not released) if it cannot.
func (p *Port) dialUDPFlow(client netip.AddrPort) *udpIn {
	e := p.e
	g, dst, ok := p.target()
	if !ok {
		p.fail()
		return nil
	}
	src, spoofed, ok := p.flowSource(g, client)
	if !ok {
		e.ingressRefused.Add(1)
		p.fail()
		return nil
	}
	laddr, raddr := fullAddr(src), fullAddr(netip.AddrPortFrom(dst, p.spec.Port))
	in, err := gonet.DialUDP(g.stack, &laddr, &raddr, ipv4.ProtocolNumber)
	if err != nil {
		p.fail()
		return nil
	}
	f := &udpIn{in: in}
	f.last.Store(time.Now().UnixNano())
	fl := &flow{close: func() { in.Close() }}
	if !p.track(fl) {
		fl.abort()
		return nil
	}
	if !g.track(fl) {
		p.untrack(fl)
		fl.abort()
		return nil
	}
	p.mu.Lock()
	p.udp[client] = f
	p.mu.Unlock()
	e.ingressStart(&e.ingressUDP, spoofed)
	p.total.Add(1)
	p.active.Add(1)
	go func() {
		defer p.active.Add(-1)
		defer p.untrack(fl)
		defer g.untrack(fl)
		copyDatagrams(replyWriter{p.pc, client}, in, &f.last, e.cfg.UDPIdle, &e.ingressBytesOut, &p.bytesOut)
		p.mu.Lock()
		delete(p.udp, client)
		p.mu.Unlock()
		fl.abort()
		e.ingressUDP.Add(-1)
		e.ingressSlotDone()
	}()
	return f
}
