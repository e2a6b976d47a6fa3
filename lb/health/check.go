package health

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DialFunc connects to addr ("IP:port") on network ("tcp"), like
// net.Dialer.DialContext. It must return when ctx ends.
// sandbox.NetnsDialer makes one that connects from inside a container's
// network namespace.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// maxResponse bounds the bytes read of an HTTP answer: status line,
// headers and body together.
const maxResponse = 64 << 10

// maxReason bounds a reason's length.
const maxReason = 120

// check runs one check of t and returns whether it passed and why, in a
// few words ("connected", "http 200", "connection refused", "timeout").
func check(ctx context.Context, t *Target) (bool, string) {
	ctx, cancel := context.WithTimeout(ctx, t.Spec.Timeout)
	defer cancel()
	dial := t.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	addr := netip.AddrPortFrom(t.Addr, t.Spec.Port).String()
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return false, reason(err)
	}
	defer conn.Close()
	if t.Spec.Kind == TCP {
		return true, "connected"
	}
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	return httpCheck(conn, addr, t.Spec.Path)
}

// httpCheck sends GET path to host on rw and reads the answer: 200-399
// passes. It reads at most maxResponse bytes, so a server that streams
// forever costs one bounded read.
func httpCheck(rw io.ReadWriter, host, path string) (bool, string) {
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host +
		"\r\nUser-Agent: vxmesh-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(rw, req); err != nil {
		return false, reason(err)
	}
	lr := &io.LimitedReader{R: rw, N: maxResponse}
	resp, err := http.ReadResponse(bufio.NewReaderSize(lr, 4096), nil)
	if err != nil {
		if lr.N == 0 {
			return false, "http header too large"
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, "no http response"
		}
		if r := reason(err); r == "timeout" || isErrno(err) {
			return false, r
		}
		return false, "bad http response"
	}
	// Drain what is left within the bound, so the close is clean.
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	code := resp.StatusCode
	return code >= 200 && code < 400, "http " + strconv.Itoa(code)
}

func isErrno(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno)
}

// reason says in a few words why a connection or exchange failed.
func reason(err error) string {
	var errno syscall.Errno
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), isTimeout(err):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &errno):
		return errno.Error()
	}
	s := strings.Join(strings.Fields(err.Error()), " ")
	if len(s) > maxReason {
		s = strings.ToValidUTF8(s[:maxReason], "")
	}
	return s
}

// isTimeout reports whether an error in err's chain says it is a timeout
// (net.OpError answers for its own Err only, not what that wraps).
func isTimeout(err error) bool {
	for ; err != nil; err = errors.Unwrap(err) {
		if t, ok := err.(interface{ Timeout() bool }); ok && t.Timeout() {
			return true
		}
	}
	return false
}
