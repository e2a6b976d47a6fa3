package tunnel

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// tsoBuffer builds a buffer as a TAP read with TSO leaves it: a TCP
// super-segment (IPv4 or IPv6, 12 bytes of TCP options, payload bytes) at
// packet.Headroom, with NEEDS_CSUM and GSO metadata (gso_size mss) in the
// slot.
func tsoBuffer(dst, src packet.MAC, v6 bool, payload, mss int) []byte {
	ipLen, et, typ := 20, uint16(packet.EtherTypeIPv4), uint8(packet.GSOTCPv4)
	if v6 {
		ipLen, et, typ = 40, packet.EtherTypeIPv6, packet.GSOTCPv6
	}
	b := make([]byte, packet.Headroom+14+ipLen+32+payload, packet.BufferSize)
	f := b[packet.Headroom:]
	packet.Ethernet(f).SetDst(dst)
	packet.Ethernet(f).SetSrc(src)
	binary.BigEndian.PutUint16(f[12:], et)
	ip := f[14 : 14+ipLen]
	var pseudo uint64
	if v6 {
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(32+payload))
		ip[6], ip[7] = packet.ProtoTCP, 64
		ip[8], ip[23] = 0xfd, 2
		ip[24], ip[39] = 0xfd, 3
		pseudo = packet.Sum(ip[8:40], 0)
	} else {
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+32+payload))
		binary.BigEndian.PutUint16(ip[4:], 777)
		ip[6], ip[8], ip[9] = 0x40, 64, packet.ProtoTCP
		copy(ip[12:], []byte{10, 0, 1, 2, 10, 0, 1, 3})
		packet.IPv4(ip).SetChecksum(packet.IPv4(ip).HeaderChecksum())
		pseudo = packet.Sum(ip[12:20], 0)
	}
	tcp := f[14+ipLen:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	tcp[12], tcp[13] = 8<<4, 0x18 // ACK|PSH
	copy(tcp[20:32], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	for i := range payload {
		tcp[32+i] = byte(i % 253)
	}
	binary.BigEndian.PutUint16(tcp[16:], ^packet.Fold(pseudo+packet.ProtoTCP+uint64(32+payload)))
	packet.OffloadOf(b).Set(packet.OffloadNeedsCsum, typ, 14+ipLen+32, mss, 14+ipLen, 16)
	return b
}

// checkTCPSegments decodes received datagrams with gVisor's header
// package: VXLAN, valid IP and TCP checksums, consecutive sequence
// numbers, no segment over the MTU, payloads adding up to want.
func checkTCPSegments(t *testing.T, msgs []Message, mtu int, want []byte) {
	t.Helper()
	var got []byte
	seq := uint32(1000)
	for i, m := range msgs {
		x := packet.VXLAN(m.Buf)
		if !x.Valid() || x.VNI() != testVNI {
			t.Fatalf("datagram %d: not VXLAN of our VNI", i)
		}
		f := x.Payload()
		if len(f) > mtu+packet.EthernetHeaderLen {
			t.Errorf("datagram %d: inner frame %d bytes over MTU %d", i, len(f), mtu)
		}
		var tcp header.TCP
		var src, dst tcpip.Address
		switch header.Ethernet(f).Type() {
		case header.IPv4ProtocolNumber:
			ip := header.IPv4(f[14:])
			if !ip.IsValid(len(f)-14) || !ip.IsChecksumValid() {
				t.Fatalf("datagram %d: bad IPv4 header", i)
			}
			tcp, src, dst = ip.Payload(), ip.SourceAddress(), ip.DestinationAddress()
		case header.IPv6ProtocolNumber:
			ip := header.IPv6(f[14:])
			if !ip.IsValid(len(f) - 14) {
				t.Fatalf("datagram %d: bad IPv6 header", i)
			}
			tcp, src, dst = ip.Payload(), ip.SourceAddress(), ip.DestinationAddress()
		default:
			t.Fatalf("datagram %d: EtherType %#x", i, header.Ethernet(f).Type())
		}
		body := tcp.Payload()
		if !tcp.IsChecksumValid(src, dst, checksum.Checksum(body, 0), uint16(len(body))) {
			t.Errorf("datagram %d: bad TCP checksum", i)
		}
		if tcp.SequenceNumber() != seq {
			t.Errorf("datagram %d: seq %d, want %d", i, tcp.SequenceNumber(), seq)
		}
		if psh := tcp.Flags()&header.TCPFlagPsh != 0; psh != (i == len(msgs)-1) {
			t.Errorf("datagram %d: PSH %v", i, psh)
		}
		seq += uint32(len(body))
		got = append(got, body...)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("payload of %d bytes received, want %d", len(got), len(want))
	}
}

func TestWriteSegmentsGSO(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		mn := NewMemNetwork()
		mn.SetMTU(1500)
		a := newNode(t, mn, vtepA, nil, vtepB)
		rb := newRaw(t, mn, vtepB)
		a.n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
		mss := 1450 - 20 - 32
		if v6 {
			mss = 1450 - 40 - 32
		}
		b := tsoBuffer(macB, macA, v6, 10000, mss)
		orig := bytes.Clone(b)
		if n, err := a.n.Write([][]byte{b}, packet.Headroom); n != 1 || err != nil {
			t.Fatalf("v6=%v: Write = %d, %v", v6, n, err)
		}
		segs := (10000 + mss - 1) / mss
		msgs := rb.recv(t, segs)
		ipLen := 20
		if v6 {
			ipLen = 40
		}
		checkTCPSegments(t, msgs, 1450, orig[packet.Headroom+14+ipLen+32:])
		if !bytes.Equal(b[:packet.OffloadLen], orig[:packet.OffloadLen]) || !bytes.Equal(b[packet.Headroom:], orig[packet.Headroom:]) {
			t.Errorf("v6=%v: Write modified the super-segment or its slot", v6)
		}
		st := a.n.Stats()
		if st.TxPackets != 1 || st.TxGSO != 1 || st.TxDatagrams != uint64(segs) || st.TxBytes != uint64(len(b)-packet.Headroom) || len(st.Drops) != 0 {
			t.Errorf("v6=%v: stats %+v", v6, st)
		}
	}
}

