package packet_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// TCP flags.
const (
	fFIN = 0x01
	fSYN = 0x02
	fPSH = 0x08
	fACK = 0x10
	fCWR = 0x80
)

// superSegment builds what a kernel with TSO hands a TAP device: an
// Ethernet frame with one IPv4 or IPv6 packet carrying a TCP segment of
// payload bytes (a pattern), with 12 bytes of TCP options, and its
// offload metadata (NEEDS_CSUM with the pseudo-header sum in the TCP
// checksum field, GSO type, gso_size mss).
func superSegment(v6 bool, payload, mss int, flags uint8) (frame []byte, slot []byte) {
	const tcpLen = 32
	ipLen := 20
	et := uint16(packet.EtherTypeIPv4)
	if v6 {
		ipLen, et = 40, packet.EtherTypeIPv6
	}
	frame = make([]byte, 14+ipLen+tcpLen+payload)
	copy(frame[0:6], []byte{2, 0x42, 10, 0, 0, 3})
	copy(frame[6:12], []byte{2, 0x42, 10, 0, 0, 2})
	binary.BigEndian.PutUint16(frame[12:], et)
	ip := frame[14 : 14+ipLen]
	var pseudo uint64
	if v6 {
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(tcpLen+payload))
		ip[6], ip[7] = packet.ProtoTCP, 64
		copy(ip[8:24], []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2})
		copy(ip[24:40], []byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3})
		pseudo = packet.Sum(ip[8:40], 0)
	} else {
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(ipLen+tcpLen+payload))
		binary.BigEndian.PutUint16(ip[4:], 0xfff0) // ID wraps while splitting
		ip[6] = 0x40                               // DF
		ip[8], ip[9] = 64, packet.ProtoTCP
		copy(ip[12:16], []byte{10, 0, 0, 2})
		copy(ip[16:20], []byte{10, 0, 0, 3})
		binary.BigEndian.PutUint16(ip[10:], packet.IPv4(ip).HeaderChecksum())
		pseudo = packet.Sum(ip[12:20], 0)
	}
	tcp := frame[14+ipLen:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], 0xfffff000) // seq wraps too
	binary.BigEndian.PutUint32(tcp[8:], 0x01020304)
	tcp[12] = tcpLen / 4 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 502)
	copy(tcp[20:32], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}) // NOP NOP timestamps
	for i := range payload {
		tcp[tcpLen+i] = byte(i*7 + i/251)
	}
	// CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
	binary.BigEndian.PutUint16(tcp[16:], ^packet.Fold(pseudo+packet.ProtoTCP+uint64(tcpLen+payload)))
	slot = make([]byte, packet.OffloadLen)
	typ := uint8(packet.GSOTCPv4)
	if v6 {
		typ = packet.GSOTCPv6
	}
	packet.OffloadOf(slot).Set(packet.OffloadNeedsCsum, typ, 14+ipLen+tcpLen, mss, 14+ipLen, 16)
	return frame, slot
}

