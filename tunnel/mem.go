package tunnel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// MemNetwork is an in-memory UDP network for tests without root: every
// MemUnderlay attached to it has an address, and datagrams written to an
// address are queued at the underlay listening there (or lost, like UDP,
// when nobody is). Like the Linux underlay, the source port of a sent
// datagram is picked from a pool of MemTxPorts ports by the message's flow
// hash. It is safe for concurrent use.
type MemNetwork struct {
	mtu   atomic.Int64
	lost  atomic.Uint64
	mu    sync.RWMutex
	nodes map[netip.AddrPort]*MemUnderlay
}

// MemTxPorts is the size of a MemUnderlay's pool of source ports, which
// start at MemTxPortBase.
const (
	MemTxPorts    = 8
	MemTxPortBase = 49152
)

// memQueueLen is how many datagrams wait at one MemUnderlay before further
// ones are dropped, like a full socket receive buffer.
const memQueueLen = 1024

// NewMemNetwork returns an empty network without an MTU limit.
func NewMemNetwork() *MemNetwork {
	return &MemNetwork{nodes: map[netip.AddrPort]*MemUnderlay{}}
}

// SetMTU sets the IP MTU of the network: a datagram whose UDP payload is
// longer than mtu minus 28 (IPv4 and UDP headers) is refused with
// ErrMessageSize. 0 removes the limit.
func (mn *MemNetwork) SetMTU(mtu int) { mn.mtu.Store(int64(mtu)) }

// Lost returns how many datagrams were sent to an address nobody listens on
// or dropped because the receiver's queue was full.
func (mn *MemNetwork) Lost() uint64 { return mn.lost.Load() }

// Listen attaches an underlay at addr, which receives the datagrams sent to
// it and sends from addr's IP.
func (mn *MemNetwork) Listen(addr netip.AddrPort) (*MemUnderlay, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if !addr.Addr().IsValid() {
		return nil, fmt.Errorf("mem underlay: invalid address %s", addr)
	}
	mn.mu.Lock()
	defer mn.mu.Unlock()
	if mn.nodes[addr] != nil {
		return nil, fmt.Errorf("mem underlay %s: address already in use", addr)
	}
	mu := &MemUnderlay{net: mn, addr: addr, q: make([]memSlot, memQueueLen)}
	mu.cond.L = &mu.mu
	mn.nodes[addr] = mu
	return mu, nil
}

// MemUnderlay is one endpoint of a MemNetwork. It implements Underlay.
type MemUnderlay struct {
	net  *MemNetwork
	addr netip.AddrPort

	mu     sync.Mutex
	cond   sync.Cond
	q      []memSlot // ring of queued datagrams
	head   int
	n      int
	closed bool
	// shut is closed for senders: WriteBatch checks it without taking
	// mu, which ReadBatch holds while it copies a batch out.
	shut atomic.Bool
}

type memSlot struct {
	buf []byte
	src netip.AddrPort
}

// Addr returns the address the underlay listens on.
func (mu *MemUnderlay) Addr() netip.AddrPort { return mu.addr }

// ReadBatch implements Underlay.
func (mu *MemUnderlay) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	mu.mu.Lock()
	defer mu.mu.Unlock()
	for mu.n == 0 && !mu.closed {
		mu.cond.Wait()
	}
	if mu.closed {
		return 0, fmt.Errorf("mem underlay %s: %w", mu.addr, net.ErrClosed)
	}
	k := min(mu.n, len(msgs))
	for i := range k {
		s := &mu.q[mu.head]
		m := &msgs[i]
		copy(m.Buf, s.buf)
		m.N, m.Addr, m.GSOSize = len(s.buf), s.src, 0
		mu.head = (mu.head + 1) % len(mu.q)
		mu.n--
	}
	if mu.n == 0 {
		mu.head = 0 // reuse the slots already allocated
	}
	return k, nil
}

// WriteBatch implements Underlay. It copies every datagram into the
// destination's queue.
func (mu *MemUnderlay) WriteBatch(msgs []Message) (int, error) {
	mtu := int(mu.net.mtu.Load())
	var first error
	sent := 0
	for i := range msgs {
		m := &msgs[i]
		m.Err = nil
		// A GSO message is split into its datagrams, as the kernel's UDP
		// segmentation does, so the receiver sees each one.
		seg := len(m.Buf)
		if m.GSOSize > 0 {
			seg = m.GSOSize
		}
		if m.GSOSize > 0 && (m.Segments(len(m.Buf)) > MaxGSOSegments || len(m.Buf) > MaxGSOBytes) {
			m.Err = errGSOTooLarge
		}
		for off := 0; off < len(m.Buf) && m.Err == nil; off += seg {
			d := m.Buf[off:min(off+seg, len(m.Buf))]
			if mtu > 0 && len(d) > mtu-28 {
				m.Err = ErrMessageSize
			} else if !mu.deliver(d, m.Addr, m.Hash) {
				m.Err = net.ErrClosed
			}
		}
		if m.Err != nil {
			first = cmpErr(first, m.Err)
			continue
		}
		sent++
	}
	if first != nil {
		return sent, fmt.Errorf("mem underlay %s: %w", mu.addr, first)
	}
	return sent, nil
}

// errGSOTooLarge is the Message.Err of a GSO message with more datagrams
// or bytes than one UDP segmentation send may carry.
var errGSOTooLarge = errors.New("GSO message exceeds MaxGSOSegments or MaxGSOBytes")

func cmpErr(first, err error) error {
	if first == nil {
		return err
	}
	return first
}

// deliver queues m at its destination; it reports false only when mu
// itself is closed.
func (mu *MemUnderlay) deliver(buf []byte, addr netip.AddrPort, hash uint32) bool {
	if mu.shut.Load() {
		return false
	}
	dst := netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	mu.net.mu.RLock()
	to := mu.net.nodes[dst]
	mu.net.mu.RUnlock()
	if to == nil {
		mu.net.lost.Add(1)
		return true
	}
	src := netip.AddrPortFrom(mu.addr.Addr(), MemTxPortBase+uint16(hash%MemTxPorts))
	to.mu.Lock()
	defer to.mu.Unlock()
	if to.closed || to.n == len(to.q) {
		mu.net.lost.Add(1)
		return true
	}
	s := &to.q[(to.head+to.n)%len(to.q)]
	if cap(s.buf) < len(buf) {
		s.buf = make([]byte, len(buf), max(len(buf), 2048))
	}
	s.buf = s.buf[:len(buf)]
	copy(s.buf, buf)
	s.src = src
	to.n++
	to.cond.Signal()
	return true
}

// Close detaches the underlay and unblocks ReadBatch.
func (mu *MemUnderlay) Close() error {
	mu.net.mu.Lock()
	if mu.net.nodes[mu.addr] == mu {
		delete(mu.net.nodes, mu.addr)
	}
	mu.net.mu.Unlock()
	mu.shut.Store(true)
	mu.mu.Lock()
	mu.closed = true
	mu.cond.Broadcast()
	mu.mu.Unlock()
	return nil
}

var _ Underlay = (*MemUnderlay)(nil)
