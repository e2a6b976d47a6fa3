package lb

import (
	"encoding/binary"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

func TestTranslateTCPRoundTrip(t *testing.T) {
	tb := newTest(t, Config{Max: 1024}, Service{}, 3)
	for _, payload := range []int{0, 1, 333} {
		syn := toVIP(packet.ProtoTCP, 40000+uint16(payload), 80, header.TCPFlagSyn)
		syn.payload = payload
		f := syn.build()
		if v := tb.Translate(f, nil, t0); v != Forward {
			t.Fatalf("SYN to VIP: verdict %d, want Forward", v)
		}
		checkSums(t, f)
		got := parseFields(f)
		i := backendIndex(got.dst)
		if got.dst != beIP(i) || got.dstMAC != beMAC(i) || got.dport != 80 || got.src != clientIP || got.sport != syn.sport || got.srcMAC != clientMAC {
			t.Fatalf("translated SYN: %+v", got)
		}
		r := reply(got, packet.ProtoTCP, header.TCPFlagSyn|header.TCPFlagAck)
		r.payload = payload
		rf := r.build()
		if v := tb.Untranslate(rf, nil, t0); v != Forward {
			t.Fatalf("SYN-ACK to client: verdict %d, want Forward", v)
		}
		checkSums(t, rf)
		back := parseFields(rf)
		if back.src != vip || back.sport != 80 || back.srcMAC != vipMAC || back.dst != clientIP || back.dport != syn.sport {
			t.Fatalf("untranslated SYN-ACK: %+v", back)
		}
	}
	other := toVIP(packet.ProtoTCP, 1, 80, header.TCPFlagSyn)
	other.dst = beIP(1)
	if v := tb.Translate(other.build(), nil, t0); v != Pass {
		t.Fatalf("frame to a non-VIP: verdict %d, want Pass", v)
	}
	if v := tb.Untranslate(toVIP(packet.ProtoTCP, 1, 80, header.TCPFlagAck).build(), nil, t0); v != Pass {
		t.Fatalf("frame of no flow to Untranslate: verdict %d, want Pass", v)
	}
}

// A service port mapped to another backend port changes the port word:
// complete checksums must include it, partial ones must not.
func TestTranslatePartialChecksum(t *testing.T) {
	svc := Service{Ports: []Port{{Proto: packet.ProtoTCP, Port: 80, Target: 8080}, {Proto: packet.ProtoUDP, Port: 53, Target: 5353}}}
	tb := newTest(t, Config{Max: 1024}, svc, 2)
	for _, tc := range []struct {
		proto uint8
		port  uint16
		want  uint16
	}{{packet.ProtoTCP, 80, 8080}, {packet.ProtoUDP, 53, 5353}} {
		for _, partial := range []bool{false, true} {
			fl := toVIP(tc.proto, 33333, tc.port, header.TCPFlagSyn)
			fl.payload = 101
			f := fl.build()
			var o packet.Offload
			if partial {
				o = makePartial(f)
			}
			if v := tb.Translate(f, o, t0); v != Forward {
				t.Fatalf("proto %d partial %v: verdict %d", tc.proto, partial, v)
			}
			if got := parseFields(f); got.dport != tc.want || backendIndex(got.dst) == 0 {
				t.Fatalf("proto %d: translated to %v:%d, want a backend port %d", tc.proto, got.dst, got.dport, tc.want)
			}
			if partial {
				completePartial(f, o)
			}
			checkSums(t, f)
			// And back: the reply's port word changes 8080 -> 80.
			r := reply(parseFields(f), tc.proto, header.TCPFlagSyn|header.TCPFlagAck)
			r.payload = 77
			rf := r.build()
			var ro packet.Offload
			if partial {
				ro = makePartial(rf)
			}
			if v := tb.Untranslate(rf, ro, t0); v != Forward {
				t.Fatalf("reply: verdict %d", v)
			}
			if partial {
				completePartial(rf, ro)
			}
			checkSums(t, rf)
			if got := parseFields(rf); got.src != vip || got.sport != tc.port {
				t.Fatalf("reply from %v:%d, want the VIP's port %d", got.src, got.sport, tc.port)
			}
		}
	}
}

// A TSO super-segment keeps its metadata; every segment the GSO engine
// cuts from the translated frame has right checksums.
func TestTranslateSuperSegment(t *testing.T) {
	svc := Service{Ports: []Port{{Proto: packet.ProtoTCP, Port: 80, Target: 8080}}}
	tb := newTest(t, Config{Max: 1024}, svc, 2)
	syn := toVIP(packet.ProtoTCP, 40001, 80, header.TCPFlagSyn)
	if tb.Translate(syn.build(), nil, t0) != Forward {
		t.Fatal("SYN not forwarded")
	}
	fl := toVIP(packet.ProtoTCP, 40001, 80, header.TCPFlagAck|header.TCPFlagPsh)
	fl.payload = 20000
	f := fl.build()
	o := makePartial(f)
	o.Set(packet.OffloadNeedsCsum, packet.GSOTCPv4, 54, 1400, 34, 16)
	if v := tb.Translate(f, o, t0); v != Forward {
		t.Fatalf("super-segment: verdict %d", v)
	}
	g, ok := packet.ParseGSO(f, o)
	if !ok {
		t.Fatal("translated super-segment no longer parses")
	}
	seg := make([]byte, g.MaxSegmentLen())
	for k := range g.Segments() {
		n := g.Segment(k, seg)
		checkSums(t, seg[:n])
		if got := parseFields(seg[:n]); got.dport != 8080 || backendIndex(got.dst) == 0 {
			t.Fatalf("segment %d goes to %v:%d", k, got.dst, got.dport)
		}
	}
}

func TestUDPZeroChecksumStaysZero(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{Ports: []Port{{Proto: packet.ProtoUDP, Port: 53, Target: 5353}}}, 1)
	f := toVIP(packet.ProtoUDP, 1234, 53, 0).build()
	binary.BigEndian.PutUint16(f[40:], 0)
	if tb.Translate(f, nil, t0) != Forward {
		t.Fatal("not forwarded")
	}
	if c := binary.BigEndian.Uint16(f[40:]); c != 0 {
		t.Fatalf("UDP checksum 0 (none) became %#04x", c)
	}
	checkSums(t, f)
}

