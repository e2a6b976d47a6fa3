package lb

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// synTo sends a client SYN from port and returns the backend it went to.
func synTo(t *testing.T, tb *Table, port uint16, now int64) netip.Addr {
	t.Helper()
	f := toVIP(packet.ProtoTCP, port, 80, header.TCPFlagSyn).build()
	if v := tb.Translate(f, nil, now); v != Forward {
		t.Fatalf("SYN from port %d: verdict %d", port, v)
	}
	return parseFields(f).dst
}

// backendSends sends a TCP packet with flags from backend b to the
// client's port and returns the verdict.
func backendSends(tb *Table, b netip.Addr, port uint16, flags header.TCPFlags, now int64) (Verdict, []byte) {
	f := flow{srcMAC: beMAC(backendIndex(b)), dstMAC: clientMAC, src: b, dst: clientIP, sport: 80, dport: port,
		proto: packet.ProtoTCP, flags: flags, seq: 1, ack: 1001}.build()
	return tb.Untranslate(f, nil, now), f
}

func TestRetryOnRST(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 3)
	now := t0
	first := synTo(t, tb, 1000, now)
	v, _ := backendSends(tb, first, 1000, header.TCPFlagRst|header.TCPFlagAck, now)
	if v != Retry {
		t.Fatalf("backend RST to a SYN: verdict %d, want Retry (hidden)", v)
	}
	// The client's own SYN retransmission goes to another backend at once
	// (even if it comes later than SynRetry).
	now += int64(1500 * time.Millisecond)
	second := synTo(t, tb, 1000, now)
	if second == first {
		t.Fatalf("retransmitted SYN went to the backend that refused it (%v)", first)
	}
	v, _ = backendSends(tb, second, 1000, header.TCPFlagRst|header.TCPFlagAck, now)
	if v != Retry {
		t.Fatalf("second RST: verdict %d, want Retry", v)
	}
	third := synTo(t, tb, 1000, now+int64(time.Second))
	if third == first || third == second {
		t.Fatalf("third attempt went to %v, a backend that refused", third)
	}
	v, f := backendSends(tb, third, 1000, header.TCPFlagRst|header.TCPFlagAck, now)
	if v != Forward || parseFields(f).src != vip {
		t.Fatalf("RST after %d retries: verdict %d, want Forward from the VIP", MaxRetries, v)
	}
	st := tb.Stats(now)[0]
	if st.Retries != MaxRetries || tb.Reasons()["retried"] != MaxRetries {
		t.Fatalf("retries counted %d / %d, want %d", st.Retries, tb.Reasons()["retried"], MaxRetries)
	}
}

func TestRetryOnSynTimeout(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	first := synTo(t, tb, 1000, t0)
	if again := synTo(t, tb, 1000, t0+int64(500*time.Millisecond)); again != first {
		t.Fatalf("SYN retransmitted within SynRetry moved from %v to %v", first, again)
	}
	if moved := synTo(t, tb, 1000, t0+int64(time.Second)); moved == first {
		t.Fatal("SYN unanswered for 1s was not sent to another backend")
	}
	// A connection that was answered does not move.
	b := synTo(t, tb, 2000, t0)
	backendSends(tb, b, 2000, header.TCPFlagSyn|header.TCPFlagAck, t0)
	if got := synTo(t, tb, 2000, t0+int64(3*time.Second)); got != b {
		t.Fatal("a SYN on an established entry moved it")
	}
}

func TestEjectAfterFailures(t *testing.T) {
	tb := newTest(t, Config{Max: 4096, Timeouts: Timeouts{Eject: 10 * time.Second}}, Service{}, 2)
	bad := beIP(1)
	now := t0
	fails := 0
	for port := uint16(1000); fails < EjectAfter; port++ {
		if b := synTo(t, tb, port, now); b == bad {
			backendSends(tb, b, port, header.TCPFlagRst|header.TCPFlagAck, now)
			fails++
		} else {
			backendSends(tb, b, port, header.TCPFlagSyn|header.TCPFlagAck, now)
		}
	}
	for port := uint16(5000); port < 5020; port++ {
		if b := synTo(t, tb, port, now+int64(9*time.Second)); b == bad {
			t.Fatalf("ejected backend got a new connection")
		}
	}
	if st := tb.Stats(now)[0].Backends[0]; !st.Ejected || st.Ejections != 1 || st.Failures != EjectAfter {
		t.Fatalf("backend stats %+v", st)
	}
	seen := false
	for port := uint16(6000); port < 6010; port++ {
		seen = seen || synTo(t, tb, port, now+int64(10*time.Second)) == bad
	}
	if !seen {
		t.Fatal("backend still skipped after the ejection period")
	}
}

