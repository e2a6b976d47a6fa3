package daemon

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/packet"
)

// A backend that stops being one (here: its service is removed) leaves no
// tracked connection behind on the client's host.
func TestConnectionsOfALeftBackendAreFlushed(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.5.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	s := mustCreateService(t, d, api.ServiceCreateRequest{Name: "dns", Networks: []string{"web"}})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "b", Create: true, Services: []api.ServiceMember{{Name: "dns"}}})
	c := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c", Create: true})
	vip := netip.MustParseAddr(s.VIPs[0].VIP)
	cmac, _ := packet.ParseMAC(c.MAC)
	udp := make([]byte, 8+4)
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 53)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	send(t, sb.iface("/run/netns/c", "eth0").container, ipv4Frame(cmac, packet.MAC(macForIP(vip)), netip.MustParseAddr(c.IP), vip, udp))
	waitFor(t, "the flow in conntrack", func() bool { return d.dp.ServiceStats().ConntrackEntries == 1 })

	if err := d.RemoveService("dns"); err != nil {
		t.Fatal(err)
	}
	if n := d.dp.ServiceStats().ConntrackEntries; n != 0 {
		t.Errorf("after service rm: %d tracked connections to its backend, want 0", n)
	}
}
