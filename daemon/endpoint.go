package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/sandbox"
	"github.com/vxmesh/vxmesh/vswitch"
)

// container is a network namespace with one endpoint per network it is
// attached to. Managed containers were made by `vxmesh run`: the daemon
// owns their namespace and removes it with them.
type container struct {
	name      string
	netns     string
	nsDev     uint64
	nsIno     uint64
	managed   bool
	endpoints map[string]*endpoint // by network name
}

func (c *container) sortedEndpoints() []*endpoint {
	out := make([]*endpoint, 0, len(c.endpoints))
	for _, ep := range c.endpoints {
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ifname < out[j].ifname })
	return out
}

// endpoint is a container's interface on one network: the TAP device the
// daemon holds, its switch port and the goroutine that reads it.
type endpoint struct {
	ctr     *container
	net     *network
	ip      netip.Addr
	mac     packet.MAC
	ifname  string
	aliases []string

	dev     netdev.Device
	port    *vswitch.PortRef
	done    chan struct{}
	closing atomic.Bool
	state   atomic.Pointer[string]
}

func (ep *endpoint) setState(s string) { ep.state.Store(&s) }

func (ep *endpoint) stateString() string {
	if s := ep.state.Load(); s != nil {
		return *s
	}
	return "down"
}

func (ep *endpoint) saved() savedEndpoint {
	return savedEndpoint{Network: ep.net.rec.Name, IP: ep.ip.String(), MAC: ep.mac.String(), IfName: ep.ifname, Aliases: ep.aliases}
}

// start puts dev on the network's switch and starts forwarding from it.
func (ep *endpoint) start(dev netdev.Device) error {
	port, err := ep.net.sw.AddPort(dev, vswitch.PortConfig{
		Name: ep.ctr.name + "/" + ep.ifname, MAC: ep.mac, IP: ep.ip, Security: true,
	})
	if err != nil {
		return err
	}
	ep.dev, ep.port, ep.done = dev, port, make(chan struct{})
	ep.closing.Store(false)
	ep.setState("up")
	go ep.forward()
	return nil
}

// forward is the endpoint's reader: it reads batches from the TAP device
// and hands them to the switch, run to completion, until the device closes.
func (ep *endpoint) forward() {
	defer close(ep.done)
	b := packet.NewBatch(ep.dev.BatchSize())
	for {
		n, err := ep.dev.Read(b.Bufs, b.Sizes, packet.Headroom)
		if n > 0 {
			ep.port.Input(b.Bufs[:n], b.Sizes[:n], packet.Headroom)
		}
		if err != nil {
			if !ep.closing.Load() {
				ep.setState("down: " + err.Error())
			}
			return
		}
	}
}

// stop ends forwarding and closes the daemon's handle on the device; a
// persistent TAP stays in the container.
func (ep *endpoint) stop() {
	if ep.dev == nil {
		return
	}
	ep.closing.Store(true)
	ep.dev.Close()
	<-ep.done
	ep.net.sw.RemovePort(ep.port)
	ep.dev, ep.port = nil, nil
	ep.setState("down: stopped")
}

// resolvConfPath is the resolv.conf bind-mounted for processes of c.
func (d *Daemon) resolvConfPath() string {
	return filepath.Join(d.cfg.StateDir, "resolv.conf")
}

func (d *Daemon) endpointView(ep *endpoint) api.Endpoint {
	return api.Endpoint{
		Name: ep.ctr.name, Network: ep.net.rec.Name, IP: ep.ip.String(), MAC: ep.mac.String(),
		IfName: ep.ifname, Netns: ep.ctr.netns, Aliases: ep.aliases, Managed: ep.ctr.managed,
		Node: d.cfg.Node, ResolvConf: d.resolvConfPath(), State: ep.stateString(),
	}
}

