package aesgcm

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"

	"golang.org/x/sys/cpu"
)

// hasVector reports whether this CPU (and its OS) runs the vector code.
var hasVector = cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL && cpu.X86.HasAVX512BW &&
	cpu.X86.HasAVX512VAES && cpu.X86.HasAVX512VPCLMULQDQ && cpu.X86.HasBMI2

// ctrXOR XORs src into dst under the counter-mode key stream of the
// expanded key rk (rounds 10 or 14) starting at the counter block whose
// little-endian words are ivLo and ivHi (counterWords), whose last four
// bytes are a big-endian counter that wraps in 32 bits. len(dst) must be
// at least len(src).
//
//go:noescape
func ctrXOR(rk *[15 * 16]byte, rounds int, ivLo, ivHi uint64, dst, src []byte)

// gcmTag writes GCM's tag to tag: GHASH under the key table tab
// (hashTable) of the AAD, ct and their lengths, XORed with the encryption
// under rk of the counter block j0Lo, j0Hi. The AAD is either the first
// aadLen bytes of the block aadLo, aadHi (aadWords; aad empty) or aad
// (aadLen 0).
//
//go:noescape
func gcmTag(tab *[32 * 16]byte, rk *[15 * 16]byte, rounds int, j0Lo, j0Hi, aadLo, aadHi uint64, aadLen int, aad, ct []byte, tag *[16]byte)

// gcmVector is AES-GCM on the vector code.
type gcmVector struct {
	rk     [15 * 16]byte
	rounds int
	tab    [32 * 16]byte
}

func newVector(key []byte) (cipher.AEAD, error) {
	g := &gcmVector{}
	g.rounds = expandKey(key, &g.rk)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	var h [16]byte
	block.Encrypt(h[:], h[:])
	hashTable(h, &g.tab)
	return g, nil
}

// NonceSize is 12.
func (g *gcmVector) NonceSize() int { return nonceSize }

// Overhead is the tag's 16 bytes.
func (g *gcmVector) Overhead() int { return tagSize }

// The counter block and a short AAD reach the assembly as integers, not
// as bytes in memory: callers such as crypto/esp store the nonce and AAD
// with narrow stores (a 4-byte salt, an 8-byte sequence number) right
// before they seal or open, and a 16-byte or wider load of bytes that
// several recent stores wrote cannot be forwarded from them: it waits
// until they retire. Building the block in memory here (copying the
// nonce, storing the counter byte, loading all 16) stalled the same way
// and was most of the Go side's time in a daemon's profile. So the nonce
// is read as its RFC 4106 parts (4-byte salt, 8-byte IV) and the AAD 4
// bytes at a time, loads that each fall inside one of those stores.

// counterWords returns the counter block nonce || 0 0 0 n as its two
// little-endian 64-bit words.
func counterWords(nonce []byte, n byte) (lo, hi uint64) {
	salt := uint64(binary.LittleEndian.Uint32(nonce[0:4]))
	iv := binary.LittleEndian.Uint64(nonce[4:12])
	return salt | iv<<32, iv>>32 | uint64(n)<<56
}

// aadWords returns an AAD of at most 16 bytes, zero-padded to a block, as
// the block's two little-endian 64-bit words.
func aadWords(aad []byte) (lo, hi uint64) {
	var w [2]uint64
	i := 0
	for ; i+4 <= len(aad); i += 4 {
		w[i>>3] |= uint64(binary.LittleEndian.Uint32(aad[i:])) << ((i & 7) * 8)
	}
	for ; i < len(aad); i++ {
		w[i>>3] |= uint64(aad[i]) << ((i & 7) * 8)
	}
	return w[0], w[1]
}

// tag computes the tag of aad and ct under the nonce into out.
func (g *gcmVector) tag(out, nonce, aad, ct []byte) {
	j0Lo, j0Hi := counterWords(nonce, 1)
	var aadLo, aadHi uint64
	aadLen := 0
	if len(aad) <= 16 {
		aadLo, aadHi = aadWords(aad)
		aadLen, aad = len(aad), nil
	}
	gcmTag(&g.tab, &g.rk, g.rounds, j0Lo, j0Hi, aadLo, aadHi, aadLen, aad, ct, (*[tagSize]byte)(out))
}

// Seal appends the encryption of plaintext and its tag to dst, as
// cipher.AEAD's Seal does.
func (g *gcmVector) Seal(dst, nonce, plaintext, additionalData []byte) []byte {
	if len(nonce) != nonceSize {
		panic("aesgcm: incorrect nonce length given to GCM")
	}
	if uint64(len(plaintext)) > maxPlain {
		panic("aesgcm: message too large for GCM")
	}
	ret, out := sliceForAppend(dst, len(plaintext)+tagSize)
	if overlapsInexactly(out, plaintext) {
		panic("aesgcm: invalid buffer overlap of output and input")
	}
	if overlapsInexactly(out, additionalData) {
		panic("aesgcm: invalid buffer overlap of output and additional data")
	}
	ct := out[:len(plaintext)]
	ivLo, ivHi := counterWords(nonce, 2)
	ctrXOR(&g.rk, g.rounds, ivLo, ivHi, ct, plaintext)
	g.tag(out[len(plaintext):], nonce, additionalData, ct)
	return ret
}

// Open checks the tag of ciphertext and additionalData first and only then
// appends the decryption to dst, as cipher.AEAD's Open does; on a bad tag
// it returns an error and writes nothing.
func (g *gcmVector) Open(dst, nonce, ciphertext, additionalData []byte) ([]byte, error) {
	if len(nonce) != nonceSize {
		panic("aesgcm: incorrect nonce length given to GCM")
	}
	if len(ciphertext) < tagSize || uint64(len(ciphertext)) > maxPlain+tagSize {
		return nil, errOpen
	}
	ct := ciphertext[:len(ciphertext)-tagSize]
	var want [tagSize]byte
	g.tag(want[:], nonce, additionalData, ct)
	ret, out := sliceForAppend(dst, len(ct))
	if overlapsInexactly(out, ciphertext) {
		panic("aesgcm: invalid buffer overlap of output and input")
	}
	if overlapsInexactly(out, additionalData) {
		panic("aesgcm: invalid buffer overlap of output and additional data")
	}
	if !tagsEqual(want[:], ciphertext[len(ct):]) {
		return nil, errOpen
	}
	ivLo, ivHi := counterWords(nonce, 2)
	ctrXOR(&g.rk, g.rounds, ivLo, ivHi, out, ct)
	return ret, nil
}
