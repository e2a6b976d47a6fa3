package packet

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// l4Frame returns an Ethernet frame of an IPv4 or IPv6 packet carrying a
// TCP (20-byte header) or UDP datagram with payload, its checksum
// complete, and the offset of the checksum field in the frame.
func l4Frame(v6 bool, proto uint8, payload []byte) ([]byte, int) {
	hl := 20
	if proto == ProtoUDP {
		hl = 8
	}
	l4 := make([]byte, hl+len(payload))
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], 80)
	copy(l4[hl:], payload)
	at := 16
	if proto == ProtoTCP {
		l4[12] = 5 << 4
		l4[13] = 0x18
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		at = 6
	}
	src, dst := netip.MustParseAddr("10.72.0.200"), netip.MustParseAddr("10.72.0.2")
	var ip []byte
	if v6 {
		src, dst = netip.MustParseAddr("2001:db8::c8"), netip.MustParseAddr("2001:db8::2")
		ip = make([]byte, IPv6HeaderLen)
		ip[0] = 6 << 4
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		ip[6], ip[7] = proto, 64
		s, d := src.As16(), dst.As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	} else {
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		ip[8], ip[9] = 64, proto
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		IPv4(ip).SetChecksum(IPv4(ip).HeaderChecksum())
	}
	binary.BigEndian.PutUint16(l4[at:], Fold(Sum(l4, PseudoHeaderSum(src, dst, proto, len(l4)))))
	et := uint16(EtherTypeIPv4)
	if v6 {
		et = EtherTypeIPv6
	}
	f := make([]byte, EthernetHeaderLen, EthernetHeaderLen+len(ip)+len(l4))
	copy(f[0:], []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0xee, 1})
	binary.BigEndian.PutUint16(f[12:], et)
	f = append(append(f, ip...), l4...)
	return f, EthernetHeaderLen + len(ip) + at
}

// partialOf returns f with its checksum field holding only the
// pseudo-header's sum, as a kernel hands it to a NIC to finish.
func partialOf(f []byte, at int) []byte {
	p := bytes.Clone(f)
	var src, dst netip.Addr
	var proto uint8
	var n int
	if Ethernet(p).EtherType() == EtherTypeIPv4 {
		ip := IPv4(Ethernet(p).Payload())
		src, dst, proto, n = ip.Src(), ip.Dst(), ip.Protocol(), ip.TotalLen()-ip.HeaderLen()
	} else {
		ip := IPv6(Ethernet(p).Payload())
		src, dst, proto, n = ip.Src(), ip.Dst(), ip.NextHeader(), ip.PayloadLen()
	}
	binary.BigEndian.PutUint16(p[at:], ^Fold(PseudoHeaderSum(src, dst, proto, n)))
	return p
}

func TestCompletePartialChecksum(t *testing.T) {
	for _, c := range []struct {
		name  string
		v6    bool
		proto uint8
	}{{"tcp4", false, ProtoTCP}, {"udp4", false, ProtoUDP}, {"tcp6", true, ProtoTCP}, {"udp6", true, ProtoUDP}} {
		for _, size := range []int{0, 1, 17, 1400} {
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(i*7 + size)
			}
			want, at := l4Frame(c.v6, c.proto, payload)
			got := partialOf(want, at)
			if bytes.Equal(got, want) {
				continue // this payload's checksum is the pseudo-header sum: nothing to finish
			}
			if !CompletePartialChecksum(got) || !bytes.Equal(got, want) {
				t.Errorf("%s, %d bytes: partial checksum finished to %#04x, want %#04x", c.name, size,
					binary.BigEndian.Uint16(got[at:]), binary.BigEndian.Uint16(want[at:]))
			}
			// A complete frame, and a frame with another wrong checksum,
			// are left as they are.
			same := bytes.Clone(want)
			if CompletePartialChecksum(same) || !bytes.Equal(same, want) {
				t.Errorf("%s, %d bytes: a complete frame was changed", c.name, size)
			}
			bad := bytes.Clone(want)
			bad[at] ^= 0x5a
			orig := bytes.Clone(bad)
			if CompletePartialChecksum(bad) || !bytes.Equal(bad, orig) {
				t.Errorf("%s, %d bytes: a frame with a wrong (not partial) checksum was changed", c.name, size)
			}
		}
	}
	// An IPv4 fragment is never touched: its checksum covers the whole
	// datagram.
	f, at := l4Frame(false, ProtoUDP, make([]byte, 64))
	frag := partialOf(f, at)
	frag[EthernetHeaderLen+6] = 0x20 // MF
	orig := bytes.Clone(frag)
	if CompletePartialChecksum(frag) || !bytes.Equal(frag, orig) {
		t.Error("an IPv4 fragment was changed")
	}
	src := partialOf(f, at)
	p := bytes.Clone(src)
	if n := testing.AllocsPerRun(100, func() { copy(p, src); CompletePartialChecksum(p) }); n != 0 {
		t.Errorf("CompletePartialChecksum allocates %v times a frame", n)
	}
}

// FuzzCompletePartialChecksum: any bytes are handled without a panic or a
// change outside the checksum field, and a finished frame is finished:
// a second call changes nothing.
func FuzzCompletePartialChecksum(f *testing.F) {
	for _, v6 := range []bool{false, true} {
		for _, proto := range []uint8{ProtoTCP, ProtoUDP} {
			fr, at := l4Frame(v6, proto, []byte("hello, vxlan"))
			f.Add(fr)
			f.Add(partialOf(fr, at))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		changed := CompletePartialChecksum(b)
		if changed == bytes.Equal(b, orig) {
			t.Fatalf("reported changed=%v, frame changed: %v", changed, !bytes.Equal(b, orig))
		}
		if changed {
			diff := 0
			for i := range b {
				if b[i] != orig[i] {
					diff++
				}
			}
			if diff > 2 {
				t.Fatalf("%d bytes changed, want at most the 2 of the checksum", diff)
			}
			again := bytes.Clone(b)
			if CompletePartialChecksum(again) {
				t.Fatal("a finished frame was finished again")
			}
		}
	})
}
