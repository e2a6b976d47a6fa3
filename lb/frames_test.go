package lb

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// Test frames are built and checked with gVisor's header package, an
// implementation independent of the code under test.

var (
	clientIP  = netip.MustParseAddr("10.0.0.2")
	clientMAC = packet.MAC{2, 0x42, 10, 0, 0, 2}
	vip       = netip.MustParseAddr("10.0.0.100")
	vipMAC    = VIPMAC(vip)
)

func beIP(i int) netip.Addr            { return netip.AddrFrom4([4]byte{10, 0, 1, byte(i)}) }
func beMAC(i int) packet.MAC           { return packet.MAC{2, 0x42, 10, 0, 1, byte(i)} }
func gaddr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

// flow describes one packet to build.
type flow struct {
	srcMAC, dstMAC packet.MAC
	src, dst       netip.Addr
	sport, dport   uint16
	proto          uint8
	flags          header.TCPFlags
	seq, ack       uint32
	payload        int
}

// build returns a frame with complete checksums.
func (fl flow) build() []byte {
	l4len := 20
	switch fl.proto {
	case packet.ProtoUDP, packet.ProtoICMP:
		l4len = 8
	}
	f := make([]byte, 14+20+l4len+fl.payload)
	copy(f[0:6], fl.dstMAC[:])
	copy(f[6:12], fl.srcMAC[:])
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeIPv4)
	ip := header.IPv4(f[14:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(20 + l4len + fl.payload), ID: 7, Flags: header.IPv4FlagDontFragment,
		TTL: 64, Protocol: fl.proto, SrcAddr: gaddr(fl.src), DstAddr: gaddr(fl.dst),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	l4 := f[34:]
	for i := range fl.payload {
		l4[l4len+i] = byte(i*13 + 5)
	}
	switch fl.proto {
	case packet.ProtoTCP:
		header.TCP(l4).Encode(&header.TCPFields{SrcPort: fl.sport, DstPort: fl.dport, SeqNum: fl.seq,
			AckNum: fl.ack, DataOffset: 20, Flags: fl.flags, WindowSize: 65000})
	case packet.ProtoUDP:
		header.UDP(l4).Encode(&header.UDPFields{SrcPort: fl.sport, DstPort: fl.dport, Length: uint16(8 + fl.payload)})
	case packet.ProtoICMP:
		ic := header.ICMPv4(l4)
		ic.SetType(header.ICMPv4Echo)
		ic.SetIdent(fl.sport)
		ic.SetChecksum(^checksum.Checksum(l4, 0))
		return f
	}
	setFullL4(f)
	return f
}

// setFullL4 computes the TCP/UDP checksum of f from scratch.
func setFullL4(f []byte) {
	ip := header.IPv4(f[14:])
	l4 := ip.Payload()
	at := 16
	if ip.Protocol() == packet.ProtoUDP {
		at = 6
	}
	binary.BigEndian.PutUint16(l4[at:], 0)
	ps := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(ip.Protocol()), ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))
	c := ^checksum.Checksum(l4, ps)
	if c == 0 && ip.Protocol() == packet.ProtoUDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[at:], c)
}

// makePartial turns f's complete TCP/UDP checksum into what a kernel
// hands over with CHECKSUM_PARTIAL and returns matching metadata.
func makePartial(f []byte) packet.Offload {
	ip := header.IPv4(f[14:])
	l4 := ip.Payload()
	at := 16
	if ip.Protocol() == packet.ProtoUDP {
		at = 6
	}
	ps := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(ip.Protocol()), ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))
	binary.BigEndian.PutUint16(l4[at:], ps)
	o := packet.Offload(make([]byte, packet.OffloadLen))
	o.Set(packet.OffloadNeedsCsum, packet.GSONone, 0, 0, 34, at)
	return o
}

// completePartial does what the device does for CHECKSUM_PARTIAL.
func completePartial(f []byte, o packet.Offload) {
	start, at := o.CsumStart(), o.CsumStart()+o.CsumOffset()
	binary.BigEndian.PutUint16(f[at:], ^checksum.Checksum(f[start:14+header.IPv4(f[14:]).TotalLength()], 0))
}

