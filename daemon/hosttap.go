package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"slices"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/sandbox"
)

// This file is the daemon's side of the Docker network plugin
// (package dockerplugin): endpoints whose interface is a TAP device made
// in the daemon's namespace for Docker to move into its container, and
// addresses held for Docker's IPAM requests.

// errHostTAPGone is why a Docker endpoint whose sandbox is gone after a
// restart is down.
var errHostTAPGone = errors.New("its Docker container stopped meanwhile (docker start makes a new endpoint; vxmesh rm removes this one)")

// ipamOwner owns the addresses held for Docker's IPAM between
// RequestAddress and the endpoint's attach; no container can have that
// name (checkName refuses it).
const ipamOwner = "<docker ipam>"

// hostPlugger is the Sandbox's way to make a host TAP and to find it
// again after a restart in the namespace Docker moved it to (the real
// Sandbox; test fakes may implement it too).
type hostPlugger interface {
	PlugHost(cfg sandbox.IfaceConfig) (netdev.Device, error)
	// ReopenHost opens the host TAP with MAC mac in the namespace at
	// nsPath and returns it with its name there.
	ReopenHost(nsPath string, mac packet.MAC) (netdev.Device, string, error)
	// RecreateHost makes a gone one again there, configured (see
	// sandbox.RecreateHost).
	RecreateHost(nsPath string, cfg sandbox.IfaceConfig) (netdev.Device, string, error)
}

// PlugHost makes a host TAP (sandbox.PlugHost).
func (linuxSandbox) PlugHost(cfg sandbox.IfaceConfig) (netdev.Device, error) {
	return sandbox.PlugHost(cfg)
}

// ReopenHost finds a host TAP again (sandbox.ReopenHost).
func (linuxSandbox) ReopenHost(nsPath string, mac packet.MAC) (netdev.Device, string, error) {
	return sandbox.ReopenHost(nsPath, mac[:])
}

// RecreateHost makes a host TAP again in a container (sandbox.RecreateHost,
// named as Docker names interfaces).
func (linuxSandbox) RecreateHost(nsPath string, cfg sandbox.IfaceConfig) (netdev.Device, string, error) {
	return sandbox.RecreateHost(nsPath, dockerIfPrefix, cfg)
}

// dockerIfPrefix is how Docker names the interfaces it moves into a
// container (the DstPrefix the plugin answers at Join): eth0, eth1, ...
const dockerIfPrefix = "eth"

// reopenHost opens the device of ep, a Docker endpoint, after a restart:
// the persistent TAP PlugHost made, which Docker moved into the
// container's namespace (its sandbox key) and renamed. If the namespace
// is there but the device is not (made by an older daemon, which did not
// keep it), it is made again as Docker had configured it: the same MAC,
// address and MTU under a free ethN, and the default route via the
// network's gateway unless the container has one. Callers hold d.mu.
func (d *Daemon) reopenHost(ep *endpoint) (netdev.Device, error) {
	hp, ok := d.sb.(hostPlugger)
	if !ok {
		return nil, errors.New("this sandbox cannot open host TAP devices")
	}
	c := ep.ctr
	dev, name, err := hp.ReopenHost(c.netns, ep.mac)
	if err == nil {
		d.log.Info("docker endpoint's interface found in its container", "container", c.name, "netns", c.netns, "ifname", name)
		return dev, nil
	}
	if !errors.Is(err, sandbox.ErrNoHostTAP) {
		if errors.Is(err, fs.ErrNotExist) {
			// The sandbox went: the container stopped meanwhile.
			return nil, fmt.Errorf("%v: %w", err, errHostTAPGone)
		}
		return nil, err
	}
	n := ep.net
	cfg := sandbox.IfaceConfig{MAC: net.HardwareAddr(ep.mac[:]), Addr: netip.PrefixFrom(ep.ip, n.subnet.Bits()), Gateway: n.gw, MTU: n.rec.MTU}
	dev, name, err = hp.RecreateHost(c.netns, cfg)
	if err != nil {
		return nil, fmt.Errorf("making its interface again: %w", err)
	}
	d.log.Warn("docker endpoint's interface was gone from its container; made again", "container", c.name, "netns", c.netns, "ifname", name, "ip", cfg.Addr)
	return dev, nil
}

