package gateway

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

// TestGSOToContainer: bulk data from the outside reaches the container
// intact in TCP super-segments (GSO metadata), far fewer frames than one
// per MSS.
func TestGSOToContainer(t *testing.T) {
	ln, port := listenTCP(t)
	h := newHarness(t, false, EgressConfig{Dial: redirect(map[uint16]uint16{80: port})})
	if got := h.gw.ep.GSOMaxSize(); got != gsoMaxSize {
		t.Fatalf("the link endpoint's GSO size is %d, the device assumes %d", got, gsoMaxSize)
	}
	data := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{1}).Read(data)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write(data)
		c.Close()
	}()
	conn, err := h.dial(t, netip.AddrPortFrom(outside, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(conn)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("container read %d bytes (%v), want the %d sent", len(got), err, len(data))
	}
	frames, gso := h.rec.counts()
	perMSS := len(data) / 1460
	if gso == 0 || frames > perMSS/4 {
		t.Errorf("%d bytes reached the container in %d frames, %d of them super-segments; want super-segments, at most %d frames", len(data), frames, gso, perMSS/4)
	}
}

// superSegment builds a TCP/IPv4 super-segment frame as the stack does
// (the checksum field holding the pseudo-header sum of the whole length)
// with payload, and its GSO metadata for mss.
func superSegment(payload []byte, mss int, flags uint8) ([]byte, []byte) {
	src, dst := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("10.0.1.2")
	f := make([]byte, packet.EthernetHeaderLen+20+32+len(payload))
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeIPv4)
	ip := packet.IPv4(f[packet.EthernetHeaderLen:])
	ip[0], ip[8], ip[9] = 0x45, 64, packet.ProtoTCP
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], 0xfff0) // wraps
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip.SetSrc(src)
	ip.SetDst(dst)
	ip.SetChecksum(ip.HeaderChecksum())
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], 80)
	binary.BigEndian.PutUint16(tcp[2:], 40000)
	binary.BigEndian.PutUint32(tcp[4:], 0xfffff000) // wraps
	tcp[12], tcp[13] = 8<<4, flags
	tcp[20], tcp[21], tcp[22] = 1, 1, 8 // NOP NOP timestamps
	tcp[23] = 10
	copy(tcp[32:], payload)
	binary.BigEndian.PutUint16(tcp[16:], ^packet.Fold(packet.PseudoHeaderSum(src, dst, packet.ProtoTCP, len(tcp))))
	o := make([]byte, packet.OffloadLen)
	packet.Offload(o).Set(packet.OffloadNeedsCsum, packet.GSOTCPv4, packet.EthernetHeaderLen+52, mss, packet.EthernetHeaderLen+20, 16)
	return f, o
}

// TestSegmenter: the device's software segmentation gives the segments
// the switch's (packet.GSO) does, byte for byte, and at an MSS too small
// for the switch's bounds it gives complete segments that carry the
// payload in order, read over several batches.
func TestSegmenter(t *testing.T) {
	payload := make([]byte, 20000)
	rand.NewChaCha8([32]byte{2}).Read(payload)
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, packet.Headroom+2000)
	}
	sizes := make([]int, len(bufs))
	frame, o := superSegment(payload, 1400, 0x80|0x08|0x01|0x10) // CWR PSH FIN ACK
	g, ok := packet.ParseGSO(frame, o)
	if !ok {
		t.Fatal("ParseGSO refused the test's super-segment")
	}
	var s segmenter
	s.start(frame, 1400)
	n := s.next(bufs, sizes, packet.Headroom)
	if n != g.Segments() || s.frame != nil {
		t.Fatalf("segmenter wrote %d segments, want %d", n, g.Segments())
	}
	want := make([]byte, 2000)
	for k := range n {
		w := want[:g.Segment(k, want)]
		if got := bufs[k][packet.Headroom : packet.Headroom+sizes[k]]; !bytes.Equal(got, w) {
			t.Fatalf("segment %d:\n got % x\nwant % x", k, got, w)
		}
	}

	frame, _ = superSegment(payload, 100, 0x10)
	s.start(frame, 100)
	var joined []byte
	for s.frame != nil {
		n := s.next(bufs, sizes, packet.Headroom)
		for k := range n {
			seg := bufs[k][packet.Headroom : packet.Headroom+sizes[k]]
			ip := packet.IPv4(seg[packet.EthernetHeaderLen:])
			if !ip.Valid() || ip.HeaderChecksum() != binary.BigEndian.Uint16(ip[10:]) ||
				packet.Fold(packet.Sum(ip[20:], packet.PseudoHeaderSum(ip.Src(), ip.Dst(), packet.ProtoTCP, len(ip)-20))) != 0 {
				t.Fatalf("segment with a bad checksum: % x", seg)
			}
			if seq := binary.BigEndian.Uint32(ip[24:]); seq != 0xfffff000+uint32(len(joined)) {
				t.Fatalf("segment at payload byte %d has seq %#x", len(joined), seq)
			}
			joined = append(joined, ip[52:]...)
		}
	}
	if !bytes.Equal(joined, payload) {
		t.Fatalf("small-MSS segments carry %d bytes, not the %d sent", len(joined), len(payload))
	}
}
