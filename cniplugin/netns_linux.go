package cniplugin

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// InspectLink reads interface ifname in the namespace at nsPath: state,
// MAC, IPv4 addresses and the default route through it.
func InspectLink(nsPath, ifname string) (Link, error) {
	var l Link
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		return l, fmt.Errorf("netns %s: %w", nsPath, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh, unix.NETLINK_ROUTE)
	if err != nil {
		return l, fmt.Errorf("netns %s: netlink: %w", nsPath, err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifname)
	if err != nil {
		return l, fmt.Errorf("interface %s: %w", ifname, err)
	}
	attrs := link.Attrs()
	l.Up = attrs.Flags&unix.IFF_UP != 0
	l.MAC = attrs.HardwareAddr.String()
	addrs, err := h.AddrList(link, unix.AF_INET)
	if err != nil {
		return l, fmt.Errorf("interface %s: addresses: %w", ifname, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		if ok {
			l.Addrs = append(l.Addrs, netip.PrefixFrom(ip, ones))
		}
	}
	routes, err := h.RouteList(link, unix.AF_INET)
	if err != nil {
		return l, fmt.Errorf("interface %s: routes: %w", ifname, err)
	}
	for _, r := range routes {
		if isDefault(r.Dst) && r.Gw != nil {
			l.DefaultGW, _ = netip.AddrFromSlice(r.Gw.To4())
		}
	}
	return l, nil
}

// isDefault reports whether dst is the default destination (netlink
// gives it as nil or 0.0.0.0/0).
func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0 && dst.IP.IsUnspecified()
}
