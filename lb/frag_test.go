package lb

import (
	"encoding/binary"
	"net/netip"
	"sort"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// fragment splits the frame f (its IPv4 packet) into fragments of at
// most mtu bytes of IP packet each, as a sender's kernel does, with IP
// identification id, in order.
func fragment(f []byte, mtu int, id uint16) [][]byte {
	ip := header.IPv4(f[14:])
	hl := int(ip.HeaderLength())
	payload := ip.Payload()
	step := (mtu - hl) &^ 7
	if step <= 0 {
		panic("fragment: MTU too small")
	}
	var out [][]byte
	for off := 0; off < len(payload); off += step {
		end := min(off+step, len(payload))
		fr := make([]byte, 14+hl+end-off)
		copy(fr, f[:14+hl])
		copy(fr[14+hl:], payload[off:end])
		h := header.IPv4(fr[14:])
		h.SetTotalLength(uint16(hl + end - off))
		h.SetID(id)
		w := uint16(off / 8)
		if end < len(payload) {
			w |= 0x2000
		}
		binary.BigEndian.PutUint16(fr[14+6:], w)
		h.SetChecksum(0)
		h.SetChecksum(^h.CalculateChecksum())
		out = append(out, fr)
	}
	return out
}

// reassemble joins fragments (any order, each with a valid header
// checksum) into one frame, as the receiver's kernel does.
func reassemble(t *testing.T, frags [][]byte) []byte {
	t.Helper()
	frags = append([][]byte(nil), frags...)
	off := func(fr []byte) int { return int(binary.BigEndian.Uint16(fr[20:])&0x1fff) * 8 }
	sort.Slice(frags, func(i, j int) bool { return off(frags[i]) < off(frags[j]) })
	hl := int(header.IPv4(frags[0][14:]).HeaderLength())
	f := append([]byte(nil), frags[0][:14+hl]...)
	for _, fr := range frags {
		checkIPSum(t, fr)
		if off(fr) != len(f)-14-hl {
			t.Fatalf("fragment at %d, want %d", off(fr), len(f)-14-hl)
		}
		f = append(f, header.IPv4(fr[14:]).Payload()...)
	}
	h := header.IPv4(f[14:])
	h.SetTotalLength(uint16(len(f) - 14))
	binary.BigEndian.PutUint16(f[20:], 0)
	h.SetChecksum(0)
	h.SetChecksum(^h.CalculateChecksum())
	return f
}

func checkIPSum(t *testing.T, fr []byte) {
	t.Helper()
	if ip := header.IPv4(fr[14:]); !ip.IsValid(len(fr)-14) || !ip.IsChecksumValid() {
		t.Fatalf("bad IPv4 header checksum: % x", fr[14:34])
	}
}

// bigFlow is a datagram of proto to the VIP with n payload bytes.
func bigFlow(proto uint8, sport uint16, n int) []byte {
	fl := toVIP(proto, sport, 53, header.TCPFlagAck)
	if proto == packet.ProtoTCP {
		fl.dport = 80
	}
	fl.payload = n
	return fl.build()
}

// A datagram to the VIP larger than the MTU arrives in fragments: every
// fragment goes to the backend its first fragment was balanced to, the
// datagram the backend reassembles has valid checksums and the backend's
// address and port, and the backend's fragmented reply comes back from
// the VIP, whole and valid, for UDP, TCP (with Maglev: no SYN) and echo.
func TestFragmentsTranslatedBothWays(t *testing.T) {
	for _, proto := range []uint8{packet.ProtoUDP, packet.ProtoTCP, packet.ProtoICMP} {
		tb := newTest(t, Config{Max: 4096}, Service{Scheduler: Maglev}, 3)
		orig := bigFlow(proto, 4000, 3000)
		frags := fragment(orig, 1500, 0x1234)
		if len(frags) != 3 {
			t.Fatalf("%d fragments", len(frags))
		}
		for i, fr := range frags {
			if v := tb.Translate(fr, nil, t0); v != Forward {
				t.Fatalf("proto %d: fragment %d: verdict %d, reasons %v", proto, i, v, tb.Reasons())
			}
		}
		be := parseFields(frags[0])
		for i, fr := range frags {
			if g := parseFields(fr); g.dst != be.dst || g.dstMAC != be.dstMAC || g.dst == vip {
				t.Fatalf("proto %d: fragment %d to %v %v, first to %v %v", proto, i, g.dst, g.dstMAC, be.dst, be.dstMAC)
			}
		}
		whole := reassemble(t, frags)
		checkSums(t, whole)
		if got := parseFields(whole); got.dst != be.dst || got.dport != parseFields(orig).dport {
			t.Fatalf("proto %d: reassembled to %v:%d", proto, got.dst, got.dport)
		}
		if string(whole[34:]) != string(orig[34:]) && proto == packet.ProtoICMP {
			t.Fatalf("echo payload changed")
		}

		// The backend's reply, as large.
		rf := reply(be, proto, header.TCPFlagAck)
		rf.payload = 3000
		if proto == packet.ProtoICMP {
			rf.sport = 4000 // the echo identifier
		}
		r := rf.build()
		if proto == packet.ProtoICMP {
			header.ICMPv4(r[34:]).SetType(header.ICMPv4EchoReply)
			header.ICMPv4(r[34:]).SetChecksum(0)
			header.ICMPv4(r[34:]).SetChecksum(^checksumOf(r[34:]))
		}
		rfrags := fragment(r, 1400, 0x4321)
		for i, fr := range rfrags {
			if v := tb.Untranslate(fr, nil, t0); v != Forward {
				t.Fatalf("proto %d: reply fragment %d: verdict %d", proto, i, v)
			}
			if g := parseFields(fr); g.src != vip || g.srcMAC != vipMAC {
				t.Fatalf("proto %d: reply fragment %d from %v %v", proto, i, g.src, g.srcMAC)
			}
		}
		back := reassemble(t, rfrags)
		checkSums(t, back)
		if proto != packet.ProtoICMP && parseFields(back).sport != parseFields(orig).dport {
			t.Fatalf("proto %d: reply from port %d", proto, parseFields(back).sport)
		}
		if r := tb.Reasons(); r["fragment"]+r["frag-tiny"]+r["frag-timeout"] != 0 {
			t.Fatalf("reasons %v", r)
		}
	}
}

// Two clients' datagrams, fragmented and interleaved, each follow their
// own first fragment's backend (round robin gives them different ones).
func TestFragmentsInterleaved(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	a := fragment(bigFlow(packet.ProtoUDP, 1111, 4000), 1500, 1)
	b := fragment(bigFlow(packet.ProtoUDP, 2222, 4000), 1500, 2)
	for i := range a {
		for _, fr := range [][]byte{a[i], b[i]} {
			if v := tb.Translate(fr, nil, t0); v != Forward {
				t.Fatalf("verdict %d", v)
			}
		}
	}
	da, db := parseFields(a[0]).dst, parseFields(b[0]).dst
	if da == db {
		t.Fatalf("both to %v", da)
	}
	for i := range a {
		if parseFields(a[i]).dst != da || parseFields(b[i]).dst != db {
			t.Fatalf("fragment %d crossed: %v %v", i, parseFields(a[i]).dst, parseFields(b[i]).dst)
		}
	}
	checkSums(t, reassemble(t, a))
	checkSums(t, reassemble(t, b))
}

// Fragments the balancer cannot translate are dropped and counted by
// reason: a later fragment that comes after its datagram's entry
// expired, a tiny first fragment without the whole L4 header and a later
// one overlapping it (RFC 1858), and a fragment claiming offloads.
func TestFragmentDrops(t *testing.T) {
	tb := newTest(t, Config{Max: 4096, FragTimeout: time.Second}, Service{}, 2)
	frags := fragment(bigFlow(packet.ProtoUDP, 1000, 3000), 1500, 9)
	if v := tb.Translate(frags[0], nil, t0); v != Forward {
		t.Fatalf("first fragment: verdict %d", v)
	}
	if v := tb.Translate(frags[1], nil, t0+2*int64(time.Second)); v != Drop {
		t.Fatalf("fragment after the timeout: verdict %d", v)
	}
	// Tiny first fragment: 8 bytes of the TCP header.
	tiny := fragment(bigFlow(packet.ProtoTCP, 1002, 100), 28, 11)
	if v := tb.Translate(tiny[0], nil, t0); v != Drop {
		t.Fatalf("tiny first fragment: verdict %d", v)
	}
	// A later fragment at offset 8 (FO=1), which overlaps a TCP header
	// (RFC 1858): a first fragment of 8 bytes, then the rest.
	ov := fragment(bigFlow(packet.ProtoUDP, 1003, 100), 28, 12)
	if v := tb.Translate(ov[1], nil, t0); v != Drop {
		t.Fatalf("overlapping later fragment: verdict %d", v)
	}
	// A fragment with offload metadata.
	fr := fragment(bigFlow(packet.ProtoUDP, 1004, 3000), 1500, 13)[0]
	o := packet.Offload(make([]byte, packet.OffloadLen))
	o.Set(packet.OffloadNeedsCsum, packet.GSONone, 0, 0, 34, 6)
	if v := tb.Translate(fr, o, t0); v != Drop {
		t.Fatalf("fragment with offload: verdict %d", v)
	}
	r := tb.Reasons()
	if r["frag-timeout"] != 1 || r["frag-tiny"] != 2 || r["bad-offload"] != 1 || r["frag-held"] != 0 {
		t.Fatalf("reasons %v", r)
	}
}

// takeAll returns what TakeHeld gives after first.
func takeAll(t *testing.T, tb *Table, first []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for {
		buf := make([]byte, 100)
		n := tb.TakeHeld(buf, first)
		if n < 0 {
			buf = make([]byte, -n)
			n = tb.TakeHeld(buf, first)
		}
		if n <= 0 {
			return out
		}
		out = append(out, buf[:n])
	}
}

// Fragments that come before their datagram's first fragment (the last
// first, as a reordering underlay can deliver them) are held, not lost:
// when the first comes, TakeHeld gives them rewritten as it was, both
// ways, and the datagram reassembles whole and valid.
func TestFragmentsOutOfOrderHeld(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	frags := fragment(bigFlow(packet.ProtoUDP, 1000, 4000), 1500, 9)
	for _, i := range []int{2, 1} {
		if v := tb.Translate(frags[i], nil, t0); v != Hold {
			t.Fatalf("fragment %d before the first: verdict %d", i, v)
		}
	}
	if n := tb.TakeHeld(make([]byte, 2000), frags[0]); n != 0 {
		t.Fatalf("TakeHeld gave %d bytes before the first fragment was translated", n)
	}
	if v := tb.Translate(frags[0], nil, t0); v != Forward {
		t.Fatalf("first fragment: verdict %d", v)
	}
	held := takeAll(t, tb, frags[0])
	if len(held) != 2 {
		t.Fatalf("TakeHeld gave %d fragments, want 2", len(held))
	}
	be := parseFields(frags[0])
	for _, fr := range held {
		if g := parseFields(fr); g.dst != be.dst || g.dstMAC != be.dstMAC {
			t.Fatalf("held fragment to %v %v, first to %v %v", g.dst, g.dstMAC, be.dst, be.dstMAC)
		}
	}
	checkSums(t, reassemble(t, append([][]byte{frags[0]}, held...)))

	// The reply, reversed too.
	rf := reply(be, packet.ProtoUDP, 0)
	rf.payload = 4000
	rfrags := fragment(rf.build(), 1500, 10)
	for _, i := range []int{2, 1} {
		if v := tb.Untranslate(rfrags[i], nil, t0); v != Hold {
			t.Fatalf("reply fragment %d before the first: verdict %d", i, v)
		}
	}
	if v := tb.Untranslate(rfrags[0], nil, t0); v != Forward {
		t.Fatalf("reply's first fragment: verdict %d", v)
	}
	rheld := takeAll(t, tb, rfrags[0])
	if len(rheld) != 2 {
		t.Fatalf("TakeHeld gave %d reply fragments, want 2", len(rheld))
	}
	for _, fr := range rheld {
		if g := parseFields(fr); g.src != vip || g.srcMAC != vipMAC {
			t.Fatalf("held reply fragment from %v %v", g.src, g.srcMAC)
		}
	}
	checkSums(t, reassemble(t, append([][]byte{rfrags[0]}, rheld...)))

	// A backend's datagram of no translated flow, reversed: held, then
	// given back unchanged after its first passes.
	direct := flow{srcMAC: be.dstMAC, dstMAC: clientMAC, src: be.dst, dst: clientIP, sport: 9, dport: 9, proto: packet.ProtoUDP, payload: 3000}.build()
	dfrags := fragment(direct, 1500, 77)
	orig := append([]byte(nil), dfrags[1]...)
	if v := tb.Untranslate(dfrags[1], nil, t0); v != Hold {
		t.Fatalf("direct later fragment: verdict %d", v)
	}
	if v := tb.Untranslate(dfrags[0], nil, t0); v != Pass {
		t.Fatalf("direct first fragment: verdict %d", v)
	}
	if dh := takeAll(t, tb, dfrags[0]); len(dh) != 1 || string(dh[0]) != string(orig) {
		t.Fatalf("direct held fragments: %d, changed", len(dh))
	}
	if v := tb.Untranslate(dfrags[2], nil, t0); v != Pass {
		t.Fatalf("direct last fragment after its first: verdict %d", v)
	}
	if r, h := tb.Reasons(), tb.ct.FragHeld(); h != 5 || r["fragment"]+r["frag-timeout"] != 0 {
		t.Fatalf("held %d, reasons %v; want 5 held and no drop", h, r)
	}
}

// Held fragments are bounded: past FragHeld the oldest is given up
// ("fragment"), and one whose first comes too late is dropped
// ("frag-timeout"), not sent.
func TestFragmentsHeldBounded(t *testing.T) {
	tb := newTest(t, Config{Max: 4096, FragHeld: 2, FragTimeout: time.Second}, Service{}, 2)
	var firsts [][]byte
	for id := range 3 {
		frags := fragment(bigFlow(packet.ProtoUDP, uint16(1000+id), 3000), 1500, uint16(id))
		if v := tb.Translate(frags[1], nil, t0+int64(id)); v != Hold {
			t.Fatalf("datagram %d: verdict %d", id, v)
		}
		firsts = append(firsts, frags[0])
	}
	if r := tb.Reasons(); r["fragment"] != 1 {
		t.Fatalf("reasons %v, want one fragment given up", r)
	}
	tb.Translate(firsts[0], nil, t0)
	if n := len(takeAll(t, tb, firsts[0])); n != 0 {
		t.Fatalf("the fragment given up came back (%d)", n)
	}
	tb.Translate(firsts[1], nil, t0+2*int64(time.Second))
	if n := len(takeAll(t, tb, firsts[1])); n != 0 {
		t.Fatalf("an expired held fragment came back (%d)", n)
	}
	tb.Translate(firsts[2], nil, t0)
	if n := len(takeAll(t, tb, firsts[2])); n != 1 {
		t.Fatalf("the held fragment of the third datagram: %d", n)
	}
	if r := tb.Reasons(); r["frag-timeout"] != 1 {
		t.Fatalf("reasons %v, want one frag-timeout", r)
	}
}

// A held fragment whose first never comes is counted as "frag-timeout"
// by the first conntrack sweep after it expired, not when its slot is
// next needed; a sweep before then leaves it held.
func TestHeldFragmentTimeoutCountedBySweep(t *testing.T) {
	tb := newTest(t, Config{Max: 4096, FragTimeout: time.Second}, Service{}, 2)
	frags := fragment(bigFlow(packet.ProtoUDP, 1000, 3000), 1500, 3)
	if v := tb.Translate(frags[1], nil, t0); v != Hold {
		t.Fatalf("later fragment: verdict %d", v)
	}
	tb.ct.Sweep(t0 + int64(time.Second) - 1)
	if r := tb.Reasons(); r["frag-timeout"] != 0 {
		t.Fatalf("counted before it expired: %v", r)
	}
	tb.ct.Sweep(t0 + int64(time.Second))
	if r := tb.Reasons(); r["frag-timeout"] != 1 {
		t.Fatalf("reasons %v after the sweep, want one frag-timeout", r)
	}
	tb.ct.Sweep(t0 + 2*int64(time.Second))
	tb.Translate(frags[0], nil, t0+2*int64(time.Second))
	if n := len(takeAll(t, tb, frags[0])); n != 0 || tb.Reasons()["frag-timeout"] != 1 {
		t.Fatalf("after the first came late: %d taken, reasons %v (want none, one frag-timeout)", n, tb.Reasons())
	}
}

// The later fragments of a datagram whose first fragment the balancer
// refuses (a port the service does not list) are dropped and counted
// under the first's reason: those held before it at once, those after it
// as they come. None waits out the fragment timeout.
func TestFragmentsOfRefusedFirstDropped(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{Ports: []Port{{Proto: packet.ProtoUDP, Port: 5353}}}, 2)
	frags := fragment(bigFlow(packet.ProtoUDP, 1000, 5000), 1500, 4)
	if len(frags) != 4 {
		t.Fatalf("%d fragments, want 4", len(frags))
	}
	for _, i := range []int{2, 1} {
		if v := tb.Translate(frags[i], nil, t0); v != Hold {
			t.Fatalf("fragment %d before the first: verdict %d", i, v)
		}
	}
	if v := tb.Translate(frags[0], nil, t0); v != Reject {
		t.Fatalf("first fragment to an unlisted port: verdict %d", v)
	}
	if n := len(takeAll(t, tb, frags[0])); n != 0 {
		t.Fatalf("%d held fragments of a refused datagram given back", n)
	}
	if n := tb.ct.hold.n.Load(); n != 0 {
		t.Fatalf("%d fragments still held", n)
	}
	if v := tb.Translate(frags[3], nil, t0); v != Drop {
		t.Fatalf("fragment after the refused first: verdict %d", v)
	}
	if r := tb.Reasons(); r["port"] != 4 || r["frag-timeout"]+r["fragment"] != 0 {
		t.Fatalf("reasons %v, want port=4 (the first and its 3 later fragments)", r)
	}
}

