package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// MemNetwork is an in-memory gossip network: nodes started with
// Config.Network set exchange memberlist's packets and streams through it
// instead of UDP and TCP sockets, so that a simulation runs many nodes in
// one process without privileges or ports. Packets behave like UDP: a
// packet to an unknown, cut or congested node is lost (and counted).
// Streams are in-memory pipes. Every byte a node sends is counted.
type MemNetwork struct {
	mu    sync.RWMutex
	nodes map[netip.AddrPort]*memTransport
}

// MemStats counts what nodes sent on a MemNetwork: memberlist's UDP
// payloads (packets) and the bytes written to TCP-like streams, without
// IP, UDP or TCP headers.
type MemStats struct {
	Packets     uint64 // packets sent
	PacketBytes uint64 // bytes of the packets sent
	Streams     uint64 // streams opened
	StreamBytes uint64 // bytes written to streams
	Lost        uint64 // packets sent that were not delivered
}

// Bytes is everything sent: packet and stream bytes.
func (s MemStats) Bytes() uint64 { return s.PacketBytes + s.StreamBytes }

// Sub returns s minus an earlier snapshot o.
func (s MemStats) Sub(o MemStats) MemStats {
	return MemStats{
		Packets: s.Packets - o.Packets, PacketBytes: s.PacketBytes - o.PacketBytes,
		Streams: s.Streams - o.Streams, StreamBytes: s.StreamBytes - o.StreamBytes,
		Lost: s.Lost - o.Lost,
	}
}

// memQueue is how many packets a node's receive queue holds before
// further packets to it are lost, like a socket's receive buffer.
const memQueue = 4096

// NewMemNetwork returns an empty in-memory network.
func NewMemNetwork() *MemNetwork {
	return &MemNetwork{nodes: map[netip.AddrPort]*memTransport{}}
}

// Stats returns the totals of every node that ever attached.
func (n *MemNetwork) Stats() MemStats {
	n.mu.RLock()
	defer n.mu.RUnlock()
	var s MemStats
	for _, t := range n.nodes {
		ts := t.stats()
		s.Packets += ts.Packets
		s.PacketBytes += ts.PacketBytes
		s.Streams += ts.Streams
		s.StreamBytes += ts.StreamBytes
		s.Lost += ts.Lost
	}
	return s
}

// NodeStats returns what the node at addr sent.
func (n *MemNetwork) NodeStats(addr netip.AddrPort) MemStats {
	n.mu.RLock()
	t := n.nodes[addr]
	n.mu.RUnlock()
	if t == nil {
		return MemStats{}
	}
	return t.stats()
}

// Cut makes the node at addr unreachable (cut is true) or reachable
// again: every packet to or from it is lost and streams fail, as if its
// host had lost the network or its process had frozen.
func (n *MemNetwork) Cut(addr netip.AddrPort, cut bool) {
	n.mu.RLock()
	t := n.nodes[addr]
	n.mu.RUnlock()
	if t != nil {
		t.cut.Store(cut)
	}
}

// attach creates the transport of the node at addr.
func (n *MemNetwork) attach(addr netip.AddrPort) (*memTransport, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if old := n.nodes[addr]; old != nil && !old.isClosed() {
		return nil, fmt.Errorf("address %s already in use on the in-memory network", addr)
	}
	t := &memTransport{
		net: n, addr: addr,
		packets: make(chan *memberlist.Packet, memQueue),
		streams: make(chan net.Conn),
		stop:    make(chan struct{}),
	}
	n.nodes[addr] = t
	return t, nil
}

func (n *MemNetwork) peer(a memberlist.Address) *memTransport {
	ap, err := netip.ParseAddrPort(a.Addr)
	if err != nil {
		return nil
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.nodes[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())]
}

// memTransport is one node's memberlist transport on a MemNetwork.
type memTransport struct {
	net     *MemNetwork
	addr    netip.AddrPort
	packets chan *memberlist.Packet
	streams chan net.Conn
	stop    chan struct{}
	once    sync.Once
	cut     atomic.Bool

	sent, sentBytes, opened, streamBytes, lost atomic.Uint64
}

var _ memberlist.NodeAwareTransport = (*memTransport)(nil)

func (t *memTransport) stats() MemStats {
	return MemStats{
		Packets: t.sent.Load(), PacketBytes: t.sentBytes.Load(),
		Streams: t.opened.Load(), StreamBytes: t.streamBytes.Load(), Lost: t.lost.Load(),
	}
}

func (t *memTransport) isClosed() bool {
	select {
	case <-t.stop:
		return true
	default:
		return false
	}
}

// FinalAdvertiseAddr returns the node's address on the network.
func (t *memTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return t.addr.Addr().AsSlice(), int(t.addr.Port()), nil
}

// WriteTo sends a packet to addr.
func (t *memTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress sends a packet; like UDP, a lost packet is no error.
func (t *memTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	t.sent.Add(1)
	t.sentBytes.Add(uint64(len(b)))
	dst := t.net.peer(a)
	if dst == nil || t.cut.Load() || dst.cut.Load() || dst.isClosed() {
		t.lost.Add(1)
		return now, nil
	}
	p := &memberlist.Packet{Buf: append([]byte(nil), b...), From: net.UDPAddrFromAddrPort(t.addr), Timestamp: now}
	select {
	case dst.packets <- p:
	default:
		t.lost.Add(1)
	}
	return now, nil
}

// PacketCh returns the packets received.
func (t *memTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

// DialTimeout opens a stream to addr.
func (t *memTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

var errMemRefused = errors.New("connection refused")

// DialAddressTimeout opens a stream; the peer's end is delivered on its
// StreamCh.
func (t *memTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	dst := t.net.peer(a)
	if dst == nil || t.cut.Load() || dst.cut.Load() {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errMemRefused}
	}
	t.opened.Add(1)
	local, remote := net.Pipe()
	mine := &memConn{Conn: local, local: t.addr, remote: dst.addr, sent: &t.streamBytes}
	theirs := &memConn{Conn: remote, local: dst.addr, remote: t.addr, sent: &dst.streamBytes}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case dst.streams <- theirs:
		return mine, nil
	case <-dst.stop:
	case <-t.stop:
	case <-timer.C:
	}
	local.Close()
	remote.Close()
	return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errMemRefused}
}

// StreamCh returns the streams accepted.
func (t *memTransport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown detaches the node; packets to it are lost from now on.
func (t *memTransport) Shutdown() error {
	t.once.Do(func() { close(t.stop) })
	return nil
}

// memConn is one end of a stream, counting the bytes written to it.
type memConn struct {
	net.Conn
	local, remote netip.AddrPort
	sent          *atomic.Uint64
}

func (c *memConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.sent.Add(uint64(n))
	return n, err
}

func (c *memConn) LocalAddr() net.Addr  { return net.TCPAddrFromAddrPort(c.local) }
func (c *memConn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }
