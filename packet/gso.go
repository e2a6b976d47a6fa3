package packet

import "encoding/binary"

// GSO bounds: a super-segment is refused unless its segments carry at
// least the minimum segment size of its IP version (the IPv4 default MSS of
// RFC 879, the IPv6 minimum MTU's MSS) and it splits into at most
// GSOMaxSegments segments, so one frame never becomes more than
// GSOMaxSegments datagrams. The switch and the tunnel refuse such frames
// ("gso-invalid"); the daemon sets gso_max_segs to GSOMaxSegments on
// container interfaces so that their kernel never builds bigger ones.
const (
	GSOMinSizeIPv4 = 536
	GSOMinSizeIPv6 = 1220
	GSOMaxSegments = 64
)

// GSO is a validated TCP super-segment (offload metadata GSOTCPv4 or
// GSOTCPv6) and splits it into the segments the sender's stack would have
// sent without TSO, the way the kernel's software GSO does: every segment
// gets a copy of the Ethernet, IP and TCP headers, GSOSize payload bytes
// (the last one the rest), its own IP total/payload length, IPv4 ID
// (incremented per segment) and header checksum, TCP sequence number and a
// complete TCP checksum; FIN and PSH stay on the last segment only, CWR on
// the first only. It is a value: parsing and splitting do not allocate.
type GSO struct {
	frame   []byte // the frame up to the end of the IP packet
	l3, l4  int    // offsets of the IP and TCP headers
	hdrLen  int    // l4 + TCP header length
	v6      bool
	mss     int
	payload int // TCP payload bytes
	segs    int
	seq     uint32
	id      uint16
	// Running sums of the headers' fields that are the same in every
	// segment (see Segment): ipSum the IPv4 header's without its total
	// length, ID and checksum; tcpSum the pseudo-header's addresses and
	// protocol plus the TCP header's without its sequence number, offset
	// and flags word and checksum.
	ipSum, tcpSum uint64
}

// ParseGSO checks that frame is a TCP super-segment its metadata o
// describes correctly: an untagged Ethernet frame carrying IPv4 (not a
// fragment) for GSOTCPv4 or IPv6 without extension headers for GSOTCPv6,
// TCP in it, headers inside the IP packet, the IP packet inside the frame
// and a GSOSize and segment count inside the GSO bounds (GSOMinSizeIPv4,
// GSOMinSizeIPv6, GSOMaxSegments). The metadata's HdrLen and checksum offsets are
// not trusted; the headers are parsed. It reports false for anything else.
func ParseGSO(frame []byte, o Offload) (GSO, bool) {
	var g GSO
	mss := o.GSOSize()
	if mss == 0 || len(frame) < EthernetHeaderLen {
		return g, false
	}
	l3 := EthernetHeaderLen
	et := binary.BigEndian.Uint16(frame[12:14])
	end := 0
	switch o.GSOType() &^ GSOECN {
	case GSOTCPv4:
		ip := frame[l3:]
		if et != EtherTypeIPv4 || len(ip) < IPv4MinHeaderLen || ip[0]>>4 != 4 || ip[9] != ProtoTCP {
			return g, false
		}
		if binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 { // MF or a fragment offset
			return g, false
		}
		ihl, tl := int(ip[0]&0x0f)*4, int(binary.BigEndian.Uint16(ip[2:4]))
		if ihl < IPv4MinHeaderLen || tl < ihl || tl > len(ip) {
			return g, false
		}
		g.l4, end = l3+ihl, l3+tl
		g.id = binary.BigEndian.Uint16(ip[4:6])
	case GSOTCPv6:
		ip := frame[l3:]
		if et != EtherTypeIPv6 || len(ip) < 40 || ip[0]>>4 != 6 || ip[6] != ProtoTCP {
			return g, false
		}
		pl := int(binary.BigEndian.Uint16(ip[4:6]))
		if 40+pl > len(ip) {
			return g, false
		}
		g.l4, end, g.v6 = l3+40, l3+40+pl, true
	default:
		return g, false
	}
	if g.l4+20 > end {
		return g, false
	}
	doff := int(frame[g.l4+12]>>4) * 4
	if doff < 20 || g.l4+doff > end {
		return g, false
	}
	g.frame, g.l3, g.hdrLen, g.mss = frame[:end], l3, g.l4+doff, mss
	g.payload = end - g.hdrLen
	g.segs = max(1, (g.payload+mss-1)/mss)
	if mss < GSOMinSizeIPv4 || g.v6 && mss < GSOMinSizeIPv6 || g.segs > GSOMaxSegments {
		return GSO{}, false
	}
	g.seq = binary.BigEndian.Uint32(frame[g.l4+4:])
	ip, tcp := frame[l3:g.l4], frame[g.l4:g.hdrLen]
	g.tcpSum = uint64(ProtoTCP)
	if g.v6 {
		g.tcpSum = Sum(ip[8:40], g.tcpSum)
	} else {
		g.ipSum = Sum(ip[12:], Sum(ip[6:10], Sum(ip[0:2], 0)))
		g.tcpSum = Sum(ip[12:20], g.tcpSum)
	}
	g.tcpSum = Sum(tcp[18:], Sum(tcp[14:16], Sum(tcp[8:12], Sum(tcp[0:4], g.tcpSum))))
	return g, true
}

