package packet

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// tunnelSuperFrame returns an IPv4 TCP super-segment as a sending kernel
// leaves it in a GSO packet: IP total length and header checksum for the
// whole frame, the TCP checksum field holding the pseudo-header sum.
func tunnelSuperFrame(payload int) []byte {
	f := make([]byte, EthernetHeaderLen+20+32+payload)
	copy(f, []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(f[12:], EtherTypeIPv4)
	ip := f[EthernetHeaderLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[6], ip[8], ip[9] = 0x40, 64, ProtoTCP
	copy(ip[12:], []byte{10, 0, 1, 2, 10, 0, 1, 3})
	binary.BigEndian.PutUint16(ip[10:], Checksum(ip[:20]))
	tcp := ip[20:]
	tcp[12], tcp[13] = 8<<4, 0x18
	for i := range payload {
		tcp[32+i] = byte(i)
	}
	acc := Sum(ip[12:20], uint64(ProtoTCP)+uint64(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], ^Fold(acc))
	return f
}

// tunnelSuperFrame6 is tunnelSuperFrame for IPv6.
func tunnelSuperFrame6(payload int) []byte {
	f := make([]byte, EthernetHeaderLen+40+32+payload)
	copy(f, []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(f[12:], EtherTypeIPv6)
	ip := f[EthernetHeaderLen:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(32+payload))
	ip[6], ip[7] = ProtoTCP, 64
	ip[8], ip[23], ip[24], ip[39] = 0xfd, 2, 0xfd, 3
	tcp := ip[40:]
	tcp[12], tcp[13] = 8<<4, 0x10
	for i := range payload {
		tcp[32+i] = byte(i)
	}
	binary.BigEndian.PutUint16(tcp[16:], ^Fold(Sum(ip[8:40], uint64(ProtoTCP)+uint64(len(tcp)))))
	return f
}

func TestParseTunnelSuper(t *testing.T) {
	const mtu = 1450
	o := make(Offload, OffloadLen)
	f := tunnelSuperFrame(30000)
	if !ParseTunnelSuper(f, mtu, o) {
		t.Fatal("a kernel super-segment is not recognised")
	}
	if o.GSOType() != GSOTCPv4 || !o.NeedsCsum() || o.HdrLen() != 14+20+32 || o.GSOSize() != mtu-20-32 ||
		o.CsumStart() != 34 || o.CsumOffset() != 16 {
		t.Errorf("slot %v", o)
	}
	clear(o)
	if !ParseTunnelSuper(tunnelSuperFrame6(30000), mtu, o) || o.GSOType() != GSOTCPv6 || o.GSOSize() != mtu-40-32 ||
		o.CsumStart() != 54 || o.HdrLen() != 14+40+32 {
		t.Errorf("IPv6: slot %v", o)
	}
	f6 := tunnelSuperFrame6(30000)
	f6[20] = 0 // hop-by-hop options header
	if ParseTunnelSuper(f6, mtu, make(Offload, OffloadLen)) {
		t.Error("IPv6 with an extension header taken for a super-segment")
	}
	for _, tc := range []struct {
		name   string
		mutate func(f []byte) []byte
	}{
		{"within the MTU", func([]byte) []byte { return tunnelSuperFrame(mtu - 52) }},
		{"complete TCP checksum", func(f []byte) []byte {
			tcp := f[34:]
			tcp[16], tcp[17] = 0, 0
			binary.BigEndian.PutUint16(tcp[16:], Fold(Sum(tcp, Sum(f[26:34], uint64(ProtoTCP)+uint64(len(tcp))))))
			return f
		}},
		{"bad IP header checksum", func(f []byte) []byte { f[24]++; return f }},
		{"IP length short of the frame", func(f []byte) []byte { return append(f, 0) }},
		{"fragment", func(f []byte) []byte {
			f[20] |= 0x20
			f[24], f[25] = 0, 0
			binary.BigEndian.PutUint16(f[24:], Checksum(f[14:34]))
			return f
		}},
		{"UDP", func(f []byte) []byte {
			f[23] = ProtoUDP
			f[24], f[25] = 0, 0
			binary.BigEndian.PutUint16(f[24:], Checksum(f[14:34]))
			return f
		}},
		{"SYN", func(f []byte) []byte { f[47] |= 0x02; return f }},
		{"VLAN tag", func(f []byte) []byte { binary.BigEndian.PutUint16(f[12:], EtherTypeVLAN); return f }},
		{"TCP header past the frame", func(f []byte) []byte { f[46] = 15 << 4; return f[:60] }},
	} {
		clear(o)
		if ParseTunnelSuper(tc.mutate(tunnelSuperFrame(30000)), mtu, o) {
			t.Errorf("%s: taken for a super-segment", tc.name)
		}
		if !bytes.Equal(o, make([]byte, OffloadLen)) {
			t.Errorf("%s: slot written", tc.name)
		}
	}
}

func FuzzParseTunnelSuper(f *testing.F) {
	f.Add(tunnelSuperFrame(3000), 1450)
	f.Add(tunnelSuperFrame(1000), 600)
	f.Add(tunnelSuperFrame6(3000), 1400)
	f.Add([]byte{}, 0)
	f.Fuzz(func(t *testing.T, b []byte, mtu int) {
		o := make(Offload, OffloadLen)
		if !ParseTunnelSuper(b, mtu, o) {
			return
		}
		// What it accepts, the GSO parser accepts too: the slot describes
		// the frame.
		if _, ok := ParseGSO(b, o); !ok {
			t.Fatalf("accepted a frame ParseGSO refuses: slot %v, %d bytes", o, len(b))
		}
	})
}
