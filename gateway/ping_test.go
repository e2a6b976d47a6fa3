package gateway

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/vswitch"
)

// echoFrame builds an ICMP echo request frame from (mac, src) to dst
// through the gateway MAC.
func echoFrame(mac packet.MAC, src, dst netip.Addr, id, seq uint16) []byte {
	f := make([]byte, packet.EthernetHeaderLen+20+8+16)
	eth := packet.Ethernet(f)
	eth.SetDst(gwMAC)
	eth.SetSrc(mac)
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeIPv4)
	ip := packet.IPv4(f[packet.EthernetHeaderLen:])
	ip[0], ip[8], ip[9] = 0x45, 64, packet.ProtoICMP
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip.SetSrc(src)
	ip.SetDst(dst)
	ip.SetChecksum(ip.HeaderChecksum())
	icmp := ip[20:]
	icmp[0] = 8 // echo request
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], "vxmesh ping data")
	binary.BigEndian.PutUint16(icmp[2:], packet.Fold(packet.Sum(icmp, 0)))
	return f
}

// icmpFrom returns the ICMP message of frame if it is an IPv4 ICMP packet
// from src, else nil.
func icmpFrom(frame []byte, src netip.Addr) []byte {
	eth := packet.Ethernet(frame)
	if len(frame) < packet.EthernetHeaderLen+28 || eth.EtherType() != packet.EtherTypeIPv4 {
		return nil
	}
	ip := packet.IPv4(eth.Payload())
	if !ip.Valid() || ip.Protocol() != packet.ProtoICMP || ip.Src() != src {
		return nil
	}
	return ip.Payload()
}

// echoReplyFrom reports whether frame is an ICMP echo reply from src
// with id and seq.
func echoReplyFrom(frame []byte, src netip.Addr, id, seq uint16) bool {
	icmp := icmpFrom(frame, src)
	return len(icmp) >= 8 && icmp[0] == 0 && binary.BigEndian.Uint16(icmp[4:]) == id && binary.BigEndian.Uint16(icmp[6:]) == seq
}

// pinger attaches a recorder as a secured endpoint 10.0.1.3 to h's switch.
func (h *harness) pinger(t *testing.T) (*netdevtest.Recorder, *vswitch.Port, packet.MAC, netip.Addr) {
	mac, ip := packet.MAC{0x02, 0x42, 10, 0, 1, 3}, netip.MustParseAddr("10.0.1.3")
	rec := &netdevtest.Recorder{}
	ref, err := h.sw.AddPort(rec, vswitch.PortConfig{Name: "pinger", MAC: mac, IP: ip, Security: true})
	if err != nil {
		t.Fatal(err)
	}
	return rec, ref, mac, ip
}

func sendFrame(ref *vswitch.Port, f []byte) {
	buf := make([]byte, packet.BufferSize)
	n := copy(buf[packet.Headroom:], f)
	ref.Input([][]byte{buf}, []int{n}, packet.Headroom)
}

func hasReply(rec *netdevtest.Recorder, src netip.Addr, id, seq uint16) bool {
	for _, f := range rec.Frames() {
		if echoReplyFrom(f, src, id, seq) {
			return true
		}
	}
	return false
}

// TestPingGateway: the gateway answers ping at its address, on internal
// networks too.
func TestPingGateway(t *testing.T) {
	for _, internal := range []bool{false, true} {
		h := newHarness(t, internal, EgressConfig{})
		rec, ref, mac, ip := h.pinger(t)
		sendFrame(ref, echoFrame(mac, ip, gwAddr.Addr(), 7, 1))
		poll(t, "the gateway's echo reply", func() bool { return hasReply(rec, gwAddr.Addr(), 7, 1) })
	}
}

// hostAddr returns a non-loopback IPv4 address of this machine, or
// skips.
func hostAddr(t *testing.T) netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() && !gwAddr.Contains(p.Addr()) {
				return p.Addr()
			}
		}
	}
	t.Skip("no non-loopback IPv4 address to ping")
	return netip.Addr{}
}

// needRawICMP skips t unless a raw ICMP socket opens (root).
func needRawICMP(t *testing.T) {
	if c, err := net.ListenPacket("ip4:icmp", "0.0.0.0"); err != nil {
		t.Skipf("no raw ICMP socket (needs root): %v", err)
	} else {
		c.Close()
	}
}

