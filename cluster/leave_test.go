package cluster

import (
	"net"
	"syscall"
	"testing"
	"time"
)

// TestLeaveBounded: a peer that stopped answering TCP (a host under load,
// a peer stopping at the same time) does not hold Leave past its timeout:
// the daemon's shutdown is bounded.
func TestLeaveBounded(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2, func(c *Config) {
		c.TCPTimeout = 10 * time.Second
		c.ProbeInterval = 10 * time.Second // n2 stays alive to n1 meanwhile
	})
	blackhole(t, nodes[1])
	if memberState(nodes[0], "n2") != StateAlive {
		t.Skip("n1 already saw n2 fail")
	}
	start := time.Now()
	nodes[0].Leave(500 * time.Millisecond)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Leave(500ms) took %v with a peer that does not answer", d)
	}
}

// TestCloseBounded: a rejoin stuck dialling a peer that does not answer
// does not hold Close for the dial's TCPTimeout.
func TestCloseBounded(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2, func(c *Config) { c.TCPTimeout = 10 * time.Second })
	blackhole(t, nodes[1])
	waitFor(t, 10*time.Second, "a rejoin of the lost peer in progress", func() bool {
		return memberState(nodes[0], "n2") != StateAlive && nodes[0].reconnectOn.Load()
	})
	start := time.Now()
	nodes[0].Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v with a rejoin stuck dialling", d)
	}
}

// blackhole stops n and takes its gossip port with a listener whose queue
// is full, so that every further SYN to it is dropped: a peer that stopped
// answering TCP. The test is skipped if the port cannot be taken or the
// queue does not fill.
func blackhole(t *testing.T, n *testNode) {
	t.Helper()
	n.Close()
	// A listener with a backlog of 0 whose queue is full drops every
	// further SYN.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: n.port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Skipf("cannot take the stopped peer's port: %v", err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		c, err := net.DialTimeout("tcp4", n.addr(), 200*time.Millisecond)
		if err != nil {
			return
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("the listener's queue never filled")
}
