package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

// TestAppendProxyV2 checks the header byte for byte against one built by
// hand from the spec (proxy-protocol.txt 2.2): signature, 0x21, 0x11,
// length 12, addresses, ports.
func TestAppendProxyV2(t *testing.T) {
	src := netip.MustParseAddrPort("192.0.2.7:40001")
	dst := netip.MustParseAddrPort("198.51.100.9:8080")
	want := []byte{
		0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
		0x21, 0x11, 0x00, 0x0C,
		192, 0, 2, 7,
		198, 51, 100, 9,
		0x9C, 0x41, // 40001
		0x1F, 0x90, // 8080
	}
	if got := AppendProxyV2(nil, src, dst); !bytes.Equal(got, want) {
		t.Fatalf("header\n% x\nwant\n% x", got, want)
	}
	mapped := netip.AddrPortFrom(netip.AddrFrom16(src.Addr().As16()), src.Port())
	if got := AppendProxyV2([]byte("x"), mapped, dst); !bytes.Equal(got[1:], want) || got[0] != 'x' {
		t.Fatalf("an IPv4-mapped source: % x, want it appended as IPv4", got)
	}
	local := AppendProxyV2(nil, netip.MustParseAddrPort("[2001:db8::1]:1"), dst)
	if !bytes.Equal(local, append(want[:12:12], 0x20, 0x00, 0x00, 0x00)) {
		t.Fatalf("non-IPv4: % x, want the LOCAL command without addresses", local)
	}
}

// readLine reads one line of c.
func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			t.Fatalf("reading a line: %v (got %q)", err, b)
		}
		if one[0] == '\n' {
			return string(b)
		}
		b = append(b, one[0])
	}
}

