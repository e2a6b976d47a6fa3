//go:build linux

package sandbox

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// loopbackNetns is a new namespace with lo up.
func loopbackNetns(t testing.TB) string {
	t.Helper()
	_, path := newNamedNetns(t)
	h := handle(t, path)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return path
}

// listenIn opens a TCP listener on addr inside the namespace.
func listenIn(t testing.TB, nsPath, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := RunInNetns(nsPath, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// acceptFrom accepts len(clients) connections on ln and fails the test
// unless they come from exactly those client addresses (within 5 s).
func acceptFrom(t *testing.T, ln *net.TCPListener, clients ...net.Addr) {
	t.Helper()
	want := map[string]bool{}
	for _, c := range clients {
		want[c.String()] = true
	}
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	for range clients {
		c, err := ln.Accept()
		if err != nil {
			t.Fatalf("listener %s: missing connections from %v: %v", ln.Addr(), want, err)
		}
		from := c.RemoteAddr().String()
		c.Close()
		if !want[from] {
			t.Fatalf("listener %s: connection from %s, not one of the dials", ln.Addr(), from)
		}
		delete(want, from)
	}
}

// threadsOutside lists this process's threads whose network namespace is
// not the one at nsPath.
func threadsOutside(t *testing.T, nsPath string) []string {
	t.Helper()
	want, err := os.Readlink(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := filepath.Glob("/proc/self/task/*/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range tasks {
		if got, err := os.Readlink(p); err == nil && got != want {
			out = append(out, p+" -> "+got)
		}
	}
	return out
}

// osThreads is the process's current thread count.
func osThreads(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

// TestDialInNetnsLandsInNamespace: the connection reaches a listener that
// exists only inside the namespace (the same address and port are free in
// the test's own namespace, where a plain dial reaches another listener),
// and no thread is left in the container's namespace afterwards.
func TestDialInNetnsLandsInNamespace(t *testing.T) {
	requireRoot(t)
	ns := loopbackNetns(t)
	// Two listeners on one address and port: they can only be in
	// different namespaces.
	outside, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	addr := outside.Addr().String()
	inside := listenIn(t, ns, addr)

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	conns := make(chan net.Conn, 16)
	for range 16 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := DialInNetns(ctx, ns, "tcp4", addr)
			if err != nil {
				errs <- err
				return
			}
			conns <- c
		})
	}
	wg.Wait()
	close(errs)
	close(conns)
	for err := range errs {
		t.Fatalf("dial in namespace: %v", err)
	}
	var clients []net.Addr
	for c := range conns {
		if c.RemoteAddr().String() != addr {
			t.Errorf("connection to %s, want %s", c.RemoteAddr(), addr)
		}
		clients = append(clients, c.LocalAddr())
		defer c.Close()
	}
	acceptFrom(t, inside, clients...)

	plain, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	acceptFrom(t, outside.(*net.TCPListener), plain.LocalAddr())

	if bad := threadsOutside(t, "/proc/self/ns/net"); len(bad) > 0 {
		t.Errorf("threads left in another namespace: %v", bad)
	}
}

// TestDialInNetnsRefused: a closed port in the namespace is refused at
// once, with an error that says so.
func TestDialInNetnsRefused(t *testing.T) {
	requireRoot(t)
	ns := loopbackNetns(t)
	ln := listenIn(t, ns, "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := DialInNetns(ctx, ns, "tcp", addr)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to closed %s: %v, want connection refused", addr, err)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q does not name the address", err)
	}
}