// checkSegments splits the super-segment and decodes every segment with
// gVisor's header package: valid IP header and checksum, lengths, IPv4 ID,
// TCP sequence numbers, flags and a complete TCP checksum, and the payloads
// put back together equal the original.
func checkSegments(t *testing.T, v6 bool, frame, slot []byte, wantSegs int) {
	t.Helper()
	o := packet.OffloadOf(slot)
	orig := bytes.Clone(frame)
	g, ok := packet.ParseGSO(frame, o)
	if !ok {
		t.Fatal("ParseGSO refused a valid super-segment")
	}
	if g.Segments() != wantSegs {
		t.Fatalf("%d segments, want %d", g.Segments(), wantSegs)
	}
	ipLen := 20
	if v6 {
		ipLen = 40
	}
	origTCP := header.TCP(orig[14+ipLen:])
	mss := o.GSOSize()
	var payload []byte
	for k := range g.Segments() {
		dst := make([]byte, g.SegmentLen(k)+7)
		for i := range dst {
			dst[i] = 0x5a
		}
		n := g.Segment(k, dst)
		if n != g.SegmentLen(k) || n > g.MaxSegmentLen() || n-14 > ipLen+32+mss {
			t.Fatalf("segment %d: %d bytes (SegmentLen %d, max %d)", k, n, g.SegmentLen(k), g.MaxSegmentLen())
		}
		if !bytes.Equal(dst[n:], bytes.Repeat([]byte{0x5a}, 7)) {
			t.Fatalf("segment %d: wrote past its length", k)
		}
		seg := dst[:n]
		checkSegmentChecksums(t, k, seg)
		eth := header.Ethernet(seg)
		if !bytes.Equal(seg[:14], orig[:14]) {
			t.Errorf("segment %d: Ethernet header %x", k, seg[:14])
		}
		var tcp header.TCP
		var src, dstAddr tcpip.Address
		if v6 {
			if eth.Type() != header.IPv6ProtocolNumber {
				t.Fatalf("segment %d: EtherType %#x", k, eth.Type())
			}
			ip := header.IPv6(seg[14:])
			if !ip.IsValid(len(seg) - 14) {
				t.Fatalf("segment %d: invalid IPv6 header", k)
			}
			if int(ip.PayloadLength()) != n-14-40 {
				t.Errorf("segment %d: payload length %d, want %d", k, ip.PayloadLength(), n-14-40)
			}
			tcp, src, dstAddr = header.TCP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
		} else {
			ip := header.IPv4(seg[14:])
			if !ip.IsValid(len(seg) - 14) {
				t.Fatalf("segment %d: invalid IPv4 header", k)
			}
			if !ip.IsChecksumValid() {
				t.Errorf("segment %d: bad IPv4 header checksum", k)
			}
			if int(ip.TotalLength()) != n-14 {
				t.Errorf("segment %d: total length %d, want %d", k, ip.TotalLength(), n-14)
			}
			if want := uint16(0xfff0 + k); ip.ID() != want {
				t.Errorf("segment %d: IP ID %#x, want %#x", k, ip.ID(), want)
			}
			if ip.Flags() != header.IPv4FlagDontFragment || ip.FragmentOffset() != 0 {
				t.Errorf("segment %d: flags %#x offset %d", k, ip.Flags(), ip.FragmentOffset())
			}
			tcp, src, dstAddr = header.TCP(ip.Payload()), ip.SourceAddress(), ip.DestinationAddress()
		}
		body := tcp.Payload()
		if !tcp.IsChecksumValid(src, dstAddr, checksum.Checksum(body, 0), uint16(len(body))) {
			t.Errorf("segment %d: bad TCP checksum %#04x", k, tcp.Checksum())
		}
		if want := origTCP.SequenceNumber() + uint32(k*mss); tcp.SequenceNumber() != want {
			t.Errorf("segment %d: seq %#x, want %#x", k, tcp.SequenceNumber(), want)
		}
		if tcp.AckNumber() != origTCP.AckNumber() || tcp.WindowSize() != origTCP.WindowSize() || tcp.DataOffset() != 32 {
			t.Errorf("segment %d: ack/window/offset changed", k)
		}
		wantFlags := origTCP.Flags()
		if k < g.Segments()-1 {
			wantFlags &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if k > 0 {
			wantFlags &^= header.TCPFlagCwr
		}
		if tcp.Flags() != wantFlags {
			t.Errorf("segment %d: flags %v, want %v", k, tcp.Flags(), wantFlags)
		}
		if !bytes.Equal(seg[14+ipLen+20:14+ipLen+32], orig[14+ipLen+20:14+ipLen+32]) {
			t.Errorf("segment %d: TCP options changed", k)
		}
		if k < g.Segments()-1 && len(body) != mss {
			t.Errorf("segment %d: %d payload bytes, want the MSS %d", k, len(body), mss)
		}
		payload = append(payload, body...)
	}
	if !bytes.Equal(payload, orig[14+ipLen+32:]) {
		t.Error("segments' payloads do not add up to the super-segment's")
	}
	if k := g.Segment(g.Segments(), make([]byte, 70000)); k != 0 {
		t.Errorf("Segment past the last = %d, want 0", k)
	}
	if k := g.Segment(0, make([]byte, g.SegmentLen(0)-1)); k != 0 {
		t.Errorf("Segment into a short buffer = %d, want 0", k)
	}
	if !bytes.Equal(frame, orig) {
		t.Error("splitting modified the super-segment")
	}
}

func TestGSOSplit(t *testing.T) {
	for _, tc := range []struct {
		payload, mss, segs int
		flags              uint8
	}{
		{5000, 1448, 4, fACK | fPSH | fFIN | fCWR},
		{3 * 1398, 1398, 3, fACK | fPSH},
		{65535 - 20 - 40 - 32, 1398, 47, fACK},
		{1000, 1448, 1, fACK | fPSH | fCWR},     // shorter than one MSS
		{0, 1448, 1, fACK | fFIN},               // no payload: headers only
		{3 * 1220, 1220, 3, fACK | fSYN | fPSH}, // the IPv6 minimum
	} {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("v6=%v/%d/%d", v6, tc.payload, tc.mss), func(t *testing.T) {
				payload := tc.payload
				if v6 && payload > 65535-40-32 {
					payload = 65535 - 40 - 32
				}
				frame, slot := superSegment(v6, payload, tc.mss, tc.flags)
				segs := tc.segs
				if payload != tc.payload {
					segs = (payload + tc.mss - 1) / tc.mss
				}
				checkSegments(t, v6, frame, slot, segs)
			})
		}
	}
}

