package aesgcm

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"testing"
)

// impl is one of the two implementations New can return.
type impl struct {
	name   string
	vector bool
}

// impls returns the implementations this machine can run; the vector one
// is left out, with a message, on CPUs without its features.
func impls(t testing.TB) []impl {
	out := []impl{{"fallback", false}}
	if hasVector {
		out = append(out, impl{"vector", true})
	} else {
		t.Log("this CPU lacks AVX-512 F/VL/BW, VAES, VPCLMULQDQ or BMI2: the vector code is not tested")
	}
	return out
}

func mustAEAD(t testing.TB, key []byte, vector bool) cipher.AEAD {
	t.Helper()
	a, err := newAEAD(key, vector)
	if err != nil {
		t.Fatal(err)
	}
	if isVector(a) != vector {
		t.Fatalf("newAEAD(vector=%v) returned %T", vector, a)
	}
	return a
}

// isVector reports whether a is this package's vector code (its type is
// amd64's only, so the tests name it by its name).
func isVector(a cipher.AEAD) bool { return fmt.Sprintf("%T", a) == "*aesgcm.gcmVector" }

func stdGCM(t testing.TB, key []byte) cipher.AEAD {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func unhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// TestKnownAnswers runs the GCM specification's test cases with 96-bit
// IVs (McGrew and Viega, cases 1-4 and 13-16).
func TestKnownAnswers(t *testing.T) {
	const (
		k1 = "feffe9928665731c6d6a8f9467308308"
		iv = "cafebabefacedbaddecaf888"
		p  = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72" +
			"1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
		a = "feedfacedeadbeeffeedfacedeadbeefabaddad2"
	)
	cases := []struct{ name, key, nonce, plain, aad, ct, tag string }{
		{"1", "00000000000000000000000000000000", "000000000000000000000000", "", "", "", "58e2fccefa7e3061367f1d57a4e7455a"},
		{"2", "00000000000000000000000000000000", "000000000000000000000000", "00000000000000000000000000000000", "",
			"0388dace60b6a392f328c2b971b2fe78", "ab6e47d42cec13bdf53a67b21257bddf"},
		{"3", k1, iv, p, "",
			"42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
			"4d5c2af327cd64a62cf35abd2ba6fab4"},
		{"4", k1, iv, p[:120], a,
			"42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
			"5bc94fbc3221a5db94fae95ae7121a47"},
		{"13", "0000000000000000000000000000000000000000000000000000000000000000", "000000000000000000000000", "", "", "",
			"530f8afbc74536b9a963b4f1c4cb738b"},
		{"14", "0000000000000000000000000000000000000000000000000000000000000000", "000000000000000000000000",
			"00000000000000000000000000000000", "", "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
		{"15", k1 + k1, iv, p, "",
			"522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
			"b094dac5d93471bdec1a502270e3cc6c"},
		{"16", k1 + k1, iv, p[:120], a,
			"522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
			"76fc6ece0f4e1768cddf8853bb2d551b"},
	}
	for _, im := range impls(t) {
		for _, c := range cases {
			t.Run(im.name+"/case"+c.name, func(t *testing.T) {
				g := mustAEAD(t, unhex(c.key), im.vector)
				want := unhex(c.ct + c.tag)
				got := g.Seal(nil, unhex(c.nonce), unhex(c.plain), unhex(c.aad))
				if !bytes.Equal(got, want) {
					t.Fatalf("Seal = %x, want %x", got, want)
				}
				pt, err := g.Open(nil, unhex(c.nonce), want, unhex(c.aad))
				if err != nil || !bytes.Equal(pt, unhex(c.plain)) {
					t.Fatalf("Open = %x, %v; want %s", pt, err, c.plain)
				}
			})
		}
	}
}

// TestExpandKey checks the key schedule against FIPS-197 appendix A.
func TestExpandKey(t *testing.T) {
	for _, c := range []struct {
		key, last string
		rounds    int
	}{
		{"2b7e151628aed2a6abf7158809cf4f3c", "d014f9a8c9ee2589e13f0cc8b6630ca6", 10},
		{"603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4", "fe4890d1e6188d0b046df344706c631e", 14},
	} {
		var rk [15 * 16]byte
		n := expandKey(unhex(c.key), &rk)
		if n != c.rounds {
			t.Errorf("%s: %d rounds, want %d", c.key, n, c.rounds)
		}
		if got := hex.EncodeToString(rk[16*n : 16*n+16]); got != c.last {
			t.Errorf("%s: last round key %s, want %s", c.key, got, c.last)
		}
	}
}

// diffLengths are the plaintext lengths of the differential test: every
// length up to 1100 (every tail of the 256-byte steps, several steps),
// then a spread up to 70,000.
func diffLengths() []int {
	var ls []int
	for n := 0; n <= 1100; n++ {
		ls = append(ls, n)
	}
	for _, base := range []int{1400, 1500, 4096, 9000, 16384, 65536, 70000 - 255} {
		for _, d := range []int{-17, -16, -1, 0, 1, 15, 16, 255} {
			ls = append(ls, base+d)
		}
	}
	return ls
}

// checkAgainstStd seals and opens pt with aad under g and std in the four
// buffer arrangements and fails on any difference.
func checkAgainstStd(t *testing.T, g, std cipher.AEAD, nonce, aad, pt []byte) {
	t.Helper()
	want := std.Seal(nil, nonce, pt, aad)
	// Fresh dst, no spare capacity.
	if got := g.Seal(nil, nonce, pt, aad); !bytes.Equal(got, want) {
		t.Fatalf("len %d aad %d: Seal into nil differs from crypto/cipher", len(pt), len(aad))
	}
	// dst with a prefix and spare capacity: the prefix is kept.
	prefix := []byte("prefix")
	dst := make([]byte, len(prefix), len(prefix)+len(pt)+tagSize+7)
	copy(dst, prefix)
	got := g.Seal(dst, nonce, pt, aad)
	if !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], want) || &got[0] != &dst[0] {
		t.Fatalf("len %d aad %d: Seal into spare capacity differs", len(pt), len(aad))
	}
	// In place.
	buf := make([]byte, len(pt), len(pt)+tagSize)
	copy(buf, pt)
	if got := g.Seal(buf[:0], nonce, buf, aad); !bytes.Equal(got, want) {
		t.Fatalf("len %d aad %d: Seal in place differs", len(pt), len(aad))
	}
	// Open crypto/cipher's output, into nil and in place.
	if p, err := g.Open(nil, nonce, want, aad); err != nil || !bytes.Equal(p, pt) {
		t.Fatalf("len %d aad %d: Open = %v, or plaintext differs", len(pt), len(aad), err)
	}
	ct := append([]byte(nil), want...)
	if p, err := g.Open(ct[:0], nonce, ct, aad); err != nil || !bytes.Equal(p, pt) {
		t.Fatalf("len %d aad %d: Open in place = %v, or plaintext differs", len(pt), len(aad), err)
	}
	// And crypto/cipher opens ours (sealed in place above).
	if p, err := std.Open(nil, nonce, buf[:len(pt)+tagSize], aad); err != nil || !bytes.Equal(p, pt) {
		t.Fatalf("len %d aad %d: crypto/cipher cannot open ours: %v", len(pt), len(aad), err)
	}
}