// Attach wires a namespace to a network (and makes the namespace first
// when req.Create asks for a new container). On any failure nothing it made
// is left behind.
func (d *Daemon) Attach(req api.AttachRequest) (ep api.Endpoint, err error) {
	if err := checkName("container", req.Name); err != nil {
		return api.Endpoint{}, err
	}
	sources := 0
	for _, set := range []bool{req.Netns != "", req.PID != 0, req.Docker != "", req.Create} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		return api.Endpoint{}, fmt.Errorf("container %q: name exactly one of --netns, --pid or --docker", req.Name)
	}
	if req.IfName != "" && (len(req.IfName) > 15 || !validName.MatchString(req.IfName)) {
		return api.Endpoint{}, fmt.Errorf("container %q: interface name %q: invalid", req.Name, req.IfName)
	}
	for _, a := range req.Aliases {
		if err := checkName("alias", a); err != nil {
			return api.Endpoint{}, fmt.Errorf("container %q: %w", req.Name, err)
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[req.Network]
	if !ok {
		return api.Endpoint{}, notFound("network %q: not found", req.Network)
	}
	c := d.containers[req.Name]
	if c != nil && req.Create {
		return api.Endpoint{}, fmt.Errorf("container %q: already exists", req.Name)
	}
	if c != nil && c.endpoints[n.rec.Name] != nil {
		return api.Endpoint{}, fmt.Errorf("container %q: already attached to network %q", req.Name, n.rec.Name)
	}

	ip, err := d.pickIP(n, req.IP)
	if err != nil {
		return api.Endpoint{}, fmt.Errorf("container %q: %w", req.Name, err)
	}

	// Find or make the namespace.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	newCtr := c == nil
	if newCtr {
		c = &container{name: req.Name, endpoints: map[string]*endpoint{}}
		switch {
		case req.Create:
			nsName := d.cfg.NetnsPrefix + req.Name
			path, err := d.sb.CreateNamedNetns(nsName)
			if err != nil {
				return api.Endpoint{}, fmt.Errorf("container %q: %w", req.Name, err)
			}
			undo = append(undo, func() { d.sb.DeleteNamedNetns(nsName) })
			c.netns, c.managed = path, true
		case req.Netns != "":
			c.netns = req.Netns
		case req.PID != 0:
			c.netns = sandbox.NetnsPathForPID(req.PID)
		case req.Docker != "":
			pid, err := d.sb.DockerPID(req.Docker)
			if err != nil {
				return api.Endpoint{}, fmt.Errorf("container %q: %w", req.Name, err)
			}
			c.netns = sandbox.NetnsPathForPID(pid)
		}
		dev, ino, err := d.sb.NetnsIdentity(c.netns)
		if err != nil {
			return api.Endpoint{}, fmt.Errorf("container %q: netns %s: %w", req.Name, c.netns, err)
		}
		if other := d.containerByNetns(dev, ino); other != nil {
			return api.Endpoint{}, fmt.Errorf("container %q: netns %s already belongs to container %q", req.Name, c.netns, other.name)
		}
		c.nsDev, c.nsIno = dev, ino
	} else if !req.Create {
		// A second network for an existing container: the namespace must
		// be the same one.
		path := req.Netns
		switch {
		case req.PID != 0:
			path = sandbox.NetnsPathForPID(req.PID)
		case req.Docker != "":
			pid, err := d.sb.DockerPID(req.Docker)
			if err != nil {
				return api.Endpoint{}, fmt.Errorf("container %q: %w", req.Name, err)
			}
			path = sandbox.NetnsPathForPID(pid)
		}
		dev, ino, err := d.sb.NetnsIdentity(path)
		if err != nil {
			return api.Endpoint{}, fmt.Errorf("container %q: netns %s: %w", req.Name, path, err)
		}
		if dev != c.nsDev || ino != c.nsIno {
			return api.Endpoint{}, fmt.Errorf("container %q: exists with another network namespace (%s)", req.Name, c.netns)
		}
	}

	ifname := req.IfName
	if ifname == "" {
		ifname = c.freeIfName()
	}
	for _, other := range c.endpoints {
		if other.ifname == ifname {
			return api.Endpoint{}, fmt.Errorf("container %q: interface %q already used by network %q", req.Name, ifname, other.net.rec.Name)
		}
	}
	e := &endpoint{ctr: c, net: n, ip: ip, mac: macForIP(ip), ifname: ifname, aliases: req.Aliases}
	if err := d.writeResolvConf(); err != nil {
		return api.Endpoint{}, err
	}
	dev, err := d.sb.Plug(c.netns, sandbox.IfaceConfig{
		IfName: ifname, MAC: net.HardwareAddr(e.mac[:]), Addr: netip.PrefixFrom(ip, n.subnet.Bits()),
		Gateway: n.gw, MTU: n.rec.MTU,
	})
	if err != nil {
		return api.Endpoint{}, fmt.Errorf("container %q: %w", req.Name, err)
	}
	undo = append(undo, func() { dev.Close(); d.sb.Unplug(c.netns, ifname) })
	if err := e.start(dev); err != nil {
		return api.Endpoint{}, fmt.Errorf("container %q: %w", req.Name, err)
	}
	undo = append(undo, func() { e.stop() })
	c.endpoints[n.rec.Name] = e
	undo = append(undo, func() { delete(c.endpoints, n.rec.Name) })
	if newCtr {
		d.containers[c.name] = c
		undo = append(undo, func() { delete(d.containers, c.name) })
	}
	if err := d.save(); err != nil {
		return api.Endpoint{}, err
	}
	d.publishEndpoint(e)
	d.dnsAttached(c)
	d.log.Info("endpoint attached", "container", c.name, "network", n.rec.Name, "ip", ip, "ifname", ifname, "netns", c.netns)
	return d.endpointView(e), nil
}

// pickIP honours a requested address if it is a free host address of n,
// or allocates the lowest free one from the address blocks this node has
// claimed in the cluster, claiming another block when they are full, so
// that two nodes never hand out the same address.
func (d *Daemon) pickIP(n *network, want string) (netip.Addr, error) {
	used := d.usedIPs(n)
	if want == "" {
		for _, b := range d.cl.ClaimedBlocks(n.rec.Name) {
			if a, err := allocate(b, used, n.subnet); err == nil {
				return a, nil
			}
		}
		b, err := d.cl.ClaimBlock(n.rec.Name, n.subnet, blockBits(n.subnet))
		if err != nil {
			return netip.Addr{}, fmt.Errorf("network %q: no free address block: %w", n.rec.Name, err)
		}
		return allocate(b, used, n.subnet)
	}
	a, err := netip.ParseAddr(want)
	if err != nil || !usableHost(n.subnet, a) {
		return netip.Addr{}, fmt.Errorf("ip %q: not a host address of network %q (%s)", want, n.rec.Name, n.subnet)
	}
	if used[a] {
		if a == n.gw {
			return netip.Addr{}, fmt.Errorf("ip %s: is the gateway of network %q", a, n.rec.Name)
		}
		return netip.Addr{}, fmt.Errorf("ip %s: already in use on network %q", a, n.rec.Name)
	}
	if err := d.holdBlockOf(n, a); err != nil {
		return netip.Addr{}, err
	}
	return a, nil
}

func (c *container) freeIfName() string {
	for i := 0; ; i++ {
		name := fmt.Sprintf("eth%d", i)
		taken := false
		for _, ep := range c.endpoints {
			if ep.ifname == name {
				taken = true
			}
		}
		if !taken {
			return name
		}
	}
}

func (d *Daemon) containerByNetns(dev, ino uint64) *container {
	for _, c := range d.containers {
		if c.nsDev == dev && c.nsIno == ino {
			return c
		}
	}
	return nil
}

// writeResolvConf makes sure the resolv.conf for container processes
// exists: the embedded resolver address with ndots:0, as Docker writes it.
func (d *Daemon) writeResolvConf() error {
	p := d.resolvConfPath()
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	return sandbox.WriteResolvConf(p)
}

// Detach removes a container's endpoint on one network (on its only
// network when network is empty). An attached (unmanaged) container with no
// endpoint left is forgotten; a managed one stays until `rm`.
func (d *Daemon) Detach(name, network string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.containers[name]
	if !ok {
		return notFound("container %q: not found", name)
	}
	if network == "" {
		if len(c.endpoints) != 1 {
			return fmt.Errorf("container %q: attached to %d networks; name one with --network", name, len(c.endpoints))
		}
		for k := range c.endpoints {
			network = k
		}
	}
	ep, ok := c.endpoints[network]
	if !ok {
		return notFound("container %q: not attached to network %q", name, network)
	}
	d.removeEndpoint(ep)
	if len(c.endpoints) == 0 && !c.managed {
		delete(d.containers, name)
	}
	return d.save()
}

// removeEndpoint stops forwarding and deletes the interface from the
// container; callers hold d.mu.
func (d *Daemon) removeEndpoint(ep *endpoint) {
	d.unpublishEndpoint(ep)
	ep.stop()
	if err := d.sb.Unplug(ep.ctr.netns, ep.ifname); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("removing interface", "container", ep.ctr.name, "ifname", ep.ifname, "err", err)
	}
	delete(ep.ctr.endpoints, ep.net.rec.Name)
	d.dnsDetached(ep.ctr)
	d.log.Info("endpoint detached", "container", ep.ctr.name, "network", ep.net.rec.Name)
}