func TestDrainingAndRemoved(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	b1 := beIP(1)
	// One TCP connection and one UDP flow on each backend.
	tcpOn := map[netip.Addr]uint16{}
	udpOn := map[netip.Addr]uint16{}
	for port := uint16(1000); len(tcpOn) < 2; port++ {
		b := synTo(t, tb, port, t0)
		backendSends(tb, b, port, header.TCPFlagSyn|header.TCPFlagAck, t0)
		tcpOn[b] = port
	}
	for port := uint16(3000); len(udpOn) < 2; port++ {
		f := toVIP(packet.ProtoUDP, port, 53, 0).build()
		tb.Translate(f, nil, t0)
		udpOn[parseFields(f).dst] = port
	}
	send := func(proto uint8, port uint16, flags header.TCPFlags) netip.Addr {
		f := toVIP(proto, port, map[uint8]uint16{packet.ProtoTCP: 80, packet.ProtoUDP: 53}[proto], flags).build()
		if v := tb.Translate(f, nil, t0); v != Forward {
			t.Fatalf("verdict %d", v)
		}
		return parseFields(f).dst
	}
	swap := func(states ...BackendState) {
		svc := Service{Name: "web", VIP: vip}
		for i, s := range states {
			svc.Backends = append(svc.Backends, Backend{IP: beIP(i + 1), MAC: beMAC(i + 1), State: s})
		}
		snap, err := NewSnapshot([]Service{svc})
		if err != nil {
			t.Fatal(err)
		}
		tb.Swap(snap)
	}
	swap(Draining, Active)
	for port := uint16(8000); port < 8010; port++ {
		if synTo(t, tb, port, t0) == b1 {
			t.Fatal("draining backend got a new connection")
		}
	}
	if send(packet.ProtoTCP, tcpOn[b1], header.TCPFlagAck) != b1 || send(packet.ProtoUDP, udpOn[b1], 0) != b1 {
		t.Fatal("draining backend lost an existing flow")
	}
	swap(Active) // only beIP(1)... is now the only one: remove beIP(2)
	b2 := beIP(2)
	if send(packet.ProtoUDP, udpOn[b2], 0) != b1 {
		t.Fatal("UDP flow of a removed backend did not move at once")
	}
	if send(packet.ProtoTCP, tcpOn[b2], header.TCPFlagAck) != b2 {
		t.Fatal("TCP connection of a removed backend did not stay until Flush")
	}
	if n := tb.Flush(b2); n != 11 { // its first connection and the 10 made while beIP(1) drained
		t.Fatalf("Flush removed %d entries, want 11", n)
	}
	f := toVIP(packet.ProtoTCP, tcpOn[b2], 80, header.TCPFlagAck).build()
	if v := tb.Translate(f, nil, t0); v != Reject {
		t.Fatalf("after Flush: verdict %d, want Reject (RST)", v)
	}
}

func TestTimeouts(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 1)
	b := synTo(t, tb, 1000, t0)
	backendSends(tb, b, 1000, header.TCPFlagSyn|header.TCPFlagAck, t0)
	ack := func(now int64) Verdict {
		return tb.Translate(toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagAck).build(), nil, now)
	}
	// IPVS forgets an idle connection after 900s; this one lives 24h.
	if v := ack(t0 + int64(23*time.Hour)); v != Forward {
		t.Fatalf("idle established connection after 23h: verdict %d", v)
	}
	if v := ack(t0 + int64(47*time.Hour)); v != Reject {
		t.Fatalf("idle established connection after 24h more: verdict %d, want Reject", v)
	}
	// Scaled-down timeouts, and Sweep.
	short := newTest(t, Config{Max: 4096, Timeouts: Timeouts{UDP: time.Second, TCPSyn: 2 * time.Second}}, Service{}, 1)
	short.Translate(toVIP(packet.ProtoUDP, 1, 53, 0).build(), nil, t0)
	synTo(t, short, 2, t0)
	if n := short.ct.Sweep(t0 + int64(time.Second) - 1); n != 0 {
		t.Fatalf("swept %d live entries", n)
	}
	if n := short.ct.Sweep(t0 + int64(time.Second)); n != 1 {
		t.Fatalf("swept %d after the UDP timeout, want 1", n)
	}
	if n := short.ct.Sweep(t0 + int64(2*time.Second)); n != 1 || short.ct.Len() != 0 || short.Stats(t0)[0].Active != 0 {
		t.Fatalf("swept %d after the SYN timeout, len %d", n, short.ct.Len())
	}
}

