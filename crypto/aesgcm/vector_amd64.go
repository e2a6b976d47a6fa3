package aesgcm

import (
	"crypto/aes"
	"crypto/cipher"

	"golang.org/x/sys/cpu"
)

// hasVector reports whether this CPU (and its OS) runs the vector code.
var hasVector = cpu.X86.HasAVX512F && cpu.X86.HasAVX512VL && cpu.X86.HasAVX512BW &&
	cpu.X86.HasAVX512VAES && cpu.X86.HasAVX512VPCLMULQDQ && cpu.X86.HasBMI2

// ctrXOR XORs src into dst under the counter-mode key stream of the
// expanded key rk (rounds 10 or 14) starting at the counter block iv,
// whose last four bytes are a big-endian counter that wraps in 32 bits.
// len(dst) must be at least len(src).
//
//go:noescape
func ctrXOR(rk *[15 * 16]byte, rounds int, iv *[16]byte, dst, src []byte)

// gcmTag writes GCM's tag of aad and ct to tag: GHASH under the key
// table tab (hashTable) of aad, ct and their lengths, XORed with the
// encryption of the counter block j0 under rk.
//
//go:noescape
func gcmTag(tab *[32 * 16]byte, rk *[15 * 16]byte, rounds int, j0 *[16]byte, aad, ct []byte, tag *[16]byte)

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

// counter is the counter block nonce || n.
func counter(nonce []byte, n byte) [16]byte {
	var iv [16]byte
	copy(iv[:], nonce)
	iv[15] = n
	return iv
}

// tag computes the tag of aad and ct under the nonce into out.
func (g *gcmVector) tag(out, nonce, aad, ct []byte) {
	j0 := counter(nonce, 1)
	gcmTag(&g.tab, &g.rk, g.rounds, &j0, aad, ct, (*[tagSize]byte)(out))
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
	iv := counter(nonce, 2)
	ctrXOR(&g.rk, g.rounds, &iv, ct, plaintext)
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
	iv := counter(nonce, 2)
	ctrXOR(&g.rk, g.rounds, &iv, out, ct)
	return ret, nil
}
