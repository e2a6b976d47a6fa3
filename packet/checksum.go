package packet

import (
	"encoding/binary"
	"net/netip"
)

// Sum adds b to the running ones'-complement sum acc (RFC 1071) and returns
// the new, unfolded sum. An odd trailing byte is padded with zero, so every
// b but the last one summed must have an even length.
func Sum(b []byte, acc uint64) uint64 {
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		acc += v >> 32
		acc += v & 0xffffffff
		b = b[8:]
	}
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// Fold folds a running sum to 16 bits and returns its ones' complement: the
// value to store in a checksum field.
func Fold(acc uint64) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}

// Checksum returns the Internet checksum of b (RFC 1071). Computed over data
// that includes a correct checksum field, it returns 0.
func Checksum(b []byte) uint16 { return Fold(Sum(b, 0)) }

// PseudoHeaderSum returns the running sum of the TCP/UDP pseudo-header for
// src and dst (both IPv4 or both IPv6), protocol proto and upper-layer
// length n. Continue it with Sum over the transport header and payload.
func PseudoHeaderSum(src, dst netip.Addr, proto uint8, n int) uint64 {
	acc := uint64(proto) + uint64(n)
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		return Sum(d[:], Sum(s[:], acc))
	}
	s, d := src.As16(), dst.As16()
	return Sum(d[:], Sum(s[:], acc))
}

// UpdateChecksum16 returns checksum hc updated for one 16-bit word of the
// covered data changing from old to new, without touching the rest of the
// data (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
func UpdateChecksum16(hc, old, new uint16) uint16 {
	acc := uint64(^hc) + uint64(^old) + uint64(new)
	return Fold(acc)
}

// UpdateChecksumAddr returns checksum hc updated for an address in the
// covered data changing from old to new (IPv4 header, or a TCP/UDP
// pseudo-header for NAT). Both addresses must be of the same family.
func UpdateChecksumAddr(hc uint16, old, new netip.Addr) uint16 {
	acc := uint64(^hc)
	if old.Is4() {
		o, n := old.As4(), new.As4()
		for i := 0; i < 4; i += 2 {
			acc += uint64(^binary.BigEndian.Uint16(o[i:])) + uint64(binary.BigEndian.Uint16(n[i:]))
		}
		return Fold(acc)
	}
	o, n := old.As16(), new.As16()
	for i := 0; i < 16; i += 2 {
		acc += uint64(^binary.BigEndian.Uint16(o[i:])) + uint64(binary.BigEndian.Uint16(n[i:]))
	}
	return Fold(acc)
}
