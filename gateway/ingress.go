package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ingressDialTimeout bounds a published connection's connect into the
// network.
const ingressDialTimeout = 10 * time.Second

// Target says where a published port's flows go now: the gateway of the
// container's network on this host and the container's address. ok is
// false while there is none (the network's gateway is being rebuilt):
// the flow is then refused.
type Target func() (g *Gateway, dst netip.Addr, ok bool)

// Port is one published port: a listener in the daemon's namespace whose
// flows are dialled into the network from the gateway's stack, with the
// outside client's own address as the source when it can be (see
// ingressSource).
type Port struct {
	spec   Publish
	e      *Egress
	target Target
	fast   FastPath // nil: none
	pick   Picker   // nil: none
	ln     net.Listener
	pc     *net.UDPConn

	mu     sync.Mutex
	closed bool
	flows  map[*flow]struct{}
	udp    map[netip.AddrPort]*udpIn
	wg     sync.WaitGroup

	active            atomic.Int64
	total, failed     atomic.Uint64
	bytesIn, bytesOut atomic.Uint64

	// nat is the NAT steering p's connections (SteerNAT), nil if none;
	// natVIP the VIP its flows went to last.
	nat    atomic.Pointer[NAT]
	natVIP atomic.Pointer[[4]byte]
}

// PortStats are one published port's counters: open flows, flows
// accepted, flows refused or failed, and bytes towards the network (in)
// and the clients (out; TCP bytes are added when a connection ends).
type PortStats struct {
	Active   int64
	Total    uint64
	Failed   uint64
	BytesIn  uint64
	BytesOut uint64
}

// Stats returns p's counters.
func (p *Port) Stats() PortStats {
	return PortStats{Active: p.active.Load(), Total: p.total.Load(), Failed: p.failed.Load(),
		BytesIn: p.bytesIn.Load(), BytesOut: p.bytesOut.Load()}
}

// fail counts a refused or failed flow.
func (p *Port) fail() {
	p.e.ingressFailed.Add(1)
	p.failed.Add(1)
}

// Publish listens on the host for spec and forwards to target. A port
// already in use is an error naming it, and nothing is left open.
func (e *Egress) Publish(spec Publish, target Target) (*Port, error) {
	return e.PublishFast(spec, target, nil)
}

// PublishFast is Publish whose TCP flows take fast (if not nil) to the
// destinations it knows (see FastPath); UDP flows take the gateway's
// stack.
func (e *Egress) PublishFast(spec Publish, target Target, fast FastPath) (*Port, error) {
	return e.PublishMesh(spec, target, fast, nil)
}

// PublishMesh is PublishFast whose TCP flows to a service's VIP have
// their backend picked before the dial by pick (if not nil, see Picker),
// so that one whose backend is a container fast knows takes the fast
// path to it.
func (e *Egress) PublishMesh(spec Publish, target Target, fast FastPath, pick Picker) (*Port, error) {
	p := &Port{spec: spec, e: e, target: target, fast: fast, pick: pick, flows: map[*flow]struct{}{}, udp: map[netip.AddrPort]*udpIn{}}
	var err error
	if spec.Proto == "udp" {
		var a *net.UDPAddr
		if a, err = net.ResolveUDPAddr("udp4", spec.hostAddr()); err == nil {
			p.pc, err = net.ListenUDP("udp4", a)
		}
	} else {
		p.ln, err = listenPublished(spec.hostAddr())
	}
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("publish %s: host port %s is already in use", spec, spec.hostAddr())
		}
		return nil, fmt.Errorf("publish %s: %w", spec, err)
	}
	p.wg.Add(1)
	if p.pc != nil {
		go p.serveUDP()
	} else {
		go p.acceptTCP()
	}
	return p, nil
}

// Spec returns what p publishes.
func (p *Port) Spec() Publish { return p.spec }

// SteerNAT has p's TCP connections that reach this host's uplinks
// translated per packet by the egress's NAT (see NAT) instead of
// accepted by the listener, which stays for everything not steered.
// Only a client-ip=preserve TCP port whose target is a service VIP
// (mode=ingress) may be steered.
func (p *Port) SteerNAT() error {
	n := p.e.NAT()
	switch {
	case n == nil:
		return fmt.Errorf("publish %s: no NAT", p.spec)
	case p.spec.Proto != "tcp" || p.spec.ClientIP != ClientIPPreserve:
		return fmt.Errorf("publish %s: only client-ip=preserve TCP ports are translated per packet", p.spec)
	}
	if !p.nat.CompareAndSwap(nil, n) {
		return nil
	}
	return n.steer(p)
}

