package gateway

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// publicAddr returns a non-loopback IPv4 address of this host: a client
// dialling it from the host has it as its source, an address a published
// port may spoof into the network.
func publicAddr(t testing.TB) netip.Addr {
	t.Helper()
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() && !gwAddr.Contains(p.Addr()) {
			return p.Addr()
		}
	}
	t.Skip("no non-loopback IPv4 address on this host")
	return netip.Addr{}
}

// freePort returns a TCP (or UDP) port free on the host right now.
func freePort(t testing.TB, proto string) uint16 {
	t.Helper()
	if proto == "udp" {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return uint16(c.LocalAddr().(*net.UDPAddr).Port)
	}
	ln, err := net.Listen("tcp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// publish publishes spec to the harness's container (target) and closes
// the port when the test ends.
func (h *harness) publish(t testing.TB, spec Publish) *Port {
	t.Helper()
	p, err := h.eg.Publish(spec, h.target())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func (h *harness) target() Target {
	return func() (*Gateway, netip.Addr, bool) { return h.gw, ctrAddr.Addr(), true }
}

// serveEcho answers each connection on port of the container with the
// peer address it sees, then echoes until EOF and half-closes.
func serveEcho(t *testing.T, h *harness, port uint16) {
	t.Helper()
	ln, err := h.ctr.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	acceptEach(ln, func(c net.Conn) { go echoPeer(c) })
}

// acceptEach calls handle with each connection ln accepts, from one
// goroutine, until ln is closed.
func acceptEach(ln net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handle(c)
		}
	}()
}

// echoPeer writes the peer address c sees, then echoes until EOF,
// half-closes and closes c.
func echoPeer(c net.Conn) {
	defer c.Close()
	io.WriteString(c, c.RemoteAddr().String()+"\n")
	io.Copy(c, c)
	c.(interface{ CloseWrite() error }).CloseWrite()
}

// TestPublishTCP: a connection to a published port reaches the container
// with the client's own address and port as its source; data and the
// client's half-close reach the container and the reply comes back; a
// client on loopback enters with the gateway's address; a port in use is
// refused; Close ends open connections; everything is counted.
func TestPublishTCP(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	ha := publicAddr(t)
	serveEcho(t, h, 80)
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp"}
	p := h.publish(t, spec)

	want := checkEcho(t, netip.AddrPortFrom(ha, spec.HostPort), "hello")

	lc := dialLoopbackSeesGateway(t, spec.HostPort)
	line := make([]byte, 64)

	if _, err := h.eg.Publish(spec, h.target()); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("publishing a port in use: err %v, want already in use", err)
	}

	p.Close()
	if _, err := lc.Read(line); err == nil {
		t.Fatal("connection still open after the port was closed")
	}
	lc.Close()
	if _, err := net.DialTimeout("tcp4", netip.AddrPortFrom(ha, spec.HostPort).String(), 2*time.Second); err == nil {
		t.Fatal("closed port still accepts")
	}
	st := h.eg.Stats()
	if st.IngressTotal != 2 || st.IngressSNAT != 1 || st.IngressTCP != 0 || st.IngressBytesIn != 5 || st.IngressBytesOut < uint64(len(want)) {
		t.Fatalf("stats %+v: want 2 connections, 1 from the gateway's address, none active, 5 bytes in", st)
	}
}

// TestPublishTCPReset: a connection to a port nothing listens on in the
// container is reset at the client and counted as failed; a container's
// reset reaches the client as a reset.
func TestPublishTCPReset(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	ha := publicAddr(t)
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 81, Proto: "tcp"}
	h.publish(t, spec)
	// The host's kernel completes the handshake before the gateway
	// learns the container refuses, so the reset arrives right after it:
	// on loopback it can beat connect's return, then the dial reports it.
	c, err := net.Dial("tcp4", netip.AddrPortFrom(ha, spec.HostPort).String())
	if err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a published port with no server: %v, want a reset", err)
	}
	poll(t, "the failure counted", func() bool { return h.eg.Stats().IngressFailed == 1 })
}