// checkSums fails t unless the IPv4 header checksum and the TCP, UDP or
// ICMP checksum of f are right, recomputed from scratch.
func checkSums(t testing.TB, f []byte) {
	t.Helper()
	ip := header.IPv4(f[14:])
	if !ip.IsValid(len(f)-14) || !ip.IsChecksumValid() {
		t.Fatalf("bad IPv4 header or header checksum: % x", f[14:34])
	}
	l4 := ip.Payload()
	switch ip.Protocol() {
	case packet.ProtoTCP, packet.ProtoUDP:
		if ip.Protocol() == packet.ProtoUDP && binary.BigEndian.Uint16(l4[6:]) == 0 {
			return
		}
		ps := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(ip.Protocol()), ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))
		if c := checksum.Checksum(l4, ps); c != 0xffff {
			t.Fatalf("bad L4 checksum (sum %#04x) in % x", c, f)
		}
	case packet.ProtoICMP:
		if c := checksum.Checksum(l4, 0); c != 0xffff {
			t.Fatalf("bad ICMP checksum (sum %#04x)", c)
		}
	}
}

// fields parses f independently: MACs, addresses and ports.
type fields struct {
	srcMAC, dstMAC packet.MAC
	src, dst       netip.Addr
	sport, dport   uint16
	flags          header.TCPFlags
}

func parseFields(f []byte) fields {
	eth := header.Ethernet(f)
	ip := header.IPv4(f[14:])
	r := fields{srcMAC: packet.MAC([]byte(eth.SourceAddress())), dstMAC: packet.MAC([]byte(eth.DestinationAddress())),
		src: netip.AddrFrom4(ip.SourceAddress().As4()), dst: netip.AddrFrom4(ip.DestinationAddress().As4())}
	switch ip.Protocol() {
	case packet.ProtoTCP:
		tcp := header.TCP(ip.Payload())
		r.sport, r.dport, r.flags = tcp.SourcePort(), tcp.DestinationPort(), tcp.Flags()
	case packet.ProtoUDP:
		udp := header.UDP(ip.Payload())
		r.sport, r.dport = udp.SourcePort(), udp.DestinationPort()
	}
	return r
}

// Test clock: nanoseconds, starting well above 0.
const t0 = int64(1e12)

// newTest returns a table with one service on vip (svc's VIP and Name
// filled in when empty) with n backends beIP(1..n).
func newTest(t testing.TB, cfg Config, svc Service, n int) *Table {
	t.Helper()
	if !svc.VIP.IsValid() {
		svc.VIP = vip
	}
	if svc.Name == "" {
		svc.Name = "web"
	}
	for i := 1; i <= n; i++ {
		svc.Backends = append(svc.Backends, Backend{IP: beIP(i), MAC: beMAC(i)})
	}
	snap, err := NewSnapshot([]Service{svc})
	if err != nil {
		t.Fatal(err)
	}
	tb := NewTable(NewConntrack(cfg), 1)
	tb.Swap(snap)
	return tb
}

// toVIP is a client packet to the VIP.
func toVIP(proto uint8, sport, dport uint16, flags header.TCPFlags) flow {
	return flow{srcMAC: clientMAC, dstMAC: vipMAC, src: clientIP, dst: vip, sport: sport, dport: dport,
		proto: proto, flags: flags, seq: 1000, ack: 0}
}

// reply is the backend's answer to a translated packet with fields got.
func reply(got fields, proto uint8, flags header.TCPFlags) flow {
	return flow{srcMAC: got.dstMAC, dstMAC: got.srcMAC, src: got.dst, dst: got.src, sport: got.dport,
		dport: got.sport, proto: proto, flags: flags, seq: 5000, ack: 1001}
}

// backendIndex returns i if ip is beIP(i).
func backendIndex(ip netip.Addr) int { return int(ip.As4()[3]) }
