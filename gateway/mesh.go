package gateway

import (
	"encoding/binary"
	"net/netip"
)

// ClientIP says which source address a published port's flows enter the
// network with.
type ClientIP uint8

// Client address modes. The zero value is `run -p`'s: the container is
// on this host, so clients that cannot be spoofed (ingressSource) enter
// from the anycast gateway address. The routing mesh's modes may reach a
// backend on another host, whose replies to the anycast address would
// stay there: they use the gateway's host address (Gateway.HostAddr),
// and a flow that needs it while the gateway has none is refused (a
// reset, counted IngressRefused).
const (
	ClientIPContainer ClientIP = iota
	// ClientIPPreserve: the client's own address; overlay and loopback
	// clients from the host address.
	ClientIPPreserve
	// ClientIPSNAT: always the host address, an ephemeral port.
	ClientIPSNAT
	// ClientIPProxyV2: as SNAT, and the backend connection starts with
	// an HAProxy PROXY protocol v2 header naming the client (TCP only).
	ClientIPProxyV2
)

// flowSource is the source a flow from client enters g with under p's
// mode; spoofed is true when it is the client's own, ok false when the
// flow must be refused.
func (p *Port) flowSource(g *Gateway, client netip.AddrPort) (src netip.AddrPort, spoofed, ok bool) {
	src, spoofed = p.e.ingressSource(g, client)
	switch p.spec.ClientIP {
	case ClientIPContainer:
		return src, spoofed, true
	case ClientIPPreserve:
		if spoofed {
			return src, true, true
		}
	}
	if h := g.HostAddr(); h.IsValid() {
		return netip.AddrPortFrom(h, 0), false, true
	}
	return netip.AddrPort{}, false, false
}

// proxyV2Sig is the PROXY protocol v2 signature.
var proxyV2Sig = [12]byte{0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a}

// AppendProxyV2 appends the PROXY protocol v2 header of a TCP over IPv4
// connection from src to dst (the address src connected to) to b:
// signature, version 2 command PROXY (0x21), AF_INET/STREAM (0x11),
// length 12, then source and destination address and port, big-endian
// (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt, 2.2).
// Addresses that are not IPv4 (after unmapping) give the LOCAL command
// with no addresses (family 0x00, length 0), which receivers must accept.
func AppendProxyV2(b []byte, src, dst netip.AddrPort) []byte {
	b = append(b, proxyV2Sig[:]...)
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	if !s.Is4() || !d.Is4() {
		return append(b, 0x20, 0x00, 0x00, 0x00)
	}
	b = append(b, 0x21, 0x11, 0x00, 12)
	s4, d4 := s.As4(), d.As4()
	b = append(b, s4[:]...)
	b = append(b, d4[:]...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}
