// Package esp seals and opens ESP packets (RFC 4303) with AES-GCM (RFC 4106)
// in place in data-path buffers, with 64-bit extended sequence numbers and
// an RFC 6479-style anti-replay window.
//
// vxmesh carries ESP in UDP on port 4500 (RFC 3948). The cleartext of an ESP
// packet is the UDP datagram that would otherwise have been sent: an inner
// UDP header, the VXLAN header and the inner Ethernet frame, with next
// header 17 (UDP). The bytes on the wire, as the UDP payload, are:
//
//	SPI (4) | sequence number, low 32 bits (4) | IV (8)     <- HeaderLen
//	ciphertext of: inner datagram | padding 1,2,3.. | pad length | next header
//	ICV (16)
//
// The nonce is salt (4) || IV (8); the IV is the 64-bit sequence number, so
// it never repeats under a key. The AAD is SPI || sequence number (low 32
// bits) or, with extended sequence numbers, SPI || high 32 bits || low 32
// bits (RFC 4106 section 5).
//
// Buffer geometry: Seal takes the inner datagram at buf[start:end], writes
// the ESP header into buf[start-HeaderLen:start] and the padding, trailer
// and ICV behind end (at most MaxTrailerLen bytes, within cap(buf);
// packet.Tailroom leaves room for them). Seal and Open also use the
// ScratchLen bytes in front of the ESP header as scratch space for the nonce
// and AAD (the AEAD interface would otherwise move them to the heap) and
// restore them before they return, so callers need HeaderLen+ScratchLen
// bytes of headroom in front of the inner datagram. None of this copies the
// payload.
package esp

import (
	"errors"
	"fmt"
)

// Wire-format lengths.
const (
	// HeaderLen is the length of the ESP header as sent: SPI, low 32 bits
	// of the sequence number and the 8-byte explicit IV.
	HeaderLen = 16
	// ICVLen is the length of the AES-GCM integrity check value.
	ICVLen = 16
	// SaltLen is the length of the RFC 4106 salt, the implicit part of the
	// nonce.
	SaltLen = 4
	// IVLen is the length of the explicit IV.
	IVLen = 8
	// MaxPadLen is the largest padding Seal adds: the payload, padding, pad
	// length and next header are aligned to 4 bytes (RFC 4303 2.4).
	MaxPadLen = 3
	// MaxTrailerLen is the most Seal appends behind the cleartext: padding,
	// pad length, next header and ICV.
	MaxTrailerLen = MaxPadLen + 2 + ICVLen
	// MaxOverhead is the most an ESP packet is longer than its cleartext.
	MaxOverhead = HeaderLen + MaxTrailerLen
	// ScratchLen is the number of bytes in front of the ESP header that
	// Seal and Open borrow (and restore) as scratch space.
	ScratchLen = 8
	// MinLen is the length of the shortest valid ESP packet: header,
	// pad length, next header, 2 bytes of padding for alignment and ICV.
	MinLen = HeaderLen + 4 + ICVLen
	// Port is the IANA port for UDP-encapsulated ESP (RFC 3948).
	Port = 4500
	// ProtoUDP is the next header value of the datagrams vxmesh seals.
	ProtoUDP = 17
	// ProtoNone is the next header of a dummy packet (RFC 4303 2.6), which
	// a receiver discards.
	ProtoNone = 59
)

// Overhead returns how many bytes longer than a cleartext of n bytes its ESP
// packet is.
func Overhead(n int) int { return HeaderLen + padLen(n) + 2 + ICVLen }

// padLen returns the padding for a cleartext of n bytes: payload, padding,
// pad length and next header end on a 4-byte boundary.
func padLen(n int) int { return (4 - (n+2)&3) & 3 }

// Cipher is an ESP encryption transform.
type Cipher uint8

// The supported transforms: AES-GCM with a 16-byte ICV (RFC 4106).
const (
	// AES128GCM is AES-GCM with a 128-bit key ("aes128-gcm", Docker's
	// default).
	AES128GCM Cipher = iota + 1
	// AES256GCM is AES-GCM with a 256-bit key ("aes256-gcm").
	AES256GCM
)