// Segments returns the number of segments.
func (g *GSO) Segments() int { return g.segs }

// HeaderLen returns the length of the headers copied into every segment
// (Ethernet, IP and TCP).
func (g *GSO) HeaderLen() int { return g.hdrLen }

// MSS returns the payload bytes of every segment but the last.
func (g *GSO) MSS() int { return g.mss }

// SegmentLen returns the frame length of segment k.
func (g *GSO) SegmentLen(k int) int {
	return g.hdrLen + min(g.mss, g.payload-k*g.mss)
}

// MaxSegmentLen returns the frame length of the largest segment.
func (g *GSO) MaxSegmentLen() int { return g.SegmentLen(0) }

// Segment writes segment k (0 <= k < Segments()) as a complete frame into
// dst and returns its length, or 0 if k is out of range or dst is shorter
// than SegmentLen(k).
//
// The checksums are computed from the sums ParseGSO took of the header
// fields every segment shares, the fields that change and a sum of the
// payload read from the super-segment, never by reading back the headers
// just written to dst: a wide load over bytes that narrow stores have just
// written waits for those stores to retire (a failed store-to-load
// forward), which made the 20-byte IPv4 header checksum cost as much as
// summing the whole payload.
func (g *GSO) Segment(k int, dst []byte) int {
	if k < 0 || k >= g.segs {
		return 0
	}
	off := k * g.mss
	n := min(g.mss, g.payload-off)
	total := g.hdrLen + n
	if len(dst) < total {
		return 0
	}
	seg := dst[:total]
	payload := g.frame[g.hdrLen+off : g.hdrLen+off+n]
	copy(seg, g.frame[:g.hdrLen])
	copy(seg[g.hdrLen:], payload)
	ip, tcp := seg[g.l3:g.l4], seg[g.l4:]
	if g.v6 {
		binary.BigEndian.PutUint16(ip[4:6], uint16(total-g.l4))
	} else {
		tl, id := uint16(total-g.l3), g.id+uint16(k)
		binary.BigEndian.PutUint16(ip[2:4], tl)
		binary.BigEndian.PutUint16(ip[4:6], id)
		binary.BigEndian.PutUint16(ip[10:12], Fold(g.ipSum+uint64(tl)+uint64(id)))
	}
	seq := g.seq + uint32(off)
	binary.BigEndian.PutUint32(tcp[4:8], seq)
	flags := g.frame[g.l4+13]
	if k < g.segs-1 {
		flags &^= TCPFIN | TCPPSH
	}
	if k > 0 {
		flags &^= TCPCWR
	}
	tcp[13] = flags
	acc := g.tcpSum + uint64(len(tcp)) + uint64(seq>>16) + uint64(seq&0xffff) +
		uint64(g.frame[g.l4+12])<<8 + uint64(flags)
	binary.BigEndian.PutUint16(tcp[16:18], Fold(Sum(payload, acc)))
	return total
}