// TestGSOBounds checks the amplification bounds: a super-segment never
// splits into more than packet.GSOMaxSegments segments, nor into segments
// smaller than the minimum of its IP version (gso_size 1 and 60 KB of
// payload would be 60,000 datagrams).
func TestGSOBounds(t *testing.T) {
	for _, tc := range []struct {
		v6           bool
		payload, mss int
		ok           bool
	}{
		{false, 60000, 1, false},
		{true, 60000, 1, false},
		{false, 3000, packet.GSOMinSizeIPv4 - 1, false},
		{false, 3000, packet.GSOMinSizeIPv4, true},
		{true, 3000, packet.GSOMinSizeIPv6 - 1, false},
		{true, 3000, packet.GSOMinSizeIPv6, true},
		{false, packet.GSOMaxSegments * packet.GSOMinSizeIPv4, packet.GSOMinSizeIPv4, true},
		{false, packet.GSOMaxSegments*packet.GSOMinSizeIPv4 + 1, packet.GSOMinSizeIPv4, false},
	} {
		frame, slot := superSegment(tc.v6, tc.payload, tc.mss, fACK)
		g, ok := packet.ParseGSO(frame, packet.OffloadOf(slot))
		if ok != tc.ok {
			t.Errorf("v6=%v payload %d mss %d: accepted %v, want %v", tc.v6, tc.payload, tc.mss, ok, tc.ok)
		}
		if ok && g.Segments() > packet.GSOMaxSegments {
			t.Errorf("v6=%v payload %d mss %d: %d segments", tc.v6, tc.payload, tc.mss, g.Segments())
		}
	}
}

// TestGSOChecksumsWithOptions splits an IPv4 super-segment whose header
// carries options and whose sequence number has both halves nonzero:
// Segment's checksums, summed from the super-segment's header fields,
// must cover the options and every changed field.
func TestGSOChecksumsWithOptions(t *testing.T) {
	plain, slot := superSegment(false, 5000, 1000, fACK|fPSH)
	opts := []byte{1, 1, 1, 0x94, 4, 0, 0, 0} // NOPs, Router Alert (RFC 2113)
	frame := append(append(bytes.Clone(plain[:34]), opts...), plain[34:]...)
	ip := frame[14:42]
	ip[0] = 0x47
	binary.BigEndian.PutUint16(ip[2:], uint16(len(frame)-14))
	binary.BigEndian.PutUint32(frame[42+4:], 0x12345678)
	o := packet.OffloadOf(slot)
	o.Set(packet.OffloadNeedsCsum, packet.GSOTCPv4, 42+32, 1000, 42, 16)
	g, ok := packet.ParseGSO(frame, o)
	if !ok || g.Segments() != 5 {
		t.Fatalf("ParseGSO: ok %v, %d segments", ok, g.Segments())
	}
	for k := range g.Segments() {
		seg := make([]byte, g.SegmentLen(k))
		g.Segment(k, seg)
		if !bytes.Equal(seg[34:42], opts) {
			t.Fatalf("segment %d: options %x", k, seg[34:42])
		}
		checkSegmentChecksums(t, k, seg)
	}
}

func TestGSOSplitECN(t *testing.T) {
	frame, slot := superSegment(false, 4000, 1000, fACK|fCWR)
	slot[1] |= packet.GSOECN
	checkSegments(t, false, frame, slot, 4)
}

