package vswitch

import (
	"testing"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

// mldv2Report is an MLDv2 report from mac's link-local address to
// ff02::16, as every container's kernel sends when its link comes up.
func mldv2Report(mac packet.MAC) []byte {
	ll := packet.LinkLocalEUI64(mac).As16()
	dst := [16]byte{0xff, 0x02, 15: 0x16}
	icmp := []byte{143, 0, 0, 0, 0, 0, 0, 0} // type 143, no records
	ip := make([]byte, 40, 40+len(icmp))
	ip[0] = 0x60
	ip[4], ip[5] = 0, byte(len(icmp))
	ip[6], ip[7] = 58, 1 // ICMPv6, hop limit 1
	copy(ip[8:24], ll[:])
	copy(ip[24:40], dst[:])
	return ether(packet.MAC{0x33, 0x33, 0, 0, 0, 0x16}, mac, 0x86dd, append(ip, icmp...))
}

// TestMLDReportsFromContainersAreNotFlooded: a container's MLDv2 reports
// (to ff02::16, the MLD routers) have no listener on the overlay, which
// has no multicast router or snooping; flooding them cost a TAP write per
// port for each of the 2-3 reports every container sends when its link
// comes back (a restart with 1,000 containers: ~2.5 million writes). They
// are dropped at a container port and counted as "mld-report"; from the
// tunnel they are still flooded.
func TestMLDReportsFromContainersAreNotFlooded(t *testing.T) {
	s := New(Config{Name: "web"})
	var rb, rt netdevtest.Recorder
	a := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(t, s, &rb, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
	tun := addPort(t, s, &rt, PortConfig{Name: "tunnel"})
	input(a, mldv2Report(macA), mldv2Report(macA))
	if n, m := len(rb.Frames()), len(rt.Frames()); n != 0 || m != 0 {
		t.Errorf("a container's MLD reports reached %d container and %d tunnel frames, want none", n, m)
	}
	if got := portStats(s, "a").Drops["mld-report"]; got != 2 {
		t.Errorf("drops as mld-report: %d, want 2", got)
	}
	input(a, floods(1)...)
	if n := len(rb.Frames()); n != 1 {
		t.Errorf("a broadcast after the reports reached b %d times, want 1", n)
	}
	rb.Reset()
	input(tun, mldv2Report(packet.MAC{2, 9, 9, 9, 9, 9}))
	if n := len(rb.Frames()); n != 1 {
		t.Errorf("an MLD report from the tunnel reached b %d times, want 1 (only container ports drop them)", n)
	}
}

// dadProbe is the Duplicate Address Detection probe a container's kernel
// sends for its link-local address when its link comes up: a neighbor
// solicitation from :: to the address's solicited-node group.
func dadProbe(mac packet.MAC) []byte { return solicit(mac, mac) }

// solicit is a neighbor solicitation from mac (its source address ::)
// for the link-local address of owner, to that address's solicited-node
// group.
func solicit(mac, owner packet.MAC) []byte {
	target := packet.LinkLocalEUI64(owner).As16()
	dst := [16]byte{0xff, 0x02, 11: 0x01, 12: 0xff, 13: target[13], 14: target[14], 15: target[15]}
	icmp := make([]byte, 24) // type, code, checksum, reserved, target; no options from ::
	icmp[0] = packet.ICMPv6NeighborSolicit
	copy(icmp[8:], target[:])
	ip := make([]byte, 40, 40+len(icmp))
	ip[0] = 0x60
	ip[4], ip[5] = 0, byte(len(icmp))
	ip[6], ip[7] = 58, 255 // ICMPv6, hop limit 255
	copy(ip[24:40], dst[:])
	gmac := packet.MAC{0x33, 0x33, 0xff, target[13], target[14], target[15]}
	return ether(gmac, mac, 0x86dd, append(ip, icmp...))
}

// TestSolicitedNodeMulticastReachesOnlyItsOwner: every container's kernel
// probes its link-local address (DAD) when its link comes up, to the
// address's solicited-node group; flooded, each container start cost a
// TAP write to every other container (1,000 writes per `run` with 1,000
// containers). A container port hears only its own link-local address's
// group (the ND guard lets it speak for no other address); the tunnel
// still hears every group, and Trace lists the same ports.
func TestSolicitedNodeMulticastReachesOnlyItsOwner(t *testing.T) {
	s := New(Config{Name: "web"})
	var rb, rc, rt netdevtest.Recorder
	a := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(t, s, &rb, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
	addPort(t, s, &rc, PortConfig{Name: "c", MAC: macC, IP: ipC, Security: true})
	tun := addPort(t, s, &rt, PortConfig{Name: "tunnel"})

	probe := dadProbe(macA)
	input(a, probe)
	if nb, nc, nt := len(rb.Frames()), len(rc.Frames()), len(rt.Frames()); nb != 0 || nc != 0 || nt != 1 {
		t.Errorf("a's DAD probe reached b %d, c %d, the tunnel %d times; want 0, 0, 1", nb, nc, nt)
	}
	tr, err := s.Trace("a", probe)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Verdict != TraceFlood || len(tr.Flood) != 1 || tr.Flood[0] != "tunnel" {
		t.Errorf("trace of a's DAD probe: %v to %v, want a flood to [tunnel]", tr.Verdict, tr.Flood)
	}
	rt.Reset()

	// Another host's container soliciting b's address reaches b only.
	input(tun, solicit(packet.MAC{2, 9, 9, 9, 9, 9}, macB))
	if nb, nc := len(rb.Frames()), len(rc.Frames()); nb != 1 || nc != 0 {
		t.Errorf("a probe of b's address from the tunnel reached b %d, c %d times; want 1, 0", nb, nc)
	}
	rb.Reset()
	rc.Reset()

	// Other multicast and broadcast still reach every port.
	input(a, floods(1)...)
	if nb, nc, nt := len(rb.Frames()), len(rc.Frames()), len(rt.Frames()); nb != 1 || nc != 1 || nt != 1 {
		t.Errorf("a broadcast reached b %d, c %d, the tunnel %d times; want 1 each", nb, nc, nt)
	}
}
