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

// TestNetworkMTUFollowsTheUnderlayNow: the underlay MTU is read at each
// network create, not once at start. An MTU lowered after the daemon
// started (DHCP's 1460 on a cloud VM, a VPN's 1400) gave new networks the
// old default (1450 on 1500), and frames between 1351 and 1450 bytes were
// dropped between hosts (tx-error) without a word.
func TestNetworkMTUFollowsTheUnderlayNow(t *testing.T) {
	mtu := 1500
	cfg := Config{Node: "h1", StateDir: t.TempDir(), Advertise: netip.MustParseAddr("10.0.0.4"),
		underlayMTUNow: func() int { return mtu }}
	if err := cfg.completeHost(); err != nil {
		t.Fatal(err)
	}
	d := &Daemon{cfg: cfg, networks: map[string]*localNetwork{}, creating: map[string]netClaim{}}
	create := func(req api.NetworkCreateRequest) (int, error) {
		rec, err := d.networkFromRequest(req)
		return rec.MTU, err
	}
	if got, err := create(api.NetworkCreateRequest{Name: "before", Subnet: "10.1.1.0/24"}); err != nil || got != 1450 {
		t.Fatalf("underlay 1500: mtu %d, %v; want 1450", got, err)
	}
	mtu = 1400
	if got, err := create(api.NetworkCreateRequest{Name: "after", Subnet: "10.1.2.0/24"}); err != nil || got != 1350 {
		t.Errorf("underlay lowered to 1400: mtu %d, %v; want 1350", got, err)
	}
	if got, err := create(api.NetworkCreateRequest{Name: "enc", Subnet: "10.1.3.0/24", Encrypted: true}); err != nil || got != 1305 {
		t.Errorf("underlay 1400, encrypted: mtu %d, %v; want 1305", got, err)
	}
	want := `network "big": mtu 1450: more than the underlay carries between hosts (1350: this host's underlay MTU 1400 less 50 of VXLAN)`
	if _, err := create(api.NetworkCreateRequest{Name: "big", Subnet: "10.1.4.0/24", MTU: 1450}); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("--mtu 1450 on a 1400 underlay: %v, want %q", err, want)
	}
	// A configured MTU is kept as given.
	fixed := Config{Node: "h1", StateDir: t.TempDir(), Advertise: netip.MustParseAddr("10.0.0.4"), UnderlayMTU: 9000}
	if err := fixed.completeHost(); err != nil {
		t.Fatal(err)
	}
	if got := (&Daemon{cfg: fixed}).underlayMTU(); got != 9000 {
		t.Errorf("configured underlay MTU 9000: %d", got)
	}
}
