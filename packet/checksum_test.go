package packet

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// The example from RFC 1071 section 3: the sum of these bytes is 0xddf2.
var rfc1071Example = []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}

// A real IPv4 header (192.168.0.1 -> 192.168.0.199, UDP) whose checksum
// field holds 0xb861.
var ipv4Example = []byte{
	0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61,
	0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
}

func TestChecksumKnownAnswers(t *testing.T) {
	if got := Checksum(rfc1071Example); got != ^uint16(0xddf2) {
		t.Errorf("RFC 1071 example: checksum %#04x, want %#04x", got, ^uint16(0xddf2))
	}
	if got := Checksum(ipv4Example); got != 0 {
		t.Errorf("checksum over a correct IPv4 header = %#04x, want 0", got)
	}
	h := append([]byte(nil), ipv4Example...)
	h[10], h[11] = 0, 0
	if got := Checksum(h); got != 0xb861 {
		t.Errorf("IPv4 header checksum = %#04x, want 0xb861", got)
	}
	// An odd length pads the last byte with zero.
	if got, want := Checksum([]byte{0x12, 0x34, 0x56}), Checksum([]byte{0x12, 0x34, 0x56, 0}); got != want {
		t.Errorf("odd length: %#04x, want %#04x", got, want)
	}
	// Long input exercises the 8-byte loop and carries.
	big := make([]byte, 9001)
	for i := range big {
		big[i] = 0xff
	}
	var ref uint32
	for i := 0; i+1 < len(big); i += 2 {
		ref += uint32(binary.BigEndian.Uint16(big[i:]))
	}
	ref += uint32(big[len(big)-1]) << 8
	for ref>>16 != 0 {
		ref = ref&0xffff + ref>>16
	}
	if got := Checksum(big); got != ^uint16(ref) {
		t.Errorf("9001 bytes of 0xff: %#04x, want %#04x", got, ^uint16(ref))
	}
}

func TestUpdateChecksumMatchesRecompute(t *testing.T) {
	h := append(IPv4(nil), ipv4Example...)
	// Decrement the TTL (the word holding TTL and protocol changes).
	old := binary.BigEndian.Uint16(h[8:10])
	h[8]--
	h.SetChecksum(UpdateChecksum16(h.Checksum(), old, binary.BigEndian.Uint16(h[8:10])))
	if !h.ChecksumValid() || h.Checksum() != h.HeaderChecksum() {
		t.Fatalf("after TTL update checksum %#04x, recomputed %#04x", h.Checksum(), h.HeaderChecksum())
	}
	// Rewrite both addresses as NAT would.
	for _, tc := range []struct{ src, dst string }{
		{"10.0.0.1", "10.0.0.2"}, {"255.255.255.255", "0.0.0.0"}, {"0.0.0.0", "192.168.0.199"},
	} {
		src, dst := netip.MustParseAddr(tc.src), netip.MustParseAddr(tc.dst)
		c := UpdateChecksumAddr(h.Checksum(), h.Src(), src)
		c = UpdateChecksumAddr(c, h.Dst(), dst)
		h.SetSrc(src)
		h.SetDst(dst)
		h.SetChecksum(c)
		if !h.ChecksumValid() {
			t.Errorf("%s -> %s: incremental %#04x, recomputed %#04x", src, dst, c, h.HeaderChecksum())
		}
	}
}

func TestUpdateChecksumAddrIPv6PseudoHeader(t *testing.T) {
	payload := []byte("some transport bytes!")
	a, b := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00:1234::ffff:2")
	c := Fold(Sum(payload, PseudoHeaderSum(a, b, ProtoUDP, len(payload))))
	c = UpdateChecksumAddr(c, a, netip.MustParseAddr("2001:db8::7"))
	want := Fold(Sum(payload, PseudoHeaderSum(netip.MustParseAddr("2001:db8::7"), b, ProtoUDP, len(payload))))
	if c != want {
		t.Fatalf("incremental %#04x, recomputed %#04x", c, want)
	}
}

