package vswitch

import "github.com/vxmesh/vxmesh/packet"

// check applies r's port security to a frame from r and returns ok, or the
// reason to drop it: the source MAC must be the port's; IPv4 must come from
// the port's IP and ARP must name the port's MAC and IP as sender; IPv6 is
// allowed with the right MAC, under the ND guard (checkIPv6); anything else
// (VLAN tags included) is not.
func (r *Port) check(eth packet.Ethernet) (reason, bool) {
	if eth.Src() != r.mac {
		return dropPortSecurity, false
	}
	switch eth.EtherType() {
	case packet.EtherTypeIPv4:
		ip := packet.IPv4(eth.Payload())
		if !ip.Valid() {
			return dropMalformed, false
		}
		return dropPortSecurity, r.ip.IsValid() && ip.Src() == r.ip
	case packet.EtherTypeARP:
		a := packet.ARP(eth.Payload())
		if !a.Valid() {
			return dropMalformed, false
		}
		return dropPortSecurity, a.SenderMAC() == r.mac && r.ip.IsValid() && a.SenderIP() == r.ip
	case packet.EtherTypeIPv6:
		return r.checkIPv6(packet.IPv6(eth.Payload()))
	}
	return dropPortSecurity, false
}

// checkIPv6 is the ND guard of a secured port (RFC 6105's RA guard and
// more). Networks are IPv4: a container has no IPv6 address but the
// link-local one the kernel derives from its MAC (modified EUI-64, r.ll),
// so Neighbor Discovery from the port may only speak for that address:
//   - router advertisements and redirects are dropped ("ra-guard"): a
//     container is never a router, and its RA would give every container
//     of the network its prefix and default route;
//   - a packet whose extension header chain cannot be walked to the
//     upper-layer header (truncated, too long, or a first fragment that
//     ends inside it) is dropped ("ra-guard"), so the ICMPv6 type cannot
//     be hidden; later fragments carry no upper-layer header and pass;
//   - router and neighbor solicitations and neighbor advertisements
//     ("nd-spoof" otherwise) must not be fragmented (RFC 6980), must come
//     from r.ll (solicitations also from ::), an NA's target must be r.ll,
//     and every link-layer address option must be the port's MAC.
//
// Other IPv6 passes.
func (r *Port) checkIPv6(ip packet.IPv6) (reason, bool) {
	if !ip.Valid() {
		return dropMalformed, false
	}
	proto, off, frag, ok := ip.Transport()
	if !ok {
		return dropRAGuard, false
	}
	if proto != packet.ProtoICMPv6 || off < 0 {
		return 0, true
	}
	icmp := ip[off : packet.IPv6HeaderLen+ip.PayloadLen()]
	if len(icmp) < 4 {
		if frag {
			return dropRAGuard, false // the type is in a later fragment
		}
		return dropMalformed, false
	}
	typ := icmp[0]
	switch typ {
	case packet.ICMPv6RouterAdvert, packet.ICMPv6Redirect:
		return dropRAGuard, false
	case packet.ICMPv6RouterSolicit, packet.ICMPv6NeighborSolicit, packet.ICMPv6NeighborAdvert:
	default:
		return 0, true
	}
	m := packet.NDMessage(icmp)
	if frag || !m.Valid() {
		return dropNDSpoof, false
	}
	src := ip.Src()
	if src != r.ll && (typ == packet.ICMPv6NeighborAdvert || !src.IsUnspecified()) {
		return dropNDSpoof, false
	}
	if typ == packet.ICMPv6NeighborAdvert && m.Target() != r.ll {
		return dropNDSpoof, false
	}
	return dropNDSpoof, m.LinkAddrsAre(r.mac)
}
