package daemon

import (
	"net/netip"
	"testing"
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
	for in, want := range map[string]int{"10.0.0.0/24": 28, "10.0.0.0/16": 20, "10.0.0.0/27": 28, "10.0.0.0/30": 30} {
		if got := blockBits(netip.MustParsePrefix(in)); got != want {
			t.Errorf("blockBits(%s) = %d, want %d", in, got, want)
		}
	}
}