func TestWriteGSOFloodAndArena(t *testing.T) {
	mn := NewMemNetwork()
	a := newNode(t, mn, vtepA, nil, vtepB, vtepC)
	rb, rc := newRaw(t, mn, vtepB), newRaw(t, mn, vtepC)
	// Eight 63 KiB super-segments (unknown unicast: flooded to both peers)
	// are more than one segment arena: Write sends in several rounds.
	const frames, payload, mss = 8, 63 * 1024, 1398
	bufs := make([][]byte, frames)
	for i := range bufs {
		bufs[i] = tsoBuffer(macX, macA, false, payload, mss)
	}
	if n, err := a.n.Write(bufs, packet.Headroom); n != frames || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	segs := (payload + mss - 1) / mss
	for _, r := range []*raw{rb, rc} {
		msgs := r.recv(t, frames*segs)
		for i := range frames {
			checkTCPSegments(t, msgs[i*segs:(i+1)*segs], 1450, bufs[i][packet.Headroom+14+20+32:])
		}
	}
	if st := a.n.Stats(); st.TxPackets != frames || st.Flooded != frames || st.TxDatagrams != 2*frames*uint64(segs) {
		t.Errorf("stats %+v", st)
	}
}

func TestWriteGSODrops(t *testing.T) {
	mn := NewMemNetwork()
	a := newNode(t, mn, vtepA, nil, vtepB)
	newRaw(t, mn, vtepB)
	a.n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	big := tsoBuffer(macB, macA, false, 5000, 1448) // 14+20+32+1448 > 1450+14
	bad := tsoBuffer(macB, macA, false, 5000, 1000)
	bad[packet.Headroom+14+9] = packet.ProtoUDP // metadata says TCP
	ufo := withHeadroom(udpFrame(macB, macA, 1, 2, 3000))[0]
	packet.OffloadOf(ufo).Set(0, packet.GSOUDP, 42, 1400, 0, 0)
	partial := withHeadroom(udpFrame(macB, macA, 1, 2, 100))[0]
	packet.OffloadOf(partial).Set(packet.OffloadNeedsCsum, 0, 0, 0, 2000, 6) // offsets past the frame
	// Amplification: gso_size 1 with 60 KB would be 60,000 datagrams;
	// more than packet.GSOMaxSegments segments are refused too.
	tiny := tsoBuffer(macB, macA, false, 60000, 1)
	many := tsoBuffer(macB, macA, false, (packet.GSOMaxSegments+1)*packet.GSOMinSizeIPv4, packet.GSOMinSizeIPv4)
	n, err := a.n.Write([][]byte{big, bad, ufo, partial, tiny, many}, packet.Headroom)
	if n != 0 || err == nil {
		t.Errorf("Write = %d, %v; want 0 and an error", n, err)
	}
	st := a.n.Stats()
	if st.Drops["mtu"] != 1 || st.Drops["gso-invalid"] != 5 || st.TxDatagrams != 0 {
		t.Errorf("drops %v, datagrams %d; want 1 mtu, 5 gso-invalid, none sent", st.Drops, st.TxDatagrams)
	}
}

