package packet

import "encoding/binary"

// TCP receive coalescing (software GRO), the inverse of GSO: consecutive
// IPv4 TCP segments of one flow, as a sender's segmentation produced them,
// are merged into one TCP super-segment with GSO metadata, so that a TAP
// takes them in one write and the receiving kernel handles them as one
// GRO packet.
//
// Only what the kernel's own TCP GRO would merge is merged, and more
// conservatively: untagged Ethernet, IPv4 without options, not a fragment,
// TCP with ACK and at most PSH set (no SYN, FIN, RST, URG, ECE, CWR),
// payload present, no bytes behind the IP packet; appended segments must
// have the same Ethernet header, IP TOS, TTL, flags and addresses, the
// next IP ID, the same ports, acknowledgment number, window and TCP
// options byte for byte (timestamps included), the next sequence number,
// and a payload no longer than the first segment's (the MSS); a shorter
// segment or one with PSH ends the super-segment. A super-segment stays
// within the GSO bounds (see ParseGSO): its first segment carries at least
// GSOMinSizeIPv4 bytes and it holds at most GSOMaxSegments segments. Every merged segment's
// IP header and TCP checksums are verified first (a bad one is not merged,
// so the receiving kernel still sees and drops it), since the result
// carries a partial checksum (NeedsCsum) the kernel does not check;
// unless the head is trusted (GROHead.Trust).

// groMaxIPLen is the largest IP packet a super-segment may become.
const groMaxIPLen = 65535

// GROHead is a segment that following segments of its flow may be
// appended to. The zero value is an empty head (Len 0, not coalescable).
type GROHead struct {
	len      int // frame length (grows with appended payload)
	doff     int // TCP header length
	mss      int // payload of the first segment
	segs     int
	nextSeq  uint32
	nextID   uint16
	ok       bool // may take segments
	verified bool // the first segment's checksums were verified
	trusted  bool // no segment's checksums are verified (Trust)
}

// groSegment checks that f is a segment coalescing may handle and returns
// its TCP header length and payload length.
func groSegment(f []byte) (doff, payload int, ok bool) {
	if len(f) < EthernetHeaderLen+20+20 || binary.BigEndian.Uint16(f[12:14]) != EtherTypeIPv4 {
		return 0, 0, false
	}
	ip := f[EthernetHeaderLen:]
	if ip[0] != 0x45 || ip[9] != ProtoTCP || binary.BigEndian.Uint16(ip[6:8])&0xbfff != 0 {
		return 0, 0, false // options, not TCP, or MF / fragment offset / reserved bit
	}
	tl := int(binary.BigEndian.Uint16(ip[2:4]))
	if EthernetHeaderLen+tl != len(f) {
		return 0, 0, false
	}
	tcp := ip[20:tl]
	if len(tcp) < 20 {
		return 0, 0, false
	}
	doff = int(tcp[12]>>4) * 4
	if doff < 20 || doff > len(tcp) || tcp[12]&0x0f != 0 {
		return 0, 0, false
	}
	if fl := tcp[13]; fl != TCPACK && fl != TCPACK|TCPPSH {
		return 0, 0, false
	}
	payload = len(tcp) - doff
	if payload == 0 {
		return 0, 0, false
	}
	return doff, payload, true
}

// groChecksumsValid verifies the IPv4 header checksum and the TCP checksum
// of segment f (which groSegment accepted).
func groChecksumsValid(f []byte) bool {
	ip := f[EthernetHeaderLen:]
	if Checksum(ip[:20]) != 0 {
		return false
	}
	tcp := ip[20:]
	acc := Sum(ip[12:20], uint64(ProtoTCP)+uint64(len(tcp)))
	return Fold(Sum(tcp, acc)) == 0
}

// Start makes frame (a complete frame) the head; it reports whether
// segments may be appended to it. frame is not modified.
func (h *GROHead) Start(frame []byte) bool {
	*h = GROHead{len: len(frame), segs: 1}
	doff, payload, ok := groSegment(frame)
	if !ok {
		return false
	}
	tcp := frame[EthernetHeaderLen+20:]
	h.doff, h.mss = doff, payload
	h.nextSeq = binary.BigEndian.Uint32(tcp[4:8]) + uint32(payload)
	h.nextID = binary.BigEndian.Uint16(frame[EthernetHeaderLen+4:]) + 1
	// Within the GSO bounds: the super-segment must pass ParseGSO
	// wherever it goes next.
	h.ok = tcp[13]&TCPPSH == 0 && payload >= GSOMinSizeIPv4
	return true
}