// TestPingOutside: an echo request to an outside address is answered by
// a real echo from the host (raw socket: root), never by the stack; on an
// internal network it is dropped and counted, with no reply.
func TestPingOutside(t *testing.T) {
	dst := hostAddr(t)
	needRawICMP(t)
	h := newHarness(t, false, EgressConfig{})
	rec, ref, mac, ip := h.pinger(t)
	sendFrame(ref, echoFrame(mac, ip, dst, 9, 3))
	poll(t, "the echo reply from "+dst.String(), func() bool { return hasReply(rec, dst, 9, 3) })
	if st := h.eg.Stats(); st.Total != 1 {
		t.Errorf("stats %+v: want one echo flow", st)
	}

	in := newHarness(t, true, EgressConfig{})
	rec, ref, mac, ip = in.pinger(t)
	for _, d := range []netip.Addr{dst, outside} {
		sendFrame(ref, echoFrame(mac, ip, d, 9, 4))
	}
	if got := in.eg.Stats().Refused[RefuseInternal]; got != 2 {
		t.Fatalf("refused[internal] = %d, want 2", got)
	}
	sendFrame(ref, echoFrame(mac, ip, gwAddr.Addr(), 9, 5)) // the gateway itself still answers
	poll(t, "the gateway's echo reply", func() bool { return hasReply(rec, gwAddr.Addr(), 9, 5) })
	for _, d := range []netip.Addr{dst, outside} {
		if hasReply(rec, d, 9, 4) {
			t.Errorf("internal network got an echo reply from %s", d)
		}
	}
}

// FuzzParseEcho: parseEcho takes any frame without panicking, and what
// it accepts is an echo request whose reply frame parses back to the same
// identifiers.
func FuzzParseEcho(f *testing.F) {
	f.Add(echoFrame(ctrMAC, ctrAddr.Addr(), outside, 1, 2))
	f.Add(echoFrame(ctrMAC, ctrAddr.Addr(), gwAddr.Addr(), 0xffff, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		r, ok := parseEcho(frame)
		if !ok {
			return
		}
		reply := echoReply(gwMAC, r, r.data)
		if !echoReplyFrom(reply, r.dst, r.id, r.seq) {
			t.Fatalf("reply to %+v does not parse back", r)
		}
	})
}

// prohibitedFrom reports whether frame is an ICMP communication
// administratively prohibited from src that quotes the echo request id,
// seq to dst.
func prohibitedFrom(frame []byte, src, dst netip.Addr, id, seq uint16) bool {
	icmp := icmpFrom(frame, src)
	if len(icmp) < 8+28 || icmp[0] != 3 || icmp[1] != codeAdminProhibited || packet.Fold(packet.Sum(icmp, 0)) != 0 {
		return false
	}
	q := packet.IPv4(icmp[8:])
	echo := q[q.HeaderLen():]
	return q.Dst() == dst && echo[0] == 8 && binary.BigEndian.Uint16(echo[4:]) == id && binary.BigEndian.Uint16(echo[6:]) == seq
}

// TestPingRefusedFailsAtOnce: on an internal network an echo request to
// an outside address is answered by the gateway with an ICMP
// communication administratively prohibited quoting it, so ping reports
// it at once (as refused TCP and UDP flows fail at once) instead of
// waiting for replies that never come.
func TestPingRefusedFailsAtOnce(t *testing.T) {
	h := newHarness(t, true, EgressConfig{})
	rec, ref, mac, ip := h.pinger(t)
	// No error about an echo to the limited broadcast address.
	sendFrame(ref, echoFrame(mac, ip, netip.MustParseAddr("255.255.255.255"), 11, 0))
	sendFrame(ref, echoFrame(mac, ip, outside, 11, 1))
	poll(t, "the gateway's administratively prohibited", func() bool {
		for _, f := range rec.Frames() {
			if prohibitedFrom(f, gwAddr.Addr(), outside, 11, 1) {
				return true
			}
		}
		return false
	})
	if got := h.eg.Stats().Refused[RefuseInternal]; got != 2 {
		t.Errorf("refused[internal] = %d, want 2", got)
	}
	for _, f := range rec.Frames() {
		if prohibitedFrom(f, gwAddr.Addr(), netip.MustParseAddr("255.255.255.255"), 11, 0) {
			t.Errorf("an ICMP error about an echo to 255.255.255.255: % x", f)
		}
	}
}

