package esp

import (
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/crypto/aesgcm"
)

var be = binary.BigEndian

// SA holds the parameters of one direction of a security association. It is
// the input of NewOutboundSA and NewInboundSA; the SA objects keep the
// expanded key only, never these bytes. SA's String and Format never print
// the key or salt.
type SA struct {
	// SPI identifies the SA on the wire; 0 and 1..255 are reserved (RFC
	// 4303 2.1) and refused.
	SPI uint32
	// Cipher is AES128GCM or AES256GCM. Zero means: from len(Key).
	Cipher Cipher
	// Key is the AES key: 16 bytes for AES128GCM, 32 for AES256GCM.
	Key []byte
	// Salt is the implicit 4-byte part of the nonce (RFC 4106 8.1: the
	// last 4 bytes of the keying material).
	Salt [SaltLen]byte
	// NoESN selects 32-bit sequence numbers (no extended sequence
	// numbers). vxmesh always uses ESN; this is for interoperability tests
	// and the published test vectors.
	NoESN bool
}

// String describes the SA without its key material.
func (sa SA) String() string {
	esn := "esn"
	if sa.NoESN {
		esn = "no-esn"
	}
	c := sa.Cipher
	if c == 0 {
		c, _ = cipherFor(len(sa.Key))
	}
	return fmt.Sprintf("spi 0x%08x %s %s key [redacted]", sa.SPI, c, esn)
}

// GoString is String, so %#v does not print the key either.
func (sa SA) GoString() string { return sa.String() }

// Format writes String for every verb, so no verb prints the key.
func (sa SA) Format(f fmt.State, _ rune) { io.WriteString(f, sa.String()) }

func cipherFor(keyLen int) (Cipher, bool) {
	switch keyLen {
	case 16:
		return AES128GCM, true
	case 32:
		return AES256GCM, true
	}
	return 0, false
}

// params validates sa and builds its AEAD. checkSPI is false only for the
// published test vectors, some of which use reserved SPIs.
func (sa SA) params(checkSPI bool) (cipher.AEAD, Cipher, error) {
	if checkSPI && sa.SPI < 256 {
		return nil, 0, fmt.Errorf("esp: SPI %d is reserved (0..255)", sa.SPI)
	}
	c := sa.Cipher
	if c == 0 {
		var ok bool
		if c, ok = cipherFor(len(sa.Key)); !ok {
			return nil, 0, fmt.Errorf("esp: key length %d (want 16 or 32)", len(sa.Key))
		}
	}
	if c.KeyLen() == 0 {
		return nil, 0, fmt.Errorf("esp: unknown %v", c)
	}
	if len(sa.Key) != c.KeyLen() {
		return nil, 0, fmt.Errorf("esp: %v needs a %d-byte key, have %d bytes", c, c.KeyLen(), len(sa.Key))
	}
	aead, err := aesgcm.New(sa.Key) // 12-byte nonce, 16-byte tag
	if err != nil {
		return nil, 0, err
	}
	return aead, c, nil
}

// Stats are the counters of one SA, as shown by network inspect. They
// contain no key material.
type Stats struct {
	SPI    uint32
	Cipher Cipher
	ESN    bool
	// Packets and Bytes count packets sealed (outbound) or opened and
	// accepted (inbound), and the bytes of their cleartext (the inner UDP
	// datagrams).
	Packets, Bytes uint64
	// Seq is, outbound, the last sequence number used; inbound, the
	// highest authenticated sequence number.
	Seq uint64
	// Drops counts refused packets by reason.
	Drops [NumReasons]uint64
}

// counters are the atomic counters shared by both directions.
type counters struct {
	packets, bytes atomic.Uint64
	drops          [NumReasons]atomic.Uint64
}

func (c *counters) drop(r Reason, err error) error {
	c.drops[r].Add(1)
	return err
}

func (c *counters) fill(s *Stats) {
	s.Packets, s.Bytes = c.packets.Load(), c.bytes.Load()
	for i := range s.Drops {
		s.Drops[i] = c.drops[i].Load()
	}
}

// Outbound is the sending side of an SA. Seal may be called concurrently
// from any number of goroutines: each call takes the next sequence number
// with one atomic operation.
type Outbound struct {
	aead   cipher.AEAD
	spi    uint32
	cipher Cipher
	esn    bool
	salt   [SaltLen]byte
	max    uint64        // last sequence number that may be sent
	seq    atomic.Uint64 // last sequence number taken
	c      counters
}