func TestWriteCompletesPartialChecksum(t *testing.T) {
	mn := NewMemNetwork()
	a := newNode(t, mn, vtepA, nil, vtepB)
	rb := newRaw(t, mn, vtepB)
	a.n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	// A segment that fits the MTU, handed over with NEEDS_CSUM but no GSO.
	b := tsoBuffer(macB, macA, false, 1000, 1398)
	b[1] = packet.GSONone
	if n, err := a.n.Write([][]byte{b}, packet.Headroom); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	msgs := rb.recv(t, 1)
	checkTCPSegments(t, msgs, 1450, b[packet.Headroom+14+20+32:])
	if !packet.OffloadOf(b).IsNone() {
		t.Errorf("slot % x after completing in place, want NeedsCsum cleared", b[:packet.OffloadLen])
	}
}

func TestDecapClearsOffloadSlot(t *testing.T) {
	mn := NewMemNetwork()
	u, _ := mn.Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
	v := New(Config{Underlay: u})
	defer v.Close()
	n, _ := v.AddSegment(testVNI, 0)
	n.SetPeers([]netip.Addr{vtepE})
	var slots [][]byte
	n.SetInput(func(bufs [][]byte, sizes []int, offset int) {
		for _, b := range bufs {
			slots = append(slots, bytes.Clone(b[:packet.OffloadLen]))
		}
	})
	d := vxlanDatagram(testVNI, udpFrame(macA, macX, 1, 2, 10))
	m := &v.rx.msgs[0]
	m.N, m.Addr = len(d), netip.AddrPortFrom(vtepE, 40000)
	copy(m.Buf, d)
	packet.OffloadOf(v.rx.bufs[0]).Set(packet.OffloadNeedsCsum, packet.GSOTCPv4, 54, 1400, 34, 16) // stale
	v.receive(&v.rx, v.rx.msgs[:1], false)
	if len(slots) != 1 || !bytes.Equal(slots[0], make([]byte, packet.OffloadLen)) {
		t.Errorf("delivered slots %x, want one cleared slot", slots)
	}
}

