package gateway

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/vxmesh/vxmesh/packet"
)

// echoTimeout is how long an outside echo request waits for its reply.
const echoTimeout = 5 * time.Second

// echoRequest is an ICMP echo request from a container, parsed from its
// frame.
type echoRequest struct {
	srcMAC   packet.MAC
	src, dst netip.Addr
	id, seq  uint16
	ttl      uint8
	data     []byte // a copy
	// quote is the start of the request's IP packet, as an ICMP error
	// about it quotes it (a copy, at most quoteMax bytes).
	quote []byte
}

// parseEcho parses an Ethernet frame holding an unfragmented IPv4 ICMP
// echo request with a valid ICMP checksum; it reports false for anything
// else. The data is copied.
func parseEcho(frame []byte) (echoRequest, bool) {
	eth := packet.Ethernet(frame)
	if len(frame) < packet.EthernetHeaderLen || eth.EtherType() != packet.EtherTypeIPv4 {
		return echoRequest{}, false
	}
	ip := packet.IPv4(eth.Payload())
	if !ip.Valid() || ip.Protocol() != packet.ProtoICMP || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return echoRequest{}, false
	}
	icmp := ip.Payload()
	if len(icmp) < 8 || icmp[0] != 8 || icmp[1] != 0 || packet.Fold(packet.Sum(icmp, 0)) != 0 {
		return echoRequest{}, false
	}
	return echoRequest{
		srcMAC: eth.Src(), src: ip.Src(), dst: ip.Dst(),
		id: binary.BigEndian.Uint16(icmp[4:]), seq: binary.BigEndian.Uint16(icmp[6:]),
		ttl:   ip.TTL(),
		data:  append([]byte(nil), icmp[8:]...),
		quote: append([]byte(nil), ip[:min(ip.TotalLen(), quoteMax)]...),
	}, true
}

// isOutsideICMPFragment reports whether frame is an IPv4 ICMP fragment
// (valid header) to an address other than gw.
func isOutsideICMPFragment(frame []byte, gw netip.Addr) bool {
	eth := packet.Ethernet(frame)
	if len(frame) < packet.EthernetHeaderLen || eth.EtherType() != packet.EtherTypeIPv4 {
		return false
	}
	ip := packet.IPv4(eth.Payload())
	return ip.Valid() && ip.Protocol() == packet.ProtoICMP && binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 && ip.Dst() != gw
}

// echoOut takes an ICMP echo request to an address other than the
// gateway's out of the frames to the stack, which in promiscuous mode
// would answer it itself: an admitted one is sent from the host (a raw
// ICMP socket: the daemon runs as root) and its reply, if one comes within
// echoTimeout, is sent back to the container as from the destination;
// a refused one is answered with an ICMP destination unreachable
// (counted). It reports whether it took the frame.
//
// A fragmented ICMP datagram to an address other than the gateway's is
// taken and reassembled first (echoFrags); the reply goes back in
// fragments of the network MTU.
func (g *Gateway) echoOut(frame []byte) bool {
	if isOutsideICMPFragment(frame, g.Addr()) {
		if frame = g.echoFrags.add(frame, time.Now()); frame == nil {
			return true // held, or dropped
		}
		if r, ok := parseEcho(frame); !ok || r.dst == g.Addr() {
			return true // a reassembled datagram that is no echo request: dropped
		}
	}
	r, ok := parseEcho(frame)
	if !ok || r.dst == g.Addr() {
		return false
	}
	e := g.cfg.Egress
	if e == nil {
		return true
	}
	f := Flow{Proto: packet.ProtoICMP, Src: netip.AddrPortFrom(r.src, 0), Dst: netip.AddrPortFrom(r.dst, 0)}
	if why := e.admit(g, f); why != "" {
		// A refused echo fails at once, as refused TCP and UDP flows do:
		// the gateway, the container's router, answers "communication
		// administratively prohibited" quoting it. Not for a forged
		// source, nor for a packet to a broadcast, multicast or reserved
		// address (no ICMP error about those, RFC 1122 3.2.2), nor when
		// the flow table is full.
		if why != RefuseSource && why != RefuseLimit && r.dst.IsGlobalUnicast() {
			ip := packet.IPv4(packet.Ethernet(frame).Payload())
			g.sendUnreachable(g.Addr(), f, codeAdminProhibited, 0, ip[:ip.TotalLen()])
		}
		return true
	}
	fl := &flow{close: func() {}}
	if !g.track(fl) {
		e.done(f)
		return true
	}
	go func() {
		defer g.untrack(fl)
		defer e.done(f)
		if reply, ok := g.echo(r); ok && reply != nil {
			for _, f := range fragmentFrame(reply, g.cfg.MTU, uint16(g.echoID.Add(1))) {
				g.sendFrame(f)
			}
		}
	}()
	return true
}

