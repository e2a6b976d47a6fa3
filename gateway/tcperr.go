package gateway

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"github.com/vxmesh/vxmesh/packet"
)

// An egress TCP connect that fails outside because the host or network
// is unreachable (or a firewall prohibits it) is answered, like a router
// would, with an ICMP destination unreachable quoting the container's SYN
// instead of a reset: the container's connect then fails with "no route
// to host" rather than "connection refused". The quote needs the SYN's
// sequence number, which the stack's TCP forwarder does not expose, so the
// device notes every SYN's on its way in (synTable).

// synTableMax bounds the SYNs noted and not yet taken (the forwarder
// handles at most 1024 connects at once); a full table is emptied.
const synTableMax = 4096

// synKey is a SYN's addresses and ports (container, destination).
type synKey struct{ src, dst netip.AddrPort }

// synInfo is what an error quoting a SYN needs of it.
type synInfo struct {
	seq   uint32
	ipLen uint16 // the SYN's IP total length
	ttl   uint8
}

// synTable holds the SYNs the stack's TCP forwarder has yet to decide.
type synTable struct {
	mu  sync.Mutex
	syn map[synKey]synInfo
}

// note records frame if it is a TCP SYN (no ACK) in IPv4 to an address
// other than gw.
func (t *synTable) note(frame []byte, gw netip.Addr) {
	const l3 = packet.EthernetHeaderLen
	if len(frame) < l3+20 || binary.BigEndian.Uint16(frame[12:]) != packet.EtherTypeIPv4 || frame[l3+9] != packet.ProtoTCP {
		return
	}
	ip := packet.IPv4(frame[l3:])
	ihl := int(ip[0]&0x0f) * 4
	if ihl < 20 || len(ip) < ihl+14 || ip[ihl+13]&0x12 != 0x02 || ip.Dst() == gw {
		return
	}
	tcp := ip[ihl:]
	k := synKey{
		src: netip.AddrPortFrom(ip.Src(), binary.BigEndian.Uint16(tcp[0:])),
		dst: netip.AddrPortFrom(ip.Dst(), binary.BigEndian.Uint16(tcp[2:])),
	}
	v := synInfo{seq: binary.BigEndian.Uint32(tcp[4:]), ipLen: binary.BigEndian.Uint16(ip[2:]), ttl: ip.TTL()}
	t.mu.Lock()
	if t.syn == nil || len(t.syn) >= synTableMax {
		t.syn = make(map[synKey]synInfo)
	}
	t.syn[k] = v
	t.mu.Unlock()
}

// take returns and forgets the SYN of flow f.
func (t *synTable) take(f Flow) (synInfo, bool) {
	k := synKey{src: f.Src, dst: f.Dst}
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.syn[k]
	delete(t.syn, k)
	return v, ok
}

// tcpQuote is the start of the container's SYN of flow f as an ICMP
// error quotes it: its IPv4 header and the first 8 bytes of TCP (ports
// and sequence number), which is all a receiver matches (RFC 792).
func tcpQuote(f Flow, s synInfo) []byte {
	q := make([]byte, 20+8)
	ip := packet.IPv4(q)
	ip[0], ip[8], ip[9] = 0x45, 64, packet.ProtoTCP
	binary.BigEndian.PutUint16(ip[2:], s.ipLen)
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF, as the container's stack sends
	ip.SetSrc(f.Src.Addr())
	ip.SetDst(f.Dst.Addr())
	ip.SetChecksum(ip.HeaderChecksum())
	binary.BigEndian.PutUint16(q[20:], f.Src.Port())
	binary.BigEndian.PutUint16(q[22:], f.Dst.Port())
	binary.BigEndian.PutUint32(q[24:], s.seq)
	return q
}

// reflectConnectError answers flow f's SYN with the ICMP destination
// unreachable its failed outside connect stands for, and reports whether
// it did. A refused connect (a closed port), a timeout or a SYN not noted
// is left to the caller's reset, what the outside host itself sends.
func (g *Gateway) reflectConnectError(f Flow, syn synInfo, haveSYN bool, err error) bool {
	code, ok := errnoCode(err)
	if !ok || !haveSYN || code == codePortUnreachable {
		return false
	}
	return g.sendUnreachable(g.errorSource(code, f.Dst.Addr(), netip.Addr{}), f, code, 0, tcpQuote(f, syn))
}