// persister is a device that can outlive its descriptor (*netdev.TAP).
type persister interface {
	SetPersist(bool) error
}

// unpersistHost makes the device of ep, if a Docker endpoint's, go when
// the data plane closes it, wherever it is (Docker moves it back to the
// daemon's namespace before Leave; `vxmesh rm` takes it out of a running
// container, as detaching any endpoint does). Callers hold d.mu.
func (d *Daemon) unpersistHost(ep *endpoint) {
	if !ep.ctr.hostTAP || ep.dev == nil {
		return
	}
	if p, ok := ep.dev.(persister); ok {
		if err := p.SetPersist(false); err != nil {
			d.log.Warn("docker endpoint's interface may outlive it", "container", ep.ctr.name, "err", err)
		}
	}
}

// plug makes c's interface: in its namespace, or a host TAP.
func (d *Daemon) plug(c *container, cfg sandbox.IfaceConfig) (netdev.Device, error) {
	if !c.hostTAP {
		return d.sb.Plug(c.netns, cfg)
	}
	hp, ok := d.sb.(hostPlugger)
	if !ok {
		return nil, errors.New("this sandbox cannot make host TAP devices")
	}
	return hp.PlugHost(cfg)
}

// AttachHostTAP attaches container req.Name (new, with this one network)
// to req.Network with a TAP device named req.IfName made in the daemon's
// namespace, with the endpoint's MAC and the network's MTU and no
// address: Docker moves it into the container's namespace (req.Netns, its
// sandbox key, recorded for display) and configures it there. The device
// is not persistent: it goes when the endpoint is detached or the daemon
// stops. req.IP may be an address held by ReserveAddress.
func (d *Daemon) AttachHostTAP(req api.AttachRequest) (api.Endpoint, error) {
	held := d.moveHold(req.Network, req.IP, ipamOwner, req.Name)
	ep, err := d.attach(req, true)
	if err != nil && held {
		// Docker's IPAM still owns the address: ReleaseAddress frees it.
		d.moveHold(req.Network, req.IP, req.Name, ipamOwner)
	}
	if err == nil {
		d.awaitNetworkSAs(req.Network, req.Name)
	}
	return ep, err
}

// moveHold gives the reservation of address ip on network from owner
// from to owner to, if from holds it, and reports whether it did.
func (d *Daemon) moveHold(network, ip, from, to string) bool {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if ips := d.reservedIPs[network]; ips != nil && ips[a] == from {
		ips[a] = to
		return true
	}
	return false
}

// ReserveAddress holds an address of network for an endpoint Docker's
// IPAM asks for: want if it is valid (it must be free), else the lowest
// free one of this node's blocks, so that no other host hands it out. The
// hold lasts until AttachHostTAP takes it or ReleaseAddress; it is not
// saved (a restarted daemon forgets it).
func (d *Daemon) ReserveAddress(network string, want netip.Addr) (netip.Addr, error) {
	d.mu.Lock()
	n, ok := d.networks[network]
	d.mu.Unlock()
	if !ok {
		return netip.Addr{}, notFound("network %q: not found", network)
	}
	w := ""
	if want.IsValid() {
		w = want.String()
	}
	return d.reserveIP(ipamOwner, n, w)
}

// ReleaseAddress gives back an address ReserveAddress holds; one that is
// not held (attached since, or never held) is left alone.
func (d *Daemon) ReleaseAddress(network string, a netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ips := d.reservedIPs[network]; ips != nil && ips[a] == ipamOwner {
		delete(ips, a)
	}
}

// EndpointMAC is the MAC of the endpoint with address a (every endpoint's
// MAC follows from its address).
func (d *Daemon) EndpointMAC(a netip.Addr) packet.MAC { return macForIP(a) }

// checkFreeIPFor is checkFreeIP, except that an address reserved for
// container owner (AttachHostTAP took it from the IPAM hold) is free for
// it; callers hold d.mu. Holds for Docker's IPAM are never free: each is
// one request's.
func (d *Daemon) checkFreeIPFor(owner string, n *localNetwork, a netip.Addr) error {
	if ips := d.reservedIPs[n.rec.Name]; ips != nil && ips[a] == owner && owner != ipamOwner {
		return nil
	}
	return d.checkFreeIP(n, a)
}

