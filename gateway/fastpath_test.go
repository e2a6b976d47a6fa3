package gateway

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vxmesh/vxmesh/sandbox"
)

// fastCtr is a container's namespace for the fast path's tests: ctrAddr
// on a veth whose peer is in it too (nothing answers there), lo up, the
// fast path enabled, its socket maker started. The namespace's
// listeners are kernel sockets.
type fastCtr struct {
	ns      string
	sockets *sandbox.FastSockets
}

func newFastCtr(t testing.TB, eg *Egress) *fastCtr {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	name := "vxgwfp" + strings.ReplaceAll(t.Name(), "/", "")
	if len(name) > 40 {
		name = name[:40]
	}
	sandbox.DeleteNamedNetns(name)
	path, err := sandbox.CreateNamedNetns(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sandbox.DeleteNamedNetns(name) })
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"lo", "eth0", "eth0p"} {
		l, err := h.LinkByName(n)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			t.Fatal(n, err)
		}
	}
	l, _ := h.LinkByName("eth0")
	a, _ := netlink.ParseAddr(ctrAddr.String())
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := sandbox.EnableFastPath(path); err != nil {
		t.Fatal(err)
	}
	fs, err := sandbox.NewFastSockets(path, eg.PrepareFastSocket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fs.Close)
	return &fastCtr{ns: path, sockets: fs}
}

// path is a FastPath to the harness's container address.
func (f *fastCtr) path() FastPath {
	return func(dst netip.Addr) (LocalSockets, error) {
		if dst != ctrAddr.Addr() {
			return nil, nil
		}
		return f.sockets, nil
	}
}

// listen opens a kernel listener on ctrAddr:port in the namespace.
func (f *fastCtr) listen(t testing.TB, port uint16) net.Listener {
	t.Helper()
	var ln net.Listener
	err := sandbox.RunInNetns(f.ns, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(ctrAddr.Addr(), port).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestPublishFastPath: with a fast path to the container, a published
// connection reaches the container's kernel socket with the client's own
// address and port, the client's half-close and data reach it and the
// reply comes back; a loopback client enters from the gateway's address;
// the flows are counted on the fast path, none on the gateway's stack.
func TestPublishFastPath(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	f := newFastCtr(t, h.eg)
	ha := publicAddr(t)
	acceptEach(f.listen(t, 80), func(c net.Conn) { go echoPeer(c) })
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp"}
	p, err := h.eg.PublishFast(spec, h.target(), f.path())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	checkEcho(t, netip.AddrPortFrom(ha, spec.HostPort), "hello")

	dialLoopbackSeesGateway(t, spec.HostPort).Close()
	poll(t, "both flows ended", func() bool { return h.eg.Stats().IngressTCP == 0 })
	st := h.eg.Stats()
	if st.IngressFast != 2 || st.IngressFastFallback != 0 || st.IngressTotal != 2 || st.IngressBytesIn != 5 {
		t.Fatalf("stats %+v: want 2 flows, both on the fast path, 5 bytes in", st)
	}
}

// TestPublishFastPathResets: on the fast path, a port nothing listens on
// resets the client (counted failed); the container's reset reaches the
// client as a reset, and the client's reset reaches the container.
func TestPublishFastPathResets(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	f := newFastCtr(t, h.eg)
	ha := publicAddr(t)
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 81, Proto: "tcp"}
	p, err := h.eg.PublishFast(spec, h.target(), f.path())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	addr := netip.AddrPortFrom(ha, spec.HostPort).String()
	if err := readErr(addr); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a published port with no server: %v, want a reset", err)
	}
	poll(t, "the failure counted", func() bool { return h.eg.Stats().IngressFailed == 1 })

	accepted := make(chan net.Conn, 1)
	acceptEach(f.listen(t, 81), func(c net.Conn) { accepted <- c })
	// The container resets.
	go func() {
		c := <-accepted
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	if err := readErr(addr); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the container reset: the client got %v, want a reset", err)
	}
	// The client resets.
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	var s net.Conn
	select {
	case s = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection reached the container")
	}
	defer s.Close()
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client reset: the container got %v, want a reset", err)
	}
}

// readErr connects to addr and reads until an error.
func readErr(addr string) error {
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	return err
}

// failingSockets is a fast path that cannot be set up.
type failingSockets struct{}

func (failingSockets) Socket() (int, error) { return -1, errors.New("netns gone") }

// TestPublishFastPathFallsBack: a flow whose fast path cannot be set up
// (no socket in the namespace) takes the gateway's stack and is counted.
func TestPublishFastPathFallsBack(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	ha := publicAddr(t)
	serveEcho(t, h, 80)
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp"}
	fast := func(netip.Addr) (LocalSockets, error) { return failingSockets{}, nil }
	p, err := h.eg.PublishFast(spec, h.target(), fast)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	checkEcho(t, netip.AddrPortFrom(ha, spec.HostPort), "")
	if st := h.eg.Stats(); st.IngressFastFallback != 1 || st.IngressFast != 0 {
		t.Fatalf("stats %+v: want 1 flow fallen back, none on the fast path", st)
	}
}

