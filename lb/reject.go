package lb

import (
	"encoding/binary"

	"github.com/vxmesh/vxmesh/packet"
)

// icmpQuote is how much of the refused IP packet an ICMP error quotes, so
// the error stays within 576 bytes (RFC 1812 §4.3.2.3).
const icmpQuote = 576 - 20 - 8

// RejectBufLen is a buffer length that holds any reply WriteReject writes.
const RejectBufLen = packet.EthernetHeaderLen + 20 + 8 + icmpQuote

// WriteReject writes into dst (which must not overlap frame) the reply that
// refuses frame, a frame Translate returned Reject for: a TCP RST (RFC
// 9293 §3.10.7.1) for TCP, otherwise an ICMP destination unreachable (port
// unreachable for UDP, host unreachable for an echo, protocol unreachable
// else) quoting the frame. The reply goes from the VIP (IP and the MAC
// the client sent to) to the client, with complete checksums: clear the
// buffer's offload metadata.
// It returns the reply's length, or 0 (write nothing) if frame is not an
// IPv4 frame WriteReject can answer or dst is shorter than the reply.
func WriteReject(dst, frame []byte) int {
	if len(frame) < minIPFrame || binary.BigEndian.Uint16(frame[12:]) != packet.EtherTypeIPv4 {
		return 0
	}
	p, r := parse(frame, nil)
	if r != 0 && r != ReasonBadOffload || p.frag == Later {
		return 0
	}
	if p.proto == protoTCP {
		return rejectTCP(dst, &p)
	}
	if p.proto == protoICMP && p.icmpType != icmpEcho || len(dst) < RejectBufLen {
		return 0 // never answer an ICMP error
	}
	return rejectICMP(dst, &p)
}

// replyHeaders writes Ethernet and IPv4 headers from frame's destination
// to its source, for an IP payload of n bytes of protocol proto.
func replyHeaders(dst, frame []byte, proto uint8, n int) {
	copy(dst[0:6], frame[6:12])
	copy(dst[6:12], frame[0:6])
	binary.BigEndian.PutUint16(dst[12:], packet.EtherTypeIPv4)
	ip := packet.IPv4(dst[offIP : offIP+20])
	clear(ip)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+n))
	ip[6] = 0x40 // DF
	ip[8], ip[9] = 64, proto
	copy(ip[12:16], frame[offIPDst:offIPDst+4])
	copy(ip[16:20], frame[offIPSrc:offIPSrc+4])
	ip.SetChecksum(ip.HeaderChecksum())
}

func rejectTCP(dst []byte, p *pkt) int {
	const n = minIPFrame + 20
	if len(dst) < n || p.flags&packet.TCPRST != 0 {
		return 0
	}
	f := p.f
	replyHeaders(dst, f, protoTCP, 20)
	tcp := dst[minIPFrame:n]
	clear(tcp)
	binary.BigEndian.PutUint16(tcp[0:], p.dport)
	binary.BigEndian.PutUint16(tcp[2:], p.sport)
	if p.flags&packet.TCPACK != 0 {
		copy(tcp[4:8], f[p.l4+8:p.l4+12]) // seq = their ack
		tcp[13] = packet.TCPRST
	} else {
		seglen := uint32(p.end - p.l4 - int(f[p.l4+12]>>4)*4)
		if p.flags&packet.TCPSYN != 0 {
			seglen++
		}
		if p.flags&packet.TCPFIN != 0 {
			seglen++
		}
		binary.BigEndian.PutUint32(tcp[8:], binary.BigEndian.Uint32(f[p.l4+4:])+seglen)
		tcp[13] = packet.TCPRST | packet.TCPACK
	}
	tcp[12] = 5 << 4
	sum := packet.Sum(tcp, packet.Sum(dst[offIPSrc:offIPSrc+8], uint64(protoTCP)+20))
	binary.BigEndian.PutUint16(tcp[16:], packet.Fold(sum))
	return n
}

func rejectICMP(dst []byte, p *pkt) int {
	q := min(p.end-offIP, icmpQuote)
	replyHeaders(dst, p.f, protoICMP, 8+q)
	icmp := dst[minIPFrame : minIPFrame+8+q]
	clear(icmp[:8])
	icmp[0], icmp[1] = icmpUnreachable, 2 // protocol unreachable
	switch p.proto {
	case protoUDP:
		icmp[1] = 3 // port unreachable
	case protoICMP:
		icmp[1] = 1 // host unreachable: an echo with no backend to answer it
	}
	copy(icmp[8:], p.f[offIP:offIP+q])
	binary.BigEndian.PutUint16(icmp[2:], packet.Checksum(icmp))
	return minIPFrame + 8 + q
}
