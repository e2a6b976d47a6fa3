package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

// ipFrame builds an IPv4 frame from (mac, src) to dst through the gateway
// MAC, of protocol proto with TTL ttl, fragment field frag (flags and
// offset) and payload l4 (copied; its checksum is the caller's).
func ipFrame(mac packet.MAC, src, dst netip.Addr, proto, ttl uint8, frag uint16, l4 []byte) []byte {
	f := make([]byte, packet.EthernetHeaderLen+20+len(l4))
	eth := packet.Ethernet(f)
	eth.SetDst(gwMAC)
	eth.SetSrc(mac)
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeIPv4)
	ip := packet.IPv4(f[packet.EthernetHeaderLen:])
	ip[0], ip[8], ip[9] = 0x45, ttl, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	binary.BigEndian.PutUint16(ip[6:], frag)
	ip.SetSrc(src)
	ip.SetDst(dst)
	ip.SetChecksum(ip.HeaderChecksum())
	copy(ip[20:], l4)
	return f
}

// withTTL returns a copy of frame with the IP TTL set to ttl.
func withTTL(frame []byte, ttl uint8) []byte {
	f := append([]byte(nil), frame...)
	ip := packet.IPv4(f[packet.EthernetHeaderLen:])
	ip[8] = ttl
	ip.SetChecksum(0)
	ip.SetChecksum(ip.HeaderChecksum())
	return f
}

// udpPayload is a UDP datagram from sport to dport (checksum 0: none).
func udpPayload(sport, dport uint16, data string) []byte {
	u := make([]byte, 8+len(data))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], data)
	return u
}

// synPayload is a TCP SYN (flags) from sport to dport.
func synPayload(sport, dport uint16, flags uint8) []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	binary.BigEndian.PutUint32(t[4:], 0xabcdef01)
	t[12], t[13] = 5<<4, flags
	binary.BigEndian.PutUint16(t[14:], 65535)
	return t
}

// timeExceededQuoting returns the frames rec got that are an ICMP time
// exceeded in transit from src, with a valid IP header and ICMP
// checksum, quoting exactly the IP packet of frame.
func timeExceededQuoting(rec *netdevtest.Recorder, src netip.Addr, frame []byte) int {
	want := packet.IPv4(frame[packet.EthernetHeaderLen:])
	n := 0
	for _, f := range rec.Frames() {
		icmp := icmpFrom(f, src)
		if len(icmp) < 8 || icmp[0] != 11 || icmp[1] != 0 || packet.Fold(packet.Sum(icmp, 0)) != 0 {
			continue
		}
		if ip := packet.IPv4(f[packet.EthernetHeaderLen:]); !ip.ChecksumValid() {
			continue
		}
		if bytes.Equal(icmp[8:], want) {
			n++
		}
	}
	return n
}

// TestTTLExceededAtGateway: an echo request, a UDP datagram and a TCP SYN
// to an outside address with a TTL of 1 (or 0) are not admitted: the
// gateway answers each with an ICMP time exceeded from its address that
// quotes the packet, as the first router on a path does (traceroute's
// hop 1, ping -t 1); the gateway's own address still answers.
func TestTTLExceededAtGateway(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	rec, ref, mac, ip := h.pinger(t)
	frames := [][]byte{
		withTTL(echoFrame(mac, ip, outside, 21, 1), 1),
		ipFrame(mac, ip, outside, packet.ProtoUDP, 1, 0, udpPayload(40000, 33434, "probe")),
		ipFrame(mac, ip, outside, packet.ProtoTCP, 0, 0x4000, synPayload(40001, 80, 0x02)),
	}
	for _, f := range frames {
		sendFrame(ref, f)
	}
	for i, f := range frames {
		poll(t, "the time exceeded quoting frame "+string(rune('0'+i)), func() bool {
			return timeExceededQuoting(rec, gwAddr.Addr(), f) == 1
		})
	}
	st := h.eg.Stats()
	if st.TTLExceeded != 3 || st.Total != 0 || st.ICMPErrors != 3 {
		t.Errorf("stats %+v: want 3 ttl exceeded, no flow admitted", st)
	}
	sendFrame(ref, withTTL(echoFrame(mac, ip, gwAddr.Addr(), 21, 2), 1))
	poll(t, "the gateway's echo reply", func() bool { return hasReply(rec, gwAddr.Addr(), 21, 2) })
}