func TestParseGSORejects(t *testing.T) {
	good4, slot4 := superSegment(false, 3000, 1400, fACK)
	good6, slot6 := superSegment(true, 3000, 1400, fACK)
	type mut func(f, s []byte) ([]byte, []byte)
	for name, tc := range map[string]struct {
		v6 bool
		m  mut
	}{
		"gso-size 0":       {false, func(f, s []byte) ([]byte, []byte) { s[4], s[5] = 0, 0; return f, s }},
		"ufo":              {false, func(f, s []byte) ([]byte, []byte) { s[1] = packet.GSOUDP; return f, s }},
		"uso":              {false, func(f, s []byte) ([]byte, []byte) { s[1] = packet.GSOUDPL4; return f, s }},
		"v4 type on v6":    {true, func(f, s []byte) ([]byte, []byte) { s[1] = packet.GSOTCPv4; return f, s }},
		"v6 type on v4":    {false, func(f, s []byte) ([]byte, []byte) { s[1] = packet.GSOTCPv6; return f, s }},
		"vlan tag":         {false, func(f, s []byte) ([]byte, []byte) { f[12], f[13] = 0x81, 0; return f, s }},
		"udp":              {false, func(f, s []byte) ([]byte, []byte) { f[14+9] = packet.ProtoUDP; return f, s }},
		"v6 ext header":    {true, func(f, s []byte) ([]byte, []byte) { f[14+6] = 0; return f, s }},
		"fragment":         {false, func(f, s []byte) ([]byte, []byte) { f[14+6] = 0x20; return f, s }},
		"ihl 4":            {false, func(f, s []byte) ([]byte, []byte) { f[14] = 0x44; return f, s }},
		"version":          {false, func(f, s []byte) ([]byte, []byte) { f[14] = 0x65; return f, s }},
		"total too long":   {false, func(f, s []byte) ([]byte, []byte) { binary.BigEndian.PutUint16(f[16:], 60000); return f, s }},
		"total < headers":  {false, func(f, s []byte) ([]byte, []byte) { binary.BigEndian.PutUint16(f[16:], 40); return f, s }},
		"v6 payload long":  {true, func(f, s []byte) ([]byte, []byte) { binary.BigEndian.PutUint16(f[18:], 60000); return f, s }},
		"tcp offset 4":     {false, func(f, s []byte) ([]byte, []byte) { f[34+12] = 4 << 4; return f, s }},
		"tcp options long": {false, func(f, s []byte) ([]byte, []byte) { binary.BigEndian.PutUint16(f[16:], 20+30); return f, s }},
		"truncated":        {false, func(f, s []byte) ([]byte, []byte) { return f[:40], s }},
		"empty":            {false, func(f, s []byte) ([]byte, []byte) { return f[:0], s }},
	} {
		f, s := bytes.Clone(good4), bytes.Clone(slot4)
		if tc.v6 {
			f, s = bytes.Clone(good6), bytes.Clone(slot6)
		}
		f, s = tc.m(f, s)
		if _, ok := packet.ParseGSO(f, packet.OffloadOf(s)); ok {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCompleteChecksumTCP(t *testing.T) {
	// A super-segment's header with NEEDS_CSUM and no GSO: one segment
	// whose partial checksum CompleteChecksum finishes.
	frame, slot := superSegment(false, 1000, 1448, fACK)
	slot[1] = packet.GSONone
	o := packet.OffloadOf(slot)
	if !packet.CompleteChecksum(frame, o) {
		t.Fatal("refused")
	}
	ip := header.IPv4(frame[14:])
	tcp := header.TCP(ip.Payload())
	if !tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(tcp.Payload(), 0), uint16(len(tcp.Payload()))) {
		t.Error("checksum not complete")
	}
	if !o.IsNone() || o.NeedsCsum() {
		t.Errorf("slot % x, want NeedsCsum cleared", slot)
	}
	sum := tcp.Checksum()
	if !packet.CompleteChecksum(frame, o) || tcp.Checksum() != sum {
		t.Error("a slot without NeedsCsum must leave the frame alone")
	}
	var zero [packet.OffloadLen]byte
	if !packet.OffloadOf(zero[:]).IsNone() {
		t.Error("zero slot is not 'no offload'")
	}
	buf := bytes.Repeat([]byte{0xff}, 20)
	packet.ClearOffload(buf)
	if !bytes.Equal(buf[:packet.OffloadLen], zero[:]) || buf[packet.OffloadLen] != 0xff {
		t.Errorf("ClearOffload: % x", buf)
	}
}

// FuzzGSO splits arbitrary frames under arbitrary metadata: no panic, no
// write past a segment's length, segments never longer than
// MaxSegmentLen, their payloads adding up to the frame's, and the frame
// unchanged.
func FuzzGSO(f *testing.F) {
	for _, v6 := range []bool{false, true} {
		frame, slot := superSegment(v6, 3000, 1400, fACK|fPSH)
		f.Add(slot, frame)
	}
	frame, slot := superSegment(false, 100, 7, fACK)
	f.Add(slot, frame)
	f.Add(make([]byte, packet.OffloadLen), []byte{})
	f.Fuzz(func(t *testing.T, slot, frame []byte) {
		if len(slot) < packet.OffloadLen {
			return
		}
		o := packet.OffloadOf(slot)
		orig := bytes.Clone(frame)
		g, ok := packet.ParseGSO(frame, o)
		if !ok {
			return
		}
		if g.Segments() < 1 || g.HeaderLen() > len(frame) || g.MaxSegmentLen() > len(frame) {
			t.Fatalf("segments %d header %d max %d for a %d-byte frame", g.Segments(), g.HeaderLen(), g.MaxSegmentLen(), len(frame))
		}
		dst := make([]byte, g.MaxSegmentLen()+8)
		total := 0
		for k := range min(g.Segments(), 4096) {
			want := g.SegmentLen(k)
			if want > g.MaxSegmentLen() || want < g.HeaderLen() {
				t.Fatalf("segment %d: length %d outside [%d, %d]", k, want, g.HeaderLen(), g.MaxSegmentLen())
			}
			for i := range dst[:want+8] {
				dst[i] = 0xc3
			}
			if n := g.Segment(k, dst[:want]); n != want {
				t.Fatalf("segment %d: wrote %d, want %d", k, n, want)
			}
			for _, c := range dst[want : want+8] {
				if c != 0xc3 {
					t.Fatalf("segment %d: wrote past its length", k)
				}
			}
			checkSegmentChecksums(t, k, dst[:want])
			total += want - g.HeaderLen()
		}
		if g.Segments() <= 4096 {
			end := g.HeaderLen() + total
			if end > len(frame) {
				t.Fatalf("payloads end at %d, frame is %d bytes", end, len(frame))
			}
		}
		if !bytes.Equal(frame, orig) {
			t.Fatal("ParseGSO/Segment modified the frame")
		}
	})
}

// checkSegmentChecksums checks that Segment's IPv4 header and TCP
// checksums, computed from sums of the super-segment's headers, are the
// ones computed over the segment as written (the fields zeroed, then
// summed), whatever the headers hold (options included).
func checkSegmentChecksums(t *testing.T, k int, seg []byte) {
	t.Helper()
	var ip, pseudo []byte
	if binary.BigEndian.Uint16(seg[12:14]) == packet.EtherTypeIPv6 {
		ip = seg[14:54]
		pseudo = ip[8:40]
	} else {
		ip = seg[14 : 14+int(seg[14]&0x0f)*4]
		pseudo = ip[12:20]
		c := bytes.Clone(ip)
		c[10], c[11] = 0, 0
		if got, want := binary.BigEndian.Uint16(ip[10:12]), packet.Checksum(c); got != want {
			t.Fatalf("segment %d: IPv4 header checksum %#04x, want %#04x", k, got, want)
		}
	}
	tcp := bytes.Clone(seg[14+len(ip):])
	got := binary.BigEndian.Uint16(tcp[16:18])
	tcp[16], tcp[17] = 0, 0
	acc := packet.Sum(pseudo, uint64(packet.ProtoTCP)+uint64(len(tcp)))
	if want := packet.Fold(packet.Sum(tcp, acc)); got != want {
		t.Fatalf("segment %d: TCP checksum %#04x, want %#04x", k, got, want)
	}
}

// BenchmarkGSOSegment splits a 64 KB IPv4 super-segment into its 47
// segments at MSS 1353 (an encrypted network's), each behind the one
// before in one arena, as the ESP send path does before sealing.
func BenchmarkGSOSegment(b *testing.B) {
	const mss = 1353
	frame, slot := superSegment(false, 47*mss, mss, fACK)
	g, ok := packet.ParseGSO(frame, packet.OffloadOf(slot))
	if !ok {
		b.Fatal("ParseGSO refused the super-segment")
	}
	arena := make([]byte, g.Segments()*(mss+g.HeaderLen()))
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		at := 0
		for k := range g.Segments() {
			at += g.Segment(k, arena[at:])
		}
	}
}