// echo sends r's echo from the host, with r's TTL less the gateway's
// hop, and waits for the matching reply; it returns the reply frame for
// the container. An ICMP error about the echo that comes instead (an
// unreachable, a TTL that expired on the path) is sent to the container
// from the router that sent it, quoting the container's request (see
// echoError), and echo returns nil, true.
func (g *Gateway) echo(r echoRequest) ([]byte, bool) {
	e := g.cfg.Egress
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		e.refuse(RefuseEcho)
		return nil, false
	}
	defer c.Close()
	setTTL(c, hostTTL(r.ttl))
	msg := make([]byte, 8+len(r.data))
	msg[0] = 8
	binary.BigEndian.PutUint16(msg[4:], r.id)
	binary.BigEndian.PutUint16(msg[6:], r.seq)
	copy(msg[8:], r.data)
	binary.BigEndian.PutUint16(msg[2:], packet.Fold(packet.Sum(msg, 0)))
	if _, err := c.WriteTo(msg, &net.IPAddr{IP: r.dst.AsSlice()}); err != nil {
		e.refuse(RefuseEcho)
		return nil, false
	}
	e.bytesOut.Add(uint64(len(msg)))
	deadline := time.Now().Add(echoTimeout)
	c.SetReadDeadline(deadline)
	buf := make([]byte, 65535)
	for errs := 0; ; {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			if errs++; errs < 16 && !timedOut(err) && !errors.Is(err, net.ErrClosed) {
				// The socket's pending error (a hard ICMP error
				// about this or another echo); the ICMP message
				// itself is still queued.
				continue
			}
			return nil, false // no reply: the container's ping times out too
		}
		a, ok := from.(*net.IPAddr)
		got := buf[:n]
		if !ok || len(got) < 8 {
			continue
		}
		fromAddr, _ := netip.AddrFromSlice(a.IP)
		fromAddr = fromAddr.Unmap()
		if got[0] != 0 {
			if g.echoError(r, fromAddr, got) {
				return nil, true
			}
			continue
		}
		if binary.BigEndian.Uint16(got[4:]) != r.id || binary.BigEndian.Uint16(got[6:]) != r.seq || fromAddr != r.dst {
			continue
		}
		e.bytesIn.Add(uint64(n))
		return echoReply(g.cfg.MAC, r, got[8:]), true
	}
}

// echoError reflects msg, an ICMP message from the router at from that
// the host's echo socket got, to the container if it is an error about
// r's echo (a destination unreachable or a time exceeded whose quote is
// the host's echo request to r.dst with r's identifier and sequence):
// as the same error from the same router, quoting the container's
// request. It reports whether msg was one.
func (g *Gateway) echoError(r echoRequest, from netip.Addr, msg []byte) bool {
	typ, code := msg[0], msg[1]
	if typ != icmpDstUnreach && typ != icmpTimeExceeded || len(msg) < 8+header.IPv4MinimumSize+8 || !from.Is4() {
		return false
	}
	q := packet.IPv4(msg[8:])
	hl := q.HeaderLen()
	if hl < header.IPv4MinimumSize || len(q) < hl+8 || q.Protocol() != packet.ProtoICMP || q.Dst() != r.dst {
		return false
	}
	echo := q[hl:]
	if echo[0] != 8 || binary.BigEndian.Uint16(echo[4:]) != r.id || binary.BigEndian.Uint16(echo[6:]) != r.seq {
		return false
	}
	mtu := binary.BigEndian.Uint16(msg[6:])
	if typ == icmpDstUnreach && code == codeFragNeeded && binary.BigEndian.Uint16(r.quote[6:])&0x4000 == 0 {
		// The host sent with DF (path MTU discovery) what the
		// container let be fragmented: not its error.
		return true
	}
	g.sendICMPError(from, r.src, typ, code, mtu, r.quote)
	return true
}

// echoReply builds the echo reply frame from r.dst to the container.
func echoReply(gwMAC packet.MAC, r echoRequest, data []byte) []byte {
	f := make([]byte, packet.EthernetHeaderLen+20+8+len(data))
	eth := packet.Ethernet(f)
	eth.SetDst(r.srcMAC)
	eth.SetSrc(gwMAC)
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeIPv4)
	ip := packet.IPv4(f[packet.EthernetHeaderLen:])
	ip[0], ip[8], ip[9] = 0x45, 64, packet.ProtoICMP
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip.SetSrc(r.dst)
	ip.SetDst(r.src)
	ip.SetChecksum(ip.HeaderChecksum())
	icmp := ip[20:]
	binary.BigEndian.PutUint16(icmp[4:], r.id)
	binary.BigEndian.PutUint16(icmp[6:], r.seq)
	copy(icmp[8:], data)
	binary.BigEndian.PutUint16(icmp[2:], packet.Fold(packet.Sum(icmp, 0)))
	return f
}

// sendFrame queues a complete frame behind the stack's own, for the
// switch.
func (g *Gateway) sendFrame(frame []byte) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
	var l stack.PacketBufferList
	l.PushBack(pkt)
	g.link.WritePackets(l)
	pkt.DecRef()
}