func TestPortsRefused(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{Ports: []Port{{Proto: packet.ProtoTCP, Port: 80}}}, 1)
	buf := make([]byte, RejectBufLen)

	syn := toVIP(packet.ProtoTCP, 5555, 81, header.TCPFlagSyn)
	f := syn.build()
	if v := tb.Translate(f, nil, t0); v != Reject {
		t.Fatalf("SYN to a port not in the service: verdict %d, want Reject", v)
	}
	n := WriteReject(buf, f)
	checkSums(t, buf[:n])
	got := parseFields(buf[:n])
	tcp := header.TCP(buf[34:n])
	if got.src != vip || got.sport != 81 || got.dst != clientIP || got.dport != 5555 || got.srcMAC != vipMAC ||
		got.dstMAC != clientMAC || got.flags != header.TCPFlagRst|header.TCPFlagAck || tcp.AckNumber() != syn.seq+1 {
		t.Fatalf("RST: %+v ack %d", got, tcp.AckNumber())
	}

	f = toVIP(packet.ProtoUDP, 5555, 80, 0).build()
	if v := tb.Translate(f, nil, t0); v != Reject {
		t.Fatalf("UDP to a TCP-only port: verdict %d, want Reject", v)
	}
	n = WriteReject(buf, f)
	checkSums(t, buf[:n])
	ic := header.ICMPv4(buf[34:n])
	if ic.Type() != header.ICMPv4DstUnreachable || ic.Code() != header.ICMPv4PortUnreachable || string(ic.Payload()) != string(f[14:]) {
		t.Fatalf("ICMP: type %d code %d", ic.Type(), ic.Code())
	}
	if got := tb.Reasons()["port"]; got != 2 {
		t.Fatalf("port rejects counted %d, want 2", got)
	}
}

func TestNonSYNMissResets(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	f := toVIP(packet.ProtoTCP, 5555, 80, header.TCPFlagAck).build()
	if v := tb.Translate(f, nil, t0); v != Reject {
		t.Fatalf("ACK without a connection: verdict %d, want Reject", v)
	}
	buf := make([]byte, RejectBufLen)
	n := WriteReject(buf, f)
	checkSums(t, buf[:n])
	if got := parseFields(buf[:n]); got.flags != header.TCPFlagRst || header.TCP(buf[34:n]).SequenceNumber() != 0 {
		t.Fatalf("RST to an ACK: flags %v seq %d, want RST with seq = the ACK's ack (0)", got.flags, header.TCP(buf[34:n]).SequenceNumber())
	}
	rst := toVIP(packet.ProtoTCP, 5555, 80, header.TCPFlagRst).build()
	if v := tb.Translate(rst, nil, t0); v != Drop {
		t.Fatalf("RST without a connection: verdict %d, want Drop", v)
	}
}