// Steered reports whether p's connections are steered to the NAT.
func (p *Port) Steered() bool { return p.nat.Load() != nil }

// Close stops listening and aborts p's open flows.
func (p *Port) Close() {
	if n := p.nat.Swap(nil); n != nil {
		n.unsteer(p)
	}
	p.mu.Lock()
	p.closed = true
	for f := range p.flows {
		f.abort()
	}
	p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
	} else {
		p.pc.Close()
	}
	p.wg.Wait()
}

// track registers f for Close; false once p is closing.
func (p *Port) track(f *flow) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.flows[f] = struct{}{}
	p.wg.Add(1)
	return true
}

func (p *Port) untrack(f *flow) {
	p.mu.Lock()
	delete(p.flows, f)
	p.mu.Unlock()
	p.wg.Done()
}

// ingressSource is the source address a flow from client enters network
// g with: the client's own address and port, unless that address could
// be confused with one inside the overlay (an address of any overlay
// subnet, which a container could hold, or the gateway's) or is not a
// routable unicast one (loopback: a client on the host itself). Those
// flows come from the gateway's address instead (port 0: any free port),
// as with Docker's SNAT.
func (e *Egress) ingressSource(g *Gateway, client netip.AddrPort) (netip.AddrPort, bool) {
	a := client.Addr().Unmap()
	ok := a.Is4() && !a.IsLoopback() && !a.IsUnspecified() && !a.IsMulticast() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255}) && a.As4()[0] != 0 &&
		!g.cfg.Addr.Masked().Contains(a) && client.Port() != 0
	if ok {
		for _, o := range *e.overlay.Load() {
			if o.Contains(a) {
				ok = false
				break
			}
		}
	}
	if !ok {
		return netip.AddrPortFrom(g.Addr(), 0), false
	}
	return netip.AddrPortFrom(a, client.Port()), true
}

func fullAddr(a netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(a.Addr().As4()), Port: a.Port()}
}

// dialIn opens a TCP connection from src (any address: the NIC may
// spoof) to dst inside the network, with keepalive; it gives up when
// stop is closed, timeout fires (either may be nil) or the gateway
// closes. opts, if not nil, sets the endpoint's options before it
// connects.
func (g *Gateway) dialIn(src, dst netip.AddrPort, stop <-chan struct{}, timeout <-chan time.Time, opts func(tcpip.Endpoint)) (*epConn, error) {
	var wq waiter.Queue
	ep, tErr := g.stack.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if tErr != nil {
		return nil, errors.New(tErr.String())
	}
	// The connection's own waiter entries: its writable one tells the
	// connect's end.
	c := newEPConn(&wq, ep)
	// A client port used again while the gateway's side of its previous
	// connection lingers in TIME-WAIT (bound to the same client address
	// and port, to any destination) must still bind, as the client's own
	// kernel let it connect.
	ep.SocketOptions().SetReuseAddress(true)
	if opts != nil {
		opts(ep)
	}
	if tErr := ep.Bind(fullAddr(src)); tErr != nil {
		c.Close()
		return nil, fmt.Errorf("bind %s: %s", src, tErr)
	}
	g.endTimeWait(src, dst)
	tErr = ep.Connect(fullAddr(dst))
	if _, ok := tErr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-c.writable:
		case <-stop:
			return nil, c.abortDial()
		case <-timeout:
			return nil, c.abortDial()
		case <-g.ctx.Done():
			return nil, c.abortDial()
		}
		tErr = ep.LastError()
	}
	if tErr != nil {
		c.Close()
		return nil, fmt.Errorf("connect %s: %s", dst, tErr)
	}
	// Keepalive once connected: its timer starts once, with the options
	// opts set.
	ep.SocketOptions().SetKeepAlive(true)
	return c, nil
}

// errDialStopped is a connect into the network given up.
var errDialStopped = errors.New("connect given up")

