package lb

import (
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// sumsOK reports whether f (an untagged IPv4 frame, any bytes) has a valid
// IPv4 header checksum and a valid TCP/UDP/ICMP checksum, completing a
// partial checksum first as a device would (on a copy). ICMP errors'
// quoted IP header checksums must be valid too. Bounds are checked here,
// not trusted.
func sumsOK(frame []byte, o packet.Offload) bool { return sumsOKQuote(frame, o, true) }

// sumsOKQuote is sumsOK that checks an ICMP error's quoted IP header
// checksum only if quote is true.
func sumsOKQuote(frame []byte, o packet.Offload, quote bool) bool {
	f := append([]byte(nil), frame...)
	if len(f) < 34 || binary.BigEndian.Uint16(f[12:]) != packet.EtherTypeIPv4 || f[14]>>4 != 4 {
		return false
	}
	hl, tl := int(f[14]&0xf)*4, int(binary.BigEndian.Uint16(f[16:]))
	if hl < 20 || tl < hl || 14+tl > len(f) || checksum.Checksum(f[14:14+hl], 0) != 0xffff {
		return false
	}
	l4 := f[14+hl : 14+tl]
	if len(o) == packet.OffloadLen && o.NeedsCsum() {
		start, at := o.CsumStart(), o.CsumStart()+o.CsumOffset()
		if start != 14+hl || at+2 > 14+tl {
			return false
		}
		binary.BigEndian.PutUint16(f[at:], ^checksum.Checksum(f[start:14+tl], 0))
	}
	var pseudo [12]byte
	copy(pseudo[0:8], f[26:34])
	pseudo[9] = f[23]
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(l4)))
	switch f[23] {
	case packet.ProtoTCP:
		return len(l4) >= 20 && checksum.Checksum(l4, checksum.Checksum(pseudo[:], 0)) == 0xffff
	case packet.ProtoUDP:
		if len(l4) >= 8 && binary.BigEndian.Uint16(l4[6:]) == 0 {
			return true
		}
		return len(l4) >= 8 && checksum.Checksum(l4, checksum.Checksum(pseudo[:], 0)) == 0xffff
	case packet.ProtoICMP:
		if len(l4) < 8 || checksum.Checksum(l4, 0) != 0xffff {
			return false
		}
		if q := l4[8:]; quote && (l4[0] == 3 || l4[0] == 11) && len(q) >= 20 && q[0]>>4 == 4 && int(q[0]&0xf)*4 >= 20 && int(q[0]&0xf)*4 <= len(q) {
			return checksum.Checksum(q[:int(q[0]&0xf)*4], 0) == 0xffff
		}
		return true
	}
	return true
}

// swapDirection turns a packet into its reply's shape: MACs, addresses
// and ports swapped (which keeps every checksum valid).
func swapDirection(f []byte) {
	var m [6]byte
	copy(m[:], f[0:6])
	copy(f[0:6], f[6:12])
	copy(f[6:12], m[:])
	var a [4]byte
	copy(a[:], f[26:30])
	copy(f[26:30], f[30:34])
	copy(f[30:34], a[:])
	hl := int(f[14]&0xf) * 4
	if p := f[23]; p == packet.ProtoTCP || p == packet.ProtoUDP {
		l4 := f[14+hl:]
		l4[0], l4[1], l4[2], l4[3] = l4[2], l4[3], l4[0], l4[1]
	} else if p == packet.ProtoICMP && f[14+hl] == 8 {
		l4 := f[14+hl:]
		l4[0] = 0                                                                // echo reply
		binary.BigEndian.PutUint16(l4[2:], binary.BigEndian.Uint16(l4[2:])+8<<8) // RFC 1624: the type word fell by 0x0800
		if binary.BigEndian.Uint16(l4[2:]) < 8<<8 {
			binary.BigEndian.PutUint16(l4[2:], binary.BigEndian.Uint16(l4[2:])+1) // end-around carry
		}
	}
}