// RemoveContainer removes a container: a managed one's processes are
// stopped and its namespace deleted; an attached one is detached from all
// its networks and its namespace left alone.
func (d *Daemon) RemoveContainer(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.containers[name]
	if !ok {
		return notFound("container %q: not found", name)
	}
	if c.managed {
		if err := d.sb.KillNetns(c.netns); err != nil {
			return fmt.Errorf("container %q: stopping its processes: %w", name, err)
		}
	}
	for _, ep := range c.sortedEndpoints() {
		d.removeEndpoint(ep)
	}
	if c.managed {
		if err := d.sb.DeleteNamedNetns(filepath.Base(c.netns)); err != nil {
			d.log.Warn("deleting netns", "container", name, "netns", c.netns, "err", err)
		}
	}
	delete(d.containers, name)
	d.log.Info("container removed", "container", name)
	return d.save()
}

// Endpoints lists every endpoint of this host.
func (d *Daemon) Endpoints() []api.Endpoint {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := []api.Endpoint{}
	for _, c := range d.sortedContainers() {
		for _, ep := range c.sortedEndpoints() {
			out = append(out, d.endpointView(ep))
		}
	}
	return out
}

// Containers lists the containers with the processes in their namespaces.
func (d *Daemon) Containers() []api.Container {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := []api.Container{}
	for _, c := range d.sortedContainers() {
		out = append(out, d.containerView(c))
	}
	return out
}

