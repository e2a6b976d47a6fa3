package gateway

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestCopyConnAllocatesNothing: a flow's copy takes its buffer from a
// pool, so a short connection's copy (a request or a response, then EOF)
// allocates nothing once the pool is warm, and bulk data (a buffer filled
// to the brim, which switches to the large buffer) neither.
func TestCopyConnAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("under the race detector, sync.Pool drops some of what it is given")
	}
	for _, size := range []int{64, copyBufSmall * 3} {
		src := strings.NewReader(strings.Repeat("x", size))
		var dst bytes.Buffer
		dst.Grow(size)
		bufs := newCopyBufs()
		copyConn(&dst, src, bufs) // warm the pool
		allocs := testing.AllocsPerRun(100, func() {
			src.Seek(0, io.SeekStart)
			dst.Reset()
			n, rerr, werr := copyConn(&dst, src, bufs)
			if n != int64(size) || rerr != nil || werr != nil {
				t.Fatalf("copyConn of %d bytes: %d, %v, %v", size, n, rerr, werr)
			}
		})
		if allocs != 0 {
			t.Errorf("copyConn of %d bytes: %.1f allocations per copy, want 0", size, allocs)
		}
	}
}

// TestEPConnReadReportsFINWithData: once the container's FIN is in, the
// read that returns its last data reports io.EOF with it, so the copy
// knows the data is the last before it writes it (see writeLast).
func TestEPConnReadReportsFINWithData(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	ln, err := h.ctr.Listen(80)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("answer"))
		c.Close()
	}()
	c, err := h.gw.dialIn(netip.AddrPortFrom(h.gw.Addr(), 0), netip.AddrPortFrom(ctrAddr.Addr(), 80), nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	poll(t, "the container's FIN", func() bool { return tcp.EndpointState(c.ep.State()) == tcp.StateCloseWait })
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if string(buf[:n]) != "answer" || err != io.EOF {
		t.Fatalf("Read = %q, %v; want %q, io.EOF", buf[:n], err, "answer")
	}
}

// TestLastDataAndFINInOneSegment: the last data of a direction, written
// with writeLast and followed by the half-close, reaches the peer in one
// segment with the FIN (the client's kernel takes one segment, not two).
func TestLastDataAndFINInOneSegment(t *testing.T) {
	for _, last := range []bool{false, true} {
		ln, _ := listenTCP(t)
		client, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		srv, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		before := segsIn(t, client)
		msg := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		if last {
			_, err = writeLast(srv, msg)
		} else {
			_, err = srv.Write(msg)
		}
		if err != nil {
			t.Fatal(err)
		}
		srv.CloseWrite()
		got, err := io.ReadAll(client)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("client read %q, %v", got, err)
		}
		segs := segsIn(t, client) - before
		switch {
		case last && segs != 1:
			t.Errorf("writeLast then CloseWrite: the client took %d segments, want 1 (data with FIN)", segs)
		case !last && segs != 2:
			// The premise: a plain write and a half-close are two.
			t.Errorf("Write then CloseWrite: the client took %d segments, want 2", segs)
		}
	}
}

// segsIn is c's count of segments received (TCP_INFO).
func segsIn(t *testing.T, c *net.TCPConn) uint32 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if ierr != nil {
		t.Fatal(ierr)
	}
	return info.Segs_in
}