func TestDifferential(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	for _, im := range impls(t) {
		for _, keyLen := range []int{16, 32} {
			t.Run(fmt.Sprintf("%s/key%d", im.name, keyLen*8), func(t *testing.T) {
				key := random(keyLen)
				g, std := mustAEAD(t, key, im.vector), stdGCM(t, key)
				nonce := random(nonceSize)
				for _, n := range diffLengths() {
					pt := random(n)
					checkAgainstStd(t, g, std, nonce, random(n%81), pt)
				}
				for a := 0; a <= 80; a++ {
					for _, n := range []int{0, 1, 16, 63, 64, 255, 256, 1400} {
						checkAgainstStd(t, g, std, random(nonceSize), random(a), random(n))
					}
				}
			})
		}
	}
}

// TestCounterCarry seals with nonces whose last bytes are all ones: the
// counter is only the last four bytes of the block, so nothing may carry
// into the nonce.
func TestCounterCarry(t *testing.T) {
	for _, im := range impls(t) {
		key := bytes.Repeat([]byte{7}, 16)
		g, std := mustAEAD(t, key, im.vector), stdGCM(t, key)
		nonce := bytes.Repeat([]byte{0xff}, nonceSize)
		pt := make([]byte, 5000)
		if !bytes.Equal(g.Seal(nil, nonce, pt, nil), std.Seal(nil, nonce, pt, nil)) {
			t.Errorf("%s: Seal differs for an all-ones nonce", im.name)
		}
	}
}

