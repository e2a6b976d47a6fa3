package tunnel

import (
	"errors"
	"net/netip"
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
	// Err is set by WriteBatch for a datagram that was not sent (nil for a
	// sent one). ErrMessageSize means it exceeded the path MTU.
	Err error
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

// ErrMessageSize is the Message.Err of a datagram larger than the path MTU.
// The underlay never fragments: such a datagram is dropped and counted as
// an "mtu" drop.
var ErrMessageSize = errors.New("message too long for the underlay MTU")
