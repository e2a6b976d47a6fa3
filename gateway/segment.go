package gateway

import (
	"encoding/binary"

	"github.com/vxmesh/vxmesh/packet"
)

// gsoMaxSize bounds the TCP segments the stack builds beyond the MTU (the
// IP packet): at the smallest MSS the switch takes in a super-segment
// (packet.GSOMinSizeIPv4), 32 KiB splits into fewer than
// packet.GSOMaxSegments segments.
const gsoMaxSize = 1 << 15

// segmenter splits, in software, a TCP/IPv4 super-segment the stack built
// (an Ethernet frame, IPv4 and TCP headers as the stack writes them, the
// TCP checksum field holding the pseudo-header sum) into MSS-sized
// frames, for super-segments the switch would refuse. It keeps a copy of
// the frame, so the segments can be read over several calls.
type segmenter struct {
	frame       []byte // the super-segment; nil when done
	buf         []byte // frame's storage, reused
	mss, k, seg int    // payload per segment, next segment, segment count
	l4, hdrLen  int
}

// start begins splitting frame into mss-byte segments.
func (s *segmenter) start(frame []byte, mss int) {
	if cap(s.buf) < len(frame) {
		s.buf = make([]byte, len(frame))
	}
	s.frame = s.buf[:copy(s.buf[:len(frame)], frame)]
	s.l4 = packet.EthernetHeaderLen + int(frame[packet.EthernetHeaderLen]&0x0f)*4
	s.hdrLen = s.l4 + int(frame[s.l4+12]>>4)*4
	s.mss, s.k = max(mss, 1), 0
	s.seg = max(1, (len(frame)-s.hdrLen+s.mss-1)/s.mss)
}

// next writes the following segments into bufs (one each, at offset,
// offload slot cleared) and returns how many it wrote.
func (s *segmenter) next(bufs [][]byte, sizes []int, offset int) int {
	n := 0
	for s.frame != nil && n < len(bufs) {
		sizes[n] = s.segment(s.k, bufs[n][offset:])
		packet.ClearOffload(bufs[n])
		n++
		if s.k++; s.k == s.seg {
			s.frame = nil
		}
	}
	return n
}

// segment writes segment k as a complete frame into dst and returns its
// length: the headers with the segment's IP length, ID and checksum, its
// sequence number, FIN and PSH on the last segment only, CWR on the first
// only, and a complete TCP checksum.
func (s *segmenter) segment(k int, dst []byte) int {
	f := s.frame
	off := k * s.mss
	n := min(s.mss, len(f)-s.hdrLen-off)
	seg := dst[:s.hdrLen+n]
	copy(seg, f[:s.hdrLen])
	copy(seg[s.hdrLen:], f[s.hdrLen+off:s.hdrLen+off+n])
	ip := packet.IPv4(seg[packet.EthernetHeaderLen:])
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], binary.BigEndian.Uint16(f[packet.EthernetHeaderLen+4:])+uint16(k))
	ip.SetChecksum(ip.HeaderChecksum())
	tcp := seg[s.l4:]
	binary.BigEndian.PutUint32(tcp[4:], binary.BigEndian.Uint32(f[s.l4+4:])+uint32(off))
	if k != s.seg-1 {
		tcp[13] &^= 0x01 | 0x08 // FIN, PSH
	}
	if k != 0 {
		tcp[13] &^= 0x80 // CWR
	}
	tcp[16], tcp[17] = 0, 0
	binary.BigEndian.PutUint16(tcp[16:], packet.Fold(packet.Sum(tcp, packet.PseudoHeaderSum(ip.Src(), ip.Dst(), packet.ProtoTCP, len(tcp)))))
	return len(seg)
}
