package daemon

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

func TestPickSubnetSkipsUsed(t *testing.T) {
	used := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("10.0.2.128/25")}
	got, err := pickSubnet(used)
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParsePrefix("10.0.3.0/24"); got != want {
		t.Fatalf("pickSubnet = %s, want %s", got, want)
	}
}

func TestAllocateSkipsNetworkBroadcastAndUsed(t *testing.T) {
	p := netip.MustParsePrefix("10.9.0.0/30")
	used := map[netip.Addr]bool{netip.MustParseAddr("10.9.0.1"): true}
	a, err := allocate(p, used, p)
	if err != nil || a != netip.MustParseAddr("10.9.0.2") {
		t.Fatalf("allocate = %v, %v; want 10.9.0.2", a, err)
	}
	used[a] = true
	if a, err := allocate(p, used, p); err == nil {
		t.Fatalf("allocate in a full /30 returned %v", a)
	}
}

func TestMACForIP(t *testing.T) {
	got := macForIP(netip.MustParseAddr("10.0.1.2"))
	if got != [6]byte{0x02, 0x42, 10, 0, 1, 2} {
		t.Fatalf("macForIP = % x", got)
	}
}

func TestBlockBits(t *testing.T) {
	for in, want := range map[string]int{"10.0.0.0/8": 28, "10.0.0.0/16": 28, "10.0.0.0/23": 28, "10.0.0.0/24": 29,
		"10.0.0.0/25": 30, "10.0.0.0/27": 30, "10.0.0.0/30": 30, "10.0.0.0/31": 31, "10.0.0.0/32": 32} {
		if got := blockBits(netip.MustParsePrefix(in)); got != want {
			t.Errorf("blockBits(%s) = %d, want %d", in, got, want)
		}
	}
}

// TestRunAfterRestartSkipsFullBlocks fills the first four /29 blocks of a
// network, restarts the daemon (which forgets its block claims) and checks
// that the next attach succeeds at the first try with the first address
// of the third block: a block without a free address is never claimed.
func TestRunAfterRestartSkipsFullBlocks(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	d := newTestDaemon(t, sb, dir)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.7.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	// .2-.7 fill the first block (.0 is the network, .1 the gateway),
	// .8-.31 the next three.
	for i := 2; i < 32; i++ {
		ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: fmt.Sprintf("c%d", i), Create: true})
		if want := fmt.Sprintf("10.7.0.%d", i); ep.IP != want {
			t.Fatalf("c%d got %s, want %s", i, ep.IP, want)
		}
	}
	d.Close()

	d2 := newTestDaemon(t, sb, dir)
	defer d2.Close()
	ep, err := d2.Attach(api.AttachRequest{Network: "web", Name: "new", Create: true})
	if err != nil {
		t.Fatalf("first run after the restart: %v", err)
	}
	if ep.IP != "10.7.0.32" {
		t.Fatalf("first run after the restart got %s, want 10.7.0.32", ep.IP)
	}
}

// TestExplicitIPDoesNotMoveTheNextAddress: an --ip in another block makes
// this node hold that block too, but the next address is still the lowest
// free one.
func TestExplicitIPDoesNotMoveTheNextAddress(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.8.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	for i, ip := range []string{"10.8.0.50", "10.8.0.100", "10.8.0.200", "10.8.0.150"} {
		mustAttach(t, d, api.AttachRequest{Network: "web", Name: fmt.Sprintf("x%d", i), Create: true, IP: ip})
	}
	for i := range 5 {
		ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: fmt.Sprintf("c%d", i+2), Create: true})
		if want := fmt.Sprintf("10.8.0.%d", i+3); ep.IP != want {
			t.Fatalf("next address %s, want %s", ep.IP, want)
		}
	}
}
