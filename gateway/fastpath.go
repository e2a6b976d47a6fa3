package gateway

import (
	"errors"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// LocalSockets makes the fast path's TCP sockets in the network
// namespace of a container on this host (sandbox.FastSockets): each is
// non-blocking, may bind a non-local address (IP_TRANSPARENT) and carries
// the mark whose replies the namespace routes back to it on lo.
type LocalSockets interface {
	// Socket returns a new socket, owned by the caller.
	Socket() (fd int, err error)
}

// FastPath says how a published TCP flow reaches dst, its destination in
// the network: nil sockets and a nil error send it through the gateway's
// stack (dst is no container on this host, or the fast path is off); an
// error is a fast path that could not be set up (the flow takes the
// gateway's stack, counted IngressFastFallback).
//
// With sockets, the flow is dialled from inside the container's own
// namespace over its loopback, from the same source address the gateway's
// stack would use (the client's own, or the gateway's address with any
// port), with kernel sockets at both ends: no frame crosses the TAP or the
// gateway's stack.
type FastPath func(dst netip.Addr) (LocalSockets, error)

// PrepareFastSocket sets a fast-path socket's keepalive as a published
// connection's in the gateway's stack (setKeepalive), and TCP_NODELAY (as
// any net.Conn has, and the stack's endpoints: a small write is not held
// back for the previous one's ACK): the daemon's socket maker calls it
// for each socket, off the connection's path.
func (e *Egress) PrepareFastSocket(fd int) error {
	idle := int(e.cfg.IngressKeepalive / time.Second)
	every := max(idle/3, 1)
	for _, o := range [...][3]int{
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, max(idle, 1)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, every},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3},
		{unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(2 * e.cfg.IngressKeepalive / time.Millisecond)},
	} {
		if err := unix.SetsockoptInt(fd, o[0], o[1], o[2]); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	return nil
}

// dialFast dials t's flow from src to dst on p's fast path. handled is
// false when the flow is to take the gateway's stack (no fast path to
// dst, or one that could not be set up: counted); otherwise err says
// whether the connect failed (refused, timed out, aborted).
func (p *Port) dialFast(t *tcpIn, src, dst netip.AddrPort) (c *finConn, handled bool, err error) {
	if p.fast == nil {
		return nil, false, nil
	}
	ns, err := p.fast(dst.Addr())
	if ns == nil && err == nil {
		return nil, false, nil
	}
	fd := -1
	if err == nil {
		fd, err = ns.Socket()
	}
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrInet4{Port: int(src.Port()), Addr: src.Addr().As4()})
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		p.e.ingressFastFallback.Add(1)
		return nil, false, nil
	}
	c, err = t.connectFast(fd, dst)
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		// The client's address and port still name a connection of
		// the namespace's own (TIME-WAIT): the gateway's stack has its
		// own.
		p.e.ingressFastFallback.Add(1)
		return nil, false, nil
	}
	if err == nil {
		p.e.ingressFast.Add(1)
	}
	return c, true, err
}

