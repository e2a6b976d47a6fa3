package gateway

import (
	"context"
	"encoding/binary"
	"io"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"golang.org/x/sys/unix"

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

// setTTL sets the TTL of c's socket to ttl (IP_TTL); 0 leaves it. It
// reports false for a conn that is not a socket or a refused option.
func setTTL(c any, ttl int) bool {
	return ttl <= 0 || setIPOption(c, syscall.IP_TTL, ttl)
}

// firstTTL is the TTL of the datagram a UDP forwarder's endpoint ep holds
// first (the flow's first), left queued; 0 if there is none.
func firstTTL(ep tcpip.Endpoint) uint8 {
	ep.SocketOptions().SetReceiveTTL(true)
	res, err := ep.Read(io.Discard, tcpip.ReadOptions{Peek: true})
	if err != nil || !res.ControlMessages.HasTTL {
		return 0
	}
	return res.ControlMessages.TTL
}

// dialTTL carries a TCP connect's TTL to dialControl, through the dial's
// context, and what dialControl kept of the socket: a duplicate of its
// descriptor, from which finish reads the ICMP error that failed the
// connect after the dialer closed its own.
type dialTTL struct {
	ttl int
	mu  sync.Mutex
	fd  int // -1: none
}

type dialTTLKey struct{}

// withDialTTL returns ctx carrying the TTL a connect for a container's
// SYN of TTL ttl sends with; nil (and ctx) if the SYN's is not known.
func withDialTTL(ctx context.Context, ttl uint8) (context.Context, *dialTTL) {
	t := hostTTL(ttl)
	if t == 0 {
		return ctx, nil
	}
	dt := &dialTTL{ttl: t, fd: -1}
	return context.WithValue(ctx, dialTTLKey{}, dt), dt
}

// dialControl is the default Dial's control: for a connect whose context
// carries a dialTTL, it sets the socket's TTL and IP_RECVERR (the kernel
// then queues the ICMP error that ends a connect, with the router's
// address) and keeps a duplicate of the descriptor.
func dialControl(ctx context.Context, _, _ string, c syscall.RawConn) error {
	dt, _ := ctx.Value(dialTTLKey{}).(*dialTTL)
	if dt == nil {
		return nil
	}
	return c.Control(func(fd uintptr) {
		if syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL, dt.ttl) != nil {
			return
		}
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_RECVERR, 1)
		if dup, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0); err == nil {
			dt.mu.Lock()
			if dt.fd >= 0 {
				unix.Close(dt.fd) // a second address's attempt
			}
			dt.fd = dup
			dt.mu.Unlock()
		}
	})
}

// finish ends a connect dialControl saw: a connected socket goes back to
// the host's default TTL and to not failing on soft ICMP errors; for a
// failed connect it returns the time exceeded that failed it, if that was
// what did. The duplicate descriptor is closed.
func (dt *dialTTL) finish(err error) extErr {
	if dt == nil {
		return extErr{}
	}
	dt.mu.Lock()
	fd := dt.fd
	dt.fd = -1
	dt.mu.Unlock()
	if fd < 0 {
		return extErr{}
	}
	defer unix.Close(fd)
	if err == nil {
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 0)
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, -1)
		return extErr{}
	}
	var data [64]byte
	var oob [128]byte
	for range 4 {
		_, oobn, _, _, rerr := unix.Recvmsg(fd, data[:], oob[:], unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if rerr != nil {
			return extErr{}
		}
		if e, ok := parseErrQueue(oob[:oobn]); ok && e.origin == eeOriginICMP && e.typ == icmpTimeExceeded && e.offender.Is4() {
			return e
		}
	}
	return extErr{}
}

// reflectConnectTTL answers flow f's SYN with the time exceeded that
// failed its outside connect (ee), from the router that sent it, and
// reports whether it did.
func (g *Gateway) reflectConnectTTL(f Flow, syn synInfo, haveSYN bool, ee extErr) bool {
	if !haveSYN || ee.typ != icmpTimeExceeded || !ee.offender.Is4() {
		return false
	}
	return g.sendICMPError(ee.offender, f.Src.Addr(), icmpTimeExceeded, ee.code, 0, tcpQuote(f, syn))
}
