//go:build linux

package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/packet"
)

// TUN offload bits of the UDP tunnel GSO extension (include/uapi/linux/
// if_tun.h, Linux 6.17); older kernels refuse TUNSETOFFLOAD with them.
const (
	tunFUDPTunnelGSO     = 0x080
	tunFUDPTunnelGSOCsum = 0x100
)

// KernelTunnelConfig configures OpenKernelTunnel.
type KernelTunnelConfig struct {
	// Name is the TAP device's name; "" means "vxmesh-tnl".
	Name string
	// Local is this node's IPv4 underlay address, the outer source of
	// every super-packet.
	Local netip.Addr
	// SourcePorts are the outer UDP source ports, picked by flow hash
	// (UDP.TxPorts, so a flow keeps its source port whichever way its
	// datagrams go); none means ports from the dynamic range.
	SourcePorts []uint16
}

// KernelTunnel is the Linux SuperWriter: a TAP device in the host's
// network namespace, opened with a virtio header of the UDP tunnel GSO
// extension (24 bytes), into which each super-packet is written as an
// Ethernet frame addressed to the TAP itself. The kernel receives it as a
// GSO packet of type UDP_TUNNEL|TCP and forwards it by the routing table
// to the underlay device, which segments it (or carries it whole, see
// SuperWriter). For that the TAP, and only the TAP, has forwarding on,
// accepts its frames' local source address (accept_local) and has no
// reverse-path filter; IPv6 is off on it. The kernel does the forwarding,
// so the host's FORWARD firewall rules see these packets (a FORWARD policy
// of DROP without an accepting rule drops them; see docs/architecture.md).
// The TAP is not persistent: closing it removes the device.
type KernelTunnel struct {
	fd    int
	name  string
	addrs superAddrs
	ports []uint16

	mu     sync.RWMutex // held for reading by writes, for writing by Close
	closed bool
	writes atomic.Uint64
	errs   atomic.Uint64
}

// OpenKernelTunnel creates and configures the TAP. It fails, changing
// nothing that outlives the call, where the kernel lacks UDP tunnel GSO on
// TAP devices (before Linux 6.17: TUNSETOFFLOAD refuses
// TUN_F_UDP_TUNNEL_GSO), where Local is not IPv4, or where the host's
// reverse-path filter (net.ipv4.conf.all.rp_filter, which the TAP's own
// setting cannot lower) would drop the frames.
func OpenKernelTunnel(cfg KernelTunnelConfig) (*KernelTunnel, error) {
	name := cfg.Name
	if name == "" {
		name = "vxmesh-tnl"
	}
	local := cfg.Local.Unmap()
	if !local.Is4() {
		return nil, fmt.Errorf("kernel tunnel %s: local address %v is not IPv4", name, cfg.Local)
	}
	if err := CheckReversePathFilter(); err != nil {
		return nil, fmt.Errorf("kernel tunnel %s: %w", name, err)
	}
	fd, err := openTunnelTAP(name)
	if err != nil {
		return nil, fmt.Errorf("kernel tunnel %s: %w", name, err)
	}
	k := &KernelTunnel{fd: fd, name: name, ports: append([]uint16(nil), cfg.SourcePorts...)}
	k.addrs.src = local.As4()
	if err := k.configure(); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kernel tunnel %s: %w", name, err)
	}
	return k, nil
}

// CheckReversePathFilter returns an error unless the host's reverse-path
// filter (net.ipv4.conf.all.rp_filter of the calling thread's network
// namespace) is off, as the kernel tunnel's frames need: it can change
// while the TAP is open.
func CheckReversePathFilter() error {
	rp, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter")
	if err != nil {
		return err
	}
	if v := strings.TrimSpace(string(rp)); v != "0" {
		return fmt.Errorf("net.ipv4.conf.all.rp_filter is %s: the reverse-path filter would drop frames from the TAP", v)
	}
	return nil
}

// openTunnelTAP opens TAP name with the 24-byte tunnel virtio header and
// checks that the kernel has UDP tunnel GSO.
func openTunnelTAP(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TUNSETVNETHDRSZ, vnetTunnelHdrLen); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETVNETHDRSZ: %w", err)
	}
	off := unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | tunFUDPTunnelGSO | tunFUDPTunnelGSOCsum
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, off); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EINVAL) {
			return -1, fmt.Errorf("the kernel has no UDP tunnel GSO on TAP devices (TUNSETOFFLOAD TUN_F_UDP_TUNNEL_GSO: %w; Linux 6.17+)", err)
		}
		return -1, fmt.Errorf("TUNSETOFFLOAD: %w", err)
	}
	return fd, nil
}

// configure sets the TAP's sysctls, brings it up and learns its MAC.
func (k *KernelTunnel) configure() error {
	for _, s := range []struct{ path, val string }{
		{"ipv6/conf/%s/disable_ipv6", "1"},
		{"ipv4/conf/%s/accept_local", "1"},
		{"ipv4/conf/%s/rp_filter", "0"},
		{"ipv4/conf/%s/forwarding", "1"},
	} {
		p := "/proc/sys/net/" + fmt.Sprintf(s.path, k.name)
		if err := os.WriteFile(p, []byte(s.val), 0); err != nil {
			if strings.HasPrefix(s.path, "ipv6") && errors.Is(err, os.ErrNotExist) {
				continue // no IPv6 in this kernel or namespace
			}
			return err
		}
	}
	l, err := netlink.LinkByName(k.name)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return err
	}
	copy(k.addrs.dstMAC[:], l.Attrs().HardwareAddr)
	k.addrs.srcMAC = k.addrs.dstMAC
	k.addrs.srcMAC[5] ^= 1 // any unicast source but the TAP's own
	return nil
}

// Name returns the TAP device's name.
func (k *KernelTunnel) Name() string { return k.name }

// Writes returns how many super-packets the kernel took, and Errors how
// many it refused (those were split by the caller instead).
func (k *KernelTunnel) Writes() uint64 { return k.writes.Load() }

// Errors returns how many writes the kernel refused.
func (k *KernelTunnel) Errors() uint64 { return k.errs.Load() }

// WriteSuper implements SuperWriter with one writev of the headers and the
// frame. It does not allocate.
func (k *KernelTunnel) WriteSuper(frame []byte, o packet.Offload, vni uint32, dst netip.AddrPort, hash uint32) error {
	var h [superHeaderLen]byte
	if !putSuperHeader(h[:], &k.addrs, frame, o, vni, dst, superSourcePort(k.ports, hash)) {
		return errSuperUnsuitable
	}
	iov := [2]unix.Iovec{{Base: &h[0]}, {Base: &frame[0]}}
	iov[0].SetLen(len(h))
	iov[1].SetLen(len(frame))
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		return errSegmentDown
	}
	_, _, e := unix.Syscall(unix.SYS_WRITEV, uintptr(k.fd), uintptr(unsafe.Pointer(&iov[0])), 2)
	if e != 0 {
		k.errs.Add(1)
		return e
	}
	k.writes.Add(1)
	return nil
}

// Close removes the TAP device.
func (k *KernelTunnel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	return unix.Close(k.fd)
}