// A full fragment table forgets its oldest incomplete datagram for a new
// one (counted): that datagram's later fragments are dropped, the new
// one's pass.
func TestFragmentTableFull(t *testing.T) {
	tb := newTest(t, Config{Max: 4096, FragMax: fragShards}, Service{}, 2) // one datagram a shard
	var seconds [][]byte
	for id := range 200 {
		frags := fragment(bigFlow(packet.ProtoUDP, uint16(1000+id), 3000), 1500, uint16(id))
		if v := tb.Translate(frags[0], nil, t0); v != Forward {
			t.Fatalf("first fragment %d: verdict %d", id, v)
		}
		seconds = append(seconds, frags[1])
	}
	if ev := tb.ct.FragEvictions(); ev < 200-fragShards {
		t.Fatalf("%d evictions, want at least %d", ev, 200-fragShards)
	}
	if v := tb.Translate(seconds[199], nil, t0); v != Forward {
		t.Fatalf("newest datagram's fragment: verdict %d", v)
	}
	if v := tb.Translate(seconds[0], nil, t0); v != Hold {
		t.Fatalf("evicted datagram's fragment: verdict %d (want held: its first is not known)", v)
	}
}

// A backend's fragmented datagram of no translated flow (to a client that
// talks to it directly) passes unchanged.
func TestFragmentsOfOtherFlowsPass(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 1)
	first := fragment(bigFlow(packet.ProtoUDP, 1000, 3000), 1500, 5)[0]
	tb.Translate(first, nil, t0) // makes beIP(1) a backend of some entry
	direct := flow{srcMAC: beMAC(1), dstMAC: clientMAC, src: beIP(1), dst: clientIP, sport: 9, dport: 9, proto: packet.ProtoUDP, payload: 3000}.build()
	for i, fr := range fragment(direct, 1500, 77) {
		before := append([]byte(nil), fr...)
		if v := tb.Untranslate(fr, nil, t0); v != Pass || string(fr) != string(before) {
			t.Fatalf("direct fragment %d: verdict %d", i, v)
		}
	}
}