// TestPublishUDP: datagrams to a published UDP port reach the container
// from the client's own address, replies come back, and one client is
// one flow that ends after the idle timeout.
func TestPublishUDP(t *testing.T) {
	h := newHarness(t, false, EgressConfig{UDPIdle: 300 * time.Millisecond})
	ha := publicAddr(t)
	srv, err := h.ctr.ListenUDP(53)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		b := make([]byte, 1500)
		for {
			n, from, err := srv.ReadFrom(b)
			if err != nil {
				return
			}
			srv.WriteTo([]byte(string(b[:n])+" "+from.String()), from)
		}
	}()
	spec := Publish{HostPort: freePort(t, "udp"), Port: 53, Proto: "udp"}
	h.publish(t, spec)
	c, err := net.Dial("udp4", netip.AddrPortFrom(ha, spec.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1500)
	for _, q := range []string{"one", "two"} {
		c.Write([]byte(q))
		n, err := c.Read(b)
		if err != nil {
			t.Fatal(err)
		}
		if want := q + " " + c.LocalAddr().String(); string(b[:n]) != want {
			t.Fatalf("reply %q, want %q", b[:n], want)
		}
	}
	if st := h.eg.Stats(); st.IngressTotal != 1 || st.IngressUDP != 1 {
		t.Fatalf("stats %+v: want one active UDP flow", st)
	}
	// The replies count while the flow is open, as its requests do (a
	// reply is counted just after it was sent: poll).
	poll(t, "the open flow's replies to count", func() bool {
		st := h.eg.Stats()
		return st.IngressUDP == 1 && st.IngressBytesIn == 6 && st.IngressBytesOut > 0
	})
	poll(t, "the idle flow to end", func() bool { return h.eg.Stats().IngressUDP == 0 })
}

// TestIngressSource: a published flow enters with the client's own
// address unless that address could be a container's (any overlay
// subnet, the network's own, the gateway) or is not routable unicast;
// those enter from the gateway's address and a free port.
func TestIngressSource(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	h.eg.SetOverlay([]netip.Prefix{gwAddr.Masked(), netip.MustParsePrefix("10.9.0.0/16")})
	gw := netip.AddrPortFrom(gwAddr.Addr(), 0)
	for _, tc := range []struct {
		client string
		want   netip.AddrPort
	}{
		{"198.51.100.7:40000", netip.MustParseAddrPort("198.51.100.7:40000")},
		{"192.168.1.9:1234", netip.MustParseAddrPort("192.168.1.9:1234")},
		{"[::ffff:198.51.100.7]:40000", netip.MustParseAddrPort("198.51.100.7:40000")},
		{"10.9.3.4:40000", gw},   // another overlay network
		{"10.0.1.2:40000", gw},   // this network: could be the container itself
		{"10.0.1.1:40000", gw},   // the gateway
		{"127.0.0.1:40000", gw},  // a client on the host
		{"0.0.0.0:40000", gw},    // not a source
		{"224.0.0.1:40000", gw},  // multicast
		{"198.51.100.7:0", gw},   // no port
		{"[2001:db8::1]:80", gw}, // IPv6 cannot enter an IPv4 network
	} {
		got, spoofed := h.eg.ingressSource(h.gw, netip.MustParseAddrPort(tc.client))
		if got != tc.want || spoofed != (tc.want != gw) {
			t.Errorf("client %s enters as %s (spoofed %v), want %s", tc.client, got, spoofed, tc.want)
		}
	}
}

// dialLoopbackSeesGateway connects to the published port from 127.0.0.1
// and checks the first line the container sends, the peer address it saw:
// a loopback client enters from the gateway's address. The connection is
// left open for the caller.
func dialLoopbackSeesGateway(t *testing.T, port uint16) net.Conn {
	t.Helper()
	lc, err := net.Dial("tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Close() })
	lc.SetDeadline(time.Now().Add(10 * time.Second))
	line := make([]byte, 64)
	n, err := lc.Read(line)
	if err != nil {
		t.Fatal(err)
	}
	if peer := strings.TrimSpace(string(line[:n])); !strings.HasPrefix(peer, gwAddr.Addr().String()+":") {
		t.Fatalf("a loopback client entered as %s, want the gateway's address %s", peer, gwAddr.Addr())
	}
	return lc
}

// checkEcho connects to the published port at addr, sends msg and
// half-closes; the container (echoPeer) must answer with the client's
// own address and port, then msg. It returns that answer.
func checkEcho(t *testing.T, addr netip.AddrPort, msg string) string {
	t.Helper()
	c, err := net.Dial("tcp4", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, msg)
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if want := c.LocalAddr().String() + "\n" + msg; err != nil || string(got) != want {
		t.Fatalf("container answered %q (%v), want %q (the client's own address, then the echo)", got, err, want)
	}
	return string(got)
}
