package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// wireVersion is the first byte of every message vxmesh sends through
// memberlist. A receiver rejects versions it does not know.
const wireVersion = 1

// Message types.
const (
	msgEntries   = 1 // broadcast: entries that changed
	msgState     = 2 // push/pull: the sender's full table state
	msgClaimReq  = 3 // IPAM: "I claim this block, what do you know about it?"
	msgClaimResp = 4 // IPAM: the answer, with every claim the responder knows for the block
	msgLeave     = 5 // the sender is leaving the cluster (sent before memberlist's leave)
	msgAck       = 6 // the sender merged the msgEntries whose ID this carries
	msgCatchUp   = 7 // after a burst: the digest of the sender's tables (ID); a member whose own differs answers with msgState (Held, its digest in ID), returned if the sender still differs
)

// Limits on decoded fields. They bound what a peer can make us allocate.
const (
	maxNameLen  = 255                   // table and owner names
	maxKeyLen   = 1024                  // entry keys
	maxValueLen = 64 << 10              // entry values
	maxEntries  = 1 << 20               // entries in one message
	minEntryLen = 1 + 1 + 1 + 1 + 1 + 1 // empty strings, zero version, flags
)

// Entry flags on the wire.
const flagDeleted = 1

// message is the decoded form of every vxmesh gossip message. Fields a type
// does not use are zero.
type message struct {
	Type    byte
	ID      uint64 // claim request/response id; acknowledgement id of msgEntries and msgAck; table digest of msgCatchUp and of a msgState that is a catch-up answer
	Clock   uint64 // sender's Lamport clock
	Held    bool   // claim response: responder holds a settled claim on the block; msgCatchUp: an answer, the same digest; msgState: a catch-up answer, to be returned when ID differs from the merged state's digest
	From    string // sender node name
	Entries []Entry
	// Marks are the sender's per-table watermarks of reaped tombstones
	// (push/pull state only), sorted by table.
	Marks []mark
}

// mark is a table's watermark: the highest version of a tombstone reaped
// there. An entry of that table no newer than it, for a key with no record,
// is a replay of a deleted entry.
type mark struct {
	Table   string
	Version uint64
}

// maxMarks bounds the watermarks in one message.
const maxMarks = 4096

var errShort = errors.New("truncated message")

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendEntry(b []byte, e *Entry) []byte {
	b = appendString(b, e.Table)
	b = appendString(b, e.Key)
	b = appendString(b, e.Owner)
	b = binary.AppendUvarint(b, uint64(len(e.Value)))
	b = append(b, e.Value...)
	b = binary.AppendUvarint(b, e.Version)
	var f byte
	if e.Deleted {
		f |= flagDeleted
	}
	return append(b, f)
}

// encode serialises m. Entries must respect the field limits (Put checks them).
func (m *message) encode() []byte {
	b := make([]byte, 0, 32+len(m.Entries)*64)
	b = append(b, wireVersion, m.Type)
	b = binary.AppendUvarint(b, m.ID)
	b = binary.AppendUvarint(b, m.Clock)
	var f byte
	if m.Held {
		f = 1
	}
	b = append(b, f)
	b = appendString(b, m.From)
	b = binary.AppendUvarint(b, uint64(len(m.Entries)))
	for i := range m.Entries {
		b = appendEntry(b, &m.Entries[i])
	}
	if m.Type == msgState {
		b = binary.AppendUvarint(b, uint64(len(m.Marks)))
		for _, mk := range m.Marks {
			b = appendString(b, mk.Table)
			b = binary.AppendUvarint(b, mk.Version)
		}
	}
	return b
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 1 {
		d.err = errShort
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

// bytes returns the next length-prefixed field (aliasing the input) after
// checking its length against max and against what is left.
func (d *decoder) bytes(max int, what string) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(max) {
		d.err = fmt.Errorf("%s length %d exceeds %d", what, n, max)
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errShort
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

// decode parses a message received from a peer. It never panics, copies what
// it keeps, and allocates at most in proportion to len(b).
func decode(b []byte) (*message, error) {
	if len(b) < 2 {
		return nil, errShort
	}
	if b[0] != wireVersion {
		return nil, fmt.Errorf("unsupported message version %d", b[0])
	}
	m := &message{Type: b[1]}
	if m.Type < msgEntries || m.Type > msgCatchUp {
		return nil, fmt.Errorf("unknown message type %d", m.Type)
	}
	d := &decoder{b: b[2:]}
	m.ID = d.uvarint()
	m.Clock = d.uvarint()
	f := d.byte()
	m.Held = f&1 != 0
	m.From = string(d.bytes(maxNameLen, "sender name"))
	n := d.uvarint()
	if d.err != nil {
		return nil, d.err
	}
	if n > maxEntries || n > uint64(len(d.b)/minEntryLen) {
		return nil, fmt.Errorf("entry count %d exceeds message size", n)
	}
	m.Entries = make([]Entry, 0, n)
	for i := uint64(0); i < n; i++ {
		var e Entry
		e.Table = string(d.bytes(maxNameLen, "table name"))
		e.Key = string(d.bytes(maxKeyLen, "key"))
		e.Owner = string(d.bytes(maxNameLen, "owner"))
		if v := d.bytes(maxValueLen, "value"); len(v) > 0 {
			e.Value = append([]byte(nil), v...)
		}
		e.Version = d.uvarint()
		e.Deleted = d.byte()&flagDeleted != 0
		if d.err != nil {
			return nil, d.err
		}
		if e.Table == "" || e.Owner == "" {
			return nil, errors.New("entry without table or owner")
		}
		m.Entries = append(m.Entries, e)
	}
	if m.Type == msgState {
		n := d.uvarint()
		if d.err != nil {
			return nil, d.err
		}
		if n > maxMarks || n > uint64(len(d.b)/2) {
			return nil, fmt.Errorf("watermark count %d exceeds message size", n)
		}
		for i := uint64(0); i < n; i++ {
			mk := mark{Table: string(d.bytes(maxNameLen, "table name"))}
			mk.Version = d.uvarint()
			if d.err != nil {
				return nil, d.err
			}
			m.Marks = append(m.Marks, mk)
		}
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%d trailing bytes", len(d.b))
	}
	return m, nil
}

// metaVersion is the first byte of the memberlist node meta.
const metaVersion = 1

// encodeMeta serialises the node meta carried by memberlist.
func encodeMeta(nm NodeMeta) []byte {
	b := []byte{metaVersion}
	if nm.DataAddr.IsValid() {
		ab, _ := nm.DataAddr.MarshalBinary()
		b = append(b, ab...)
	}
	return b
}

// decodeMeta parses node meta received from a peer.
func decodeMeta(b []byte) (NodeMeta, error) {
	var nm NodeMeta
	if len(b) == 0 {
		return nm, nil // a node that publishes no meta
	}
	if b[0] != metaVersion {
		return nm, fmt.Errorf("unsupported node meta version %d", b[0])
	}
	if len(b) == 1 {
		return nm, nil
	}
	var ap netip.AddrPort
	if err := ap.UnmarshalBinary(b[1:]); err != nil {
		return nm, fmt.Errorf("node meta: %w", err)
	}
	nm.DataAddr = ap
	return nm, nil
}