// abortDial resets and closes a connection whose connect is given up.
func (c *epConn) abortDial() error {
	resetEndpoint(c.ep)
	c.Close()
	return errDialStopped
}

// newDialTimers returns a pool of stopped timers: the connect timeouts
// of published connections (Egress.dialTimers), reused, so a connection
// allocates none.
func newDialTimers() *sync.Pool {
	return &sync.Pool{New: func() any {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return t
	}}
}

// setKeepalive sets the keepalive of a published connection's endpoint
// in the network (EgressConfig.IngressKeepalive), before it connects
// (dialIn turns keepalive on once connected).
func (e *Egress) setKeepalive(ep tcpip.Endpoint) {
	idle := tcpip.KeepaliveIdleOption(e.cfg.IngressKeepalive)
	every := tcpip.KeepaliveIntervalOption(e.cfg.IngressKeepalive / 3)
	ep.SetSockOpt(&idle)
	ep.SetSockOpt(&every)
	ep.SetSockOptInt(tcpip.KeepaliveCountOption, 3)
	// Data (a FIN) unacknowledged for twice as long ends it too, as
	// Linux's TCP_USER_TIMEOUT does: keepalive only probes an idle
	// connection.
	user := tcpip.TCPUserTimeoutOption(2 * e.cfg.IngressKeepalive)
	ep.SetSockOpt(&user)
}

// endTimeWait ends the stack's connection from src to dst if it lingers
// in TIME-WAIT, so that a new one with the same addresses and ports can
// be made (the client's kernel allowed it; Linux takes a new SYN for a
// TIME-WAIT connection too).
func (g *Gateway) endTimeWait(src, dst netip.AddrPort) {
	id := stack.TransportEndpointID{
		LocalAddress: tcpip.AddrFrom4(src.Addr().As4()), LocalPort: src.Port(),
		RemoteAddress: tcpip.AddrFrom4(dst.Addr().As4()), RemotePort: dst.Port(),
	}
	if src.Port() == 0 {
		return
	}
	if old, ok := g.stack.FindTransportEndpoint(ipv4.ProtocolNumber, tcp.ProtocolNumber, id, nicID).(*tcp.Endpoint); ok &&
		tcp.EndpointState(old.State()) == tcp.StateTimeWait {
		old.Abort()
	}
}

func (p *Port) acceptTCP() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			var ne net.Error
			if asNetError(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		tf := &tcpIn{c: c, aborted: make(chan struct{})}
		tf.fl.close = tf.reset
		if !p.track(&tf.fl) {
			tf.fl.abort()
			return
		}
		p.e.workers.Go(func() {
			defer p.untrack(&tf.fl)
			p.serveTCP(tf, &tf.fl)
		})
	}
}

// tcpIn is a published TCP connection: the client's and, once dialled,
// the network's side (an endpoint of the gateway's stack, or on the fast
// path a kernel socket in the container's namespace: out, dialing while
// it connects).
type tcpIn struct {
	c       net.Conn
	fl      flow // its flow, whose close is reset
	ep      atomic.Pointer[tcpip.Endpoint]
	out     atomic.Pointer[finConn]
	dialing atomic.Pointer[os.File]
	// picked is the flow's backend picked before the dial (Picker),
	// when the flow took the fast path to it: told when the flow ends.
	picked Picked
	// pickedTW and pickedAt end the picked backend's TIME-WAIT socket
	// of the flow after it (TimeWaitEnder; nil: none).
	pickedTW TimeWaitEnder
	pickedAt netip.AddrPort
	// aborted is closed when the flow is aborted: a connect into the
	// network in progress gives up at once (Port.Close does not wait
	// for it).
	aborted chan struct{}
}

// isAborted reports whether the flow was aborted.
func (t *tcpIn) isAborted() bool {
	select {
	case <-t.aborted:
		return true
	default:
		return false
	}
}

// reset resets both sides (flow.abort calls it once).
func (t *tcpIn) reset() {
	close(t.aborted)
	resetConn(t.c)
	if ep := t.ep.Load(); ep != nil {
		resetEndpoint(*ep)
	}
	if f := t.dialing.Load(); f != nil {
		f.SetWriteDeadline(time.Unix(1, 0)) // ends the connect
	}
	if c := t.out.Load(); c != nil {
		c.reset()
	}
}

