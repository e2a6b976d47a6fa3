package cluster

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// What vxmesh's memberlist configuration puts on the wire. Gossip is always
// encrypted, with memberlist's encryption version 1 (AES-GCM, no padding):
// a UDP packet is [version][nonce][ciphertext+tag]; a stream starts with the
// encrypted-message type byte and a 4-byte length, then the same layout.
const (
	mlEncryptMsg     = 10 // memberlist's encryptMsg message type
	mlEncryptVersion = 1
	mlMinPacket      = 1 + 12 + 16 // version, nonce, GCM tag
	mlStreamHead     = 1 + 4 + 1   // type, length, version
)

var errGossipVersion = errors.New("gossip not encrypted with encryption version 1")

// guardedTransport is memberlist's NetTransport with a filter in front of
// memberlist: packets and streams that do not start the way vxmesh's own
// gossip does never reach it. memberlist v0.5.4 panics decrypting an
// authentic encryption-version-0 message whose padding byte is out of
// range, and vxmesh never sends version 0.
type guardedTransport struct {
	*memberlist.NetTransport
	refuse  func(from net.Addr)
	packets chan *memberlist.Packet
	streams chan net.Conn
	stop    chan struct{} // closed first by Shutdown
	down    chan struct{} // closed once the NetTransport has shut down
	wg      sync.WaitGroup
	once    sync.Once
	// dropStream, when set (tests only), is asked about every accepted
	// stream; true closes it unread, as a receiver too loaded to read
	// it before its deadline would.
	dropStream atomic.Pointer[func() bool]
}

// newGuardedTransport listens on addr:port. refuse is called for every
// packet and stream dropped.
func newGuardedTransport(nc *memberlist.NetTransportConfig, refuse func(net.Addr)) (*guardedTransport, error) {
	nt, err := memberlist.NewNetTransport(nc)
	if err != nil {
		return nil, err
	}
	g := &guardedTransport{
		NetTransport: nt, refuse: refuse,
		packets: make(chan *memberlist.Packet), streams: make(chan net.Conn),
		stop: make(chan struct{}), down: make(chan struct{}),
	}
	g.wg.Add(2)
	go g.filterPackets()
	go g.filterStreams()
	return g, nil
}

var _ memberlist.NodeAwareTransport = (*guardedTransport)(nil)

// drain discards what the NetTransport still delivers until it has shut
// down: its listeners block on their unbuffered channels otherwise.
func (g *guardedTransport) drain() {
	for {
		select {
		case <-g.NetTransport.PacketCh():
		case c := <-g.NetTransport.StreamCh():
			if c != nil {
				c.Close()
			}
		case <-g.down:
			return
		}
	}
}

func (g *guardedTransport) filterPackets() {
	defer g.wg.Done()
	in := g.NetTransport.PacketCh()
	for {
		select {
		case <-g.stop:
			g.drain()
			return
		case p := <-in:
			if len(p.Buf) < mlMinPacket || p.Buf[0] != mlEncryptVersion {
				g.refuse(p.From)
				continue
			}
			select {
			case g.packets <- p:
			case <-g.stop:
				g.drain()
				return
			}
		}
	}
}

func (g *guardedTransport) filterStreams() {
	defer g.wg.Done()
	in := g.NetTransport.StreamCh()
	for {
		select {
		case <-g.stop:
			g.drain()
			return
		case c := <-in:
			if f := g.dropStream.Load(); f != nil && (*f)() {
				c.Close()
				continue
			}
			select {
			case g.streams <- g.guard(c):
			case <-g.stop:
				c.Close()
				g.drain()
				return
			}
		}
	}
}

// PacketCh returns the packets that passed the filter.
func (g *guardedTransport) PacketCh() <-chan *memberlist.Packet { return g.packets }

// StreamCh returns the accepted streams, checked on their first read.
func (g *guardedTransport) StreamCh() <-chan net.Conn { return g.streams }

// DialTimeout dials a stream whose answer is checked like accepted ones.
func (g *guardedTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	c, err := g.NetTransport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	return g.guard(c), nil
}

// DialAddressTimeout is DialTimeout for memberlist's node-aware callers.
func (g *guardedTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return g.DialTimeout(a.Addr, timeout)
}

// Shutdown stops the filters and the listeners.
func (g *guardedTransport) Shutdown() error {
	var err error
	g.once.Do(func() {
		close(g.stop)
		err = g.NetTransport.Shutdown()
		close(g.down)
		g.wg.Wait()
	})
	return err
}

func (g *guardedTransport) guard(c net.Conn) net.Conn { return &guardedConn{Conn: c, g: g} }

// guardedConn checks the head of what the peer sends before memberlist
// reads any of it. memberlist reads a stream from one goroutine.
type guardedConn struct {
	net.Conn
	g       *guardedTransport
	checked bool
	head    []byte // checked bytes not yet returned
}

func (c *guardedConn) Read(p []byte) (int, error) {
	if !c.checked {
		h := make([]byte, mlStreamHead)
		if _, err := io.ReadFull(c.Conn, h); err != nil {
			return 0, err
		}
		c.checked = true
		if h[0] != mlEncryptMsg || h[mlStreamHead-1] != mlEncryptVersion {
			c.g.refuse(c.RemoteAddr())
			c.Conn.Close()
			return 0, errGossipVersion
		}
		c.head = h
	}
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
