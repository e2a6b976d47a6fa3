//go:build linux

package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// DialInNetns connects a TCP socket that lives in the network namespace at
// nsPath to addr, a literal IP:port (no name is resolved: the daemon's
// resolver does not know the namespace's view). network is "tcp", "tcp4"
// or "tcp6". ctx bounds the connect, like net.Dialer.DialContext.
//
// Only the socket is created inside the namespace, on a locked thread that
// RunInNetns returns to the daemon's namespace; the connect runs on the
// caller's goroutine through the runtime poller, so a connect that hangs
// (a full accept queue, a black-holed SYN) holds no OS thread. The
// returned connection works from any goroutine.
func DialInNetns(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Addr().Zone() != "" {
		return nil, fmt.Errorf("dial in netns: address %q: want IP:port", addr)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	family, sa, err := sockaddr(network, ap)
	if err != nil {
		return nil, err
	}
	opErr := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	if err := ctx.Err(); err != nil {
		return nil, opErr(err)
	}
	var fd int
	err = RunInNetns(nsPath, func() (err error) {
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		return os.NewSyscallError("socket", err)
	})
	if err != nil {
		return nil, opErr(err)
	}
	// A non-blocking descriptor makes a pollable File: its deadlines wake
	// the wait below.
	f := os.NewFile(uintptr(fd), "tcp:"+addr)
	defer f.Close() // net.FileConn holds its own copy
	if err := connect(ctx, f, sa); err != nil {
		return nil, opErr(err)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, opErr(err)
	}
	return c, nil
}

// NetnsDialer returns DialInNetns bound to one namespace, in the shape of
// net.Dialer.DialContext.
func NetnsDialer(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return DialInNetns(ctx, nsPath, network, addr)
	}
}

// sockaddr checks network against the address family of ap.
func sockaddr(network string, ap netip.AddrPort) (int, unix.Sockaddr, error) {
	is4 := ap.Addr().Is4()
	switch {
	case network == "tcp" && is4, network == "tcp4" && is4:
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, nil
	case network == "tcp" && !is4, network == "tcp6" && !is4:
		return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, nil
	case network == "tcp4" || network == "tcp6":
		return 0, nil, fmt.Errorf("dial in netns: address %s is not %s", ap, network)
	}
	return 0, nil, fmt.Errorf("dial in netns: network %q: want tcp, tcp4 or tcp6", network)
}

// connect starts a non-blocking connect on f and waits, in the runtime
// poller, until it completes, fails, or ctx ends. The loop is the one
// net's own connect uses: the poller may wake it spuriously.
func connect(ctx context.Context, f *os.File, sa unix.Sockaddr) error {
	if d, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	started := false
	var cerr error
	werr := rc.Write(func(fd uintptr) bool {
		if !started {
			started = true
			switch err := unix.Connect(int(fd), sa); err {
			case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
				return false
			case nil, unix.EISCONN:
				return true
			default:
				cerr = os.NewSyscallError("connect", err)
				return true
			}
		}
		n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			cerr = os.NewSyscallError("getsockopt", err)
			return true
		}
		switch err := unix.Errno(n); err {
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		case 0, unix.EISCONN:
			_, err := unix.Getpeername(int(fd))
			return err == nil // not yet connected: a spurious wake-up
		default:
			cerr = os.NewSyscallError("connect", err)
			return true
		}
	})
	if werr != nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		if errors.Is(werr, os.ErrDeadlineExceeded) {
			return context.DeadlineExceeded
		}
		return werr
	}
	return cerr
}
