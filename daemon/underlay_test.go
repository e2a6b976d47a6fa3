package daemon

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

// TestNetworkSubnetAvoidsTheUnderlay: a network whose subnet held the
// hosts' underlay addresses took them from every container's egress and
// from published ports' client addresses. An automatically picked subnet
// skips the underlay's LAN and every node's address; a requested one that
// holds a node's address is refused, naming it.
func TestNetworkSubnetAvoidsTheUnderlay(t *testing.T) {
	d := &Daemon{
		cfg:         Config{Node: "h1", Advertise: netip.MustParseAddr("10.0.0.4"), UnderlayMTU: 1500},
		underlayLAN: netip.MustParsePrefix("10.0.0.0/24"),
		networks:    map[string]*localNetwork{},
		creating:    map[string]netClaim{},
	}
	rec, err := d.networkFromRequest(api.NetworkCreateRequest{Name: "auto"})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Subnet != "10.0.1.0/24" {
		t.Errorf("picked subnet %s with the underlay on 10.0.0.0/24, want 10.0.1.0/24", rec.Subnet)
	}
	for _, tc := range []struct{ subnet, want string }{
		{"10.0.0.0/24", `network "web": subnet 10.0.0.0/24: holds this node's underlay address 10.0.0.4`},
		{"10.0.0.0/16", `network "web": subnet 10.0.0.0/16: holds this node's underlay address 10.0.0.4`},
	} {
		_, err := d.networkFromRequest(api.NetworkCreateRequest{Name: "web", Subnet: tc.subnet})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("subnet %s: %v, want %q", tc.subnet, err, tc.want)
		}
	}
	// An underlay on all of the default pool leaves no subnet to pick;
	// the error says why.
	wide := &Daemon{cfg: d.cfg, underlayLAN: netip.MustParsePrefix("10.0.0.0/8"), networks: d.networks, creating: d.creating}
	want := `network "auto": the default address pool 10.0.0.0/8 is exhausted outside the underlay's LAN 10.0.0.0/8: give --subnet`
	if _, err := wide.networkFromRequest(api.NetworkCreateRequest{Name: "auto"}); err == nil || err.Error() != want {
		t.Errorf("auto subnet with the underlay on 10.0.0.0/8: %v, want %q", err, want)
	}
	// A subnet of the underlay's LAN without a node's address is the
	// user's choice.
	if _, err := d.networkFromRequest(api.NetworkCreateRequest{Name: "web", Subnet: "10.0.0.128/25"}); err != nil {
		t.Errorf("subnet 10.0.0.128/25: %v", err)
	}
}
