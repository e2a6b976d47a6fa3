//go:build linux

package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

// DefaultIfName is the interface name a container gets when IfaceConfig
// leaves it empty.
const DefaultIfName = "eth0"

// IfaceConfig describes a container's interface.
type IfaceConfig struct {
	IfName  string           // name inside the namespace; DefaultIfName if empty
	MAC     net.HardwareAddr // nil keeps the kernel's random address
	Addr    netip.Prefix     // address and subnet; none if invalid
	Gateway netip.Addr       // default route via Gateway if valid and the namespace has none
	MTU     int              // 0 keeps the kernel default
}

// tmpTAPPrefix named TAP devices while earlier versions of Plug created
// them in the daemon's namespace, before they were moved and renamed;
// RemoveUnusedTAPs still removes the ones such a version left.
const tmpTAPPrefix = "vxp"

// Plug creates a TAP device in the namespace at nsPath, under its name
// there, and configures it as cfg says: MAC, MTU, address, link up,
// loopback up, default route; then it makes it persistent. It returns the
// opened device; the daemon reads and writes the container's frames
// through it. Until the last step the device is not persistent: should
// the caller die meanwhile, the kernel destroys it with the descriptor. On
// failure nothing is left behind and the error names the namespace, the
// interface and the cause.
//
// The device is made where it is used, not made in the caller's namespace
// and moved: a move between namespaces waits on the kernel's RCU grace
// periods while holding its rtnl lock, which every namespace of the
// machine shares (15 to 460 ms a move on a host busy with namespaces,
// against under a millisecond for each other step).
func Plug(nsPath string, cfg IfaceConfig) (_ *netdev.TAP, err error) {
	if cfg.IfName == "" {
		cfg.IfName = DefaultIfName
	}
	t := plugTarget{nsPath: nsPath, cfg: cfg}
	if err := t.check(); err != nil {
		return nil, err
	}

	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("netns %q: %w", nsPath, err)
	}
	defer nsh.Close()
	t.in, err = netlink.NewHandleAt(nsh, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netns %q: netlink: %w", nsPath, err)
	}
	defer t.in.Close()
	if _, err := t.in.LinkByName(cfg.IfName); err == nil {
		return nil, fmt.Errorf("netns %q: interface %q already exists", nsPath, cfg.IfName)
	}

	tap, err := netdev.CreateTAPInNetns(nsPath, cfg.IfName, false)
	if err != nil {
		if strings.Contains(err.Error(), "already exists") {
			return nil, fmt.Errorf("netns %q: interface %q already exists", nsPath, cfg.IfName)
		}
		return nil, t.fail("%v", err)
	}
	defer func() {
		if err != nil {
			// Closing the only descriptor of a device that is not
			// persistent destroys it.
			tap.SetPersist(false)
			tap.Close()
		}
	}()
	link, err := t.in.LinkByName(cfg.IfName)
	if err != nil {
		return nil, t.fail("find new TAP: %v", err)
	}
	if err := t.configure(link); err != nil {
		return nil, err
	}
	if err := t.route(link); err != nil {
		return nil, err
	}
	if err := tap.SetPersist(true); err != nil {
		return nil, t.fail("%v", err)
	}
	return tap, nil
}

// plugTarget is the interface one Plug makes: its namespace, its
// configuration and the netlink handle in that namespace.
type plugTarget struct {
	nsPath string
	cfg    IfaceConfig
	in     *netlink.Handle
}

// fail returns an error about the interface, naming its namespace.
func (t plugTarget) fail(format string, args ...any) error {
	return fmt.Errorf("netns %q: interface %q: %s", t.nsPath, t.cfg.IfName, fmt.Sprintf(format, args...))
}

// check refuses a configuration that cannot be applied: a name too long,
// a MAC not of 6 bytes, a negative MTU, a gateway of the other family.
func (t plugTarget) check() error {
	cfg := t.cfg
	if len(cfg.IfName) >= unix.IFNAMSIZ {
		return t.fail("name longer than %d bytes", unix.IFNAMSIZ-1)
	}
	if cfg.MAC != nil && len(cfg.MAC) != 6 {
		return t.fail("MAC %v is not a 6-byte Ethernet address", cfg.MAC)
	}
	if cfg.MTU < 0 {
		return t.fail("invalid MTU %d", cfg.MTU)
	}
	if cfg.Gateway.IsValid() && cfg.Addr.IsValid() && cfg.Gateway.Is4() != cfg.Addr.Addr().Is4() {
		return t.fail("gateway %v and address %v are of different families", cfg.Gateway, cfg.Addr)
	}
	return nil
}

// configure gives the new link its MAC, MTU, hardening and address, and
// sets it up.
func (t plugTarget) configure(link netlink.Link) error {
	cfg, in := t.cfg, t.in
	if cfg.MAC != nil {
		if err := in.LinkSetHardwareAddr(link, cfg.MAC); err != nil {
			return t.fail("set MAC %v: %v", cfg.MAC, err)
		}
	}
	if cfg.MTU > 0 {
		if err := in.LinkSetMTU(link, cfg.MTU); err != nil {
			return t.fail("set MTU %d: %v", cfg.MTU, err)
		}
	}
	if err := hardenLink(t.nsPath, in, link, cfg); err != nil {
		return t.fail("%v", err)
	}
	if cfg.Addr.IsValid() {
		a := &netlink.Addr{IPNet: prefixToIPNet(cfg.Addr)}
		if cfg.Addr.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD // usable at once, like Docker's
		}
		if err := in.AddrAdd(link, a); err != nil {
			return t.fail("add address %v: %v", cfg.Addr, err)
		}
	}
	if err := in.LinkSetUp(link); err != nil {
		return t.fail("set up: %v", err)
	}
	return nil
}

