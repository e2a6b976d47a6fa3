package gateway

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

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

// TestPingOutside: an echo request to an outside address is answered by
// a real echo from the host (raw socket: root), never by the stack; on an
// internal network it is dropped and counted, with no reply.
func TestPingOutside(t *testing.T) {
	dst := hostAddr(t)
	if c, err := net.ListenPacket("ip4:icmp", "0.0.0.0"); err != nil {
		t.Skipf("no raw ICMP socket (needs root): %v", err)
	} else {
		c.Close()
	}
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
