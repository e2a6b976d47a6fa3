//go:build linux

package sandbox

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

// PlugHost creates the TAP device cfg.IfName in the caller's network
// namespace, with cfg's MAC and MTU and the data plane's segment limit,
// and leaves it down and without addresses: a container runtime (Docker's
// network plugin path) moves it into the container's namespace, renames
// it and configures it there. The device is not persistent: it is
// destroyed when the returned descriptor is closed, in whichever
// namespace it is by then. cfg.Addr and cfg.Gateway are ignored.
func PlugHost(cfg IfaceConfig) (_ *netdev.TAP, err error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("interface %q: %s", cfg.IfName, fmt.Sprintf(format, args...))
	}
	if cfg.IfName == "" || len(cfg.IfName) >= unix.IFNAMSIZ {
		return nil, fail("want a name of 1 to %d bytes", unix.IFNAMSIZ-1)
	}
	if cfg.MAC != nil && len(cfg.MAC) != 6 {
		return nil, fail("MAC %v is not a 6-byte Ethernet address", cfg.MAC)
	}
	if cfg.MTU < 0 {
		return nil, fail("invalid MTU %d", cfg.MTU)
	}
	tap, err := netdev.CreateTAP(cfg.IfName, false)
	if err != nil {
		return nil, fail("%v", err)
	}
	defer func() {
		if err != nil {
			tap.Close()
		}
	}()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fail("netlink: %v", err)
	}
	defer h.Close()
	link, err := h.LinkByName(cfg.IfName)
	if err != nil {
		return nil, fail("find new TAP: %v", err)
	}
	if cfg.MAC != nil {
		if err := h.LinkSetHardwareAddr(link, cfg.MAC); err != nil {
			return nil, fail("set MAC %v: %v", cfg.MAC, err)
		}
	}
	if cfg.MTU > 0 {
		if err := h.LinkSetMTU(link, cfg.MTU); err != nil {
			return nil, fail("set MTU %d: %v", cfg.MTU, err)
		}
	}
	err = h.LinkSetGSOMaxSegs(link, packet.GSOMaxSegments)
	if err != nil && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) {
		return nil, fail("set gso_max_segs %d: %v", packet.GSOMaxSegments, err)
	}
	return tap, nil
}