// NewOutbound returns the sending side of an ESN SA with the given SPI, key
// (16 bytes: aes128-gcm, 32 bytes: aes256-gcm) and 4-byte salt.
func NewOutbound(spi uint32, key, salt []byte) (*Outbound, error) {
	sa, err := newSA(spi, key, salt)
	if err != nil {
		return nil, err
	}
	return NewOutboundSA(sa)
}

// NewOutboundSA returns the sending side of sa. Its first packet has
// sequence number 1.
func NewOutboundSA(sa SA) (*Outbound, error) { return newOutbound(sa, true) }

func newOutbound(sa SA, checkSPI bool) (*Outbound, error) {
	aead, c, err := sa.params(checkSPI)
	if err != nil {
		return nil, err
	}
	o := &Outbound{aead: aead, spi: sa.SPI, cipher: c, esn: !sa.NoESN, salt: sa.Salt, max: 1<<64 - 1}
	if sa.NoESN {
		o.max = 1<<32 - 1
	}
	return o, nil
}

func newSA(spi uint32, key, salt []byte) (SA, error) {
	if len(salt) != SaltLen {
		return SA{}, fmt.Errorf("esp: salt length %d (want %d)", len(salt), SaltLen)
	}
	sa := SA{SPI: spi, Key: key}
	copy(sa.Salt[:], salt)
	return sa, nil
}

// SPI returns the SA's SPI.
func (o *Outbound) SPI() uint32 { return o.spi }

// Seq returns the last sequence number used (0 before the first Seal).
func (o *Outbound) Seq() uint64 { return o.seq.Load() }

// Stats returns a snapshot of the SA's counters.
func (o *Outbound) Stats() Stats {
	s := Stats{SPI: o.spi, Cipher: o.cipher, ESN: o.esn, Seq: min(o.seq.Load(), o.max)}
	o.c.fill(&s)
	return s
}

// nextSeq takes the next sequence number, or reports false once the last
// one was taken: sequence numbers, and so IVs, never repeat.
func (o *Outbound) nextSeq() (uint64, bool) {
	for {
		cur := o.seq.Load()
		if cur >= o.max {
			return 0, false
		}
		if o.seq.CompareAndSwap(cur, cur+1) {
			return cur + 1, true
		}
	}
}

// Seal turns the cleartext buf[start:end] (the inner UDP datagram) into an
// ESP packet in place and returns its bounds: buf[espStart:espEnd] is the
// UDP payload to send, espStart = start-HeaderLen and espEnd <=
// end+MaxTrailerLen.
//
// It needs start >= HeaderLen+ScratchLen and end+MaxTrailerLen <= cap(buf)
// (precisely end+Overhead(end-start)-HeaderLen); bytes of buf beyond len(buf)
// but within its capacity are written, and the caller reslices to espEnd.
// The bytes buf[start-HeaderLen-ScratchLen:start-HeaderLen] are used as
// scratch and restored before Seal returns; nothing outside
// buf[espStart:espEnd] is modified when it returns.
//
// Errors: ErrMalformed (bounds), ErrSeqExhausted (the SA sent 2^64-1
// packets, or 2^32-1 without ESN: install an SA with a new key). Seal does
// not allocate and is safe for concurrent use.
func (o *Outbound) Seal(buf []byte, start, end int) (espStart, espEnd int, err error) {
	return o.seal(buf, start, end, ProtoUDP, nil)
}

// seal is Seal with the next header and, for the published test vectors
// only, a given IV (nil: the sequence number).
func (o *Outbound) seal(buf []byte, start, end int, nextHeader byte, iv []byte) (int, int, error) {
	if start < HeaderLen+ScratchLen || end < start {
		return 0, 0, o.c.drop(ReasonMalformed, ErrMalformed)
	}
	pad := padLen(end - start)
	ctEnd := end + pad + 2
	if ctEnd+ICVLen > cap(buf) {
		return 0, 0, o.c.drop(ReasonMalformed, ErrMalformed)
	}
	seq, ok := o.nextSeq()
	if !ok {
		return 0, 0, o.c.drop(ReasonSeqExhausted, ErrSeqExhausted)
	}
	b := buf[:cap(buf)]
	putTrailer(b, end, pad, nextHeader)

	h := start - HeaderLen // ESP header
	s := h - ScratchLen    // scratch
	saved := be.Uint64(b[s:h])
	// nonce = b[s:s+12] = salt || IV; the AAD follows it at b[s+12:start].
	nonce := b[s : s+SaltLen+IVLen]
	copy(nonce, o.salt[:])
	if iv == nil {
		be.PutUint64(nonce[SaltLen:], seq)
	} else {
		copy(nonce[SaltLen:], iv)
	}
	var aad []byte
	if o.esn {
		be.PutUint32(b[start-12:], o.spi)
		be.PutUint64(b[start-8:], seq)
		aad = b[start-12 : start]
	} else {
		be.PutUint32(b[start-8:], o.spi)
		be.PutUint32(b[start-4:], uint32(seq))
		aad = b[start-8 : start]
	}
	o.aead.Seal(b[start:start], nonce, b[start:ctEnd], aad)
	ivv := be.Uint64(nonce[SaltLen:])
	be.PutUint64(b[s:h], saved)
	return o.finish(b, h, seq, ivv, end-start), ctEnd + ICVLen, nil
}