func TestTamperRejected(t *testing.T) {
	for _, im := range impls(t) {
		for _, keyLen := range []int{16, 32} {
			key := bytes.Repeat([]byte{byte(keyLen)}, keyLen)
			g, std := mustAEAD(t, key, im.vector), stdGCM(t, key)
			nonce := []byte("twelve bytes")
			for _, n := range []int{0, 1, 15, 16, 17, 255, 256, 257, 1400} {
				aad := []byte("spi+seq!")
				pt := bytes.Repeat([]byte{0xa5}, n)
				sealed := g.Seal(nil, nonce, pt, aad)
				for i := range len(sealed) {
					for _, a := range []cipher.AEAD{g, std} {
						bad := append([]byte(nil), sealed...)
						bad[i] ^= 0x10
						before := append([]byte(nil), bad...)
						if p, err := a.Open(bad[:0], nonce, bad, aad); err == nil || p != nil {
							t.Fatalf("%s: byte %d of %d flipped: Open = %x, %v", im.name, i, len(sealed), p, err)
						}
						if a == g && im.vector && !bytes.Equal(bad, before) {
							t.Fatalf("%s: a rejected Open in place wrote into the buffer (crypto/cipher zeroes it; the vector code must not touch it)", im.name)
						}
					}
				}
				badAAD := []byte("spi+seq?")
				if _, err := g.Open(nil, nonce, sealed, badAAD); err == nil {
					t.Fatalf("%s: Open with other AAD succeeded", im.name)
				}
				if _, err := g.Open(nil, nonce, sealed[:len(sealed)-1], aad); err == nil {
					t.Fatalf("%s: Open of a truncated message succeeded", im.name)
				}
			}
			if _, err := g.Open(nil, nonce, make([]byte, tagSize-1), nil); err == nil {
				t.Fatalf("%s: Open of less than a tag succeeded", im.name)
			}
		}
	}
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	f()
}

func TestMisuse(t *testing.T) {
	if _, err := New(make([]byte, 17)); err == nil {
		t.Error("New accepted a 17-byte key")
	}
	for _, im := range impls(t) {
		g := mustAEAD(t, make([]byte, 16), im.vector)
		if g.NonceSize() != 12 || g.Overhead() != 16 {
			t.Errorf("%s: NonceSize %d Overhead %d", im.name, g.NonceSize(), g.Overhead())
		}
		mustPanic(t, im.name+" Seal with an 8-byte nonce", func() { g.Seal(nil, make([]byte, 8), nil, nil) })
		mustPanic(t, im.name+" Open with an 8-byte nonce", func() { _, _ = g.Open(nil, make([]byte, 8), make([]byte, 16), nil) })
		buf := make([]byte, 100, 200)
		mustPanic(t, im.name+" Seal with inexact overlap", func() { g.Seal(buf[1:1], make([]byte, 12), buf[:50], nil) })
		sealed := g.Seal(nil, make([]byte, 12), make([]byte, 50), nil)
		mustPanic(t, im.name+" Open with inexact overlap", func() { _, _ = g.Open(sealed[1:1], make([]byte, 12), sealed, nil) })
	}
	if a, err := New(make([]byte, 24)); err != nil {
		t.Error(err)
	} else if isVector(a) {
		t.Error("a 24-byte key got the vector code, which has no 12-round path")
	}
}

