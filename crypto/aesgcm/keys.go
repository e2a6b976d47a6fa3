package aesgcm

import "encoding/binary"

// gfMul8 multiplies in AES's GF(2^8) (modulus x^8+x^4+x^3+x+1).
func gfMul8(a, b byte) byte {
	var p byte
	for b != 0 {
		if b&1 != 0 {
			p ^= a
		}
		carry := a & 0x80
		a <<= 1
		if carry != 0 {
			a ^= 0x1b
		}
		b >>= 1
	}
	return p
}

// sbox is AES's S-box computed from its definition (FIPS-197 5.1.1): the
// multiplicative inverse (0 for 0) followed by the affine map. Only the
// key schedule uses it, once per key, so it needs no table.
func sbox(b byte) byte {
	// b^254 is the inverse of b (and 0 for 0).
	inv := byte(1)
	sq := b
	for e := 254; e != 0; e >>= 1 {
		if e&1 != 0 {
			inv = gfMul8(inv, sq)
		}
		sq = gfMul8(sq, sq)
	}
	rotl := func(x byte, n uint) byte { return x<<n | x>>(8-n) }
	return inv ^ rotl(inv, 1) ^ rotl(inv, 2) ^ rotl(inv, 3) ^ rotl(inv, 4) ^ 0x63
}

// expandKey writes the encryption round keys of key (16 or 32 bytes) to
// rk, 16 bytes per round key in the byte order AESENC takes them, and
// returns the number of rounds (FIPS-197 5.2).
func expandKey(key []byte, rk *[15 * 16]byte) int {
	nk := len(key) / 4
	rounds := nk + 6
	words := 4 * (rounds + 1)
	copy(rk[:], key)
	rcon := byte(1)
	for i := nk; i < words; i++ {
		var t [4]byte
		copy(t[:], rk[4*(i-1):4*i])
		switch {
		case i%nk == 0:
			t = [4]byte{sbox(t[1]) ^ rcon, sbox(t[2]), sbox(t[3]), sbox(t[0])}
			rcon = gfMul8(rcon, 2)
		case nk > 6 && i%nk == 4:
			t = [4]byte{sbox(t[0]), sbox(t[1]), sbox(t[2]), sbox(t[3])}
		}
		for j := range 4 {
			rk[4*i+j] = rk[4*(i-nk)+j] ^ t[j]
		}
	}
	return rounds
}

// ghashMul multiplies x and y in GCM's GF(2^128), both as big-endian
// (high, low) halves of the block, bit 0 of the block being the high bit
// of high (the GCM spec's algorithm 1). Only the key setup uses it.
func ghashMul(x, y [2]uint64) [2]uint64 {
	var z [2]uint64
	v := y
	for i := range 128 {
		bit := x[i/64] >> (63 - uint(i%64)) & 1
		z[0] ^= v[0] & -bit
		z[1] ^= v[1] & -bit
		lsb := v[1] & 1
		v[1] = v[1]>>1 | v[0]<<63
		v[0] = v[0]>>1 ^ 0xe100000000000000&-lsb
	}
	return z
}

// hashTable fills tab with H^16, H^15, ..., H^1 (entries 0..15) in the
// form the assembly multiplies by: the block as a little-endian 128-bit
// integer of its byte-reversed bytes (so bit 127 is the coefficient of
// x^0), times x^-1, so that one carry-less multiply of a block in the same
// form yields the product already aligned for the reduction. Entries
// 16..31 stay zero: a last group of r < 16 blocks starts at entry 16-r
// and the powers it loads past entry 15 meet only zeroed blocks.
func hashTable(h [16]byte, tab *[32 * 16]byte) {
	hv := [2]uint64{binary.BigEndian.Uint64(h[:8]), binary.BigEndian.Uint64(h[8:])}
	p := hv
	for i := 1; i <= 16; i++ {
		hi, lo := p[0], p[1]
		carry := hi >> 63
		hi = hi<<1 | lo>>63
		lo <<= 1
		hi ^= 0xc200000000000000 & -carry
		lo ^= carry
		e := tab[(16-i)*16:]
		binary.LittleEndian.PutUint64(e[:8], lo)
		binary.LittleEndian.PutUint64(e[8:16], hi)
		p = ghashMul(p, hv)
	}
}