// Fragments cost no allocation either way.
func TestFragmentAllocs(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{Scheduler: Maglev}, 3)
	orig := fragment(bigFlow(packet.ProtoUDP, 1000, 3000), 1500, 1)
	frags := fragment(bigFlow(packet.ProtoUDP, 1000, 3000), 1500, 1)
	tb.Translate(frags[0], nil, t0)
	be := parseFields(frags[0])
	rf := reply(be, packet.ProtoUDP, 0)
	rf.payload = 3000
	rorig := fragment(rf.build(), 1500, 2)
	rfrags := fragment(rf.build(), 1500, 2)
	n := testing.AllocsPerRun(1000, func() {
		for i := range frags {
			copy(frags[i], orig[i])
			if tb.Translate(frags[i], nil, t0) != Forward {
				t.Fatal("not forwarded")
			}
		}
		for i := range rfrags {
			copy(rfrags[i], rorig[i])
			if tb.Untranslate(rfrags[i], nil, t0) != Forward {
				t.Fatal("not untranslated")
			}
		}
	})
	if n != 0 {
		t.Fatalf("%.1f allocations per datagram", n)
	}
	// Out of order: the later fragments held, then taken.
	take := make([]byte, 2000)
	n = testing.AllocsPerRun(1000, func() {
		for _, i := range []int{2, 1, 0} {
			copy(frags[i], orig[i])
			tb.Translate(frags[i], nil, t0)
		}
		for tb.TakeHeld(take, frags[0]) > 0 {
		}
	})
	if n != 0 {
		t.Fatalf("%.1f allocations per reordered datagram", n)
	}
}