// With maglev, a mid-flow packet that misses this host's table goes to the
// backend any host would pick: the one that got the SYN elsewhere.
func TestNonSYNMissMaglev(t *testing.T) {
	hostA := newTest(t, Config{Max: 1024}, Service{Scheduler: Maglev}, 5)
	hostB := newTest(t, Config{Max: 1024}, Service{Scheduler: Maglev}, 5)
	spread := map[int]bool{}
	for port := uint16(1000); port < 1100; port++ {
		syn := toVIP(packet.ProtoTCP, port, 80, header.TCPFlagSyn).build()
		if hostA.Translate(syn, nil, t0) != Forward {
			t.Fatal("SYN not forwarded")
		}
		ack := toVIP(packet.ProtoTCP, port, 80, header.TCPFlagAck).build()
		if v := hostB.Translate(ack, nil, t0); v != Forward {
			t.Fatalf("mid-flow miss with maglev: verdict %d, want Forward", v)
		}
		a, b := parseFields(syn), parseFields(ack)
		if a.dst != b.dst {
			t.Fatalf("port %d: host A picked %v, host B %v", port, a.dst, b.dst)
		}
		spread[backendIndex(a.dst)] = true
	}
	if len(spread) != 5 {
		t.Fatalf("100 flows reached %d of 5 backends", len(spread))
	}
}

func TestICMPErrorsTranslated(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	udp := toVIP(packet.ProtoUDP, 4444, 53, 0)
	udp.payload = 12
	orig := udp.build()
	f := append([]byte(nil), orig...)
	if tb.Translate(f, nil, t0) != Forward {
		t.Fatal("not forwarded")
	}
	got := parseFields(f)
	// The backend answers with port unreachable quoting what it got.
	for _, code := range []header.ICMPv4Code{header.ICMPv4PortUnreachable, header.ICMPv4FragmentationNeeded} {
		e := icmpError(beMAC(backendIndex(got.dst)), clientMAC, got.dst, clientIP, header.ICMPv4DstUnreachable, code, f[14:])
		if v := tb.Untranslate(e, nil, t0); v != Forward {
			t.Fatalf("ICMP error to client: verdict %d", v)
		}
		checkSums(t, e)
		quote := e[14+20+8:]
		checkSums(t, append(append([]byte(nil), orig[:14]...), quote...)) // the quote is whole: its UDP checksum is checked too
		if string(quote) != string(orig[14:]) || parseFields(e).src != vip || parseFields(e).srcMAC != vipMAC {
			t.Fatalf("untranslated ICMP error: quote % x\nwant % x", quote, orig[14:])
		}
	}
	// The client answers a reply from the VIP with an ICMP error.
	r := reply(got, packet.ProtoUDP, 0)
	r.payload = 9
	rf := r.build()
	if tb.Untranslate(rf, nil, t0) != Forward {
		t.Fatal("reply not untranslated")
	}
	e := icmpError(clientMAC, vipMAC, clientIP, vip, header.ICMPv4TimeExceeded, 0, rf[14:])
	if v := tb.Translate(e, nil, t0); v != Forward {
		t.Fatalf("ICMP error to VIP: verdict %d", v)
	}
	checkSums(t, e)
	checkSums(t, append(append([]byte(nil), rf[:14]...), e[42:]...))
	if g := parseFields(e); g.dst != got.dst || g.dstMAC != got.dstMAC || parseFields(append(append([]byte(nil), rf[:14]...), e[42:]...)).src != got.dst {
		t.Fatalf("translated ICMP error goes to %v", g.dst)
	}
}