// TestDialInNetnsHangHoldsNoThread: connects that hang (a SYN into a
// full accept queue, dropped by the kernel) hold no OS thread each, end when their
// context does, and say whether it timed out or was canceled.
func TestDialInNetnsHangHoldsNoThread(t *testing.T) {
	requireRoot(t)
	ns := loopbackNetns(t)
	blackhole := fullListener(t, ns)

	// A deadline: a timeout error, on time.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	start := time.Now()
	_, err := DialInNetns(ctx, ns, "tcp4", blackhole)
	cancel()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial into a black hole with a deadline: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timed out after %v, deadline was 100ms", d)
	}

	// Many at once, canceled: while they hang the thread count stays put.
	const n = 64
	base := osThreads(t)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := DialInNetns(ctx, ns, "tcp4", blackhole)
			errs <- err
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for synSent(t, ns) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d connects in SYN_SENT after 10s", synSent(t, ns), n)
		}
		time.Sleep(10 * time.Millisecond) // polling the kernel's socket table
	}
	got := osThreads(t)
	t.Logf("%d OS threads while %d connects hang, %d before", got, n, base)
	if got > base+n/4 {
		t.Errorf("%d threads while %d connects hang (%d before): a thread held per connect", got, n, base)
	}
	cancel()
	for range n {
		if err := <-errs; !errors.Is(err, context.Canceled) {
			t.Errorf("canceled dial: %v, want context canceled", err)
		}
	}
	if bad := threadsOutside(t, "/proc/self/ns/net"); len(bad) > 0 {
		t.Errorf("threads left in another namespace: %v", bad)
	}
}

// fullListener returns the address of a listener inside the namespace
// whose accept queue is full: the kernel drops further SYNs to it, so
// connects hang as they do to an overloaded backend.
func fullListener(t *testing.T, nsPath string) string {
	t.Helper()
	var fd int
	err := RunInNetns(nsPath, func() (err error) {
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err = unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		return unix.Listen(fd, 0) // room for one connection
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port)).String()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialInNetns(ctx, nsPath, "tcp4", addr)
	if err != nil {
		t.Fatalf("filling the accept queue of %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return addr
}

// synSent counts the TCP sockets in SYN_SENT inside the namespace.
func synSent(t *testing.T, nsPath string) int {
	t.Helper()
	var n int
	err := RunInNetns(nsPath, func() error {
		b, err := os.ReadFile("/proc/thread-self/net/tcp")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			if f := strings.Fields(line); len(f) > 3 && f[3] == "02" {
				n++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDialInNetnsRejects: bad arguments get a one-line error naming the
// cause, before any namespace is entered.
func TestDialInNetnsRejects(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct{ network, addr, want string }{
		{"tcp4", "localhost:80", `address "localhost:80"`},
		{"tcp4", "10.0.0.1", `address "10.0.0.1"`},
		{"udp", "10.0.0.1:80", `network "udp"`},
		{"tcp6", "10.0.0.1:80", "is not tcp6"},
		{"tcp4", "[fd00::1]:80", "is not tcp4"},
	} {
		_, err := DialInNetns(ctx, "/proc/self/ns/net", c.network, c.addr)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("DialInNetns(%s, %s) = %v, want one line with %q", c.network, c.addr, err, c.want)
		}
	}
	_, err := DialInNetns(ctx, filepath.Join(t.TempDir(), "gone"), "tcp4", "127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("missing namespace: %v", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := DialInNetns(canceled, "/proc/self/ns/net", "tcp4", "127.0.0.1:1"); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled context: %v", err)
	}
}

// BenchmarkDialInNetns is the cost of one TCP health check's connect and
// close from the daemon into a container's namespace ("netns"), against
// a plain dial to a listener in the daemon's own namespace ("plain").
func BenchmarkDialInNetns(b *testing.B) {
	requireRoot(b)
	ns := loopbackNetns(b)
	ctx := context.Background()
	for _, c := range []struct {
		name string
		ns   string
		dial func(addr string) (net.Conn, error)
	}{
		{"netns", ns, func(addr string) (net.Conn, error) { return DialInNetns(ctx, ns, "tcp4", addr) }},
		{"plain", "/proc/self/ns/net", func(addr string) (net.Conn, error) { return net.Dial("tcp4", addr) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			ln := listenIn(b, c.ns, "127.0.0.1:0")
			go func() {
				for {
					conn, err := ln.Accept()
					if err != nil {
						return
					}
					conn.Close()
				}
			}()
			addr := ln.Addr().String()
			for b.Loop() {
				conn, err := c.dial(addr)
				if err != nil {
					b.Fatal(err)
				}
				conn.Close()
			}
		})
	}
}