// Reserve takes n consecutive sequence numbers for SealReserved and
// returns the first; the others follow it. Reserving the numbers of a run
// of datagrams up front lets several goroutines seal the run's datagrams
// at once while the run is still numbered in the order it is sent. The n
// packets, of bytes bytes of cleartext in all, are counted as sealed here,
// once, rather than by each SealReserved: every number reserved is meant
// to be sealed, and goroutines sealing neighbouring datagrams then do not
// take turns at the counters' cache line. It returns ErrSeqExhausted,
// taking nothing, if fewer than n numbers are left, and ErrMalformed for
// n < 1.
func (o *Outbound) Reserve(n, bytes int) (uint64, error) {
	if n < 1 || bytes < 0 {
		return 0, ErrMalformed
	}
	for {
		cur := o.seq.Load()
		if cur >= o.max || o.max-cur < uint64(n) {
			return 0, o.c.drop(ReasonSeqExhausted, ErrSeqExhausted)
		}
		if o.seq.CompareAndSwap(cur, cur+uint64(n)) {
			o.c.packets.Add(uint64(n))
			o.c.bytes.Add(uint64(bytes))
			return cur + 1, nil
		}
	}
}

// Scratch is the working space (nonce and AAD) of SealReserved, which
// then needs nothing in front of the packet. One Scratch serves one
// goroutine: allocate it once and reuse it (it is on the heap, so a call
// does not allocate).
type Scratch struct {
	nonce [SaltLen + IVLen]byte
	aad   [12]byte
}

// SealReserved is Seal with sequence number seq, taken by Reserve: every
// number Reserve returned must be sealed at most once, or a nonce repeats,
// and Reserve has counted the packet. It uses sc instead of the bytes in
// front of the ESP header, so it needs only start >= HeaderLen, and calls
// sealing neighbouring datagrams of one buffer may run at the same time
// (each with its own Scratch). It writes
// nothing outside the returned bounds. Errors: ErrMalformed (bounds, or a
// seq never reserved).
func (o *Outbound) SealReserved(buf []byte, start, end int, seq uint64, sc *Scratch) (espStart, espEnd int, err error) {
	if start < HeaderLen || end < start || seq == 0 || seq > o.seq.Load() || seq > o.max {
		return 0, 0, o.c.drop(ReasonMalformed, ErrMalformed)
	}
	pad := padLen(end - start)
	ctEnd := end + pad + 2
	if ctEnd+ICVLen > cap(buf) {
		return 0, 0, o.c.drop(ReasonMalformed, ErrMalformed)
	}
	b := buf[:cap(buf)]
	putTrailer(b, end, pad, ProtoUDP)
	nonce := sc.nonce[:]
	copy(nonce, o.salt[:])
	be.PutUint64(nonce[SaltLen:], seq)
	aad := sc.aad[:]
	be.PutUint32(aad, o.spi)
	if o.esn {
		be.PutUint64(aad[4:], seq)
	} else {
		be.PutUint32(aad[4:], uint32(seq))
		aad = aad[:8]
	}
	o.aead.Seal(b[start:start], nonce, b[start:ctEnd], aad)
	h := start - HeaderLen
	putHeader(b[h:], o.spi, seq, seq)
	return h, ctEnd + ICVLen, nil
}