// String returns the name used in flags and API output: "aes128-gcm" or
// "aes256-gcm".
func (c Cipher) String() string {
	switch c {
	case AES128GCM:
		return "aes128-gcm"
	case AES256GCM:
		return "aes256-gcm"
	}
	return fmt.Sprintf("cipher(%d)", uint8(c))
}

// KeyLen returns the key length in bytes (without the salt), or 0 for an
// unknown cipher.
func (c Cipher) KeyLen() int {
	switch c {
	case AES128GCM:
		return 16
	case AES256GCM:
		return 32
	}
	return 0
}

// ParseCipher parses "aes128-gcm" or "aes256-gcm".
func ParseCipher(s string) (Cipher, error) {
	switch s {
	case "aes128-gcm":
		return AES128GCM, nil
	case "aes256-gcm":
		return AES256GCM, nil
	}
	return 0, fmt.Errorf("unknown cipher %q (want aes128-gcm or aes256-gcm)", s)
}

// Reason is why a packet was refused; counters are indexed by it.
type Reason uint8

// Drop reasons.
const (
	// ReasonNone means no drop.
	ReasonNone Reason = iota
	// ReasonAuth is an ICV mismatch: wrong key, or a forged or corrupted
	// packet.
	ReasonAuth
	// ReasonReplay is a sequence number already received or older than
	// the window.
	ReasonReplay
	// ReasonMalformed is a packet too short or misaligned, with a bad
	// trailer or padding, or bounds the buffer cannot hold.
	ReasonMalformed
	// ReasonUnknownSPI is a packet for an SA the receiver does not have.
	ReasonUnknownSPI
	// ReasonSeqExhausted is a send refused because the sequence number
	// space of the SA is used up: it must be rekeyed.
	ReasonSeqExhausted
	// NumReasons is the number of reasons, the length of Stats.Drops.
	NumReasons
)

var reasonNames = [NumReasons]string{"none", "auth", "replay", "malformed", "unknown-spi", "seq-exhausted"}

// String returns the reason's name as shown in counters ("auth", "replay",
// ...).
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// The errors returned by Seal, Open and Table.Open, one per Reason. They are
// never wrapped on the data path, so callers may compare with ==; ReasonOf
// maps them to a Reason for counting.
var (
	// ErrAuth: the ICV did not verify.
	ErrAuth = errors.New("esp: authentication failed")
	// ErrReplay: the sequence number was already received or is older
	// than the replay window.
	ErrReplay = errors.New("esp: replayed or too old sequence number")
	// ErrMalformed: bad length, alignment, padding or buffer bounds.
	ErrMalformed = errors.New("esp: malformed packet")
	// ErrUnknownSPI: no SA for the packet's SPI.
	ErrUnknownSPI = errors.New("esp: unknown SPI")
	// ErrSeqExhausted: the SA sent its last sequence number and must be
	// replaced by one with a new key.
	ErrSeqExhausted = errors.New("esp: sequence number space exhausted, SA must be rekeyed")
)

// ReasonOf returns the drop reason of an error returned by this package, and
// ReasonMalformed for any other non-nil error.
func ReasonOf(err error) Reason {
	switch err {
	case nil:
		return ReasonNone
	case ErrAuth:
		return ReasonAuth
	case ErrReplay:
		return ReasonReplay
	case ErrUnknownSPI:
		return ReasonUnknownSPI
	case ErrSeqExhausted:
		return ReasonSeqExhausted
	}
	switch {
	case errors.Is(err, ErrAuth):
		return ReasonAuth
	case errors.Is(err, ErrReplay):
		return ReasonReplay
	case errors.Is(err, ErrUnknownSPI):
		return ReasonUnknownSPI
	case errors.Is(err, ErrSeqExhausted):
		return ReasonSeqExhausted
	}
	return ReasonMalformed
}