// TestTTLNoErrorAboutErrors: no time exceeded for an ICMP error, for a
// fragment other than the first (dropped, counted), for a TCP segment
// that is not a SYN, or for a destination the gateway refuses anyway.
func TestTTLNoErrorAboutErrors(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	rec, ref, mac, ip := h.pinger(t)
	unreach := make([]byte, 8+28)
	unreach[0], unreach[1] = 3, 3
	binary.BigEndian.PutUint16(unreach[2:], packet.Fold(packet.Sum(unreach, 0)))
	frames := [][]byte{
		ipFrame(mac, ip, outside, packet.ProtoICMP, 1, 0, unreach),
		ipFrame(mac, ip, outside, packet.ProtoUDP, 1, 185, []byte("a later fragment")),
		ipFrame(mac, ip, outside, packet.ProtoTCP, 1, 0x4000, synPayload(40002, 80, 0x10)),
		ipFrame(mac, ip, netip.MustParseAddr("10.0.1.77"), packet.ProtoUDP, 1, 0, udpPayload(40003, 53, "overlay")),
	}
	for _, f := range frames {
		sendFrame(ref, f)
	}
	// A later echo with TTL 1 gets its error: everything before it was
	// handled by then (one caller, in order).
	last := withTTL(echoFrame(mac, ip, outside, 22, 1), 1)
	sendFrame(ref, last)
	poll(t, "the time exceeded about the last echo", func() bool { return timeExceededQuoting(rec, gwAddr.Addr(), last) == 1 })
	for _, f := range rec.Frames() {
		if icmp := icmpFrom(f, gwAddr.Addr()); len(icmp) > 0 && icmp[0] == 11 && !bytes.Equal(icmp[8:], last[packet.EthernetHeaderLen:]) {
			t.Errorf("unexpected time exceeded quoting % x", icmp[8:])
		}
	}
	if st := h.eg.Stats(); st.TTLExceeded != 1 || st.TTLDropped != 1 {
		t.Errorf("stats %+v: want 1 ttl exceeded, 1 later fragment dropped", st)
	}
}

// TestICMPRateLimit: the gateway sends at most icmpBurst errors at once,
// then icmpRate a second; what the limit holds back is counted.
func TestICMPRateLimit(t *testing.T) {
	var b icmpBucket
	now := time.Unix(1000, 0)
	for i := range icmpBurst {
		if !b.allow(now) {
			t.Fatalf("error %d of a burst refused", i)
		}
	}
	if b.allow(now) {
		t.Fatal("a burst beyond icmpBurst allowed")
	}
	if !b.allow(now.Add(time.Second / icmpRate)) {
		t.Fatal("no token after 1/icmpRate seconds")
	}
	if b.allow(now.Add(time.Second / icmpRate)) {
		t.Fatal("two tokens after 1/icmpRate seconds")
	}
	if b.allow(now) {
		t.Fatal("a clock going back gave a token")
	}

	h := newHarness(t, false, EgressConfig{})
	_, ref, mac, ip := h.pinger(t)
	const n = icmpBurst + 40
	start := time.Now()
	for i := range n {
		sendFrame(ref, ipFrame(mac, ip, outside, packet.ProtoUDP, 1, 0, udpPayload(41000+uint16(i), 33434, "probe")))
	}
	st := h.eg.Stats()
	if st.TTLExceeded+st.ICMPRateLimited != n {
		t.Errorf("stats %+v: %d sent and held back, want %d", st, st.TTLExceeded+st.ICMPRateLimited, n)
	}
	// At most the burst and what refilled while sending.
	if most := uint64(icmpBurst + time.Since(start).Seconds()*icmpRate + 1); st.TTLExceeded > most {
		t.Errorf("%d time exceeded sent, want at most %d", st.TTLExceeded, most)
	}
}

