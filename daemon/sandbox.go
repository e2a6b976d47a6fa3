package daemon

import (
	"net/netip"
	"time"

	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/sandbox"
)

// Sandbox is the namespace plumbing the daemon needs. The real one is the
// sandbox package; tests substitute fakes backed by netdevtest devices.
type Sandbox interface {
	// CreateNamedNetns makes /run/netns/NAME and returns its path.
	CreateNamedNetns(name string) (string, error)
	// DeleteNamedNetns removes a namespace made by CreateNamedNetns.
	DeleteNamedNetns(name string) error
	// NetnsIdentity returns the device and inode that identify a netns.
	NetnsIdentity(path string) (dev, ino uint64, err error)
	// PinNetns returns a path that names the namespace at path, if it is
	// still the namespace (dev, ino), until release is called; it fails if
	// the namespace is gone or the path names another one.
	PinNetns(path string, dev, ino uint64) (pinned string, release func(), err error)
	// NetnsIs reports whether path still names the namespace (dev, ino),
	// without opening it: for listings.
	NetnsIs(path string, dev, ino uint64) bool
	// NamedNetns lists the named namespaces whose name starts with prefix.
	NamedNetns(prefix string) ([]string, error)
	// RemoveUnusedTAPs destroys the half-made TAP devices of an
	// interrupted Plug in the daemon's namespace and returns their names.
	RemoveUnusedTAPs() ([]string, error)
	// Plug creates the container interface in the namespace and returns
	// the daemon's side of it.
	Plug(nsPath string, cfg sandbox.IfaceConfig) (netdev.Device, error)
	// Reopen attaches to an interface Plug made, after a restart.
	Reopen(nsPath, ifname string) (netdev.Device, error)
	// Unplug deletes the interface from the namespace.
	Unplug(nsPath, ifname string) error
	// DefaultRoute adds the default route via gw on the interface
	// ifname (address addr) unless the namespace has one.
	DefaultRoute(nsPath, ifname string, addr netip.Prefix, gw netip.Addr) error
	// KillNetns stops every process in the namespace: SIGTERM, then
	// SIGKILL to those left after grace (at once if grace is 0).
	KillNetns(nsPath string, grace time.Duration) error
	// NetnsPIDs maps every network namespace with processes to their
	// PIDs, in ascending order, with one scan of the processes.
	NetnsPIDs() (map[sandbox.NetnsID][]int, error)
	// DockerPID asks the Docker Engine for a running container's PID.
	DockerPID(container string) (int, error)
	// InboundTCPConns counts the open TCP connections clients made to ip
	// in the namespace (sandbox.InboundTCPConns; listening remembers the
	// ports seen listening, updated in place).
	InboundTCPConns(nsPath string, ip netip.Addr, listening map[uint16]bool) (int, error)
}

// fastPathSandbox is the namespace plumbing of the published-port fast
// path (sandbox.EnableFastPath, DisableFastPath, NewFastSockets). A
// Sandbox without it (the tests' fakes) has no fast path.
type fastPathSandbox interface {
	EnableFastPath(nsPath string) error
	DisableFastPath(nsPath string) error
	NewFastSockets(nsPath string, prep func(fd int) error) (fastSockets, error)
}

// fastSockets makes a container's fast-path sockets until closed.
type fastSockets interface {
	gateway.LocalSockets
	Close()
}

func (linuxSandbox) EnableFastPath(nsPath string) error  { return sandbox.EnableFastPath(nsPath) }
func (linuxSandbox) DisableFastPath(nsPath string) error { return sandbox.DisableFastPath(nsPath) }
func (linuxSandbox) NewFastSockets(nsPath string, prep func(fd int) error) (fastSockets, error) {
	return sandbox.NewFastSockets(nsPath, prep)
}

// linuxSandbox is the Sandbox of a real host.
type linuxSandbox struct {
	// dockerSocket is the Docker Engine's unix socket; "" means the default.
	dockerSocket string
}

// CreateNamedNetns also writes /etc/netns/NAME/resolv.conf, so that
// `ip netns exec NAME` users get the container's resolver too.
func (linuxSandbox) CreateNamedNetns(name string) (string, error) {
	p, err := sandbox.CreateNamedNetns(name)
	if err != nil {
		return "", err
	}
	if err := sandbox.WriteNetnsResolvConf(name); err != nil {
		sandbox.DeleteNamedNetns(name)
		return "", err
	}
	return p, nil
}
func (linuxSandbox) DeleteNamedNetns(name string) error { return sandbox.DeleteNamedNetns(name) }
func (linuxSandbox) NetnsIdentity(path string) (uint64, uint64, error) {
	id, err := sandbox.NetnsIdentity(path)
	return id.Dev, id.Ino, err
}
func (linuxSandbox) PinNetns(path string, dev, ino uint64) (string, func(), error) {
	return sandbox.PinNetns(path, sandbox.NetnsID{Dev: dev, Ino: ino})
}
func (linuxSandbox) NetnsIs(path string, dev, ino uint64) bool {
	return sandbox.NetnsIs(path, sandbox.NetnsID{Dev: dev, Ino: ino})
}
func (linuxSandbox) NamedNetns(prefix string) ([]string, error) { return sandbox.NamedNetns(prefix) }
func (linuxSandbox) RemoveUnusedTAPs() ([]string, error)        { return sandbox.RemoveUnusedTAPs() }
func (linuxSandbox) Plug(nsPath string, cfg sandbox.IfaceConfig) (netdev.Device, error) {
	return sandbox.Plug(nsPath, cfg)
}
func (linuxSandbox) Reopen(nsPath, ifname string) (netdev.Device, error) {
	return sandbox.Reopen(nsPath, ifname)
}
func (linuxSandbox) Unplug(nsPath, ifname string) error { return sandbox.Unplug(nsPath, ifname) }
func (linuxSandbox) DefaultRoute(nsPath, ifname string, addr netip.Prefix, gw netip.Addr) error {
	return sandbox.DefaultRoute(nsPath, ifname, addr, gw)
}
func (linuxSandbox) InboundTCPConns(nsPath string, ip netip.Addr, listening map[uint16]bool) (int, error) {
	return sandbox.InboundTCPConns(nsPath, ip, listening)
}
func (linuxSandbox) KillNetns(nsPath string, grace time.Duration) error {
	return sandbox.KillNetns(nsPath, grace)
}
func (linuxSandbox) NetnsPIDs() (map[sandbox.NetnsID][]int, error) { return sandbox.NetnsPIDs() }
func (s linuxSandbox) DockerPID(container string) (int, error) {
	return sandbox.DockerPID(s.dockerSocket, container)
}
