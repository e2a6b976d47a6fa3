package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/vxmesh/vxmesh/packet"
)

// copyBuf is the size of a TCP flow's copy buffers once a read filled
// one of copyBufSmall, the size they start with: short connections (a
// request and a response) then allocate 2*copyBufSmall, not 2*copyBuf.
const (
	copyBuf      = 64 << 10
	copyBufSmall = 4 << 10
)

// flow is an open egress flow: abort tears both sides down.
type flow struct {
	once  sync.Once
	close func()
}

func (f *flow) abort() { f.once.Do(f.close) }

// endpointFlow returns the flow an endpoint ID describes: the endpoint's
// remote side is the container, its local side the outside destination.
func endpointFlow(proto uint8, id stack.TransportEndpointID) Flow {
	return Flow{
		Proto: proto,
		Src:   netip.AddrPortFrom(addrOf(id.RemoteAddress), id.RemotePort),
		Dst:   netip.AddrPortFrom(addrOf(id.LocalAddress), id.LocalPort),
	}
}

func addrOf(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

// handleTCP runs in its own goroutine for each new connection (a SYN):
// it admits it, connects outside and only then completes the container's
// handshake, so a refused or failed connect is a reset to the container
// (an unreachable host or network an ICMP error, see tcperr.go).
func (g *Gateway) handleTCP(r *tcp.ForwarderRequest) {
	e := g.cfg.Egress
	f := endpointFlow(packet.ProtoTCP, r.ID())
	syn, haveSYN := g.dev.syns.take(f)
	if e.admit(g, f) != "" {
		r.Complete(true)
		return
	}
	ctx, cancel := context.WithTimeout(g.ctx, e.cfg.DialTimeout)
	ctx, dt := withDialTTL(ctx, syn.ttl)
	out, err := e.cfg.Dial(ctx, "tcp", f.Dst.String())
	cancel()
	expired := dt.finish(err)
	if err != nil {
		e.done(f)
		e.refuse(RefuseConnect)
		// An unreachable host or network is an ICMP error, a refusal a
		// reset, as from a router and the host behind it; so is a TTL
		// that expired on the path (traceroute -T).
		r.Complete(!g.reflectConnectTTL(f, syn, haveSYN, expired) && !g.reflectConnectError(f, syn, haveSYN, err))
		return
	}
	var wq waiter.Queue
	ep, tErr := r.CreateEndpoint(&wq)
	if tErr != nil {
		// The container gave up (its SYN timed out or it reset).
		e.done(f)
		r.Complete(true)
		resetConn(out)
		return
	}
	r.Complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	in := newEPConn(&wq, ep)
	fl := &flow{close: func() { resetEndpoint(ep); resetConn(out) }}
	if !g.track(fl) {
		e.done(f)
		fl.abort()
		in.Close()
		return
	}
	// The slot is released before Close (which waits for untrack) can
	// return.
	defer g.untrack(fl)
	defer e.done(f)
	g.spliceTCP(in, out, fl)
}

// spliceTCP copies both ways (see splice), counting egress bytes.
func (g *Gateway) spliceTCP(in *epConn, out net.Conn, fl *flow) {
	e := g.cfg.Egress
	nOut, nIn := splice(in, out, fl, e.workers)
	e.bytesOut.Add(uint64(nOut))
	e.bytesIn.Add(uint64(nIn))
}

// splice copies in (the network's side) to out and back until both
// directions ended: an EOF is passed on as a half-close (FIN), a read
// error (a reset, a keepalive timeout) as a reset of the other side, a
// write error as a reset of the side written from. It returns the bytes
// copied each way. The copy from in to out runs on one of w's workers;
// both take their buffers from w's.
func splice(in, out io.ReadWriteCloser, fl *flow, w *workers) (nOut, nIn int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	w.Go(func() {
		defer wg.Done()
		n, rerr, werr := copyConn(out, in, w.bufs)
		nOut = n
		if rerr == nil && werr == nil {
			closeWrite(out)
		} else {
			fl.abort()
		}
	})
	n, rerr, werr := copyConn(in, out, w.bufs)
	nIn = n
	if rerr == nil && werr == nil {
		closeWrite(in)
	} else {
		fl.abort()
	}
	wg.Wait()
	in.Close()
	out.Close()
	return nOut, nIn
}

// copyBufs are the copy buffers of the flows that ended, by size
// (copyBufSmall, copyBuf): a flow takes its buffers from them, so a new
// connection allocates (and zeroes) none.
type copyBufs [2]sync.Pool

func newCopyBufs() *copyBufs {
	return &copyBufs{
		{New: func() any { b := make([]byte, copyBufSmall); return &b }},
		{New: func() any { b := make([]byte, copyBuf); return &b }},
	}
}

// copyConn copies src to dst, with a buffer from bufs, until src's EOF
// (rerr and werr nil) or an error, telling a read error from a write
// error. Data that comes with the EOF (epConn.Read) is written with
// writeLast.
func copyConn(dst io.Writer, src io.Reader, bufs *copyBufs) (n int64, rerr, werr error) {
	pool := &bufs[0]
	bp := pool.Get().(*[]byte)
	defer func() { pool.Put(bp) }()
	buf := *bp
	for {
		k, rerr := src.Read(buf)
		if k > 0 {
			var w int
			var err error
			if errors.Is(rerr, io.EOF) {
				w, err = writeLast(dst, buf[:k])
			} else {
				w, err = dst.Write(buf[:k])
			}
			n += int64(w)
			if err != nil {
				return n, nil, err
			}
			if k == len(buf) && pool == &bufs[0] {
				// Bulk data: fewer, larger reads.
				pool.Put(bp)
				pool = &bufs[1]
				bp = pool.Get().(*[]byte)
				buf = *bp
			}
		}
		if errors.Is(rerr, io.EOF) {
			return n, nil, nil
		}
		if rerr != nil {
			return n, rerr, nil
		}
	}
}

func closeWrite(c io.Closer) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// tcpConn is a kernel TCP connection: *net.TCPConn, or finConn.
type tcpConn interface {
	io.Writer
	SyscallConn() (syscall.RawConn, error)
}

// finConn is the container's side of a fast-path connection: the kernel
// socket connectFast connected, read and written as an *os.File in the
// runtime's poller as it is (a net.TCPConn made of it, net.FileConn,
// costs a dup and seven more system calls per connection, for addresses
// and options nothing here uses).
//
// Its Read reports the peer's FIN with the last data (as epConn.Read
// does) when it is already in: a short read of at most finPeekMax bytes
// is followed by a peek that finds the end of the stream. The copy then
// writes that data with the half-close, in one segment (writeLast), and
// needs no further read for the EOF. Longer short reads, the common case
// of a bulk stream, pay no peek: one segment saved at the end of a long
// transfer is not worth a system call per read.
type finConn struct {
	f  *os.File
	rc syscall.RawConn
}

// finPeekMax is the longest short read finConn peeks after: a response
// that fits a few client segments.
const finPeekMax = 4096

func (c *finConn) Read(b []byte) (int, error) {
	n, err := c.f.Read(b)
	if n == 0 || n == len(b) || n > finPeekMax || err != nil {
		return n, err
	}
	eof := false
	c.rc.Read(func(fd uintptr) bool {
		var one [1]byte
		k, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&one[0])), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		eof = k == 0 && e == 0
		return true
	})
	if eof {
		return n, io.EOF
	}
	return n, nil
}

