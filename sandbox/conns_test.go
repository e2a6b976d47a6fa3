//go:build linux

package sandbox

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// countInbound counts connections to a listening port of the address
// (listening there or on the wildcard, IPv4-mapped or not), and nothing
// else.
func TestCountInbound(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.5")
	sock := func(state uint8, src string, sport uint16, dst string, dport uint16) *netlink.Socket {
		s := &netlink.Socket{State: state}
		s.ID.Source, s.ID.SourcePort = net.ParseIP(src), sport
		s.ID.Destination, s.ID.DestinationPort = net.ParseIP(dst), dport
		return s
	}
	socks := []*netlink.Socket{
		sock(tcpListen, "0.0.0.0", 80, "0.0.0.0", 0),
		sock(tcpListen, "::", 8080, "::", 0),
		sock(tcpListen, "10.0.0.9", 9090, "0.0.0.0", 0),
		sock(1, "10.0.0.5", 80, "10.0.0.2", 40000),             // counted
		sock(3, "10.0.0.5", 80, "10.0.0.2", 40001),             // SYN_RECV: counted
		sock(8, "::ffff:10.0.0.5", 8080, "::ffff:10.0.0.3", 1), // CLOSE_WAIT, dual-stack: counted
		sock(tcpTimeWait, "10.0.0.5", 80, "10.0.0.2", 40002),
		sock(tcpClose, "10.0.0.5", 80, "10.0.0.2", 40003),
		sock(1, "10.0.0.5", 45000, "10.0.0.7", 5432), // made by the namespace
		sock(1, "10.0.0.9", 9090, "10.0.0.2", 40004), // another address
		sock(1, "10.0.0.5", 9090, "10.0.0.2", 40005), // nothing listens on 9090 of 10.0.0.5
	}
	seen := map[uint16]bool{}
	if n := countInbound(socks, ip, seen); n != 3 {
		t.Fatalf("counted %d, want 3", n)
	}
	// The listeners closed: their connections still count.
	if n := countInbound(socks[3:], ip, seen); n != 3 {
		t.Fatalf("counted %d once the listeners closed, want 3", n)
	}
}

// InboundTCPConns sees a connection to a server in the namespace from
// the moment it is made until both ends closed it.
func TestInboundTCPConns(t *testing.T) {
	requireRoot(t)
	ns := loopbackNetns(t)
	lo := netip.MustParseAddr("127.0.0.1")
	var listening map[uint16]bool
	count := func() int {
		t.Helper()
		n, err := InboundTCPConns(ns, lo, listening)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, laddr := range []string{"127.0.0.1:0", "[::]:0"} { // IPv4, and a dual-stack listener
		listening = map[uint16]bool{}
		var ln net.Listener
		if err := RunInNetns(ns, func() (err error) { ln, err = net.Listen("tcp", laddr); return err }); err != nil {
			t.Fatal(err)
		}
		if n := count(); n != 0 {
			t.Fatalf("%s: %d connections before any", laddr, n)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		c, err := DialInNetns(context.Background(), ns, "tcp4", netip.AddrPortFrom(lo, uint16(port)).String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if n := count(); n != 1 {
			t.Fatalf("%s: %d connections with one open (the dialling end is not one)", laddr, n)
		}
		ln.Close() // as a graceful shutdown does, before finishing its connections
		if n := count(); n != 1 {
			t.Fatalf("%s: %d connections once the listener closed", laddr, n)
		}
		c.Close()
		if n := count(); n != 1 {
			t.Fatalf("%s: %d connections once the client closed, before the server did", laddr, n)
		}
		s.Close()
		deadline := time.Now().Add(5 * time.Second)
		for count() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: still %d connections after both ends closed", laddr, count())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
