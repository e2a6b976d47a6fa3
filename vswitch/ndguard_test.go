package vswitch

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

var (
	llA      = packet.LinkLocalEUI64(macA)
	llB      = packet.LinkLocalEUI64(macB)
	allNodes = netip.MustParseAddr("ff02::1")
	mcastA   = packet.MAC{0x33, 0x33, 0, 0, 0, 1}
)

// ipv6Frame builds an IPv6 frame (hop limit 255) whose fixed header names
// next and whose payload (extension headers included) is payload.
func ipv6Frame(dst, src packet.MAC, srcIP, dstIP netip.Addr, next uint8, payload []byte) []byte {
	ip := make([]byte, packet.IPv6HeaderLen, packet.IPv6HeaderLen+len(payload))
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(payload)))
	ip[6], ip[7] = next, 255
	s, d := srcIP.As16(), dstIP.As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
	return ether(dst, src, packet.EtherTypeIPv6, append(ip, payload...))
}

// ndMsg builds an ICMPv6 ND message of type typ (target used by NS, NA and
// redirect) followed by opts.
func ndMsg(typ uint8, target netip.Addr, opts ...[]byte) []byte {
	n := map[uint8]int{133: 8, 134: 16, 135: 24, 136: 24, 137: 40}[typ]
	m := make([]byte, n)
	m[0] = typ
	if n >= 24 {
		t := target.As16()
		copy(m[8:24], t[:])
	}
	for _, o := range opts {
		m = append(m, o...)
	}
	return m
}

// llOpt is a source (1) or target (2) link-layer address option.
func llOpt(typ uint8, mac packet.MAC) []byte {
	return append([]byte{typ, 1}, mac[:]...)
}

// ext is an extension header of 8 bytes naming next.
func ext(next uint8) []byte { return []byte{next, 0, 0, 0, 0, 0, 0, 0} }

// frag is a fragment header naming next, at fragment offset off (in 8-byte
// units), with more fragments following.
func frag(next uint8, off uint16) []byte {
	h := []byte{next, 0, 0, 0, 0, 0, 0, 1}
	binary.BigEndian.PutUint16(h[2:], off<<3|1)
	return h
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// TestNDGuard sends IPv6 from a container port: router advertisements,
// redirects and neighbor discovery that speaks for another address or MAC
// are dropped and counted by reason, however the ICMPv6 header is hidden;
// the port's own solicitations and advertisements pass.
func TestNDGuard(t *testing.T) {
	const icmp = packet.ProtoICMPv6
	ra := ndMsg(packet.ICMPv6RouterAdvert, netip.Addr{}, llOpt(1, macA))
	for _, tc := range []struct {
		name     string
		src      netip.Addr
		next     uint8
		payload  []byte
		dropped  string // reason, or "" for forwarded
		mutate   func([]byte)
		fragment bool
	}{
		{name: "router advertisement", src: llA, next: icmp, payload: ra, dropped: "ra-guard"},
		{name: "redirect", src: llA, next: icmp, payload: ndMsg(packet.ICMPv6Redirect, llB), dropped: "ra-guard"},
		{name: "RA behind hop-by-hop and destination options", src: llA, next: 0, payload: cat(ext(60), ext(icmp), ra), dropped: "ra-guard"},
		{name: "RA in a first fragment", src: llA, next: 44, payload: cat(frag(icmp, 0), ra), dropped: "ra-guard"},
		{name: "first fragment ends inside the chain", src: llA, next: 44, payload: cat(frag(60, 0), []byte{icmp, 1}), dropped: "ra-guard"},
		{name: "first fragment ends before the ICMPv6 type", src: llA, next: 44, payload: frag(icmp, 0), dropped: "ra-guard"},
		{name: "chain too long", src: llA, next: 60, payload: cat(ext(60), ext(60), ext(60), ext(60), ext(60), ext(60), ext(60), ext(60), ext(icmp), ra), dropped: "ra-guard"},
		{name: "extension header past the payload", src: llA, next: 60, payload: []byte{icmp, 3, 0, 0, 0, 0, 0, 0}, dropped: "ra-guard"},
		{name: "NA for a neighbour's address", src: llA, next: icmp, payload: ndMsg(packet.ICMPv6NeighborAdvert, llB, llOpt(2, macA)), dropped: "nd-spoof"},
		{name: "NA with another MAC", src: llA, next: icmp, payload: ndMsg(packet.ICMPv6NeighborAdvert, llA, llOpt(2, macB)), dropped: "nd-spoof"},
		{name: "NA from a neighbour's address", src: llB, next: icmp, payload: ndMsg(packet.ICMPv6NeighborAdvert, llA, llOpt(2, macA)), dropped: "nd-spoof"},
		{name: "NA from ::", src: netip.IPv6Unspecified(), next: icmp, payload: ndMsg(packet.ICMPv6NeighborAdvert, llA), dropped: "nd-spoof"},
		{name: "NA with a zero-length option", src: llA, next: icmp, payload: ndMsg(packet.ICMPv6NeighborAdvert, llA, []byte{2, 0, 0, 0, 0, 0, 0, 0}), dropped: "nd-spoof"},
		{name: "NA in a fragment", src: llA, next: 44, payload: cat(frag(icmp, 0), ndMsg(packet.ICMPv6NeighborAdvert, llA)), dropped: "nd-spoof"},
		{name: "NS from a neighbour's address", src: llB, next: icmp, payload: ndMsg(packet.ICMPv6NeighborSolicit, llA, llOpt(1, macA)), dropped: "nd-spoof"},
		{name: "NS with another MAC", src: llA, next: icmp, payload: ndMsg(packet.ICMPv6NeighborSolicit, llB, llOpt(1, macB)), dropped: "nd-spoof"},
		{name: "truncated NA", src: llA, next: icmp, payload: ndMsg(packet.ICMPv6NeighborAdvert, llA)[:20], dropped: "nd-spoof"},
		{name: "NS", src: llA, next: icmp, payload: ndMsg(packet.ICMPv6NeighborSolicit, llB, llOpt(1, macA))},
		{name: "DAD NS", src: netip.IPv6Unspecified(), next: icmp, payload: ndMsg(packet.ICMPv6NeighborSolicit, llA)},
		{name: "NA", src: llA, next: icmp, payload: ndMsg(packet.ICMPv6NeighborAdvert, llA, llOpt(2, macA))},
		{name: "NA behind destination options", src: llA, next: 60, payload: cat(ext(icmp), ndMsg(packet.ICMPv6NeighborAdvert, llA))},
		{name: "RS", src: llA, next: icmp, payload: ndMsg(packet.ICMPv6RouterSolicit, netip.Addr{}, llOpt(1, macA))},
		{name: "MLD report", src: llA, next: icmp, payload: []byte{143, 0, 0, 0, 0, 0, 0, 0}},
		{name: "later fragment", src: llA, next: 44, payload: cat(frag(icmp, 8), ra)},
		{name: "UDP", src: llA, next: packet.ProtoUDP, payload: make([]byte, 16)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{Name: "web"})
			var rb netdevtest.Recorder
			a := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
			addPort(t, s, &rb, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
			input(a, ipv6Frame(mcastA, macA, tc.src, allNodes, tc.next, tc.payload))
			got := len(rb.Frames())
			drops := portStats(s, "a").Drops
			if tc.dropped == "" {
				if got != 1 || len(drops) != 0 {
					t.Errorf("forwarded %d frames, drops %v; want it forwarded", got, drops)
				}
				return
			}
			if got != 0 || drops[tc.dropped] != 1 || s.Stats().Drops[tc.dropped] != 1 {
				t.Errorf("forwarded %d frames, port drops %v, switch drops %v; want it dropped as %q", got, drops, s.Stats().Drops, tc.dropped)
			}
		})
	}
}