// TestPublishProxyV2: a proxy-v2 port's connection enters from the
// gateway's host address and its first bytes in the container are the
// PROXY v2 header naming the outside client and the address it dialled.
func TestPublishProxyV2(t *testing.T) {
	host := netip.MustParseAddr("10.0.1.250")
	h := newHarnessWith(t, Config{HostAddr: host, HostMAC: packet.MAC{0x02, 0x42, 10, 0, 1, 250}}, EgressConfig{})
	ha := publicAddr(t)
	serveEcho(t, h, 80)
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp", ClientIP: ClientIPProxyV2}
	p := h.publish(t, spec)
	c, err := net.Dial("tcp4", netip.AddrPortFrom(ha, spec.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if peer := readLine(t, c); !strings.HasPrefix(peer, host.String()+":") {
		t.Fatalf("the backend saw %s, want the gateway's host address %s", peer, host)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := AppendProxyV2(nil, c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort())
	if !bytes.Equal(got, want) {
		t.Fatalf("the backend's first bytes\n% x\nwant\n% x", got, want)
	}
	if st := p.Stats(); st.Total != 1 || st.Failed != 0 {
		t.Fatalf("port stats %+v: want 1 connection, none failed", st)
	}

	// preserve: a loopback client enters from the host address (not the
	// anycast one, which cannot be a source across hosts).
	pres := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp", ClientIP: ClientIPPreserve}
	pp, err := h.eg.Publish(pres, h.target())
	if err != nil {
		t.Fatal(err)
	}
	defer pp.Close()
	lc, err := net.Dial("tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), pres.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	lc.SetDeadline(time.Now().Add(10 * time.Second))
	if peer := readLine(t, lc); !strings.HasPrefix(peer, host.String()+":") {
		t.Fatalf("preserve: a loopback client entered as %s, want the host address %s", peer, host)
	}
}

// TestPublishMeshSource: without a host address on the gateway, a
// preserve port still takes outside clients with their own address, but
// refuses (reset, counted) a loopback client, which would need the host
// address; a snat port refuses every client.
func TestPublishMeshSource(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	ha := publicAddr(t)
	serveEcho(t, h, 80)
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp", ClientIP: ClientIPPreserve}
	p := h.publish(t, spec)
	c, err := net.Dial("tcp4", netip.AddrPortFrom(ha, spec.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if peer := readLine(t, c); peer != c.LocalAddr().String() {
		t.Fatalf("the backend saw %s, want the client's own %s", peer, c.LocalAddr())
	}
	c.Close()
	refused := func(to netip.Addr, port uint16) {
		t.Helper()
		c, err := net.Dial("tcp4", netip.AddrPortFrom(to, port).String())
		if err == nil {
			c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("client %s: err %v, want a reset", to, err)
		}
	}
	refused(netip.MustParseAddr("127.0.0.1"), spec.HostPort)
	snat := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp", ClientIP: ClientIPSNAT}
	sp, err := h.eg.Publish(snat, h.target())
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	refused(ha, snat.HostPort)
	if st := h.eg.Stats(); st.IngressRefused != 2 || st.IngressFailed != 2 || st.IngressTotal != 1 {
		t.Fatalf("stats %+v: want 2 refused (and failed), 1 accepted", st)
	}
	if st := p.Stats(); st.Total != 1 || st.Failed != 1 {
		t.Fatalf("preserve port stats %+v: want 1 connection, 1 refused", st)
	}
}

// TestPublishClientPortReused: a client port used again soon after a
// connection from it ended (the gateway's side of that one lingers in
// TIME-WAIT, bound to the client's address and port) still gets through:
// to another published port, and to the same one.
func TestPublishClientPortReused(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	ha := publicAddr(t)
	serveEcho(t, h, 80)
	serveEcho(t, h, 81)
	a := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp"}
	b := Publish{HostPort: freePort(t, "tcp"), Port: 81, Proto: "tcp"}
	for _, s := range []Publish{a, b} {
		p, err := h.eg.Publish(s, h.target())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
	}
	local := &net.TCPAddr{IP: ha.AsSlice(), Port: int(freePort(t, "tcp"))}
	for i, s := range []Publish{a, b, a} {
		d := net.Dialer{LocalAddr: local, Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
		}}
		c, err := d.Dial("tcp4", netip.AddrPortFrom(ha, s.HostPort).String())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if peer := readLine(t, c); peer != local.String() {
			t.Fatalf("connection %d: the container saw %s, want %s", i, peer, local)
		}
		// The client closes first: the gateway's side to the container
		// closes first too and stays in TIME-WAIT.
		c.(*net.TCPConn).CloseWrite()
		io.ReadAll(c)
		c.Close()
	}
}

// TestPublishBackendVanishes: a published connection whose container
// side goes silent after the client's half-close (its port gone: no FIN,
// no reset ever comes) ends within the keepalive's bounds, and the client
// is told, whether the gateway's FIN was acknowledged before (keepalive
// probes go unanswered) or not (the user timeout); it is not held until
// a FIN or data arrive.
func TestPublishBackendVanishes(t *testing.T) {
	for _, acked := range []bool{false, true} {
		t.Run(fmt.Sprintf("fin-acked=%v", acked), func(t *testing.T) { backendVanishes(t, acked) })
	}
}

func backendVanishes(t *testing.T, acked bool) {
	h := newHarness(t, false, EgressConfig{IngressKeepalive: 300 * time.Millisecond})
	ha := publicAddr(t)
	ln, err := h.ctr.Listen(80)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.WriteString(c, "hi\n")
			accepted <- c // never closed by the server: it vanishes
		}
	}()
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp"}
	h.publish(t, spec)
	c, err := net.Dial("tcp4", netip.AddrPortFrom(ha, spec.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	readLine(t, c)
	sc := <-accepted
	defer sc.Close()
	if !acked {
		h.sw.RemovePort(h.cport)
	}
	c.(*net.TCPConn).CloseWrite()
	if acked {
		sc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := sc.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("the server did not get the FIN: %v", err)
		}
		h.sw.RemovePort(h.cport)
	}
	start := time.Now()
	if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client: %v, want EOF or a reset once the flow ended", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the flow ended after %v, want within the keepalive's bound (~1 s)", d)
	}
	// The counter drops once the flow's goroutines finish, just after
	// the client was told.
	for deadline := time.Now().Add(5 * time.Second); h.eg.Stats().IngressTCP != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d published flows open, want 0", h.eg.Stats().IngressTCP)
		}
	}
}