func TestLRUEviction(t *testing.T) {
	tb := newTest(t, Config{Max: Shards}, Service{}, 1) // one entry per shard
	for port := uint16(1); port <= 1000; port++ {
		tb.Translate(toVIP(packet.ProtoUDP, port, 53, 0).build(), nil, t0+int64(port))
	}
	if n := tb.ct.Len(); n > Shards {
		t.Fatalf("%d entries in a table of %d", n, Shards)
	}
	if ev := tb.ct.Evictions(); ev != uint64(1000-tb.ct.Len()) {
		t.Fatalf("evictions %d, want %d", ev, 1000-tb.ct.Len())
	}
	if a := tb.Stats(t0)[0].Active; a != int64(tb.ct.Len()) {
		t.Fatalf("active %d, entries %d", a, tb.ct.Len())
	}
	// The most recently used survives, the least recently used goes.
	big := newTest(t, Config{Max: 2 * Shards}, Service{}, 1)
	send := func(port uint16, now int64) {
		big.Translate(toVIP(packet.ProtoUDP, port, 53, 0).build(), nil, now)
	}
	// Find three ports of one shard.
	var same []uint16
	s0 := big.ct.shardOf(1, packet.ProtoUDP, clientIP.As4(), 1)
	for p := uint16(1); len(same) < 3; p++ {
		if big.ct.shardOf(1, packet.ProtoUDP, clientIP.As4(), p) == s0 {
			same = append(same, p)
		}
	}
	send(same[0], t0)
	send(same[1], t0+1)
	send(same[0], t0+2) // same[1] is now the LRU
	send(same[2], t0+3)
	k := func(p uint16) *flowKey {
		return &flowKey{net: 1, proto: packet.ProtoUDP, client: clientIP.As4(), cport: p, vip: vip.As4(), vport: 53}
	}
	if big.ct.findFwd(s0, k(same[0]), t0+4) == 0 || big.ct.findFwd(s0, k(same[1]), t0+4) != 0 {
		t.Fatal("eviction did not take the least recently used entry")
	}
}

func TestAffinity(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{Affinity: 10 * time.Second}, 4)
	first := synTo(t, tb, 1000, t0)
	for port := uint16(1001); port < 1020; port++ {
		if b := synTo(t, tb, port, t0+int64(port-1000)*int64(time.Second)); b != first {
			t.Fatalf("connection %d with affinity went to %v, want %v", port, b, first)
		}
	}
	// After the timeout with no new connection, round robin again.
	moved := false
	for port := uint16(2000); port < 2004; port++ {
		moved = moved || synTo(t, tb, port, t0+int64(100*time.Second)+int64(port-2000)*int64(20*time.Second)) != first
	}
	if !moved {
		t.Fatal("affinity held past its timeout")
	}
}

func TestSwapKeepsCounters(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	synTo(t, tb, 1, t0)
	snap, err := tb.Snapshot().With(Service{Name: "web", VIP: vip, Backends: []Backend{
		{IP: beIP(1), MAC: beMAC(1)}, {IP: beIP(2), MAC: beMAC(2)}, {IP: beIP(3), MAC: beMAC(3)}}})
	if err != nil {
		t.Fatal(err)
	}
	tb.Swap(snap)
	st := tb.Stats(t0)[0]
	if st.NewConns != 1 || st.Active != 1 || len(st.Backends) != 3 {
		t.Fatalf("stats after swap %+v", st)
	}
}

// The per-source counts that let Untranslate skip most frames return to
// zero when the entries go, whichever way they go (moves included).
func TestSourceCountsBalance(t *testing.T) {
	tb := newTest(t, Config{Max: 4096, Timeouts: Timeouts{UDP: time.Second}}, Service{}, 3)
	for port := uint16(1); port <= 30; port++ {
		b := synTo(t, tb, port, t0)
		if port%3 == 0 {
			backendSends(tb, b, port, header.TCPFlagRst, t0) // moves the entry
		}
		tb.Translate(toVIP(packet.ProtoUDP, port, 53, 0).build(), nil, t0)
	}
	snap, _ := NewSnapshot([]Service{{Name: "web", VIP: vip, Backends: []Backend{{IP: beIP(1), MAC: beMAC(1)}}}})
	tb.Swap(snap)
	for port := uint16(1); port <= 30; port++ {
		tb.Translate(toVIP(packet.ProtoUDP, port, 53, 0).build(), nil, t0) // UDP moves off removed backends
	}
	tb.Flush(beIP(2))
	tb.Flush(beIP(3))
	tb.ct.Sweep(t0 + int64(48*time.Hour))
	for i := range tb.ct.sources {
		if n := tb.ct.sources[i].Load(); n != 0 {
			t.Fatalf("source slot %d counts %d with an empty table", i, n)
		}
	}
	if v, _ := backendSends(tb, beIP(1), 1, header.TCPFlagAck, t0); v != Pass {
		t.Fatalf("reply of a gone flow: verdict %d", v)
	}
}