// Inbound is the receiving side of an SA: it authenticates, checks replay
// and decrypts. Open is meant for the one goroutine that receives from the
// underlay, but it is safe for concurrent use: the replay window is checked
// and updated under a mutex, and decryption runs outside it, so a packet
// received twice concurrently is accepted once.
type Inbound struct {
	aead   cipher.AEAD
	spi    uint32
	cipher Cipher
	esn    bool
	salt   [SaltLen]byte
	mu     sync.Mutex
	win    window
	c      counters
}

// NewInbound returns the receiving side of an ESN SA with the given SPI,
// key (16 or 32 bytes) and 4-byte salt.
func NewInbound(spi uint32, key, salt []byte) (*Inbound, error) {
	sa, err := newSA(spi, key, salt)
	if err != nil {
		return nil, err
	}
	return NewInboundSA(sa)
}

// NewInboundSA returns the receiving side of sa.
func NewInboundSA(sa SA) (*Inbound, error) { return newInbound(sa, true) }

func newInbound(sa SA, checkSPI bool) (*Inbound, error) {
	aead, c, err := sa.params(checkSPI)
	if err != nil {
		return nil, err
	}
	return &Inbound{aead: aead, spi: sa.SPI, cipher: c, esn: !sa.NoESN, salt: sa.Salt}, nil
}

// SPI returns the SA's SPI.
func (in *Inbound) SPI() uint32 { return in.spi }

// Stats returns a snapshot of the SA's counters.
func (in *Inbound) Stats() Stats {
	s := Stats{SPI: in.spi, Cipher: in.cipher, ESN: in.esn}
	in.mu.Lock()
	s.Seq = in.win.top
	in.mu.Unlock()
	in.c.fill(&s)
	return s
}

// Open verifies and decrypts the ESP packet buf[start:end] (the UDP payload
// received on the ESP port) in place and returns the bounds of the
// cleartext, buf[innerStart:innerEnd] (the inner UDP datagram), and its
// next header (ProtoUDP for vxmesh; ProtoNone marks a dummy packet to
// discard). innerStart is start+HeaderLen.
//
// Order: the sequence number's high bits are inferred and checked against
// the replay window, the ICV is verified, then the window is updated (so
// forged packets cannot move it) and the padding checked.
//
// It needs start >= ScratchLen and end <= len(buf); the ScratchLen bytes in
// front of start are used as scratch and restored. The ESP header is left as
// received; on success the ciphertext is replaced by the cleartext, on
// failure it may be overwritten.
//
// Errors: ErrMalformed, ErrUnknownSPI (the packet's SPI is not this SA's),
// ErrReplay, ErrAuth. Open does not allocate.
func (in *Inbound) Open(buf []byte, start, end int) (innerStart, innerEnd int, nextHeader byte, err error) {
	if start < ScratchLen || end > len(buf) || end-start < MinLen {
		return 0, 0, 0, in.c.drop(ReasonMalformed, ErrMalformed)
	}
	b := buf[:end]
	spi := be.Uint32(b[start:])
	if spi != in.spi {
		return 0, 0, 0, in.c.drop(ReasonUnknownSPI, ErrUnknownSPI)
	}
	lo := be.Uint32(b[start+4:])
	var seq uint64
	ok := true
	in.mu.Lock()
	if in.esn {
		seq, ok = in.win.infer(lo)
	} else {
		seq = uint64(lo)
	}
	ok = ok && in.win.check(seq)
	in.mu.Unlock()
	if !ok {
		return 0, 0, 0, in.c.drop(ReasonReplay, ErrReplay)
	}

	s := start - ScratchLen
	saved := be.Uint64(b[s:start])
	// nonce = salt || IV at b[start+4:start+16] (the salt over the
	// sequence number, already read); the AAD ends at start+4.
	nonce := b[start+4 : start+HeaderLen]
	copy(nonce, in.salt[:])
	var aad []byte
	if in.esn {
		be.PutUint32(b[s:], spi)
		be.PutUint32(b[s+4:], uint32(seq>>32))
		be.PutUint32(b[start:], lo)
		aad = b[s : start+4]
	} else {
		be.PutUint32(b[s:], spi)
		be.PutUint32(b[s+4:], lo)
		aad = b[s:start]
	}
	ct := b[start+HeaderLen : end]
	pt, aerr := in.aead.Open(ct[:0], nonce, ct, aad)
	be.PutUint64(b[s:start], saved)
	be.PutUint32(b[start:], spi)
	be.PutUint32(b[start+4:], lo)
	if aerr != nil {
		return 0, 0, 0, in.c.drop(ReasonAuth, ErrAuth)
	}

	in.mu.Lock()
	ok = in.win.update(seq)
	in.mu.Unlock()
	if !ok {
		return 0, 0, 0, in.c.drop(ReasonReplay, ErrReplay)
	}

	innerStart = start + HeaderLen
	ptEnd := innerStart + len(pt)
	nextHeader = b[ptEnd-1]
	pad := int(b[ptEnd-2])
	innerEnd = ptEnd - 2 - pad
	if innerEnd < innerStart {
		return 0, 0, 0, in.c.drop(ReasonMalformed, ErrMalformed)
	}
	for i := range pad {
		if b[innerEnd+i] != byte(i+1) {
			return 0, 0, 0, in.c.drop(ReasonMalformed, ErrMalformed)
		}
	}
	in.c.packets.Add(1)
	in.c.bytes.Add(uint64(innerEnd - innerStart))
	return innerStart, innerEnd, nextHeader, nil
}