// TestNDGuardOnlyOnSecuredPorts: the tunnel port (no port security)
// forwards what it is given; ND from remote containers was checked on
// their host.
func TestNDGuardOnlyOnSecuredPorts(t *testing.T) {
	s := New(Config{Name: "web"})
	var ra netdevtest.Recorder
	addPort(t, s, &ra, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	tun := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "tunnel"})
	input(tun, ipv6Frame(mcastA, macC, packet.LinkLocalEUI64(macC), allNodes, packet.ProtoICMPv6, ndMsg(packet.ICMPv6NeighborAdvert, llB)))
	if len(ra.Frames()) != 1 {
		t.Errorf("tunnel port's NA not forwarded")
	}
}

// TestSpoofedSourceFromTunnel: a frame whose source MAC is a local
// container's (or statically behind another port) is dropped on any other
// port ("spoofed-src"), so a remote host cannot pose as a local endpoint;
// the static entry does not move.
func TestSpoofedSourceFromTunnel(t *testing.T) {
	s := New(Config{Name: "web"})
	var rb netdevtest.Recorder
	addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(t, s, &rb, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
	tun := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "tunnel"})
	ext := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "other"})
	if err := s.AddStatic(macC, ipC, tun); err != nil {
		t.Fatal(err)
	}
	input(tun, ipv4Frame(macB, macA, ipA, ipB)) // poses as a's container
	input(ext, ipv4Frame(macB, macC, ipC, ipB)) // poses as the tunnel's endpoint
	input(tun, ipv4Frame(macB, macC, ipC, ipB)) // the endpoint, where it is
	if len(rb.Frames()) != 1 {
		t.Errorf("b received %d frames, want only the legitimate one", len(rb.Frames()))
	}
	if d := s.Stats().Drops; d["spoofed-src"] != 2 {
		t.Errorf("drops %v, want 2 spoofed-src", d)
	}
	if e, _ := findFDB(s, macA); e.Port != "a" || e.Kind != KindLocal {
		t.Errorf("a's entry %+v", e)
	}
}