// bigEchoFragments is a 3000-byte echo request from (mac, src) to dst in
// fragments of 1500-byte IP packets, in reverse order (the last first).
func bigEchoFragments(mac packet.MAC, src, dst netip.Addr, id, seq uint16) [][]byte {
	f := make([]byte, packet.EthernetHeaderLen+20+8+3000)
	copy(f, echoFrame(mac, src, dst, id, seq)[:packet.EthernetHeaderLen+28])
	ip := packet.IPv4(f[packet.EthernetHeaderLen:])
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	icmp := ip[20:]
	for i := range icmp[8:] {
		icmp[8+i] = byte(i)
	}
	icmp[2], icmp[3] = 0, 0
	binary.BigEndian.PutUint16(icmp[2:], packet.Fold(packet.Sum(icmp, 0)))
	frags := fragmentFrame(f, 1500, 0x5151)
	for i, j := 0, len(frags)-1; i < j; i, j = i+1, j-1 {
		frags[i], frags[j] = frags[j], frags[i]
	}
	return frags
}

// TestPingOutsideFragmented: a 3000-byte echo request to an outside
// address (ping -s 3000), which the container sends in fragments (here
// out of order), is reassembled and echoed from the host; the reply
// comes back in fragments no larger than the MTU, which reassemble to the
// echo reply with the same data.
func TestPingOutsideFragmented(t *testing.T) {
	dst := hostAddr(t)
	needRawICMP(t)
	h := newHarness(t, false, EgressConfig{})
	rec, ref, mac, ip := h.pinger(t)
	for _, f := range bigEchoFragments(mac, ip, dst, 21, 1) {
		sendFrame(ref, f)
	}
	var whole []byte
	poll(t, "the fragmented echo reply from "+dst.String(), func() bool {
		var frags [][]byte
		for _, f := range rec.Frames() {
			if icmpFrom(f, dst) != nil || packet.IPv4(packet.Ethernet(f).Payload()).Src() == dst {
				frags = append(frags, f)
			}
		}
		var r echoFrags
		for _, f := range frags {
			if len(f) > packet.EthernetHeaderLen+1500 {
				t.Fatalf("a reply frame of %d bytes, MTU 1500", len(f))
			}
			if w := r.add(f, time.Now()); w != nil {
				whole = w
			}
		}
		return whole != nil
	})
	if !echoReplyFrom(whole, dst, 21, 1) {
		t.Fatalf("reassembled reply is no echo reply: % x", whole[:48])
	}
	icmp := icmpFrom(whole, dst)
	if len(icmp) != 3008 || packet.Fold(packet.Sum(icmp, 0)) != 0 || icmp[8+2999] != byte(2999%256) {
		t.Fatalf("reply of %d bytes, checksum %#x", len(icmp), packet.Fold(packet.Sum(icmp, 0)))
	}
}

// FuzzEchoFrags: the echo reassembler takes any sequence of ICMP
// fragments (random offsets, lengths, MF, IDs: overlapping, out of
// order) without panicking, and what it returns is a valid IPv4 packet
// that is no fragment.
func FuzzEchoFrags(f *testing.F) {
	f.Add([]byte{0, 0, 200, 0x20, 0, 25, 100, 0})
	f.Add([]byte{1, 3, 8, 0, 1, 0, 24, 0x20, 1, 1, 16, 0x20})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var r echoFrags
		now := time.Unix(1e9, 0)
		for len(ops) >= 4 {
			id, off, n, fl := ops[0]&3, int(ops[1]), int(ops[2]), ops[3]
			ops = ops[4:]
			fr := make([]byte, packet.EthernetHeaderLen+20+n)
			copy(fr, echoFrame(ctrMAC, ctrAddr.Addr(), outside, 1, 1)[:packet.EthernetHeaderLen+20])
			ip := packet.IPv4(fr[packet.EthernetHeaderLen:])
			binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
			binary.BigEndian.PutUint16(ip[4:], uint16(id))
			w := uint16(off)
			if fl&0x20 != 0 {
				w |= 0x2000
			}
			binary.BigEndian.PutUint16(ip[6:], w)
			ip.SetChecksum(ip.HeaderChecksum())
			if fl&0x80 != 0 {
				now = now.Add(3 * time.Second)
			}
			if !isOutsideICMPFragment(fr, gwAddr.Addr()) {
				continue
			}
			if whole := r.add(fr, now); whole != nil {
				h := packet.IPv4(whole[packet.EthernetHeaderLen:])
				if !h.Valid() || h.TotalLen() != len(h) || !h.ChecksumValid() || binary.BigEndian.Uint16(h[6:])&0x3fff != 0 {
					t.Fatalf("reassembled % x", whole)
				}
			}
			if len(r.m) > echoFragMax {
				t.Fatalf("%d datagrams held", len(r.m))
			}
		}
	})
}
