//go:build linux

package sandbox

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fastPathNetns is a namespace like a container's: lo up and addr on a
// veth interface, no default route.
func fastPathNetns(t *testing.T, addr string) string {
	t.Helper()
	path := loopbackNetns(t)
	h := handle(t, path)
	d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}
	if err := h.LinkAdd(d); err != nil {
		t.Fatal(err)
	}
	if p, err := h.LinkByName("eth0p"); err != nil || h.LinkSetUp(p) != nil {
		t.Fatal("eth0p", err)
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(d, a); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(d); err != nil {
		t.Fatal(err)
	}
	return path
}

// fwmarkAccept reads tcp_fwmark_accept and fwmark_reflect in the
// namespace ("0 0").
func fwmarkAccept(t *testing.T, nsPath string) string {
	t.Helper()
	var v []string
	if err := RunInNetns(nsPath, func() error {
		for _, s := range fastPathSysctls {
			b, err := os.ReadFile("/proc/sys/" + s)
			if err != nil {
				return err
			}
			v = append(v, strings.TrimSpace(string(b)))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return strings.Join(v, " ")
}

// fastPathInstalled counts the fast path's rules and routes in the
// namespace.
func fastPathInstalled(t *testing.T, nsPath string) (rules, routes int) {
	t.Helper()
	h := handle(t, nsPath)
	ru, err := fastPathRules(h)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := fastPathRoutes(h)
	if err != nil {
		t.Fatal(err)
	}
	return len(ru), len(ro)
}

// fastDial connects a FastSockets socket from src to dst (blocking, 3 s).
func fastDial(t *testing.T, fs *FastSockets, src, dst *net.TCPAddr) (net.Conn, error) {
	t.Helper()
	fd, err := fs.Socket()
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "fast")
	defer f.Close()
	unix.SetNonblock(fd, false)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 3})
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: src.Port, Addr: [4]byte(src.IP.To4())}); err != nil {
		t.Fatalf("bind %s: %v", src, err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: dst.Port, Addr: [4]byte(dst.IP.To4())}); err != nil {
		return nil, err
	}
	return net.FileConn(f)
}

// TestFastPathDeliversRepliesToTheClientAddress: a fast-path socket bound
// to an outside client's address connects to a server in the namespace,
// which sees that address and whose replies (to a non-local address, no
// route but the fast path's) reach the socket; EnableFastPath is
// idempotent and DisableFastPath removes the rule and route and restores
// tcp_fwmark_accept.
func TestFastPathDeliversRepliesToTheClientAddress(t *testing.T) {
	requireRoot(t)
	ns := fastPathNetns(t, "10.9.0.5/24")
	if v := fwmarkAccept(t, ns); v != "0 0" {
		t.Fatalf("a new namespace has tcp_fwmark_accept, fwmark_reflect = %s, want 0 0", v)
	}
	for range 2 {
		if err := EnableFastPath(ns); err != nil {
			t.Fatal(err)
		}
	}
	if ru, ro := fastPathInstalled(t, ns); ru != 1 || ro != 1 {
		t.Fatalf("after two EnableFastPath: %d rules, %d routes; want 1, 1", ru, ro)
	}
	if v := fwmarkAccept(t, ns); v != "1 1" {
		t.Fatalf("tcp_fwmark_accept, fwmark_reflect = %s, want 1 1", v)
	}
	ln := listenIn(t, ns, "10.9.0.5:80")
	fs, err := NewFastSockets(ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	client := &net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 40001}
	c, err := fastDial(t, fs, client, &net.TCPAddr{IP: net.IPv4(10, 9, 0, 5), Port: 80})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Close()
	ln.SetDeadline(time.Now().Add(3 * time.Second))
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.RemoteAddr().String() != client.String() {
		t.Errorf("server sees %s, want %s", s.RemoteAddr(), client)
	}
	s.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b := make([]byte, 5)
	if _, err := c.Read(b); err != nil || string(b) != "hello" {
		t.Errorf("client read %q, %v; want hello", b, err)
	}

	for range 2 {
		if err := DisableFastPath(ns); err != nil {
			t.Fatal(err)
		}
	}
	if ru, ro := fastPathInstalled(t, ns); ru != 0 || ro != 0 {
		t.Errorf("after DisableFastPath: %d rules, %d routes; want none", ru, ro)
	}
	if v := fwmarkAccept(t, ns); v != "0 0" {
		t.Errorf("after DisableFastPath: tcp_fwmark_accept, fwmark_reflect = %s, want 0 0 (restored)", v)
	}
}

// TestFastPathKeepsAnEnabledSysctl: a namespace whose tcp_fwmark_accept
// was 1 already keeps it after DisableFastPath, even across a second
// EnableFastPath (a daemon restart); fwmark_reflect, which it set, is
// restored.
func TestFastPathKeepsAnEnabledSysctl(t *testing.T) {
	requireRoot(t)
	ns := fastPathNetns(t, "10.9.0.5/24")
	if err := RunInNetns(ns, func() error { return os.WriteFile("/proc/sys/"+fastPathSysctls[0], []byte("1"), 0) }); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := EnableFastPath(ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := DisableFastPath(ns); err != nil {
		t.Fatal(err)
	}
	if v := fwmarkAccept(t, ns); v != "1 0" {
		t.Errorf("tcp_fwmark_accept, fwmark_reflect = %s after DisableFastPath, want 1 0 (as found)", v)
	}
}

// TestFastSocketsLeaveNoThreadInTheNamespace: the thread that makes a
// FastSockets' sockets inside the namespace is not in it once Close
// returned. It ends with its goroutine, except the main thread, which the
// Go runtime keeps: that one was left in the namespace (8 of 10 runs of
// the fast path tests), so /proc/PID/ns/net named it, and the namespace
// outlived its container.
func TestFastSocketsLeaveNoThreadInTheNamespace(t *testing.T) {
	requireRoot(t)
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ns := loopbackNetns(t)
	for range 20 {
		fs, err := NewFastSockets(ns, nil)
		if err != nil {
			t.Fatal(err)
		}
		fs.Close()
	}
	if got, _ := os.Readlink("/proc/self/ns/net"); got != self {
		t.Fatalf("the process's main thread is in %s after the fast sockets closed, want %s", got, self)
	}
	if bad := threadsOutside(t, "/proc/self/ns/net"); len(bad) > 0 {
		t.Errorf("threads left in another namespace: %v", bad)
	}
}

// TestFastSocketsClose: Close ends the namespace's goroutine and closes
// the sockets it kept; Socket fails after it.
func TestFastSocketsClose(t *testing.T) {
	requireRoot(t)
	ns := loopbackNetns(t)
	before := openFDs(t)
	fs, err := NewFastSockets(ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := fs.Socket()
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	fs.Close()
	if _, err := fs.Socket(); err == nil {
		t.Error("Socket after Close: no error")
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d fds open after Close, %d before", after, before)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// BenchmarkFastSocket: a socket from FastSockets (made ahead on the
// namespace's own thread) against one made by switching a thread into the
// namespace for it (RunInNetns), the cost per published connection.
func BenchmarkFastSocket(b *testing.B) {
	requireRoot(b)
	ns := loopbackNetns(b)
	b.Run("FastSockets", func(b *testing.B) {
		fs, err := NewFastSockets(ns, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer fs.Close()
		for b.Loop() {
			fd, err := fs.Socket()
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
	})
	b.Run("RunInNetns", func(b *testing.B) {
		for b.Loop() {
			var fd int
			err := RunInNetns(ns, func() (err error) {
				fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			unix.Close(fd)
		}
	})
}
