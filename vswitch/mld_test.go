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