// A client that is itself a backend is not balanced to itself while
// another backend is there (its kernel would drop its own source address).
func TestClientIsBackendNotSelf(t *testing.T) {
	svc := Service{Backends: []Backend{{IP: clientIP, MAC: clientMAC}}}
	tb := newTest(t, Config{Max: 4096}, svc, 2)
	for port := uint16(1); port <= 20; port++ {
		if b := synTo(t, tb, port, t0); b == clientIP {
			t.Fatal("client balanced to itself")
		}
	}
}

// An ICMP error from a router between backend and client (not from the
// backend) still has its quote translated; its outer source is kept.
func TestICMPErrorFromRouter(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 1)
	f := toVIP(packet.ProtoUDP, 4444, 53, 0).build()
	orig := append([]byte(nil), f...)
	tb.Translate(f, nil, t0)
	router := netip.MustParseAddr("10.0.0.1")
	e := icmpError(packet.MAC{2, 0, 0, 0, 0, 1}, clientMAC, router, clientIP, header.ICMPv4TimeExceeded, 0, f[14:])
	if v := tb.Untranslate(e, nil, t0); v != Forward {
		t.Fatalf("verdict %d", v)
	}
	checkSums(t, e)
	if g := parseFields(e); g.src != router || string(e[42:]) != string(orig[14:]) {
		t.Fatalf("from %v, quote % x", g.src, e[42:])
	}
}

// A refused SYN is re-sent at once: WriteRetry writes the client's own SYN
// (sequence number and options intact) to the next backend.
func TestRetryResendsSYN(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{Ports: []Port{{Proto: packet.ProtoTCP, Port: 80, Target: 8080}}}, 3)
	syn := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagSyn)
	syn.seq = 0xfffffff0
	f := syn.build()
	// Give the SYN options (MSS, SACK permitted, timestamps, window scale).
	opts := []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7}
	f = append(f, opts...)
	f[14+3] += byte(len(opts)) // IP total length (< 256 here)
	f[14+20+12] = byte((20+len(opts))/4) << 4
	header.IPv4(f[14:]).SetChecksum(0)
	header.IPv4(f[14:]).SetChecksum(^header.IPv4(f[14:]).CalculateChecksum())
	setFullL4(f)
	orig := append([]byte(nil), f...)
	if tb.Translate(f, nil, t0) != Forward {
		t.Fatal("SYN not forwarded")
	}
	first := parseFields(f).dst
	rst := flow{srcMAC: beMAC(backendIndex(first)), dstMAC: clientMAC, src: first, dst: clientIP, sport: 8080, dport: 1000,
		proto: packet.ProtoTCP, flags: header.TCPFlagRst | header.TCPFlagAck, ack: syn.seq + 1}.build()
	if v := tb.Untranslate(rst, nil, t0+1); v != Retry {
		t.Fatalf("RST to the SYN: verdict %d, want Retry", v)
	}
	buf := make([]byte, RetryBufLen)
	n := tb.WriteRetry(buf, rst, t0+1)
	if n == 0 {
		t.Fatal("WriteRetry wrote nothing")
	}
	checkSums(t, buf[:n])
	got := parseFields(buf[:n])
	tcp := header.TCP(buf[34:n])
	if got.dst == first || backendIndex(got.dst) == 0 || got.dstMAC != beMAC(backendIndex(got.dst)) || got.dport != 8080 ||
		got.src != clientIP || got.srcMAC != clientMAC || got.sport != 1000 || got.flags != header.TCPFlagSyn ||
		tcp.SequenceNumber() != syn.seq || string(tcp.Options()) != string(orig[54:]) {
		t.Fatalf("re-sent SYN: %+v seq %#x options % x", got, tcp.SequenceNumber(), tcp.Options())
	}
	if tb.WriteRetry(buf, rst, t0+1) != 0 {
		t.Fatal("the same SYN was written twice")
	}
	// The new backend answers: the client gets it from the VIP.
	sa := reply(got, packet.ProtoTCP, header.TCPFlagSyn|header.TCPFlagAck).build()
	if v := tb.Untranslate(sa, nil, t0+2); v != Forward || parseFields(sa).src != vip || parseFields(sa).sport != 80 {
		t.Fatalf("SYN-ACK of the new backend: verdict %d", v)
	}
}