func (c *finConn) Write(b []byte) (int, error) { return c.f.Write(b) }

// SyscallConn returns the socket's raw connection (writeLast).
func (c *finConn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// CloseWrite half-closes the connection (sends the FIN).
func (c *finConn) CloseWrite() error {
	var serr error
	err := c.rc.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) })
	if err != nil {
		return err
	}
	return os.NewSyscallError("shutdown", serr)
}

func (c *finConn) Close() error { return c.f.Close() }

// reset closes the connection with a reset.
func (c *finConn) reset() {
	c.rc.Control(func(fd uintptr) {
		unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
	})
	c.f.Close()
}

// resetConn closes an outside connection with a reset.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// resetEndpoint closes a stack endpoint with a reset.
func resetEndpoint(ep tcpip.Endpoint) {
	ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: true, Timeout: 0})
	ep.Abort()
}

// writeLast writes b to c, the last data before c's half-close: a TCP
// socket holds it (MSG_MORE) for the FIN that closeWrite then sends with
// it, in one segment (Linux's tcp_send_fin puts the FIN on the unsent
// tail). A short response and its end then cost the client one segment,
// not two. Other connections get a plain Write.
func writeLast(w io.Writer, b []byte) (int, error) {
	tc, ok := w.(tcpConn)
	if !ok {
		return w.Write(b)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, err
	}
	n := 0
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			k, err := unix.SendmsgN(int(fd), b[n:], nil, nil, unix.MSG_MORE|unix.MSG_NOSIGNAL)
			if err == unix.EAGAIN {
				return false // wait until writable
			}
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				serr = err
				return true
			}
			n += k
		}
		return true
	})
	if serr != nil {
		oe := &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("sendmsg", serr)}
		if nc, ok := w.(net.Conn); ok {
			oe.Source, oe.Addr = nc.LocalAddr(), nc.RemoteAddr()
		}
		err = oe
	}
	return n, err
}