// icmpError builds an ICMP error from src to dst quoting ipPacket.
func icmpError(srcMAC, dstMAC packet.MAC, src, dst interface{ As4() [4]byte }, typ header.ICMPv4Type, code header.ICMPv4Code, ipPacket []byte) []byte {
	fl := flow{srcMAC: srcMAC, dstMAC: dstMAC, proto: packet.ProtoICMP, payload: len(ipPacket)}
	fl.src, fl.dst = netipFrom4(src.As4()), netipFrom4(dst.As4())
	f := fl.build()
	ic := header.ICMPv4(f[34:])
	ic.SetType(typ)
	ic.SetCode(code)
	binary.BigEndian.PutUint32(f[38:], 0)
	copy(f[42:], ipPacket)
	ic.SetChecksum(0)
	ic.SetChecksum(^checksumOf(f[34:]))
	return f
}

func checksumOf(b []byte) uint16 { return ^packet.Checksum(b) }

func TestEchoBalanced(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	f := toVIP(packet.ProtoICMP, 77, 0, 0).build()
	if tb.Translate(f, nil, t0) != Forward {
		t.Fatal("echo not forwarded")
	}
	checkSums(t, f)
	got := parseFields(f)
	r := flow{srcMAC: got.dstMAC, dstMAC: clientMAC, src: got.dst, dst: clientIP, proto: packet.ProtoICMP, sport: 77}.build()
	header.ICMPv4(r[34:]).SetType(header.ICMPv4EchoReply)
	header.ICMPv4(r[34:]).SetChecksum(0)
	header.ICMPv4(r[34:]).SetChecksum(^checksumOf(r[34:]))
	if tb.Untranslate(r, nil, t0) != Forward {
		t.Fatal("echo reply not untranslated")
	}
	checkSums(t, r)
	if g := parseFields(r); g.src != vip {
		t.Fatalf("echo reply from %v", g.src)
	}
}

func TestMalformedAndOffloadDrops(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 1)
	f := toVIP(packet.ProtoTCP, 1, 80, header.TCPFlagSyn).build()
	frag := append([]byte(nil), f...)
	binary.BigEndian.PutUint16(frag[20:], 0x2000|100) // MF, a later fragment whose first was not seen: held
	if v := tb.Translate(frag, nil, t0); v != Hold {
		t.Fatalf("fragment: verdict %d", v)
	}
	bad := append([]byte(nil), f...)
	o := makePartial(bad)
	o.Set(packet.OffloadNeedsCsum, 0, 0, 0, 34, 6) // UDP's offset on TCP
	if v := tb.Translate(bad, o, t0); v != Drop {
		t.Fatalf("lying offload: verdict %d", v)
	}
	short := f[:40]
	if v := tb.Translate(short, nil, t0); v != Drop {
		t.Fatalf("truncated: verdict %d", v)
	}
	r := tb.Reasons()
	if tb.ct.FragHeld() != 1 || r["bad-offload"] != 1 || r["malformed"] != 1 {
		t.Fatalf("held %d, reasons %v", tb.ct.FragHeld(), r)
	}
	_ = time.Second
}

// One client port to two VIPs that share a backend: the second connection
// goes to another backend, since the shared one could not tell them apart
// (same 4-tuple at the backend) and neither could the reply path.
func TestReverseKeyCollision(t *testing.T) {
	vip2 := netipFrom4([4]byte{10, 0, 0, 101})
	snap, err := NewSnapshot([]Service{
		{Name: "a", VIP: vip, Backends: []Backend{{IP: beIP(1), MAC: beMAC(1)}}},
		{Name: "b", VIP: vip2, Backends: []Backend{{IP: beIP(1), MAC: beMAC(1)}, {IP: beIP(2), MAC: beMAC(2)}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tb := NewTable(NewConntrack(Config{Max: 4096}), 1)
	tb.Swap(snap)
	for i := range 4 { // whatever the round-robin position
		port := uint16(1000 + i)
		a := toVIP(packet.ProtoTCP, port, 80, header.TCPFlagSyn).build()
		fl := toVIP(packet.ProtoTCP, port, 80, header.TCPFlagSyn)
		fl.dst = vip2
		b := fl.build()
		if tb.Translate(a, nil, t0) != Forward || tb.Translate(b, nil, t0) != Forward {
			t.Fatal("not forwarded")
		}
		if parseFields(a).dst != beIP(1) || parseFields(b).dst != beIP(2) {
			t.Fatalf("port %d: VIP a went to %v, VIP b to %v", port, parseFields(a).dst, parseFields(b).dst)
		}
	}
}