func fuzzSeeds(f *testing.F) {
	tcp := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagSyn)
	tcp.payload = 10
	udp := toVIP(packet.ProtoUDP, 1000, 53, 0)
	udp.payload = 30
	for _, fr := range [][]byte{tcp.build(), udp.build(), toVIP(packet.ProtoICMP, 9, 0, 0).build(),
		toVIP(packet.ProtoTCP, 7, 8080, header.TCPFlagAck).build()} {
		f.Add(fr, []byte(nil), false)
		p := append([]byte(nil), fr...)
		if fr[23] != packet.ProtoICMP {
			f.Add(p, []byte(makePartial(p)), false)
		}
	}
	seg := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagAck)
	seg.payload = 3000
	sf := seg.build()
	o := makePartial(sf)
	o.Set(packet.OffloadNeedsCsum, packet.GSOTCPv4, 54, 1000, 34, 16)
	f.Add(sf, []byte(o), false)
	q := udp.build()
	e := icmpError(clientMAC, vipMAC, clientIP, vip, header.ICMPv4DstUnreachable, 3, q[14:])
	f.Add(e, []byte(nil), false)
	e2 := icmpError(beMAC(1), clientMAC, beIP(1), clientIP, header.ICMPv4DstUnreachable, 3, q[14:])
	f.Add(e2, []byte(nil), true)
}

// FuzzTranslate sends random frames through a table with a VIP (no ports)
// and one with ports: never a panic, and a frame whose checksums were right
// leaves with right checksums, both ways (the translated frame's reply
// shape is untranslated back too).
func FuzzTranslate(f *testing.F) {
	fuzzSeeds(f)
	open := newTest(f, Config{Max: 4096}, Service{}, 3)
	svc := Service{Ports: []Port{{Proto: packet.ProtoTCP, Port: 80, Target: 8080}, {Proto: packet.ProtoUDP, Port: 53}}, Scheduler: Maglev}
	ported := newTest(f, Config{Max: 4096}, svc, 3)
	buf := make([]byte, RejectBufLen)
	retry := func(t *testing.T, tb *Table, fr []byte) {
		if n := tb.WriteRetry(buf, fr, t0); n > 0 && !sumsOK(buf[:n], nil) {
			t.Fatalf("WriteRetry wrote bad checksums:\n% x", buf[:n])
		}
	}
	f.Fuzz(func(t *testing.T, frame, off []byte, reverse bool) {
		var o packet.Offload
		if len(off) >= packet.OffloadLen {
			o = packet.Offload(off[:packet.OffloadLen])
		}
		for _, tb := range []*Table{open, ported} {
			fr := append([]byte(nil), frame...)
			ok := sumsOK(fr, o)
			if reverse {
				v := tb.Untranslate(fr, o, t0)
				if ok && v == Forward && !sumsOK(fr, o) {
					t.Fatalf("Untranslate broke checksums:\n% x\n% x", frame, fr)
				}
				if v == Retry {
					retry(t, tb, fr)
				}
				continue
			}
			v := tb.Translate(fr, o, t0)
			if v == Reject {
				WriteReject(buf, fr)
			}
			if !ok || v != Forward {
				continue
			}
			if !sumsOK(fr, o) {
				t.Fatalf("Translate broke checksums:\n% x\n% x", frame, fr)
			}
			if fr[23] == packet.ProtoICMP && (fr[34] == 3 || fr[34] == 11) {
				continue
			}
			swapDirection(fr)
			v = tb.Untranslate(fr, o, t0)
			if v == Forward && !sumsOK(fr, o) {
				t.Fatalf("Untranslate of the reply broke checksums:\n% x", fr)
			}
			if v == Retry {
				retry(t, tb, fr)
			}
		}
	})
}

// FuzzWriteReject: the reject builder parses outside bytes; any frame gives
// nothing or a reply with right checksums.
func FuzzWriteReject(f *testing.F) {
	fuzzSeeds(f)
	buf := make([]byte, RejectBufLen)
	f.Fuzz(func(t *testing.T, frame, _ []byte, _ bool) {
		clear(buf)
		// The quote is the refused frame's bytes, right or wrong.
		if n := WriteReject(buf, frame); n > 0 && !sumsOKQuote(buf[:n], nil, false) {
			t.Fatalf("reply with bad checksums for % x:\n% x", frame, buf[:n])
		}
	})
}
