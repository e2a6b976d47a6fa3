package gateway

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/vxmesh/vxmesh/packet"
)

// The gateway is the containers' router, so it treats the TTL as one: a
// packet that would start a flow to an outside address and arrives with
// a TTL of 0 or 1 cannot be forwarded; the gateway answers it with an
// ICMP time exceeded in transit (type 11, code 0) from its own address,
// quoting it (RFC 792; RFC 1812 4.2.2.9, 4.3.2.3), instead of admitting
// it. A flow it admits is re-originated from a host socket whose TTL is
// the container's minus one (udp.go, echo.go, tcp.go), and the errors the
// path beyond sends about it are reflected (icmperr.go), so traceroute
// from a container shows the gateway at hop 1, then the host's path.
//
// Only what would start a flow is checked, as a NAT router's state is
// per flow: an ICMP message that is not an error (an echo request), a
// TCP SYN without ACK, a UDP datagram that no flow of the stack holds
// yet. Segments of open flows, and the replies of published ports'
// flows (the gateway's stack terminates them: they are addressed to it),
// pass. No error is sent about an ICMP error, nor about a fragment other
// than the first (RFC 1812 4.3.2.7); such a fragment is dropped.

// ICMP message types the gateway sends or reflects (RFC 792).
const (
	icmpTimeExceeded = uint8(header.ICMPv4TimeExceeded)
	icmpDstUnreach   = uint8(header.ICMPv4DstUnreachable)
)

// The ICMP error rate limit: a token bucket per gateway, as Linux's
// icmp_msgs_per_sec and icmp_msgs_burst default to.
const (
	icmpRate  = 1000 // errors a second
	icmpBurst = 50
)

// icmpBucket rate-limits the ICMP errors a gateway sends.
type icmpBucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// allow takes a token at now, and reports whether there was one.
func (b *icmpBucket) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last.IsZero() {
		b.tokens = icmpBurst
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = min(icmpBurst, b.tokens+d.Seconds()*icmpRate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// isICMPError reports whether ICMP type t is an error message (RFC 792,
// RFC 1812 4.3.2.2), about which no error is sent.
func isICMPError(t uint8) bool {
	switch t {
	case 3, 4, 5, 11, 12:
		return true
	}
	return false
}

// ttlExpired takes frame out of the frames to the stack if it is an IPv4
// packet whose TTL expires at the gateway on its way to an outside
// address: it answers the packet with a time exceeded (rate-limited) or,
// for a fragment other than the first, drops it; both are counted. It
// reports whether it took the frame. A packet with a larger TTL costs
// two compares.
func (g *Gateway) ttlExpired(frame []byte) bool {
	const l3 = packet.EthernetHeaderLen
	if len(frame) < l3+header.IPv4MinimumSize || frame[l3+8] > 1 ||
		binary.BigEndian.Uint16(frame[12:]) != packet.EtherTypeIPv4 {
		return false
	}
	e := g.cfg.Egress
	ip := packet.IPv4(frame[l3:])
	if e == nil || !ip.Valid() {
		return false
	}
	dst := ip.Dst()
	if dst == g.Addr() || dst == g.HostAddr() {
		return false
	}
	f := Flow{Proto: ip.Protocol(), Src: netip.AddrPortFrom(ip.Src(), 0), Dst: netip.AddrPortFrom(dst, 0)}
	first := binary.BigEndian.Uint16(ip[6:])&0x1fff == 0
	l4 := ip.Payload()
	if first {
		switch f.Proto {
		case packet.ProtoICMP:
			if len(l4) < 1 || isICMPError(l4[0]) {
				return false
			}
		case packet.ProtoTCP:
			if len(l4) < 14 || l4[13]&0x12 != 0x02 {
				return false // not a SYN: a segment of an open flow
			}
			f.Src = netip.AddrPortFrom(f.Src.Addr(), binary.BigEndian.Uint16(l4[0:]))
			f.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:]))
		case packet.ProtoUDP:
			if len(l4) < 8 {
				return false
			}
			f.Src = netip.AddrPortFrom(f.Src.Addr(), binary.BigEndian.Uint16(l4[0:]))
			f.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(l4[2:]))
			if g.hasUDPEndpoint(f) {
				return false // a datagram of a flow the stack holds
			}
		default:
			return false
		}
	} else if f.Proto == packet.ProtoTCP || f.Proto == packet.ProtoUDP {
		// No ports to decide on: Decide checks only the addresses.
		f.Proto = packet.ProtoICMP
	}
	p := e.policy(g)
	if Decide(&p, f) != "" {
		return false // refused as before, whatever its TTL
	}
	if !first {
		e.ttlDropped.Add(1)
		return true
	}
	n := min(ip.TotalLen(), len(ip), quoteMax)
	if g.sendICMPError(g.Addr(), ip.Src(), icmpTimeExceeded, 0, 0, ip[:n]) {
		e.ttlExceeded.Add(1)
	}
	return true
}

// hasUDPEndpoint reports whether the gateway's stack holds an endpoint
// for datagrams of f (an egress flow, or a published port's).
func (g *Gateway) hasUDPEndpoint(f Flow) bool {
	id := stackID(f)
	return g.stack.FindTransportEndpoint(ipv4.ProtocolNumber, udp.ProtocolNumber, id, nicID) != nil
}

// stackID is the stack's endpoint ID of flow f's packets arriving from
// the container.
func stackID(f Flow) stack.TransportEndpointID {
	return stack.TransportEndpointID{
		LocalPort:     f.Dst.Port(),
		LocalAddress:  tcpip.AddrFrom4(f.Dst.Addr().As4()),
		RemotePort:    f.Src.Port(),
		RemoteAddress: tcpip.AddrFrom4(f.Src.Addr().As4()),
	}
}

// hostTTL is the TTL a re-originated flow's host socket sends with: the
// container's, less the gateway's hop; 0 (keep the host's default) for a
// TTL not known.
func hostTTL(ttl uint8) int {
	if ttl <= 1 {
		return 0
	}
	return int(ttl) - 1
}