// TestTTLCheckAllocs: a packet whose TTL does not expire passes the check
// without allocating.
func TestTTLCheckAllocs(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	f := ipFrame(ctrMAC, ctrAddr.Addr(), outside, packet.ProtoUDP, 64, 0, udpPayload(40000, 53, "q"))
	if a := testing.AllocsPerRun(100, func() {
		if h.gw.ttlExpired(f) {
			t.Fatal("a TTL of 64 expired")
		}
	}); a != 0 {
		t.Errorf("%v allocations per packet", a)
	}
}

// TestUDPFlowSendsWithTTL: an egress UDP flow's host socket sends with
// the TTL of the container's first datagram less one (the gateway's
// hop), so the path beyond the gateway sees the container's TTL.
func TestUDPFlowSendsWithTTL(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rc, _ := srv.SyscallConn()
	rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_RECVTTL, 1) })
	port := uint16(srv.LocalAddr().(*net.UDPAddr).Port)
	h := newHarness(t, false, EgressConfig{Dial: redirect(map[uint16]uint16{9999: port})})
	_, ref, mac, ip := h.pinger(t)
	sendFrame(ref, ipFrame(mac, ip, outside, packet.ProtoUDP, 7, 0, udpPayload(40000, 9999, "ttl")))
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf, oob := make([]byte, 64), make([]byte, 64)
	n, oobn, _, _, err := srv.ReadMsgUDP(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 || msgs[0].Header.Type != syscall.IP_TTL || len(msgs[0].Data) < 4 {
		t.Fatalf("%q: control messages %v, %v; want an IP_TTL", buf[:n], msgs, err)
	}
	if ttl := binary.NativeEndian.Uint32(msgs[0].Data); ttl != 6 {
		t.Errorf("the outside got the datagram with TTL %d, want 6 (the container's 7 less the gateway)", ttl)
	}
}

// ttlOf returns c's socket's IP_TTL.
func ttlOf(t *testing.T, c net.Conn) int {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ttl int
	var serr error
	rc.Control(func(fd uintptr) { ttl, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL) })
	if serr != nil {
		t.Fatal(serr)
	}
	return ttl
}

// TestTCPConnectSendsWithTTL: the default Dial connects with the TTL of
// the container's SYN less one, then the connection goes back to the
// host's default TTL.
func TestTCPConnectSendsWithTTL(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	plain, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	def := ttlOf(t, plain)
	ctx, dt := withDialTTL(context.Background(), 9)
	d := net.Dialer{ControlContext: dialControl}
	c, err := d.DialContext(ctx, "tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := ttlOf(t, c); got != 8 {
		t.Errorf("connect TTL %d, want 8", got)
	}
	if ee := dt.finish(nil); ee.typ != 0 {
		t.Errorf("finish of a connected socket: %+v", ee)
	}
	if got := ttlOf(t, c); got != def {
		t.Errorf("TTL after connect %d, want the default %d", got, def)
	}
	if _, dt := withDialTTL(context.Background(), 1); dt != nil {
		t.Error("a TTL of 1 (answered by the gateway) carried to a connect")
	}
}