// One connection attempt whose backends fail in turn (the first silent,
// as a removed container's address is; the second refusing, as a killed
// server's kernel does) goes on to a backend that has not failed it, not
// back to the first: the client connects. Least-conns, with the healthy
// backend the busiest, would otherwise offer the first one again.
func TestRetryAvoidsEveryBackendThatFailedTheAttempt(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{Scheduler: LeastConns}, 1)
	healthy := beIP(1)
	for port := uint16(100); port < 103; port++ {
		b := synTo(t, tb, port, t0)
		backendSends(tb, b, port, header.TCPFlagSyn|header.TCPFlagAck, t0)
	}
	snap, err := tb.Snapshot().With(Service{Name: "web", VIP: vip, Scheduler: LeastConns, Backends: []Backend{
		{IP: beIP(1), MAC: beMAC(1)}, {IP: beIP(2), MAC: beMAC(2)}, {IP: beIP(3), MAC: beMAC(3)}}})
	if err != nil {
		t.Fatal(err)
	}
	tb.Swap(snap)
	now := t0
	first := synTo(t, tb, 1000, now)
	now += int64(time.Second) // unanswered: the client retransmits
	second := synTo(t, tb, 1000, now)
	if first == healthy || second == healthy || second == first {
		t.Fatalf("setup: attempts went to %v then %v, want the two idle backends", first, second)
	}
	if v, _ := backendSends(tb, second, 1000, header.TCPFlagRst|header.TCPFlagAck, now); v != Retry {
		t.Fatalf("RST of %v to the moved SYN: verdict %v, want Retry (hidden)", second, v)
	}
	third := synTo(t, tb, 1000, now+int64(time.Second))
	if third != healthy {
		t.Fatalf("third attempt went to %v; %v was silent and %v refused, %v was never tried", third, first, second, healthy)
	}
	v, f := backendSends(tb, third, 1000, header.TCPFlagSyn|header.TCPFlagAck, now+int64(time.Second))
	if v != Forward || parseFields(f).src != vip {
		t.Fatalf("SYN-ACK of %v: verdict %v, want Forward from the VIP", third, v)
	}
	if st := tb.Stats(now)[0]; st.Retries != MaxRetries {
		t.Fatalf("retries counted %d, want %d", st.Retries, MaxRetries)
	}
}

// A refused attempt does not give up when the backend the scheduler
// offers next already has a connection from the client's port (through
// another VIP that shares it): it takes another one, as a new connection
// does, instead of passing the RST on.
func TestRetryMovesPastATakenBackend(t *testing.T) {
	vip2 := netipFrom4([4]byte{10, 0, 0, 101})
	for extra := range 3 { // whatever the round-robin position
		snap, err := NewSnapshot([]Service{
			{Name: "a", VIP: vip, Backends: []Backend{{IP: beIP(1), MAC: beMAC(1)}, {IP: beIP(2), MAC: beMAC(2)}, {IP: beIP(3), MAC: beMAC(3)}}},
			{Name: "b", VIP: vip2, Backends: []Backend{{IP: beIP(1), MAC: beMAC(1)}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		tb := NewTable(NewConntrack(Config{Max: 4096}), 1)
		tb.Swap(snap)
		// Client port 1000 is connected to beIP(1) through VIP b.
		fl := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagSyn)
		fl.dst = vip2
		if f := fl.build(); tb.Translate(f, nil, t0) != Forward || parseFields(f).dst != beIP(1) {
			t.Fatal("SYN to VIP b not forwarded to its backend")
		}
		backendSends(tb, beIP(1), 1000, header.TCPFlagSyn|header.TCPFlagAck, t0)
		for j := range extra {
			synTo(t, tb, uint16(2000+j), t0)
		}
		first := synTo(t, tb, 1000, t0)
		if first == beIP(1) {
			t.Fatalf("rotation %d: the same client port got two connections to %v", extra, first)
		}
		if v, _ := backendSends(tb, first, 1000, header.TCPFlagRst|header.TCPFlagAck, t0); v != Retry {
			t.Fatalf("rotation %d: RST of %v to the SYN: verdict %v, want Retry (moved to the third backend)", extra, first, v)
		}
		if next := synTo(t, tb, 1000, t0+int64(time.Second)); next == first || next == beIP(1) {
			t.Fatalf("rotation %d: attempt moved from %v to %v", extra, first, next)
		}
	}
}
