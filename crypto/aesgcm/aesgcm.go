// Package aesgcm is AES-GCM (16- or 32-byte keys, 12-byte nonce, 16-byte
// tag) with exactly crypto/cipher's semantics, for the ESP path.
//
// On amd64 CPUs with AVX-512 (F, VL, BW), VAES, VPCLMULQDQ and BMI2, whose
// OS saves the zmm state, New returns an AEAD whose counter mode and GHASH
// run in this package's assembly, 16 blocks (four zmm registers) at a
// time, with masked loads and stores for the tail. Everywhere else, and for
// 24-byte keys, it returns crypto/cipher's GCM over crypto/aes, so the
// results are the same on every machine.
package aesgcm

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"errors"
	"fmt"
	"unsafe"
)

const (
	nonceSize = 12
	tagSize   = 16
	// maxPlain is the longest plaintext one nonce can take: the 32-bit
	// block counter starts at 2 and must not wrap.
	maxPlain = (1<<32 - 2) * aes.BlockSize
)

// errOpen is Open's only error: it says nothing about why.
var errOpen = errors.New("aesgcm: message authentication failed")

// New returns an AES-GCM AEAD for key (16, 24 or 32 bytes) with a 12-byte
// nonce and a 16-byte tag. It uses the vector code when the CPU has it
// and the key is 16 or 32 bytes long, crypto/cipher's GCM otherwise.
func New(key []byte) (cipher.AEAD, error) {
	return newAEAD(key, hasVector)
}

// Implementation names the code New uses for 16- and 32-byte keys on
// this machine: "vaes-avx512" (this package's assembly) or "crypto/cipher".
func Implementation() string {
	if hasVector {
		return "vaes-avx512"
	}
	return "crypto/cipher"
}

// newAEAD is New with the choice of implementation made by the caller:
// the tests run everything against both.
func newAEAD(key []byte, vector bool) (cipher.AEAD, error) {
	switch len(key) {
	case 16, 24, 32:
	default:
		return nil, fmt.Errorf("aesgcm: key length %d (want 16, 24 or 32 bytes)", len(key))
	}
	if vector && len(key) != 24 {
		return newVector(key)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// sliceForAppend extends in by n bytes, reusing its spare capacity when
// there is enough, and returns the whole slice and the n new bytes.
func sliceForAppend(in []byte, n int) (whole, tail []byte) {
	total := len(in) + n
	if cap(in) >= total {
		whole = in[:total]
	} else {
		whole = make([]byte, total)
		copy(whole, in)
	}
	return whole, whole[len(in):]
}

// overlapsInexactly reports whether x and y share memory other than by
// starting at the same address, which in-place sealing and opening
// cannot handle (crypto/cipher panics on it too).
func overlapsInexactly(x, y []byte) bool {
	if len(x) == 0 || len(y) == 0 {
		return false
	}
	xs := &x[0]
	ys := &y[0]
	if xs == ys {
		return false
	}
	x0 := uintptr(unsafe.Pointer(xs))
	y0 := uintptr(unsafe.Pointer(ys))
	return x0 < y0+uintptr(len(y)) && y0 < x0+uintptr(len(x))
}

// tagsEqual compares two tags in constant time.
func tagsEqual(a, b []byte) bool {
	return subtle.ConstantTimeCompare(a, b) == 1
}
