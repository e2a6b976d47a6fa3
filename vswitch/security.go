package vswitch

import "github.com/vxmesh/vxmesh/packet"

// check applies r's port security to a frame from r and returns ok, or the
// reason to drop it: the source MAC must be the port's; IPv4 must come from
// the port's IP and ARP must name the port's MAC and IP as sender; IPv6 is
// allowed with the right MAC; anything else (VLAN tags included) is not.
func (r *PortRef) check(eth packet.Ethernet) (reason, bool) {
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
		return 0, true
	}
	return dropPortSecurity, false
}
