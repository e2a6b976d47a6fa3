//go:build linux

package sandbox

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vxmesh/vxmesh/netdev"
)

// TestHostTAPOutlivesItsDescriptor: a PlugHost device that a runtime
// moved into a container and renamed (as Docker does) survives its
// descriptor with the address and route the runtime gave it, is found
// again by its MAC, goes once its flag is cleared and it is closed, and
// is made again under a free ethN with address and default route.
func TestHostTAPOutlivesItsDescriptor(t *testing.T) {
	requireRoot(t)
	_, daemonNS := newNamedNetns(t)
	_, ctrNS := newNamedNetns(t)
	mac := net.HardwareAddr{0x02, 0x42, 10, 0, 1, 7}
	ifname := HostTAPPrefix + "0123456789ab"
	var tap *netdev.TAP
	err := RunInNetns(daemonNS, func() (err error) {
		tap, err = PlugHost(IfaceConfig{IfName: ifname, MAC: mac, MTU: 1450})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// What Docker does at Join: move, rename, configure.
	dh, ch := handle(t, daemonNS), handle(t, ctrNS)
	link, err := dh.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := netns.GetFromPath(ctrNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Close()
	if err := dh.LinkSetNsFd(link, int(ctr)); err != nil {
		t.Fatal(err)
	}
	link, err = ch.LinkByName(ifname)
	if err == nil {
		err = ch.LinkSetName(link, "eth0")
	}
	if err == nil {
		err = ch.LinkSetUp(link)
	}
	if err == nil {
		err = ch.AddrAdd(link, &netlink.Addr{IPNet: prefixToIPNet(netip.MustParsePrefix("10.0.1.7/24"))})
	}
	if err == nil {
		err = ch.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IPv4(10, 0, 1, 1)})
	}
	if err != nil {
		t.Fatal(err)
	}
	tap.Close()

	tap, name, err := ReopenHost(ctrNS, mac)
	if err != nil || name != "eth0" {
		t.Fatalf("ReopenHost after the descriptor closed: %q, %v", name, err)
	}
	routes, _ := ch.RouteList(nil, netlink.FAMILY_V4)
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Gw.Equal(net.IPv4(10, 0, 1, 1)) }) {
		t.Fatalf("the default route went with the descriptor: %v", routes)
	}
	if _, _, err := ReopenHost(ctrNS, net.HardwareAddr{2, 0, 0, 0, 0, 1}); !errors.Is(err, ErrNoHostTAP) {
		t.Fatalf("ReopenHost of a MAC that is not there: %v", err)
	}
	if _, _, err := ReopenHost("/run/netns/vxt-no-such-ns", mac); err == nil || errors.Is(err, ErrNoHostTAP) {
		t.Fatalf("ReopenHost in a missing namespace: %v", err)
	}
	tap.SetPersist(false)
	tap.Close()
	if got := linkNames(t, ctrNS); !slices.Equal(got, []string{"lo"}) {
		t.Fatalf("links after clearing the flag and closing: %v", got)
	}

	// The device is gone (an older daemon's): made again.
	cfg := IfaceConfig{MAC: mac, MTU: 1450, Addr: netip.MustParsePrefix("10.0.1.7/24"), Gateway: netip.MustParseAddr("10.0.1.1")}
	tap, name, err = RecreateHost(ctrNS, "eth", cfg)
	if err != nil || name != "eth0" {
		t.Fatalf("RecreateHost: %q, %v", name, err)
	}
	defer func() {
		tap.SetPersist(false)
		tap.Close()
	}()
	link, err = ch.LinkByName("eth0")
	if err != nil || link.Attrs().HardwareAddr.String() != mac.String() || link.Attrs().MTU != 1450 {
		t.Fatalf("made again: %+v, %v", link, err)
	}
	addrs, _ := ch.AddrList(link, netlink.FAMILY_V4)
	routes, _ = ch.RouteList(nil, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.0.1.7/24" || !slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Gw.Equal(net.IPv4(10, 0, 1, 1)) }) {
		t.Fatalf("made again with addresses %v, routes %v", addrs, routes)
	}
	// A second one takes the next free name and leaves the default
	// route alone.
	tap2, name2, err := RecreateHost(ctrNS, "eth", IfaceConfig{MAC: net.HardwareAddr{0x02, 0x42, 10, 0, 2, 7}, Addr: netip.MustParsePrefix("10.0.2.7/24"), Gateway: netip.MustParseAddr("10.0.2.1")})
	if err != nil || name2 != "eth1" {
		t.Fatalf("second RecreateHost: %q, %v", name2, err)
	}
	defer func() {
		tap2.SetPersist(false)
		tap2.Close()
	}()
	routes, _ = ch.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Gw != nil && strings.HasPrefix(r.Gw.String(), "10.0.2.") {
			t.Fatalf("a second default route was added: %v", routes)
		}
	}
}