// SPIOf returns the SPI of the UDP-encapsulated ESP packet b, or false if b
// is not one: shorter than an ESP header, or starting with the 4 zero bytes
// of the non-ESP marker of IKE (RFC 3948 2.2). A NAT keepalive (the single
// byte 0xff) is not an ESP packet either.
func SPIOf(b []byte) (uint32, bool) {
	if len(b) < HeaderLen {
		return 0, false
	}
	spi := be.Uint32(b)
	return spi, spi != 0
}

// Table maps SPIs to inbound SAs. It is immutable once built: the control
// plane builds a new Table when SAs change and the receive path swaps it in
// (atomic.Pointer), so lookups take no lock.
type Table struct {
	m map[uint32]*Inbound
}

// NewTable returns a table of sas. Two SAs with the same SPI are an error.
func NewTable(sas ...*Inbound) (*Table, error) {
	t := &Table{m: make(map[uint32]*Inbound, len(sas))}
	for _, sa := range sas {
		if _, dup := t.m[sa.spi]; dup {
			return nil, fmt.Errorf("esp: two inbound SAs with SPI 0x%08x", sa.spi)
		}
		t.m[sa.spi] = sa
	}
	return t, nil
}

// Len returns the number of SAs in t.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return len(t.m)
}

// Lookup returns the SA for spi, or nil. A nil Table has no SAs.
func (t *Table) Lookup(spi uint32) *Inbound {
	if t == nil {
		return nil
	}
	return t.m[spi]
}

// Open finds the SA of the ESP packet buf[start:end] by its SPI and opens the
// packet with it (see Inbound.Open). It returns the SA (nil if none) so the
// caller can attribute the packet to it, and ErrMalformed for a datagram
// that is not ESP or ErrUnknownSPI for an SPI without SA; these two are not
// counted by any SA, the caller counts them.
func (t *Table) Open(buf []byte, start, end int) (sa *Inbound, innerStart, innerEnd int, nextHeader byte, err error) {
	if start < 0 || end > len(buf) || start > end {
		return nil, 0, 0, 0, ErrMalformed
	}
	spi, ok := SPIOf(buf[start:end])
	if !ok {
		return nil, 0, 0, 0, ErrMalformed
	}
	if sa = t.Lookup(spi); sa == nil {
		return nil, 0, 0, 0, ErrUnknownSPI
	}
	innerStart, innerEnd, nextHeader, err = sa.Open(buf, start, end)
	return sa, innerStart, innerEnd, nextHeader, err
}

// putTrailer writes the ESP trailer after a payload ending at end: pad
// bytes 1, 2, ..., the pad length and the next header (RFC 4303 2.4-2.6).
func putTrailer(b []byte, end, pad int, next byte) {
	for i := range pad {
		b[end+i] = byte(i + 1)
	}
	b[end+pad] = byte(pad)
	b[end+pad+1] = next
}

// finish writes the ESP header (SPI, sequence number, IV) at b[h:], counts
// a sealed packet of payload bytes, and returns h.
func (o *Outbound) finish(b []byte, h int, seq, iv uint64, payload int) int {
	putHeader(b[h:], o.spi, seq, iv)
	o.c.packets.Add(1)
	o.c.bytes.Add(uint64(payload))
	return h
}

// putHeader writes the ESP header: SPI, the low 32 bits of the sequence
// number and the IV.
func putHeader(b []byte, spi uint32, seq, iv uint64) {
	be.PutUint32(b, spi)
	be.PutUint32(b[4:], uint32(seq))
	be.PutUint64(b[8:], iv)
}
