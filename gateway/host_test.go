package gateway

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/vxmesh/vxmesh/packet"
)

// TestGatewayHostAddress: the stack owns the host address beside the
// gateway address; SetHost moves it in place (the old one is given up)
// and refuses addresses outside the prefix, the gateway's own, or a
// multicast or the gateway's MAC, changing nothing.
func TestGatewayHostAddress(t *testing.T) {
	hostA, hostB := netip.MustParseAddr("10.0.1.250"), netip.MustParseAddr("10.0.1.251")
	macA, macB := packet.MAC{2, 0x42, 10, 0, 1, 250}, packet.MAC{2, 0x42, 10, 0, 1, 251}
	g, err := New(Config{Name: "web", Addr: gwAddr, MAC: gwMAC, MTU: 1500, HostAddr: hostA, HostMAC: macA})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	owns := func(a netip.Addr) bool {
		for _, pa := range g.stack.AllAddresses()[nicID] {
			if pa.Protocol == ipv4.ProtocolNumber && pa.AddressWithPrefix.Address == tcpip.AddrFrom4(a.As4()) {
				return pa.AddressWithPrefix.PrefixLen == gwAddr.Bits()
			}
		}
		return false
	}
	if !owns(hostA) || !owns(gwAddr.Addr()) || g.HostAddr() != hostA || g.HostMAC() != macA {
		t.Fatalf("after New: owns host %v gateway %v, HostAddr %s HostMAC %s", owns(hostA), owns(gwAddr.Addr()), g.HostAddr(), g.HostMAC())
	}
	if err := g.SetHost(hostB, macB); err != nil {
		t.Fatal(err)
	}
	if owns(hostA) || !owns(hostB) || g.HostAddr() != hostB || g.HostMAC() != macB {
		t.Fatalf("after SetHost: owns old %v new %v, HostAddr %s", owns(hostA), owns(hostB), g.HostAddr())
	}
	for _, bad := range []struct {
		addr netip.Addr
		mac  packet.MAC
	}{
		{netip.MustParseAddr("10.0.2.5"), macA},
		{gwAddr.Addr(), macA},
		{hostA, gwMAC},
		{hostA, packet.MAC{1, 0, 0x5e, 0, 0, 1}},
		{hostA, packet.MAC{}},
		{netip.Addr{}, macA},
	} {
		if err := g.SetHost(bad.addr, bad.mac); err == nil {
			t.Errorf("SetHost(%s, %s) accepted", bad.addr, bad.mac)
		}
		if !owns(hostB) || g.HostAddr() != hostB {
			t.Fatalf("a refused SetHost(%s, %s) changed the host address to %s", bad.addr, bad.mac, g.HostAddr())
		}
	}
	if err := g.SetHost(netip.Addr{}, packet.MAC{}); err != nil || owns(hostB) || g.HostAddr().IsValid() {
		t.Fatalf("clearing: err %v, still owns %v", err, owns(hostB))
	}
	if _, err := New(Config{Name: "web", Addr: gwAddr, MAC: gwMAC, MTU: 1500, HostAddr: gwAddr.Addr(), HostMAC: macA}); err == nil {
		t.Fatal("New accepted the gateway address as the host address")
	}
}
