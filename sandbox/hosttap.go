//go:build linux

package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

// HostTAPPrefix starts the names of the TAP devices the Docker network
// plugin has PlugHost make ("vxd" and the endpoint ID's first 12
// characters); RemoveUnusedTAPs removes the ones nothing holds.
const HostTAPPrefix = "vxd"

// PlugHost creates the TAP device cfg.IfName in the caller's network
// namespace, with cfg's MAC and MTU and the data plane's segment limit,
// and leaves it down and without addresses: a container runtime (Docker's
// network plugin path) moves it into the container's namespace, renames
// it and configures it there. The device is persistent once made, like
// Plug's: it outlives the daemon (ReopenHost finds it again in the
// container's namespace by its MAC) and goes with that namespace; to
// destroy it, clear the flag (SetPersist(false)) before closing the
// returned descriptor. cfg.Addr and cfg.Gateway are ignored.
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
			tap.SetPersist(false)
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
	if err := tap.SetPersist(true); err != nil {
		return nil, fail("%v", err)
	}
	return tap, nil
}

// ReopenHost opens again a TAP device PlugHost made, after a container
// runtime moved it into the namespace at nsPath under a name of its own
// (Docker's ethN): the TAP device there with MAC mac. It returns the
// device and its name there; its addresses and routes are not touched.
func ReopenHost(nsPath string, mac net.HardwareAddr) (*netdev.TAP, string, error) {
	in, err := handleAt(nsPath)
	if err != nil {
		return nil, "", err
	}
	defer in.Close()
	links, err := in.LinkList()
	if err != nil {
		return nil, "", fmt.Errorf("netns %q: list interfaces: %w", nsPath, err)
	}
	for _, l := range links {
		if l.Type() != "tuntap" || !bytes.Equal(l.Attrs().HardwareAddr, mac) {
			continue
		}
		name := l.Attrs().Name
		tap, err := netdev.OpenTAPInNetns(nsPath, name)
		if err != nil {
			return nil, "", fmt.Errorf("netns %q: interface %q: %w", nsPath, name, err)
		}
		return tap, name, nil
	}
	return nil, "", fmt.Errorf("netns %q: no TAP device with MAC %s: %w", nsPath, mac, ErrNoHostTAP)
}

// ErrNoHostTAP is ReopenHost's error when the namespace is there but the
// device is not.
var ErrNoHostTAP = errors.New("no such device")

// RecreateHost makes again, in the namespace at nsPath, the interface a
// container runtime made of a PlugHost device that is gone (an older
// daemon's, which did not keep it): with cfg's MAC, MTU and address, named
// cfg.IfName or, if empty, the first free name of prefix and a number
// (Docker's ethN), and with the default route via cfg.Gateway only if the
// namespace has none (the runtime gives the default route to one of a
// container's networks). It returns the device and its name.
func RecreateHost(nsPath, prefix string, cfg IfaceConfig) (*netdev.TAP, string, error) {
	in, err := handleAt(nsPath)
	if err != nil {
		return nil, "", err
	}
	// Plug adds the default route via cfg.Gateway only if the namespace
	// has none.
	links, err := in.LinkList()
	in.Close()
	if err != nil {
		return nil, "", fmt.Errorf("netns %q: %w", nsPath, err)
	}
	if cfg.IfName == "" {
		taken := map[string]bool{}
		for _, l := range links {
			taken[l.Attrs().Name] = true
		}
		for i := 0; cfg.IfName == "" || taken[cfg.IfName]; i++ {
			cfg.IfName = prefix + strconv.Itoa(i)
		}
	}
	tap, err := Plug(nsPath, cfg)
	if err != nil {
		return nil, "", err
	}
	return tap, cfg.IfName, nil
}