// connectFast connects fd (bound, non-blocking; connectFast owns it) to
// dst, waiting in the runtime poller up to ingressDialTimeout or until t
// is aborted, and returns it as the flow's container side.
//
// A second connect tells how the first ended in one system call: 0 once
// connected (over the namespace's loopback the handshake is done when
// the first returns), the error if it failed, EALREADY while it is still
// in progress.
func (t *tcpIn) connectFast(fd int, dst netip.AddrPort) (*finConn, error) {
	f := os.NewFile(uintptr(fd), "")
	t.dialing.Store(f)
	defer t.dialing.Store(nil)
	if t.isAborted() {
		f.Close()
		return nil, errDialStopped
	}
	f.SetWriteDeadline(time.Now().Add(ingressDialTimeout))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	var cerr error
	err = rc.Write(func(fd uintptr) bool {
		for {
			switch err := unix.Connect(int(fd), sa); err {
			case nil, unix.EISCONN:
				return true
			case unix.EINPROGRESS, unix.EINTR:
				continue // ask again at once: see above
			case unix.EALREADY:
				return false // wait until writable
			default:
				cerr = err
				return true
			}
		}
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	// The flow's writes have no deadline (an abort after this point
	// resets the connection instead: tcpIn.reset).
	f.SetWriteDeadline(time.Time{})
	return &finConn{f: f, rc: rc}, nil
}

// Picker picks the backend of a published TCP flow from src to dst (a
// service's VIP and port) as the network's balancer would pick it for
// the flow's SYN, and makes it the balancer's connection, counted as
// such: a dial of dst from the gateway's stack afterwards follows the
// pick. It reports false when it picked none (the balancer picks from
// the dial's frames, as without a Picker).
type Picker func(src, dst netip.AddrPort) (Picked, bool)

// Picked is a flow's backend chosen by a Picker. When the flow reaches
// it on the fast path, no frame of it crosses the balancer, so the port
// tells the pick what the frames would have: Connected, Failed, Closed.
// When it takes the gateway's stack, the port tells it nothing.
type Picked interface {
	// Backend is the backend's address and port.
	Backend() netip.AddrPort
	// Connected: the backend accepted the flow.
	Connected()
	// Failed: the backend refused the flow or did not answer; it
	// reports whether the flow moved to another backend (Backend).
	Failed() bool
	// Closed: the flow ended (or was given up while connecting).
	Closed()
}

// dialPicked dials t's flow from src to dst, a VIP, on the fast path to
// the backend p's Picker picks, when that is a container the FastPath
// knows. A backend that refuses it or does not answer is reported
// (Picked.Failed) and the flow goes to the next one the balancer picks,
// by the same rule. handled is false when the flow is to dial dst from
// the gateway's stack (no pick, a source whose port the stack chooses,
// a backend without a fast path: the balancer follows the pick).
func (p *Port) dialPicked(t *tcpIn, src, dst netip.AddrPort) (c *finConn, handled bool, err error) {
	if p.pick == nil || p.fast == nil || src.Port() == 0 {
		return nil, false, nil
	}
	pk, ok := p.pick(src, dst)
	if !ok {
		return nil, false, nil
	}
	for {
		be := pk.Backend()
		twe := p.timeWaitEnder(be.Addr())
		if twe != nil {
			twe.EndTimeWait(be, src)
		}
		c, handled, err = p.dialFast(t, src, be)
		switch {
		case !handled:
			return nil, false, nil
		case err == nil:
			pk.Connected()
			t.picked, t.pickedTW, t.pickedAt = pk, twe, be
			return c, true, nil
		case t.isAborted():
			pk.Closed()
			return nil, true, err
		case !pk.Failed():
			return nil, true, err
		}
	}
}

// TimeWaitEnder is what a LocalSockets may do besides (sandbox.FastSockets
// does): end the namespace's TIME-WAIT socket of the TCP connection from
// local to remote, if there is one, reporting whether it did.
//
// A routing-mesh flow on the fast path reaches its backend with the
// namespace's kernel TCP, whose timestamps and ISNs are the kernel's own;
// the gateways of every host share theirs (tcpsync.go), the kernel cannot
// be made to. When the client uses the same port again through another
// host within the backend's TIME-WAIT (the backend closed first), the
// backend's kernel would drop the new SYN for an older timestamp (PAWS)
// half of the time, in either order (fast path then gateway, or gateway
// then fast path). So the backend's TIME-WAIT socket of a picked flow is
// ended before the fast path's connect and after the flow, as the kernel
// ends one itself when it takes a new SYN for it.
type TimeWaitEnder interface {
	EndTimeWait(local, remote netip.AddrPort) (bool, error)
}

// timeWaitEnder is the TimeWaitEnder of dst's fast path, or nil.
func (p *Port) timeWaitEnder(dst netip.Addr) TimeWaitEnder {
	ns, err := p.fast(dst)
	if err != nil || ns == nil {
		return nil
	}
	te, _ := ns.(TimeWaitEnder)
	return te
}

// endPicked tells t's picked backend that the flow ended and ends the
// backend's TIME-WAIT socket of it (see TimeWaitEnder).
func (t *tcpIn) endPicked(src netip.AddrPort) {
	t.picked.Closed()
	if t.pickedTW != nil {
		t.pickedTW.EndTimeWait(t.pickedAt, src)
	}
}