// route sets the namespace's loopback up and adds the default route via
// the gateway, if there is one (on-link when the address's subnet does
// not hold it) and the namespace has no IPv4 default route yet: a
// container's other network, or whoever made the namespace, keeps the one
// it has.
func (t plugTarget) route(link netlink.Link) error {
	cfg, in := t.cfg, t.in
	lo, err := in.LinkByName("lo")
	if err == nil {
		err = in.LinkSetUp(lo)
	}
	if err != nil {
		return t.fail("set loopback up: %v", err)
	}
	if cfg.Gateway.IsValid() {
		has, err := hasDefaultRoute(in)
		if err != nil {
			return t.fail("list routes: %v", err)
		}
		if has {
			return nil
		}
		r := &netlink.Route{
			LinkIndex: link.Attrs().Index,
			Gw:        cfg.Gateway.AsSlice(),
			Scope:     netlink.SCOPE_UNIVERSE,
		}
		if !cfg.Addr.IsValid() || !cfg.Addr.Masked().Contains(cfg.Gateway) {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := in.RouteAdd(r); err != nil {
			return t.fail("add default route via %v: %v", cfg.Gateway, err)
		}
	}
	return nil
}

// hardenLink applies the data plane's limits to the container's side of
// the link: accept_ra=0 unless the interface gets an IPv6 address (vxmesh
// networks are IPv4: no router advertisement on them is legitimate, and
// the switch drops containers' RAs too), and gso_max_segs
// packet.GSOMaxSegments, so that the container's TCP never builds a
// super-segment the switch and the tunnel refuse. A kernel without IPv6
// (no conf directory) or without a settable gso_max_segs is tolerated.
func hardenLink(nsPath string, in *netlink.Handle, link netlink.Link, cfg IfaceConfig) error {
	if !cfg.Addr.IsValid() || !cfg.Addr.Addr().Is6() {
		path := "net/ipv6/conf/" + cfg.IfName + "/accept_ra"
		err := RunInNetns(nsPath, func() error {
			ps := openProcSys()
			defer ps.Close()
			return ps.write(path, "0\n")
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("set accept_ra=0: %v", err)
		}
	}
	err := in.LinkSetGSOMaxSegs(link, packet.GSOMaxSegments)
	if err != nil && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("set gso_max_segs %d: %v", packet.GSOMaxSegments, err)
	}
	return nil
}

// Reopen opens again the persistent TAP device ifname that Plug put into
// the namespace at nsPath, e.g. after a daemon restart. Its name,
// addresses and routes are not touched.
func Reopen(nsPath, ifname string) (*netdev.TAP, error) {
	in, err := handleAt(nsPath)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	link, err := in.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("netns %q: interface %q: %w", nsPath, ifname, err)
	}
	if typ := link.Type(); typ != "tuntap" {
		return nil, fmt.Errorf("netns %q: interface %q is a %s device, not a TAP", nsPath, ifname, typ)
	}
	tap, err := netdev.OpenTAPInNetns(nsPath, ifname)
	if err != nil {
		return nil, fmt.Errorf("netns %q: interface %q: %w", nsPath, ifname, err)
	}
	return tap, nil
}

// Unplug deletes the interface ifname from the namespace at nsPath. The
// daemon should Close its TAP first: reads on a deleted TAP fail. An
// interface that no longer exists is not an error.
func Unplug(nsPath, ifname string) error {
	in, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer in.Close()
	link, err := in.LinkByName(ifname)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("netns %q: interface %q: %w", nsPath, ifname, err)
	}
	if err := in.LinkDel(link); err != nil {
		return fmt.Errorf("netns %q: interface %q: delete: %w", nsPath, ifname, err)
	}
	return nil
}

// RemoveUnusedTAPs destroys the TAP devices Plug left in the caller's
// network namespace when its process died between creating a device and
// moving it into its container: the tmpTAPPrefix devices that no process
// holds open; and PlugHost's (HostTAPPrefix) that no process holds open:
// made before a daemon died and never moved into a container, or moved
// back out of a container that stopped meanwhile. A device that is open (Plug at work in another process)
// refuses a second attachment and is left alone. It returns the names of
// the devices it destroyed.
func RemoveUnusedTAPs() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var removed []string
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if !(strings.HasPrefix(name, tmpTAPPrefix) || strings.HasPrefix(name, HostTAPPrefix)) || l.Type() != "tuntap" {
			continue
		}
		tap, err := netdev.OpenTAP(name)
		if errors.Is(err, unix.EBUSY) {
			continue
		}
		if err == nil {
			err = tap.SetPersist(false)
			tap.Close()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("interface %q: %w", name, err))
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}

// handleAt returns a route netlink handle inside the namespace at nsPath.
func handleAt(nsPath string) (*netlink.Handle, error) {
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("netns %q: %w", nsPath, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netns %q: netlink: %w", nsPath, err)
	}
	return h, nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// DefaultRoute adds, in the namespace at nsPath, the IPv4 default route
// via gw on the interface ifname (whose address is addr), unless the
// namespace has one: after the interface that held it was removed, a
// container's remaining network gives it, as Docker does.
func DefaultRoute(nsPath, ifname string, addr netip.Prefix, gw netip.Addr) error {
	in, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer in.Close()
	link, err := in.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("netns %q: interface %q: %w", nsPath, ifname, err)
	}
	t := plugTarget{nsPath: nsPath, cfg: IfaceConfig{IfName: ifname, Addr: addr, Gateway: gw}, in: in}
	return t.route(link)
}

// hasDefaultRoute reports whether the main routing table of in's
// namespace has an IPv4 default route.
func hasDefaultRoute(in *netlink.Handle) (bool, error) {
	routes, err := in.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if r.Dst == nil {
			return true, nil
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			return true, nil
		}
	}
	return false, nil
}