// TestEchoErrorReflected: an ICMP error the host's echo socket gets about
// the echo it sent for a container (a time exceeded at a router on the
// path, a network unreachable) reaches the container as the same error
// from the same router, quoting the container's own echo request; an
// error about another echo does not.
func TestEchoErrorReflected(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	rec, _, mac, ip := h.pinger(t)
	req := echoFrame(mac, ip, outside, 31, 4)
	r, ok := parseEcho(req)
	if !ok {
		t.Fatal("echo frame does not parse")
	}
	router := netip.MustParseAddr("198.51.100.1")
	hostErr := func(typ, code uint8, seq uint16) []byte {
		m := make([]byte, 8+20+8)
		m[0], m[1] = typ, code
		q := packet.IPv4(m[8:])
		q[0], q[8], q[9] = 0x45, 1, packet.ProtoICMP
		binary.BigEndian.PutUint16(q[2:], 20+8+16)
		q.SetSrc(netip.MustParseAddr("203.0.113.5")) // the host's address
		q.SetDst(outside)
		q[20] = 8
		binary.BigEndian.PutUint16(q[24:], 31)
		binary.BigEndian.PutUint16(q[26:], seq)
		return m
	}
	if h.gw.echoError(r, router, hostErr(11, 0, 5)) {
		t.Error("an error about another echo (seq 5) was taken")
	}
	if h.gw.echoError(r, router, []byte{0, 0, 0, 0, 0, 31, 0, 4}) {
		t.Error("an echo reply was taken as an error")
	}
	for _, c := range []struct{ typ, code uint8 }{{11, 0}, {3, codeNetUnreachable}} {
		if !h.gw.echoError(r, router, hostErr(c.typ, c.code, 4)) {
			t.Fatalf("type %d code %d about the echo not taken", c.typ, c.code)
		}
		poll(t, "the reflected error", func() bool {
			for _, f := range rec.Frames() {
				icmp := icmpFrom(f, router)
				if len(icmp) > 8 && icmp[0] == c.typ && icmp[1] == c.code && packet.Fold(packet.Sum(icmp, 0)) == 0 &&
					bytes.Equal(icmp[8:], req[packet.EthernetHeaderLen:]) {
					return true
				}
			}
			return false
		})
	}
}

// FuzzTTLExpired: the TTL check takes any frame from a container without
// panicking.
func FuzzTTLExpired(f *testing.F) {
	f.Add(ipFrame(ctrMAC, ctrAddr.Addr(), outside, packet.ProtoUDP, 1, 0, udpPayload(1, 2, "x")))
	f.Add(ipFrame(ctrMAC, ctrAddr.Addr(), outside, packet.ProtoTCP, 0, 0, synPayload(1, 2, 0x02)))
	f.Add(withTTL(echoFrame(ctrMAC, ctrAddr.Addr(), outside, 1, 2), 1))
	h := newHarness(f, false, EgressConfig{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		h.gw.ttlExpired(frame)
	})
}

// FuzzEchoError: echoError takes any ICMP message the host's raw socket
// reads without panicking, and takes only errors about the echo.
func FuzzEchoError(f *testing.F) {
	r, _ := parseEcho(echoFrame(ctrMAC, ctrAddr.Addr(), outside, 31, 4))
	m := make([]byte, 8+28)
	m[0] = 11
	q := packet.IPv4(m[8:])
	q[0], q[9] = 0x45, packet.ProtoICMP
	q.SetDst(outside)
	q[20] = 8
	binary.BigEndian.PutUint16(q[24:], 31)
	binary.BigEndian.PutUint16(q[26:], 4)
	f.Add(m)
	f.Add([]byte{3, 0, 0, 0, 0, 0, 0, 0})
	h := newHarness(f, false, EgressConfig{})
	router := netip.MustParseAddr("198.51.100.1")
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) < 8 {
			return // echo reads at least 8 bytes
		}
		if h.gw.echoError(r, router, msg) && msg[0] != 3 && msg[0] != 11 {
			t.Fatalf("type %d taken as an error", msg[0])
		}
	})
}

// BenchmarkTTLCheck: the TTL check on a frame whose TTL does not expire,
// what every frame to the gateway pays.
func BenchmarkTTLCheck(b *testing.B) {
	h := newHarness(b, false, EgressConfig{})
	f := ipFrame(ctrMAC, ctrAddr.Addr(), outside, packet.ProtoUDP, 64, 0, udpPayload(40000, 53, "q"))
	b.ReportAllocs()
	for b.Loop() {
		h.gw.ttlExpired(f)
	}
}