// Container returns one container.
func (d *Daemon) Container(name string) (api.Container, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.containers[name]
	if !ok {
		return api.Container{}, notFound("container %q: not found", name)
	}
	return d.containerView(c), nil
}

func (d *Daemon) containerView(c *container) api.Container {
	pids, _ := d.sb.PIDsInNetns(c.netns)
	if pids == nil {
		pids = []int{}
	}
	v := api.Container{Name: c.name, Netns: c.netns, Managed: c.managed, PIDs: pids, ResolvConf: d.resolvConfPath(), Endpoints: []api.Endpoint{}}
	for _, ep := range c.sortedEndpoints() {
		v.Endpoints = append(v.Endpoints, d.endpointView(ep))
	}
	return v
}

// restore rebuilds networks and containers from the state directory and
// reopens every endpoint's persistent TAP inside its namespace. An
// endpoint whose namespace or interface is gone is kept, marked down, so
// the operator sees it and can remove it.
func (d *Daemon) restore() ([]savedNetwork, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, err := loadState(d.cfg.StateDir)
	if err != nil {
		return nil, err
	}
	for _, rec := range s.Networks {
		if err := d.addLocalNetwork(rec); err != nil {
			return nil, err
		}
	}
	for _, sc := range s.Containers {
		c := &container{name: sc.Name, netns: sc.Netns, nsDev: sc.NsDev, nsIno: sc.NsIno, managed: sc.Managed, endpoints: map[string]*endpoint{}}
		d.containers[c.name] = c
		nsErr := error(nil)
		if dev, ino, err := d.sb.NetnsIdentity(c.netns); err != nil {
			nsErr = err
		} else if dev != c.nsDev || ino != c.nsIno {
			nsErr = errors.New("the namespace at that path is not the container's any more")
		}
		for _, se := range sc.Endpoints {
			n, ok := d.networks[se.Network]
			if !ok {
				return nil, fmt.Errorf("state: container %q: unknown network %q", sc.Name, se.Network)
			}
			ip, err := netip.ParseAddr(se.IP)
			if err != nil {
				return nil, fmt.Errorf("state: container %q: %w", sc.Name, err)
			}
			mac, err := packet.ParseMAC(se.MAC)
			if err != nil {
				return nil, fmt.Errorf("state: container %q: %w", sc.Name, err)
			}
			ep := &endpoint{ctr: c, net: n, ip: ip, mac: mac, ifname: se.IfName, aliases: se.Aliases}
			c.endpoints[n.rec.Name] = ep
			if nsErr != nil {
				ep.setState("down: netns " + c.netns + ": " + nsErr.Error())
				d.log.Warn("endpoint down", "container", c.name, "network", n.rec.Name, "err", nsErr)
				continue
			}
			dev, err := d.sb.Reopen(c.netns, ep.ifname)
			if err == nil {
				err = ep.start(dev)
				if err != nil {
					dev.Close()
				}
			}
			if err != nil {
				ep.setState("down: " + err.Error())
				d.log.Warn("endpoint down", "container", c.name, "network", n.rec.Name, "err", err)
				continue
			}
			d.log.Info("endpoint restored", "container", c.name, "network", n.rec.Name, "ip", ip)
		}
		if nsErr == nil && len(c.endpoints) > 0 {
			d.dnsAttached(c)
		}
	}
	return s.Networks, nil
}