// serveTCP forwards one accepted connection into the network; a failed
// connect, or MaxFlows flows open, resets the client.
func (p *Port) serveTCP(t *tcpIn, fl *flow) {
	e := p.e
	if !e.ingressSlot() {
		fl.abort()
		return
	}
	defer e.ingressSlotDone()
	g, dst, ok := p.target()
	if !ok {
		p.fail()
		fl.abort()
		return
	}
	client := t.c.RemoteAddr().(*net.TCPAddr).AddrPort()
	src, spoofed, ok := p.flowSource(g, client)
	if !ok {
		e.ingressRefused.Add(1)
		p.fail()
		fl.abort()
		return
	}
	in, err := p.dial(g, t, src, netip.AddrPortFrom(dst, p.spec.Port))
	if err != nil {
		p.fail()
		fl.abort()
		return
	}
	if t.picked != nil {
		defer t.endPicked(src)
	}
	if p.spec.ClientIP == ClientIPProxyV2 {
		local := t.c.LocalAddr().(*net.TCPAddr).AddrPort()
		if _, err := in.Write(AppendProxyV2(make([]byte, 0, 28), client, local)); err != nil {
			p.fail()
			fl.abort()
			in.Close()
			return
		}
	}
	// The gateway's Close aborts the flow too.
	if !g.track(fl) {
		fl.abort()
		in.Close()
		return
	}
	defer g.untrack(fl)
	e.ingressStart(&e.ingressTCP, spoofed)
	p.total.Add(1)
	p.active.Add(1)
	defer p.active.Add(-1)
	defer e.ingressTCP.Add(-1)
	toClient, toCtr := splice(in, t.c, fl, e.workers)
	e.ingressBytesIn.Add(uint64(toCtr))
	e.ingressBytesOut.Add(uint64(toClient))
	p.bytesIn.Add(uint64(toCtr))
	p.bytesOut.Add(uint64(toClient))
}

// dial connects t's flow from src to dst, on the fast path if p has one
// to dst (or, with a Picker, to the backend it picks for dst), else from
// g's stack. A flow aborted meanwhile is an error, its network side
// reset.
func (p *Port) dial(g *Gateway, t *tcpIn, src, dst netip.AddrPort) (io.ReadWriteCloser, error) {
	out, handled, err := p.dialPicked(t, src, dst)
	if !handled {
		out, handled, err = p.dialFast(t, src, dst)
	}
	if handled {
		if err != nil {
			return nil, err
		}
		t.out.Store(out)
		if t.isAborted() {
			// Aborted while dialling: reset never saw the socket.
			out.reset()
			if t.picked != nil {
				t.picked.Closed()
				t.picked = nil
			}
			return nil, errDialStopped
		}
		return out, nil
	}
	e := p.e
	timer := e.dialTimers.Get().(*time.Timer)
	timer.Reset(ingressDialTimeout)
	in, err := g.dialIn(src, dst, t.aborted, timer.C, e.setKeepalive)
	timer.Stop()
	e.dialTimers.Put(timer)
	if err != nil {
		return nil, err
	}
	t.ep.Store(&in.ep)
	if t.isAborted() {
		// Aborted while dialling: reset never saw the endpoint.
		return nil, in.abortDial()
	}
	return in, nil
}

// Keepalive of published connections' client sockets: Go's defaults for
// an accepted connection.
const (
	hostKeepIdle  = 15 // seconds
	hostKeepIntvl = 15 // seconds
	hostKeepCnt   = 9
)

// listenPublished listens on addr for a published port. Its accepted
// connections have TCP keepalive on (hostKeepIdle, hostKeepIntvl,
// hostKeepCnt), as Go gives any accepted connection, but set once on the
// listening socket, whose options Linux copies to each connection it
// accepts: accepting costs no setsockopt for them (four per connection
// when Go sets them).
func listenPublished(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range [...][3]int{
				{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
				{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, hostKeepIdle},
				{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, hostKeepIntvl},
				{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, hostKeepCnt},
			} {
				if serr == nil {
					serr = os.NewSyscallError("setsockopt", syscall.SetsockoptInt(int(fd), o[0], o[1], o[2]))
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return lc.Listen(context.Background(), "tcp4", addr)
}

func asNetError(err error, ne *net.Error) bool { return errors.As(err, ne) }
