package vswitch

import "github.com/vxmesh/vxmesh/packet"

// suppressARP answers an ARP request for an address in the switch's ARP
// table, or a VIP of the balancer's snapshot, by turning the frame, in place, into the reply addressed to the
// asker, and reports whether it did. Gratuitous ARP, requests for unknown
// addresses and requests for the asker's own address are left to flood.
func suppressARP(v *view, l *lbState, eth packet.Ethernet) bool {
	a := packet.ARP(eth.Payload())
	if !a.Valid() || a.Op() != packet.ARPRequest {
		return false
	}
	target := a.TargetIP()
	if a.SenderIP() == target {
		return false
	}
	mac, ok := v.arpMAC(target)
	if !ok {
		mac, ok = l.vipARP(target)
	}
	asker := eth.Src()
	if !ok || mac == asker {
		return false
	}
	a.MakeReply(mac, target)
	eth.SetDst(asker)
	eth.SetSrc(mac)
	return true
}