// Trust makes Append take segments without verifying the head's or their
// checksums, for segments whose carrier vouches for them: vxmesh calls it
// for segments that arrived in authenticated ESP datagrams, which nothing
// changed on the way and whose checksums the sending vxmesh computed or
// passed on from its container unchanged (as a veth does: it marks such a
// frame CHECKSUM_UNNECESSARY for the receiving namespace). Call it after
// Start.
func (h *GROHead) Trust() { h.verified, h.trusted = true, true }

// Len returns the head's frame length.
func (h *GROHead) Len() int { return h.len }

// Segments returns how many segments the head holds.
func (h *GROHead) Segments() int { return h.segs }

// SameFlow reports whether seg belongs to head's flow (the same Ethernet
// header, IPv4 addresses and TCP ports); a segment of the flow that
// cannot be appended must not be merged into an earlier head either, or
// the flow's segments would be reordered. head is the head's frame.
func SameFlow(head, seg []byte) bool {
	const ports = EthernetHeaderLen + 20
	if len(head) < ports+4 || len(seg) < ports+4 {
		return false
	}
	return string(head[:EthernetHeaderLen]) == string(seg[:EthernetHeaderLen]) &&
		string(head[EthernetHeaderLen+12:EthernetHeaderLen+20]) == string(seg[EthernetHeaderLen+12:EthernetHeaderLen+20]) &&
		head[EthernetHeaderLen+9] == seg[EthernetHeaderLen+9] &&
		string(head[ports:ports+4]) == string(seg[ports:ports+4])
}

// Append appends segment seg's payload to the head if seg may follow it,
// and reports whether it did. buf holds the head's frame from its start
// (buf[:h.Len()]) with room behind it; seg must not overlap buf[:h.Len()+
// its payload length] other than by starting behind it. The head's
// headers are not updated until Finish.
func (h *GROHead) Append(buf, seg []byte) bool {
	if !h.ok || h.len > len(buf) || h.segs >= GSOMaxSegments {
		return false
	}
	doff, payload, ok := groSegment(seg)
	if !ok || doff != h.doff || payload > h.mss || h.len-EthernetHeaderLen+payload > groMaxIPLen || h.len+payload > len(buf) {
		return false
	}
	head := buf[:h.len]
	hip, sip := head[EthernetHeaderLen:], seg[EthernetHeaderLen:]
	if string(head[:EthernetHeaderLen]) != string(seg[:EthernetHeaderLen]) ||
		hip[1] != sip[1] || // TOS
		string(hip[6:10]) != string(sip[6:10]) || // flags and fragment offset, TTL, protocol
		string(hip[12:20]) != string(sip[12:20]) ||
		binary.BigEndian.Uint16(sip[4:6]) != h.nextID {
		return false
	}
	ht, st := hip[20:], sip[20:]
	if string(ht[0:4]) != string(st[0:4]) || // ports
		binary.BigEndian.Uint32(st[4:8]) != h.nextSeq ||
		string(ht[8:12]) != string(st[8:12]) || // acknowledgment
		string(ht[14:16]) != string(st[14:16]) || // window
		string(ht[18:doff]) != string(st[18:doff]) { // urgent pointer, options
		return false
	}
	if !h.verified {
		if !groChecksumsValid(head) {
			h.ok = false
			return false
		}
		h.verified = true
	}
	if !h.trusted && !groChecksumsValid(seg) {
		return false
	}
	psh := st[13]&TCPPSH != 0 // seg's headers may be overwritten by the copy
	copy(buf[h.len:], seg[EthernetHeaderLen+20+doff:])
	h.len += payload
	h.segs++
	h.nextSeq += uint32(payload)
	h.nextID++
	if psh {
		ht[13] |= TCPPSH
		h.ok = false
	}
	if payload < h.mss {
		h.ok = false
	}
	return true
}

// Finish completes the head's frame head (buf[:h.Len()]) and writes its
// offload metadata into o: for a single segment nothing changes and o
// says "no offload"; for a super-segment the IPv4 total length and header
// checksum are set, the TCP checksum field gets the pseudo-header sum
// (NeedsCsum, CsumStart at the TCP header) and o says GSOTCPv4 with
// GSOSize the first segment's payload length, as the kernel's GRO would
// hand the packet up.
func (h *GROHead) Finish(head []byte, o Offload) {
	if h.segs < 2 {
		clear(o)
		return
	}
	ip := head[EthernetHeaderLen:h.len]
	binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)))
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:12], Checksum(ip[:20]))
	tcp := ip[20:]
	acc := Sum(ip[12:20], uint64(ProtoTCP)+uint64(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:18], ^Fold(acc))
	l4 := EthernetHeaderLen + 20
	o.Set(OffloadNeedsCsum, GSOTCPv4, l4+h.doff, h.mss, l4, 16)
}