func TestWriteGSODoesNotAllocate(t *testing.T) {
	mn := NewMemNetwork()
	u, _ := mn.Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
	peer, _ := mn.Listen(netip.AddrPortFrom(vtepB, packet.VXLANPort))
	v := New(Config{Underlay: u})
	t.Cleanup(func() { v.Close(); peer.Close() })
	n, _ := v.AddSegment(testVNI, 0)
	n.SetPeers([]netip.Addr{vtepB})
	n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	bufs := [][]byte{tsoBuffer(macB, macA, false, 60000, 1398), tsoBuffer(macB, macA, true, 60000, 1378)}
	drain := make([]Message, packet.BatchSize)
	for i := range drain {
		drain[i].Buf = make([]byte, 2048)
	}
	want := 0
	for _, b := range bufs {
		g, _ := packet.ParseGSO(b[packet.Headroom:], packet.OffloadOf(b))
		want += g.Segments()
	}
	step := func() {
		n.Write(bufs, packet.Headroom)
		for left := want; left > 0; {
			k, _ := peer.ReadBatch(drain)
			left -= k
		}
	}
	if allocs := testing.AllocsPerRun(100, step); allocs != 0 {
		t.Errorf("Write of super-segments allocates %.1f times per batch", allocs)
	}
	if st := n.Stats(); st.TxGSO != 2*101 || len(st.Drops) != 0 {
		t.Errorf("stats %+v", st)
	}
}

// FuzzWriteOffload sends arbitrary frames under arbitrary offload metadata:
// Write must not panic, must account for the frame once (sent or dropped),
// must drop a super-segment ParseGSO rejects as "gso-invalid" (one
// shorter than an Ethernet header is "malformed"), and must
// never hand the underlay a datagram over the MTU.
func FuzzWriteOffload(f *testing.F) {
	for _, v6 := range []bool{false, true} {
		b := tsoBuffer(macB, macA, v6, 4000, 1300)
		f.Add(b[:packet.OffloadLen], b[packet.Headroom:])
	}
	b := tsoBuffer(macB, macA, false, 900, 1300)
	b[1] = 0
	f.Add(b[:packet.OffloadLen], b[packet.Headroom:])
	f.Add(make([]byte, packet.OffloadLen), udpFrame(macB, macA, 1, 2, 10))
	mn := NewMemNetwork()
	mn.SetMTU(1500)
	u, _ := mn.Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
	v := New(Config{Underlay: u})
	defer v.Close()
	n, _ := v.AddSegment(testVNI, 0)
	n.SetPeers([]netip.Addr{vtepB, vtepC}) // nobody listens: datagrams are lost, not refused
	n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	buf := make([]byte, packet.BufferSize)
	f.Fuzz(func(t *testing.T, slot, frame []byte) {
		if len(slot) < packet.OffloadLen || len(frame) > packet.MaxGSOFrame {
			return
		}
		before := n.Stats()
		copy(buf, slot[:packet.OffloadLen])
		b := buf[:packet.Headroom+copy(buf[packet.Headroom:], frame)]
		o := packet.OffloadOf(b)
		_, valid := packet.ParseGSO(b[packet.Headroom:], o)
		isGSO := o.IsGSO()
		sent, _ := n.Write([][]byte{b}, packet.Headroom)
		st := n.Stats()
		var drops, beforeDrops uint64
		for _, c := range st.Drops {
			drops += c
		}
		for _, c := range before.Drops {
			beforeDrops += c
		}
		if uint64(sent)+drops-beforeDrops != 1 || st.TxPackets-before.TxPackets != uint64(sent) {
			t.Fatalf("sent %d, drops %v (before %v)", sent, st.Drops, before.Drops)
		}
		if isGSO && !valid && len(frame) >= packet.EthernetHeaderLen && st.Drops["gso-invalid"] != before.Drops["gso-invalid"]+1 {
			t.Fatalf("invalid super-segment not dropped as gso-invalid: %v", st.Drops)
		}
		for _, p := range st.Peers {
			if p.TxDrops != 0 {
				t.Fatalf("the underlay refused a datagram (over the MTU?): %+v", p)
			}
		}
	})
}
