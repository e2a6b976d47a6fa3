package gateway

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/vxmesh/vxmesh/packet"
)

// ICMP errors reflected to containers: an egress UDP flow's host socket
// learns of an ICMP destination unreachable about what it sent (a closed
// port, an unreachable host or network, a firewall) through IP_RECVERR;
// the gateway then sends the container an ICMP destination unreachable of
// the same code that quotes the container's own datagram (RFC 792; as
// much of it as fits in 576 bytes, RFC 1812 4.3.2.3), as a router with
// NAT would after translating the ICMP back. The container's kernel maps
// it to the socket (ECONNREFUSED, EHOSTUNREACH, ...) instead of waiting
// for a timeout.

// ICMP destination unreachable codes (RFC 792, RFC 1812).
const (
	codeNetUnreachable   = 0
	codeHostUnreachable  = 1
	codeProtoUnreachable = 2
	codePortUnreachable  = 3
	codeFragNeeded       = 4
	codeAdminProhibited  = 13
)

// icmpMaxLen bounds a reflected ICMP error's IP packet (RFC 1812 4.3.2.3).
const icmpMaxLen = 576

// quoteMax is the most of the original datagram a reflected error quotes.
const quoteMax = icmpMaxLen - header.IPv4MinimumSize - header.ICMPv4MinimumSize

// Linux's struct sock_extended_err origins and the IP_RECVERR cmsg type.
const (
	eeOriginICMP = 2
	ipRecvErr    = 0xb // IP_RECVERR
)

// extErr is what the kernel says about one ICMP error on a socket
// (struct sock_extended_err and its offender address).
type extErr struct {
	errno    syscall.Errno
	origin   uint8
	typ      uint8
	code     uint8
	info     uint32 // the next-hop MTU of a fragmentation needed
	offender netip.Addr
}

// parseErrQueue parses the control messages of a MSG_ERRQUEUE read on an
// IPv4 socket: the IP_RECVERR message's struct sock_extended_err, then a
// struct sockaddr_in offender if the kernel gave one. It reports false if
// there is none or it is short.
func parseErrQueue(oob []byte) (extErr, bool) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return extErr{}, false
	}
	for _, m := range msgs {
		data := m.Data
		if m.Header.Level != syscall.IPPROTO_IP || m.Header.Type != ipRecvErr || len(data) < 16 {
			continue
		}
		ee := extErr{
			errno:  syscall.Errno(binary.NativeEndian.Uint32(data[0:4])),
			origin: data[4], typ: data[5], code: data[6],
			info: binary.NativeEndian.Uint32(data[8:12]),
		}
		if sa := data[16:]; len(sa) >= 8 && binary.NativeEndian.Uint16(sa[0:2]) == syscall.AF_INET {
			ee.offender = netip.AddrFrom4([4]byte(sa[4:8]))
		}
		return ee, true
	}
	return extErr{}, false
}

// setRecvErr asks the kernel to queue the ICMP errors of c's socket
// (IP_RECVERR), so that every destination unreachable, not only a port
// unreachable, fails the next read and can be told apart. It reports
// false for a conn that is not a socket.
func setRecvErr(c net.Conn) bool {
	return setIPOption(c, syscall.IP_RECVERR, 1)
}

// setIPOption sets the IPPROTO_IP option opt of c's socket to v; it
// reports false for a conn that is not a socket or a refused option.
func setIPOption(c any, opt, v int) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, opt, v)
	}); err != nil || serr != nil {
		return false
	}
	return true
}

// readErrQueue takes the ICMP errors queued on c's socket (at most
// len(out)), without blocking.
func readErrQueue(c net.Conn, out []extErr) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	var data [64]byte
	var oob [128]byte
	rc.Control(func(fd uintptr) {
		for n < len(out) {
			_, oobn, _, _, err := syscall.Recvmsg(int(fd), data[:], oob[:], syscall.MSG_ERRQUEUE|syscall.MSG_DONTWAIT)
			if err != nil {
				return
			}
			if ee, ok := parseErrQueue(oob[:oobn]); ok && ee.origin == eeOriginICMP && (ee.typ == icmpDstUnreach || ee.typ == icmpTimeExceeded) {
				out[n] = ee
				n++
			}
		}
	})
	return n
}

// errnoCode is the destination unreachable code an errno of a socket
// without queued details (or of a failed connect) stands for.
func errnoCode(err error) (uint8, bool) {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return codePortUnreachable, true
	case errors.Is(err, syscall.EHOSTUNREACH):
		return codeHostUnreachable, true
	case errors.Is(err, syscall.ENETUNREACH):
		return codeNetUnreachable, true
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return codeAdminProhibited, true
	case errors.Is(err, syscall.ENOPROTOOPT):
		return codeProtoUnreachable, true
	}
	return 0, false
}

// lastDatagram keeps the start of the last datagram a container sent on
// a UDP flow, what a reflected error quotes, with the sum of all its
// bytes (for the quoted UDP checksum) and its length.
type lastDatagram struct {
	mu  sync.Mutex
	buf [quoteMax - header.UDPMinimumSize]byte
	n   int    // the whole payload's length
	sum uint16 // the one's complement sum of the whole payload
	set bool
}