// BenchmarkPublishFastConns: short connections (the server writes 64
// bytes and closes) through a published port on the fast path, one at a
// time; with -cpuprofile, where the daemon's share goes.
func BenchmarkPublishFastConns(b *testing.B) {
	h := newHarness(b, false, EgressConfig{})
	f := newFastCtr(b, h.eg)
	msg := make([]byte, 64)
	acceptEach(f.listen(b, 80), func(c net.Conn) {
		c.Write(msg)
		c.Close()
	})
	port := freePort(b, "tcp")
	p, err := h.eg.PublishFast(Publish{HostPort: port, Port: 80, Proto: "tcp"}, h.target(), f.path())
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	addr := netip.AddrPortFrom(publicAddr(b), port).String()
	buf := make([]byte, 128)
	for b.Loop() {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.ReadFull(c, buf[:64])
		c.Close()
		if n != 64 {
			b.Fatalf("read %d bytes, want 64", n)
		}
	}
}

// TestPublishFastPathLastDataWithFIN: on the fast path, a container's
// last data and FIN, in together, reach the client in one segment (the
// copy learns of the FIN with the data and half-closes with it).
func TestPublishFastPathLastDataWithFIN(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	f := newFastCtr(t, h.eg)
	ha := publicAddr(t)
	msg := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	// The container answers once the client has read its count of
	// segments (answer, below): before that, the answer could already be
	// in and go uncounted.
	answer := make(chan struct{})
	acceptEach(f.listen(t, 80), func(c net.Conn) {
		<-answer
		// Data and FIN in one segment: both are in when the copy reads.
		writeLast(c, msg)
		c.(*net.TCPConn).CloseWrite()
		c.Close()
	})
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp"}
	p, err := h.eg.PublishFast(spec, h.target(), f.path())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for range 3 {
		c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(netip.AddrPortFrom(ha, spec.HostPort)))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		before := segsIn(t, c)
		answer <- struct{}{}
		got, err := io.ReadAll(c)
		segs := segsIn(t, c) - before
		c.Close()
		if err != nil || string(got) != string(msg) {
			t.Fatalf("client read %q, %v; want %q", got, err, msg)
		}
		if segs != 1 {
			t.Errorf("the client took %d segments for the answer and its end, want 1 (data with FIN)", segs)
		}
	}
}

// TestPublishFastPathConnectInProgressAborted: a fast-path connect the
// container does not answer (its listener's queue is full: the SYN is
// dropped) waits, and closing the port gives it up at once, resetting
// the client; the connection already in the queue is reset too.
func TestPublishFastPathConnectInProgressAborted(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	f := newFastCtr(t, h.eg)
	ha := publicAddr(t)
	// A listener with a backlog of 0 holds one connection it does not
	// accept; the next SYN is dropped.
	err := sandbox.RunInNetns(f.ns, func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		t.Cleanup(func() { syscall.Close(fd) })
		if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: 82, Addr: ctrAddr.Addr().As4()}); err != nil {
			return err
		}
		return syscall.Listen(fd, 0)
	})
	if err != nil {
		t.Fatal(err)
	}
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 82, Proto: "tcp"}
	p, err := h.eg.PublishFast(spec, h.target(), f.path())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	addr := netip.AddrPortFrom(ha, spec.HostPort).String()
	var clients []net.Conn
	for range 2 {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
		if len(clients) == 1 {
			poll(t, "the first connection queued in the container", func() bool { return h.eg.Stats().IngressFast == 1 })
		}
	}
	// The second is still connecting: no flow opened for it, no answer.
	clients[1].SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := clients[1].Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the unanswered connection read %v, want nothing yet", err)
	}
	if st := h.eg.Stats(); st.IngressFast != 1 || st.IngressTCP != 1 || st.IngressFailed != 0 {
		t.Fatalf("stats %+v: want 1 flow open on the fast path, the other still connecting", st)
	}
	start := time.Now()
	p.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v with a connect in progress", d)
	}
	for i, c := range clients {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client %d after Close: %v, want a reset", i, err)
		}
	}
}

// TestFastSocketOptions: a fast-path socket, as the daemon's maker hands
// it out, has the options of a published connection's network side:
// TCP_NODELAY (as every net.Conn, and the gateway's endpoints: a small
// write is not held back for the previous one's ACK) and keepalive.
func TestFastSocketOptions(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	f := newFastCtr(t, h.eg)
	fd, err := f.sockets.Socket()
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	for _, o := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"TCP_NODELAY", syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
		{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(h.eg.cfg.IngressKeepalive / time.Second)},
	} {
		if got, err := syscall.GetsockoptInt(fd, o.level, o.opt); err != nil || got != o.want {
			t.Errorf("%s: %d, %v; want %d", o.name, got, err, o.want)
		}
	}
}