func TestNoAllocs(t *testing.T) {
	for _, im := range impls(t) {
		g := mustAEAD(t, make([]byte, 32), im.vector)
		nonce := make([]byte, 12)
		aad := make([]byte, 8)
		buf := make([]byte, 1400+tagSize)
		var sealed []byte
		if n := testing.AllocsPerRun(100, func() { sealed = g.Seal(buf[:0], nonce, buf[:1400], aad) }); n != 0 {
			t.Errorf("%s: Seal allocates %v times", im.name, n)
		}
		if n := testing.AllocsPerRun(100, func() {
			sealed = g.Seal(buf[:0], nonce, buf[:1400], aad)
			if _, err := g.Open(sealed[:0], nonce, sealed, aad); err != nil {
				t.Fatal(err)
			}
		}); n != 0 {
			t.Errorf("%s: Open allocates %v times", im.name, n)
		}
	}
}

func FuzzSealOpen(f *testing.F) {
	f.Add(false, make([]byte, 32), []byte("nonce"), []byte("aad"), []byte("plaintext"))
	f.Add(true, make([]byte, 32), make([]byte, 12), []byte{}, make([]byte, 300))
	f.Fuzz(func(t *testing.T, long bool, key, nonce, aad, pt []byte) {
		n := 16
		if long {
			n = 32
		}
		key = append(key, make([]byte, n)...)[:n]
		nonce = append(nonce, make([]byte, nonceSize)...)[:nonceSize]
		std := stdGCM(t, key)
		want := std.Seal(nil, nonce, pt, aad)
		for _, im := range impls(t) {
			g := mustAEAD(t, key, im.vector)
			if got := g.Seal(nil, nonce, pt, aad); !bytes.Equal(got, want) {
				t.Fatalf("%s: Seal = %x, crypto/cipher %x", im.name, got, want)
			}
			if p, err := g.Open(nil, nonce, want, aad); err != nil || !bytes.Equal(p, pt) {
				t.Fatalf("%s: Open = %x, %v", im.name, p, err)
			}
			// pt read as a sealed message: both must agree on it.
			p1, err1 := std.Open(nil, nonce, pt, aad)
			p2, err2 := g.Open(nil, nonce, pt, aad)
			if (err1 == nil) != (err2 == nil) || !bytes.Equal(p1, p2) {
				t.Fatalf("%s: Open of arbitrary bytes: %v vs crypto/cipher %v", im.name, err2, err1)
			}
		}
	})
}

func BenchmarkSeal(b *testing.B) {
	benchmarkAEAD(b, false)
}

func BenchmarkOpen(b *testing.B) {
	benchmarkAEAD(b, true)
}

func benchmarkAEAD(b *testing.B, open bool) {
	key := make([]byte, 16)
	aeads := []struct {
		name string
		aead cipher.AEAD
	}{{"std", stdGCM(b, key)}}
	if hasVector {
		aeads = append(aeads, struct {
			name string
			aead cipher.AEAD
		}{"vector", mustAEAD(b, key, true)})
	}
	nonce := make([]byte, nonceSize)
	aad := make([]byte, 8)
	for _, size := range []int{64, 576, 1400, 1500, 9000, 65536} {
		for _, a := range aeads {
			b.Run(fmt.Sprintf("%s/%d", a.name, size), func(b *testing.B) {
				buf := make([]byte, size+tagSize)
				sealed := a.aead.Seal(nil, nonce, buf[:size], aad)
				b.SetBytes(int64(size))
				for b.Loop() {
					if open {
						if _, err := a.aead.Open(buf[:0], nonce, sealed, aad); err != nil {
							b.Fatal(err)
						}
					} else {
						a.aead.Seal(buf[:0], nonce, buf[:size], aad)
					}
				}
			})
		}
	}
}

// Implementation names the code New returns on this machine.
func TestImplementation(t *testing.T) {
	a, err := New(make([]byte, 16))
	if err != nil {
		t.Fatal(err)
	}
	vector := isVector(a)
	if got, want := Implementation(), map[bool]string{true: "vaes-avx512", false: "crypto/cipher"}[vector]; got != want {
		t.Fatalf("Implementation() = %q, but New returned %T", got, a)
	}
}