// FuzzFragments sends random fragments (random IDs, offsets, lengths,
// MF, protocols, directions: overlapping, tiny, out of order) through the
// balancer and then a datagram fragmented properly: no panic, every
// fragment forwarded has a valid header checksum and goes to a backend,
// and the proper datagram still arrives whole with valid checksums.
func FuzzFragments(f *testing.F) {
	f.Add([]byte("hello"), []byte{0, 0, 16, 0x21, 0, 2, 16, 0x20, 1, 1, 200, 0x01})
	f.Add(make([]byte, 64), []byte{3, 1, 4, 0x06, 3, 0, 3, 0x26})
	tb := newTest(f, Config{Max: 4096, FragMax: 64}, Service{}, 3)
	f.Fuzz(func(t *testing.T, data, ops []byte) {
		now := t0
		for len(ops) >= 4 {
			id, off, n, fl := ops[0]&3, int(ops[1]), int(ops[2]), ops[3]
			ops = ops[4:]
			proto := [4]uint8{packet.ProtoUDP, packet.ProtoTCP, packet.ProtoICMP, 47}[fl&3]
			fr := make([]byte, 14+20+n)
			copy(fr[0:6], vipMAC[:])
			copy(fr[6:12], clientMAC[:])
			binary.BigEndian.PutUint16(fr[12:], packet.EtherTypeIPv4)
			copy(fr[34:], data)
			ip := header.IPv4(fr[14:])
			ip.Encode(&header.IPv4Fields{TotalLength: uint16(20 + n), ID: uint16(id), TTL: 64, Protocol: proto,
				SrcAddr: gaddr(clientIP), DstAddr: gaddr(vip)})
			w := uint16(off)
			if fl&0x20 != 0 {
				w |= 0x2000
			}
			binary.BigEndian.PutUint16(fr[20:], w)
			reverse := fl&0x40 != 0
			if reverse {
				ip.SetSourceAddress(gaddr(beIP(1 + int(fl>>2&1))))
				ip.SetDestinationAddress(gaddr(clientIP))
			}
			ip.SetChecksum(^ip.CalculateChecksum())
			if fl&0x80 != 0 {
				now += int64(3 * time.Second)
			}
			var v Verdict
			if reverse {
				v = tb.Untranslate(fr, nil, now)
			} else {
				v = tb.Translate(fr, nil, now)
			}
			if v == Forward && FragOf(fr[14:]) == First {
				for _, h := range takeAll(t, tb, fr) {
					checkIPSum(t, h)
				}
			}
			if v == Forward {
				checkIPSum(t, fr)
				src, dst := netip.AddrFrom4([4]byte(fr[26:30])), netip.AddrFrom4([4]byte(fr[30:34]))
				if !reverse && (dst.As4()[2] != 1 || backendIndex(dst) < 1) || reverse && src != vip {
					t.Fatalf("forwarded to %v from %v", dst, src)
				}
			}
		}
		fl := toVIP(packet.ProtoUDP, 4242, 53, 0)
		fl.payload = 1600
		whole := fl.build()
		copy(whole[42:], data)
		setFullL4(whole)
		frags := fragment(whole, 576, 0x7777)
		for i, fr := range frags {
			if v := tb.Translate(fr, nil, now); v != Forward {
				t.Fatalf("proper fragment %d: verdict %d", i, v)
			}
		}
		checkSums(t, reassemble(t, frags))
	})
}