// AddAlias gives container name's endpoint on network one more DNS name
// (the Docker container's name, learnt once Docker started it), on every
// host. An alias it has already is no change.
func (d *Daemon) AddAlias(name, network, alias string) error {
	if err := checkName("alias", alias); err != nil {
		return fmt.Errorf("container %q: %w", name, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.containers[name]
	if !ok || c.endpoints[network] == nil {
		return notFound("container %q: not attached to network %q", name, network)
	}
	ep := c.endpoints[network]
	if slices.Contains(ep.aliases, alias) {
		return nil
	}
	old := ep.aliases
	ep.aliases = append(slices.Clip(old), alias)
	if err := d.save(); err != nil {
		ep.aliases = old
		return fmt.Errorf("container %q: %w", name, err)
	}
	d.publishEndpoint(ep)
	d.refreshDNS()
	return nil
}

// PublishPorts sets the published ports of container name's endpoint on
// network to specs (`[HOSTIP:]HOSTPORT:PORT[/udp]`, as `run -p`): the
// Docker network plugin's `docker run -p`, given after the endpoint
// joined. Ports it has already stay open, the others close; a host port
// in use refuses the whole change, naming it, and changes nothing. The
// ports are saved with the endpoint and reopened after a restart.
func (d *Daemon) PublishPorts(name, network string, specs []string) error {
	want, err := parseSpecs(name, specs)
	if err != nil {
		return err
	}
	d.mu.Lock()
	ep, err := d.publishable(name, network)
	var open []gateway.Publish
	if err == nil {
		open = portsMissing(ep.ports, want)
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	// Listening is done without d.mu, as at attach.
	ports, err := d.openPorts(name, network, open)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if ep2, err := d.publishable(name, network); err != nil || ep2 != ep {
		closePorts(ports)
		return notFound("container %q: not attached to network %q any more", name, network)
	}
	for _, pp := range ports {
		ip := ep.ip
		pp.ip.Store(&ip)
		pp.ctr.Store(ep.ctr)
	}
	old := ep.ports
	var keep, gone []*publishedPort
	for _, pp := range old {
		if slices.Contains(want, pp.spec) {
			keep = append(keep, pp)
		} else {
			gone = append(gone, pp)
		}
	}
	ep.ports = append(keep, ports...)
	if err := d.saveContainer(name); err != nil {
		ep.ports = old
		closePorts(ports)
		return fmt.Errorf("container %q: %w", name, err)
	}
	closePorts(gone)
	if len(ports) > 0 || len(gone) > 0 {
		d.log.Info("published ports set", "container", name, "network", network, "ports", ep.savedPorts())
	}
	return nil
}

// UnpublishPorts closes every published port of container name's
// endpoint on network (Docker's RevokeExternalConnectivity); an endpoint
// that is gone has none.
func (d *Daemon) UnpublishPorts(name, network string) error {
	d.mu.Lock()
	_, err := d.publishable(name, network)
	d.mu.Unlock()
	if errors.As(err, new(notFoundError)) {
		return nil
	}
	if err != nil {
		return err
	}
	return d.PublishPorts(name, network, nil)
}

// publishable returns container name's endpoint on network, if it can
// change; callers hold d.mu.
func (d *Daemon) publishable(name, network string) (*endpoint, error) {
	c, ok := d.containers[name]
	if !ok || c.endpoints[network] == nil {
		return nil, notFound("container %q: not attached to network %q", name, network)
	}
	if err := d.checkChangeable(name); err != nil {
		return nil, err
	}
	return c.endpoints[network], nil
}

// portsMissing returns the specs of want that none of ports has.
func portsMissing(ports []*publishedPort, want []gateway.Publish) []gateway.Publish {
	var out []gateway.Publish
	for _, w := range want {
		if !slices.ContainsFunc(ports, func(pp *publishedPort) bool { return pp.spec == w }) {
			out = append(out, w)
		}
	}
	return out
}
