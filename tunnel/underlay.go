package tunnel

import (
	"errors"
	"net/netip"
)

// The outer UDP source ports of VXLAN datagrams (the Linux underlay's
// transmit sockets, the kernel tunnel's super-packets): the dynamic ports
// (RFC 6335), where RFC 7348 section 5 wants them. The kernel's ephemeral
// ports (net.ipv4.ip_local_port_range, 32768-60999 by default) are not all
// in it.
const (
	txPortMin = 49152
	txPortMax = 65535
)

// Message is one UDP datagram moved by an Underlay. A slice of Messages is
// owned by the caller and reused for every batch, so moving datagrams does
// not allocate.
type Message struct {
	// Buf holds the UDP payload. ReadBatch receives into Buf (the caller
	// provides it); WriteBatch sends Buf as is.
	Buf []byte
	// N is the length of the received datagram after ReadBatch. N greater
	// than len(Buf) means the datagram was truncated and must be dropped.
	N int
	// Addr is the source of a received datagram, or the destination of one
	// to send.
	Addr netip.AddrPort
	// Hash is the inner flow hash of a datagram to send; the underlay
	// derives the outer UDP source port from it, so one flow keeps one
	// source port and different flows spread over ECMP paths and RSS
	// queues.
	Hash uint32
	// GSOSize, when positive, says Buf holds several datagrams laid out
	// back to back, each GSOSize bytes long except possibly the last,
	// shorter one, all to Addr (UDP segmentation offload on send, UDP GRO
	// on receive: then N bytes of Buf are such datagrams). 0 means Buf is
	// one datagram. WriteBatch sends such a message as len(Buf)/GSOSize
	// (rounded up) datagrams, with one UDP_SEGMENT send where the kernel
	// supports it; ReadBatch sets it for a coalesced read.
	GSOSize int
	// Err is set by WriteBatch for a datagram that was not sent (nil for a
	// sent one). ErrMessageSize means it exceeded the path MTU.
	Err error
}

// MaxGSOSegments is the most datagrams one Message may carry with GSOSize
// (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels), and
// MaxGSOBytes the most bytes: the UDP payload of one IPv4 datagram.
const (
	MaxGSOSegments = 64
	MaxGSOBytes    = 65535 - 20 - 8
)

// Segments returns how many datagrams m carries (see GSOSize) within n
// bytes of its Buf.
func (m *Message) Segments(n int) int {
	if m.GSOSize <= 0 || n <= m.GSOSize {
		return 1
	}
	return (n + m.GSOSize - 1) / m.GSOSize
}

// Underlay is the UDP transport a VTEP sends and receives VXLAN datagrams
// with. ReadBatch is called by one goroutine at a time; WriteBatch may be
// called concurrently, and concurrently with ReadBatch and Close.
type Underlay interface {
	// ReadBatch blocks until at least one datagram arrives, then fills
	// msgs[i].N and msgs[i].Addr for up to len(msgs) datagrams and returns
	// how many it filled. After Close it returns an error matching
	// net.ErrClosed.
	ReadBatch(msgs []Message) (int, error)
	// WriteBatch sends every message to its Addr and returns how many were
	// sent. A datagram that cannot be sent gets Err set and is skipped; the
	// returned error then describes the first failure.
	WriteBatch(msgs []Message) (int, error)
	// Close releases the underlay and unblocks ReadBatch.
	Close() error
}

// MultiQueueUnderlay is an Underlay with several receive queues (UDP with
// RxSockets > 1), each read by its own loop: VTEP.Run starts one per queue
// when RxQueues() > 1. Each queue is read by one goroutine at a time.
type MultiQueueUnderlay interface {
	Underlay
	// RxQueues returns the number of receive queues.
	RxQueues() int
	// ReadBatchQueue is ReadBatch on queue q.
	ReadBatchQueue(q int, msgs []Message) (int, error)
}

// ErrMessageSize is the Message.Err of a datagram larger than the path MTU.
// The underlay never fragments: such a datagram is dropped and counted as
// an "mtu" drop.
var ErrMessageSize = errors.New("message too long for the underlay MTU")