// record remembers payload as the flow's last datagram.
func (l *lastDatagram) record(payload []byte) {
	sum := packet.Fold(packet.Sum(payload, 0))
	l.mu.Lock()
	copy(l.buf[:], payload)
	l.n, l.sum, l.set = len(payload), sum, true
	l.mu.Unlock()
}

// udpQuote returns the container's datagram of flow f as an error quotes
// it: its IPv4 header, UDP header and as much payload as fits in
// quoteMax; false if the flow sent none yet.
func (l *lastDatagram) udpQuote(f Flow) ([]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.set {
		return nil, false
	}
	total := header.IPv4MinimumSize + header.UDPMinimumSize + l.n
	if total > 0xffff {
		return nil, false
	}
	q := make([]byte, min(total, header.IPv4MinimumSize+quoteMax))
	ip := packet.IPv4(q)
	ip[0], ip[8], ip[9] = 0x45, 64, packet.ProtoUDP
	binary.BigEndian.PutUint16(ip[2:], uint16(total))
	ip.SetSrc(f.Src.Addr())
	ip.SetDst(f.Dst.Addr())
	ip.SetChecksum(ip.HeaderChecksum())
	u := q[header.IPv4MinimumSize:]
	binary.BigEndian.PutUint16(u[0:], f.Src.Port())
	binary.BigEndian.PutUint16(u[2:], f.Dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(header.UDPMinimumSize+l.n))
	copy(u[header.UDPMinimumSize:], l.buf[:min(l.n, len(l.buf))])
	// The checksum covers the whole datagram: the header's sum plus the
	// payload's, which record kept.
	sum := packet.PseudoHeaderSum(f.Src.Addr(), f.Dst.Addr(), packet.ProtoUDP, header.UDPMinimumSize+l.n)
	sum = packet.Sum(u[:header.UDPMinimumSize], sum)
	csum := packet.Fold(sum + uint64(^l.sum))
	if csum == 0 {
		csum = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], csum)
	return q, true
}

// icmpErrorMsg builds an ICMP error message (no IP header) of type typ
// and code, quoting quote (at most quoteMax bytes of it); mtu is the
// next-hop MTU of a fragmentation needed.
func icmpErrorMsg(typ, code uint8, mtu uint16, quote []byte) []byte {
	m := make([]byte, header.ICMPv4MinimumSize+min(len(quote), quoteMax))
	m[0], m[1] = typ, code
	if typ == icmpDstUnreach && code == codeFragNeeded {
		binary.BigEndian.PutUint16(m[6:], mtu)
	}
	copy(m[header.ICMPv4MinimumSize:], quote)
	binary.BigEndian.PutUint16(m[2:], packet.Fold(packet.Sum(m, 0)))
	return m
}

// errorSource is the address a reflected error comes from: the outside
// destination for what only it can say (a closed port or protocol) or
// when it said it, else the gateway, the container's router on the path.
func (g *Gateway) errorSource(code uint8, dst, offender netip.Addr) netip.Addr {
	if code == codePortUnreachable || code == codeProtoUnreachable || offender == dst {
		return dst
	}
	return g.Addr()
}

// sendUnreachable sends the container (f.Src) an ICMP destination
// unreachable of code from src about its datagram quote.
func (g *Gateway) sendUnreachable(src netip.Addr, f Flow, code uint8, mtu uint16, quote []byte) bool {
	return g.sendICMPError(src, f.Src.Addr(), icmpDstUnreach, code, mtu, quote)
}

// sendICMPError sends the container at to an ICMP error of type typ and
// code from src about its datagram quote, through the stack (which
// resolves the container's MAC and writes the IP header), unless the
// gateway's rate limit (icmpBucket) is spent. Sent errors and those the
// limit held back are counted.
func (g *Gateway) sendICMPError(src, to netip.Addr, typ, code uint8, mtu uint16, quote []byte) bool {
	e := g.cfg.Egress
	if !g.icmpLimit.allow(time.Now()) {
		if e != nil {
			e.icmpLimited.Add(1)
		}
		return false
	}
	msg := icmpErrorMsg(typ, code, mtu, quote)
	r, tErr := g.stack.FindRoute(nicID, tcpip.AddrFrom4(src.As4()), tcpip.AddrFrom4(to.As4()), ipv4.ProtocolNumber, false)
	if tErr != nil {
		return false
	}
	defer r.Release()
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: int(r.MaxHeaderLength()),
		Payload:            buffer.MakeWithData(msg),
	})
	defer pkt.DecRef()
	pkt.TransportProtocolNumber = header.ICMPv4ProtocolNumber
	err := r.WritePacket(stack.NetworkHeaderParams{Protocol: header.ICMPv4ProtocolNumber, TTL: 64}, pkt)
	if err == nil && e != nil {
		e.icmpErrors.Add(1)
	}
	return err == nil
}