func TestPseudoHeaderSumIPv4(t *testing.T) {
	// UDP pseudo-header summed by hand: src, dst, zero+proto, length.
	src, dst := netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.0.199")
	hand := []byte{192, 168, 0, 1, 192, 168, 0, 199, 0, ProtoUDP, 0, 8}
	if got, want := Fold(PseudoHeaderSum(src, dst, ProtoUDP, 8)), Checksum(hand); got != want {
		t.Fatalf("pseudo-header checksum %#04x, want %#04x", got, want)
	}
}

func BenchmarkChecksum1500(b *testing.B) {
	buf := make([]byte, 1500)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		Checksum(buf)
	}
}

// refSum is RFC 1071's sum as the standard writes it: big-endian 16-bit
// words, an odd last byte padded with zero.
func refSum(b []byte, acc uint64) uint64 {
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// xorshiftBytes returns n pseudo-random bytes from a xorshift64 generator
// seeded with seed: the same bytes in every run.
func xorshiftBytes(n int, seed uint64) []byte {
	buf := make([]byte, n)
	for i := range buf {
		seed ^= seed << 13
		seed ^= seed >> 7
		seed ^= seed << 17
		buf[i] = byte(seed)
	}
	return buf
}

// Sum's word-wide loops must give the checksum of the 16-bit definition for
// every length (each tail of 0..7 bytes after the 64- and 8-byte loops,
// each rest of 0..127 bytes after the vector loop's 128-byte steps), every
// running sum and any bytes, including all-zero and all-0xff data where 0
// and 0xffff must not be confused.
func TestSumMatchesDefinition(t *testing.T) {
	buf := xorshiftBytes(1100, 0x9e3779b97f4a7c15)
	zeros, ones := make([]byte, len(buf)), make([]byte, len(buf))
	for i := range ones {
		ones[i] = 0xff
	}
	for _, data := range [][]byte{buf, zeros, ones} {
		for n := 0; n <= len(data); n++ {
			for _, acc := range []uint64{0, 1, 0xffff, 0x1234_5678, 1 << 40} {
				if got, want := Fold(Sum(data[:n], acc)), Fold(refSum(data[:n], acc)); got != want {
					t.Fatalf("%d bytes (first %#x), acc %#x: checksum %#04x, want %#04x", n, data[0], acc, got, want)
				}
			}
		}
	}
}

// Long buffers at every start alignment, with the vector loop (on CPUs
// that have it) summing many 128-byte steps: a 64 KB super-segment, a
// jumbo frame and lengths around them.
func TestSumLongMatchesDefinition(t *testing.T) {
	if !hasSumVector {
		t.Log("no vector sum on this CPU: testing the scalar loops only")
	}
	buf := xorshiftBytes(70000, 0x2545f4914f6cdd1d)
	ones := make([]byte, len(buf)-8)
	for i := range ones {
		ones[i] = 0xff
	}
	for off := range 8 {
		for _, n := range []int{1408, 1500, 9000, 9001, 65535, 65536, 65536 + 127, len(buf) - 8} {
			b := buf[off : off+n]
			if got, want := Fold(Sum(b, 7)), Fold(refSum(b, 7)); got != want {
				t.Fatalf("offset %d, %d bytes: checksum %#04x, want %#04x", off, n, got, want)
			}
		}
	}
	// All 0xff: every lane of the vector loop at its largest; the sum is
	// 0xffff, so the checksum 0, never the all-zero data's 0xffff.
	if got := Checksum(ones); got != 0 {
		t.Fatalf("%d bytes of 0xff: checksum %#04x, want 0", len(ones), got)
	}
	if got := Checksum(make([]byte, len(ones))); got != 0xffff {
		t.Fatalf("%d zero bytes: checksum %#04x, want 0xffff", len(ones), got)
	}
}

func FuzzSum(f *testing.F) {
	f.Add(rfc1071Example, uint64(0))
	f.Add(ipv4Example, uint64(17+20))
	f.Add([]byte{0xff, 0xff, 0xff}, uint64(1))
	f.Fuzz(func(t *testing.T, b []byte, acc uint64) {
		acc >>= 16 // callers' running sums stay far from overflow
		if got, want := Fold(Sum(b, acc)), Fold(refSum(b, acc)); got != want {
			t.Fatalf("%x acc %#x: checksum %#04x, want %#04x", b, acc, got, want)
		}
	})
}
