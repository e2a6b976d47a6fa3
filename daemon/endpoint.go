package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/sandbox"
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
	// mainPID and exitStatus are the main process of a container made by
	// `run` and, once it exited, its exit status, as its monitor (or the
	// foreground run) reported them (see SetMainProcess); saved.
	mainPID    int
	exitStatus *int
	// stopped is set (under the daemon's mu) once the main process exited
	// and no process is left in the namespace: its endpoints are withdrawn
	// from the cluster and its published ports closed until a main process
	// is reported started again (exited.go); saved.
	stopped bool
	// exitRecheck is when checkNamespaces looks again whether the
	// processes an exited main process left are gone.
	exitRecheck exitRecheck
	// command is the main process `run` started (nil: attached, or made
	// by a vxmesh that did not save it), which start and the restart
	// policy start again; policy is the restart policy; both saved
	// (lifecycle.go).
	command *api.Command
	policy  api.RestartPolicy
	// restarts counts the policy's restarts (saved); startedAt is when
	// the main process was last reported started (saved).
	restarts  restarts
	startedAt time.Time
	// manualStop is set by `vxmesh stop` until the next start: the
	// policy starts it no more (saved).
	manualStop bool
	// restartTimer is the policy's pending start (restartGen numbers
	// them); restartDue that one was pending when the daemon stopped
	// (saved; taken at start). starting is set while a start is made
	// without d.mu.
	restartTimer *time.Timer
	restartGen   uint64
	restartDue   bool
	starting     bool
	// hostTAP containers are Docker's (the network plugin, AttachHostTAP):
	// their interface is a TAP device made in the daemon's namespace for
	// Docker to move into the container's; netns is Docker's sandbox key
	// and nsDev, nsIno are unknown (zero).
	hostTAP bool
	// gone is set once the container leaves the records, before its
	// teardown: no fast path is set up in its namespace after that.
	gone atomic.Bool
	// nsGone is set (under the daemon's mu) once its namespace was found
	// gone, at restore or by watchNamespaces: its endpoints are withdrawn
	// from the cluster and the data plane until it is removed
	// (withdrawGone). A namespace does not come back: a new one at the
	// same path is another.
	nsGone bool
}

func (c *container) sortedEndpoints() []*endpoint {
	out := make([]*endpoint, 0, len(c.endpoints))
	for _, ep := range c.endpoints {
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ifname < out[j].ifname })
	return out
}

// endpoint is a container's interface on one network: the daemon's side
// of the TAP device, which the data plane reads and switches while the
// endpoint is in the desired state (desiredDataplane).
type endpoint struct {
	ctr    *container
	net    *localNetwork
	ip     netip.Addr
	mac    packet.MAC
	ifname string
	// port is portName, made once with the endpoint (every change lists
	// every port by name).
	port    string
	aliases []string
	// services are the services the endpoint joined as a backend.
	services []svcMember
	// ports are the endpoint's published ports (publish.go).
	ports []*publishedPort

	// dev is the open device, handed to the data plane (which closes it
	// once the endpoint leaves the desired state); nil while the endpoint
	// is down, and down says why.
	dev  netdev.Device
	down string
}

// portName names the endpoint's switch port.
func (ep *endpoint) portName() string {
	if ep.port != "" {
		return ep.port
	}
	return ep.ctr.name + "/" + ep.ifname
}

// endpointState is "up", or "down: " and why.
func (d *Daemon) endpointState(ep *endpoint) string {
	if ep.ctr.stopped && !ep.ctr.nsGone {
		return downExited
	}
	if ep.dev == nil {
		if ep.down != "" {
			return ep.down
		}
		return "down"
	}
	if s := d.dp.PortState(ep.net.rec.Name, ep.portName()); s != "" {
		return s
	}
	return "down"
}

func (ep *endpoint) saved() savedEndpoint {
	s := savedEndpoint{Network: ep.net.rec.Name, IP: ep.ip.String(), MAC: ep.mac.String(), IfName: ep.ifname, Aliases: ep.aliases, Published: ep.savedPorts()}
	for _, m := range ep.services {
		s.Services = append(s.Services, savedSvcMember{Name: m.name, ID: m.id, Weight: m.weight, Health: m.health})
	}
	return s
}

// resolvConfPath is the resolv.conf bind-mounted for processes of c.
func (d *Daemon) resolvConfPath() string {
	return filepath.Join(d.cfg.StateDir, "resolv.conf")
}

func (d *Daemon) endpointView(ep *endpoint) api.Endpoint {
	return api.Endpoint{
		Name: ep.ctr.name, Network: ep.net.rec.Name, IP: ep.ip.String(), MAC: ep.mac.String(),
		IfName: ep.ifname, Netns: ep.ctr.netns, Aliases: ep.aliases, Managed: ep.ctr.managed,
		Node: d.cfg.Node, ResolvConf: d.resolvConfPath(), MountNS: d.mountNS, State: d.endpointState(ep),
		Published: ep.portsView(),
	}
}

// Attach wires a namespace to a network (and makes the namespace first
// when req.Create asks for a new container). On any failure nothing it made
// is left behind.
func (d *Daemon) Attach(req api.AttachRequest) (ep api.Endpoint, err error) {
	if ep, err = d.attach(req, false); err == nil {
		d.awaitNetworkSAs(req.Network, req.Name)
	}
	return ep, err
}

// attach is Attach, or AttachHostTAP with hostTAP.
func (d *Daemon) attach(req api.AttachRequest, hostTAP bool) (ep api.Endpoint, err error) {
	if err := checkAttachRequest(req, hostTAP); err != nil {
		return api.Endpoint{}, err
	}

	st := d.stepTimer()
	specs, err := parsePublish(req)
	if err != nil {
		return api.Endpoint{}, err
	}
	// The host ports first: one in use refuses the attach before
	// anything is made.
	ports, err := d.openPorts(req.Name, req.Network, specs)
	if err != nil {
		return api.Endpoint{}, err
	}
	defer func() {
		if err != nil {
			closePorts(ports)
		}
	}()

	st.step("ports")
	n, c, err := d.reserveAttach(req, st)
	if err != nil {
		return api.Endpoint{}, err
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
		d.mu.Lock()
		d.endAttach(req.Name)
		d.mu.Unlock()
	}()

	// Without d.mu: the namespace (the Docker API), the address (block
	// claims are cluster round trips) and the interface. The name is
	// reserved (d.attaching) and the address too (d.reservedIPs); what
	// others may change meanwhile is checked again in commitAttach.
	st.step("begin")
	newCtr := c == nil
	if c, err = d.attachNetns(req, c, hostTAP, &undo); err != nil {
		return api.Endpoint{}, err
	}
	st.step("netns")
	ip, err := d.reserveIP(req.Name, n, req.IP)
	if err != nil {
		return api.Endpoint{}, fmt.Errorf("container %q: %w", req.Name, err)
	}
	st.step("ip")
	e, cfg, err := d.prepareAttach(req, n, c, ip, ports, st)
	if err != nil {
		return api.Endpoint{}, err
	}
	st.step("prepare")
	dev, err := d.plug(c, cfg)
	if err != nil {
		return api.Endpoint{}, fmt.Errorf("container %q: %w", req.Name, err)
	}
	if !c.hostTAP { // a host TAP goes with its descriptor
		undo = append(undo, func() { d.sb.Unplug(c.netns, e.ifname) })
	}
	st.step("plug")
	return d.finishAttach(n, c, e, dev, newCtr, st)
}

// checkAttachRequest refuses an attach request that is malformed in
// itself: its names, its one namespace source, a host TAP's needs.
func checkAttachRequest(req api.AttachRequest, hostTAP bool) error {
	if err := checkName("container", req.Name); err != nil {
		return err
	}
	sources := 0
	for _, set := range []bool{req.Netns != "", req.PID != 0, req.Docker != "", req.Create} {
		if set {
			sources++
		}
	}
	if sources != 1 {
		return invalid("container %q: name exactly one of --netns, --pid or --docker", req.Name)
	}
	if hostTAP && (req.Netns == "" || req.IfName == "" || len(req.Publish) > 0) {
		return invalid("container %q: a host TAP attach needs the sandbox key and the interface name, and publishes no port", req.Name)
	}
	if err := checkLifecycleRequest(req); err != nil {
		return err
	}
	if req.IfName != "" && (len(req.IfName) > 15 || !validName.MatchString(req.IfName)) {
		return invalid("container %q: interface name %q: invalid", req.Name, req.IfName)
	}
	for _, a := range req.Aliases {
		if err := checkName("alias", a); err != nil {
			return fmt.Errorf("container %q: %w", req.Name, err)
		}
	}
	if hostTAP {
		return nil // Docker's names: the plugin keeps what it is given
	}
	// The name of a container run makes must resolve; an attached
	// namespace's may be an internal one (the CNI plugin's are 64
	// characters), reached by its aliases.
	if req.Create {
		if err := checkResolvable("container", req.Name); err != nil {
			return err
		}
	}
	for _, a := range req.Aliases {
		if err := checkResolvable("alias", a); err != nil {
			return fmt.Errorf("container %q: %w", req.Name, err)
		}
	}
	return nil
}

// maxDNSLabel is the longest DNS label (RFC 1035).
const maxDNSLabel = 63

// checkResolvable refuses a new container's name or alias that could
// never resolve (checkName lets 64 characters pass, and dots anywhere): a
// dot-separated part of more than 63 characters, or an empty one. Names
// saved or gossiped are not held to it: one made by an older vxmesh
// still loads.
func checkResolvable(kind, name string) error {
	for _, l := range strings.Split(name, ".") {
		if l == "" || len(l) > maxDNSLabel {
			return invalid("%s %q: not a DNS name (each dot-separated part 1-%d characters): it could never resolve", kind, name, maxDNSLabel)
		}
	}
	return nil
}

// reserveAttach takes d.mu, reserves the container name for this attach
// and checks the network and its services; it returns the network and
// the existing container (nil for a new one). On error nothing stays
// reserved.
func (d *Daemon) reserveAttach(req api.AttachRequest, st *stepTimer) (*localNetwork, *container, error) {
	st.lock(&d.mu)
	defer d.mu.Unlock()
	n, c, err := d.beginAttach(req)
	if err == nil {
		if _, err = d.attachMembers(req, n); err != nil {
			d.endAttach(req.Name)
		}
	}
	return n, c, err
}

// attachNetns returns the container the endpoint goes into: c when it
// exists (in the namespace req names), else a new one, for a host TAP or
// in a namespace found or made (its undo appended to undo). Without d.mu.
func (d *Daemon) attachNetns(req api.AttachRequest, c *container, hostTAP bool, undo *[]func()) (*container, error) {
	switch {
	case c == nil && hostTAP:
		return &container{name: req.Name, netns: req.Netns, hostTAP: true, endpoints: map[string]*endpoint{}}, nil
	case c == nil:
		return d.containerNetns(req, undo)
	case hostTAP || c.hostTAP:
		return c, conflict("container %q: exists; a Docker endpoint's container has that one network only", req.Name)
	default:
		return c, d.checkSameNetns(c, req)
	}
}

// prepareAttach takes d.mu, makes the endpoint and its interface's
// configuration, checks the services again (one may have gone meanwhile)
// and points the published ports at the endpoint.
func (d *Daemon) prepareAttach(req api.AttachRequest, n *localNetwork, c *container, ip netip.Addr, ports []*publishedPort, st *stepTimer) (*endpoint, sandbox.IfaceConfig, error) {
	st.lock(&d.mu)
	defer d.mu.Unlock()
	e, cfg, err := d.prepareEndpoint(req, n, c, ip)
	if err == nil {
		// The services again: one may have gone meanwhile.
		e.services, err = d.attachMembers(req, n)
		e.ports = ports
		for _, pp := range ports {
			pp.ip.Store(&ip)
			pp.ctr.Store(c)
		}
	}
	return e, cfg, err
}

// finishAttach takes d.mu, commits the plugged endpoint, publishes it
// and its DNS records and logs the attach.
func (d *Daemon) finishAttach(n *localNetwork, c *container, e *endpoint, dev netdev.Device, newCtr bool, st *stepTimer) (api.Endpoint, error) {
	st.lock(&d.mu)
	defer d.mu.Unlock()
	if err := d.commitAttach(n, c, e, dev, newCtr, st); err != nil {
		return api.Endpoint{}, fmt.Errorf("container %q: %w", c.name, err)
	}
	d.publishEndpoint(e)
	st.step("publish")
	d.refreshDNS() // dnsAttached's own refresh then finds it done
	st.step("dns-records")
	d.dnsAttached(c)
	st.step("dns-listen")
	st.log(d.log, "attach steps", "container", c.name, "network", n.rec.Name, "containers", len(d.containers))
	d.log.Info("endpoint attached", "container", c.name, "network", n.rec.Name, "ip", e.ip, "ifname", e.ifname, "netns", c.netns)
	return d.endpointView(e), nil
}

// beginAttach checks req against the daemon's records and reserves the
// container's name for the attach; callers hold d.mu.
func (d *Daemon) beginAttach(req api.AttachRequest) (*localNetwork, *container, error) {
	d.catchUpNetworks()
	n, ok := d.networks[req.Network]
	if !ok {
		return nil, nil, notFound("network %q: not found", req.Network)
	}
	if _, busy := d.attaching[req.Name]; busy {
		return nil, nil, conflict("container %q: another attach of it is in progress", req.Name)
	}
	if d.tearingDown[req.Name] {
		return nil, nil, conflict("container %q: being removed or detached; try again", req.Name)
	}
	c := d.containers[req.Name]
	if c != nil && c.nsGone {
		return nil, nil, conflict("container %q: its network namespace %s is gone (remove it with vxmesh rm)", req.Name, c.netns)
	}
	if c != nil && req.Create {
		return nil, nil, conflict("container %q: already exists", req.Name)
	}
	if c != nil && c.endpoints[n.rec.Name] != nil {
		return nil, nil, conflict("container %q: already attached to network %q", req.Name, n.rec.Name)
	}
	if d.leaving[req.Name] {
		return nil, nil, conflict("container %q: its backends are draining before its removal; try again", req.Name)
	}
	d.attaching[req.Name] = n.rec.Name
	return n, c, nil
}

// endAttach releases what beginAttach and reserveIP reserved; callers
// hold d.mu.
func (d *Daemon) endAttach(name string) {
	delete(d.attaching, name)
	for _, ips := range d.reservedIPs {
		for a, owner := range ips {
			if owner == name {
				delete(ips, a)
			}
		}
	}
}

// containerNetns finds or makes the namespace of a new container (undo
// deletes one it made). It does not need d.mu.
func (d *Daemon) containerNetns(req api.AttachRequest, undo *[]func()) (*container, error) {
	c := &container{name: req.Name, endpoints: map[string]*endpoint{}}
	switch {
	case req.Create:
		nsName := d.cfg.NetnsPrefix + req.Name
		path, err := d.sb.CreateNamedNetns(nsName)
		if err != nil {
			return nil, fmt.Errorf("container %q: %w", req.Name, err)
		}
		*undo = append(*undo, func() { d.sb.DeleteNamedNetns(nsName) })
		c.netns, c.managed = path, true
		setLifecycle(c, req)
	case req.Netns != "":
		c.netns = req.Netns
	case req.PID != 0:
		c.netns = sandbox.NetnsPathForPID(req.PID)
	case req.Docker != "":
		pid, err := d.sb.DockerPID(req.Docker)
		if err != nil {
			return nil, fmt.Errorf("container %q: %w", req.Name, err)
		}
		c.netns = sandbox.NetnsPathForPID(pid)
	}
	dev, ino, err := d.sb.NetnsIdentity(c.netns)
	if err != nil {
		return nil, netnsError(req, c.netns, err)
	}
	if [2]uint64{dev, ino} == d.selfNs {
		return nil, invalid("container %q: netns %s is the daemon's own network namespace", req.Name, c.netns)
	}
	c.nsDev, c.nsIno = dev, ino
	return c, nil
}

// prepareEndpoint checks again what may have changed while d.mu was not
// held, and describes the endpoint and its interface; callers hold d.mu.
func (d *Daemon) prepareEndpoint(req api.AttachRequest, n *localNetwork, c *container, ip netip.Addr) (*endpoint, sandbox.IfaceConfig, error) {
	if err := d.checkAttachable(n, c); err != nil {
		return nil, sandbox.IfaceConfig{}, fmt.Errorf("container %q: %w", req.Name, err)
	}
	ifname := req.IfName
	if ifname == "" {
		ifname = c.freeIfName()
	}
	for _, other := range c.endpoints {
		if other.ifname == ifname {
			return nil, sandbox.IfaceConfig{}, conflict("container %q: interface %q already used by network %q", req.Name, ifname, other.net.rec.Name)
		}
	}
	e := &endpoint{ctr: c, net: n, ip: ip, mac: macForIP(ip), ifname: ifname, aliases: req.Aliases}
	e.port = e.portName()
	if err := d.writeResolvConf(); err != nil {
		return nil, sandbox.IfaceConfig{}, err
	}
	cfg := sandbox.IfaceConfig{
		IfName: ifname, MAC: net.HardwareAddr(e.mac[:]), Addr: netip.PrefixFrom(ip, n.subnet.Bits()), MTU: n.rec.MTU,
	}
	// The default route goes via the gateway of the first network
	// attached while the namespace has none (Plug checks): later networks
	// get only their subnet's route (the address's own), a namespace that
	// came with a default route keeps it, and one whose default route went
	// with a detached network gets it back from the next attach.
	cfg.Gateway = n.gw
	return e, cfg, nil
}

// checkAttachable fails when n is no longer the network of its name, or
// c (a new container) now shares its namespace with another container;
// callers hold d.mu.
func (d *Daemon) checkAttachable(n *localNetwork, c *container) error {
	if d.networks[n.rec.Name] != n {
		return conflict("network %q: removed or replaced during the attach", n.rec.Name)
	}
	if other := d.containerByNetns(c.nsDev, c.nsIno); other != nil && other != c && !c.hostTAP {
		return conflict("netns %s already belongs to container %q", c.netns, other.name)
	}
	return nil
}

// commitAttach records e with its device, saves the state and applies the
// data plane. On failure it leaves the records as they were and the
// device closed; callers hold d.mu.
func (d *Daemon) commitAttach(n *localNetwork, c *container, e *endpoint, dev netdev.Device, newCtr bool, st *stepTimer) error {
	if err := d.checkAttachable(n, c); err != nil {
		dev.Close()
		return err
	}
	e.dev = dev
	c.endpoints[n.rec.Name] = e
	if newCtr {
		d.containers[c.name] = c
	}
	d.containerChanged(c)
	st.step("record")
	forget := func() {
		delete(c.endpoints, n.rec.Name)
		if newCtr {
			delete(d.containers, c.name)
		}
		d.containerChanged(c)
	}
	if err := d.saveContainer(c.name); err != nil {
		forget()
		dev.Close()
		return err
	}
	st.step("save")
	err := dataplaneErrors(d.applyDataplane(), n.rec.Name, "port "+e.portName())
	st.step("dataplane")
	if err != nil {
		forget()
		if err := d.saveContainer(c.name); err != nil {
			d.log.Error("saving state", "err", err)
		}
		// The data plane has the device: applying without the endpoint
		// closes it.
		if err := d.applyDataplane(); err != nil {
			d.log.Error("data plane", "err", err)
		}
		return err
	}
	return nil
}

// netnsError is the error of an attach whose namespace at path could not
// be opened: for --pid, a process that does not exist says so; otherwise
// the path is named once.
func netnsError(req api.AttachRequest, path string, err error) error {
	switch {
	case req.PID != 0 && errors.Is(err, fs.ErrNotExist):
		return invalid("container %q: --pid %d: no such process", req.Name, req.PID)
	case strings.Contains(err.Error(), path):
		return invalid("container %q: %v", req.Name, err)
	default:
		return invalid("container %q: netns %s: %v", req.Name, path, err)
	}
}

// checkSameNetns checks that req, which adds a network to the existing
// container c, names c's namespace, and that c's namespace path still
// names it: the new interface goes in at that path.
func (d *Daemon) checkSameNetns(c *container, req api.AttachRequest) error {
	path := req.Netns
	switch {
	case req.PID != 0:
		path = sandbox.NetnsPathForPID(req.PID)
	case req.Docker != "":
		pid, err := d.sb.DockerPID(req.Docker)
		if err != nil {
			return fmt.Errorf("container %q: %w", req.Name, err)
		}
		path = sandbox.NetnsPathForPID(pid)
	}
	dev, ino, err := d.sb.NetnsIdentity(path)
	if err != nil {
		return netnsError(req, path, err)
	}
	if dev != c.nsDev || ino != c.nsIno {
		return conflict("container %q: exists with another network namespace (%s)", req.Name, c.netns)
	}
	_, release, err := d.pinNetns(c)
	if err != nil {
		return conflict("container %q: its network namespace %s is gone (remove it with vxmesh rm)", req.Name, c.netns)
	}
	release()
	return nil
}

// reserveIP honours a requested address if it is a free host address of
// n, or allocates the lowest free one from the address blocks this node
// has claimed in the cluster, claiming another block when they are full,
// so that two nodes never hand out the same address. A requested address
// must lie in a block this node holds or can claim: only the holder of a
// block hands out its addresses. The address is reserved for the
// container until endAttach. Claims are cluster round trips: they are
// made without d.mu, and the address is checked again after.
func (d *Daemon) reserveIP(owner string, n *localNetwork, want string) (netip.Addr, error) {
	if want == "" {
		return d.allocateIP(owner, n)
	}
	a, err := netip.ParseAddr(want)
	if err != nil || !usableHost(n.subnet, a) {
		return netip.Addr{}, invalid("ip %q: not a host address of network %q (%s)", want, n.rec.Name, n.subnet)
	}
	d.mu.Lock()
	err = d.checkFreeIPFor(owner, n, a)
	d.mu.Unlock()
	if err != nil {
		return netip.Addr{}, err
	}
	block, _ := a.Prefix(blockBits(n.subnet))
	d.mu.Lock()
	d.blocks.setBusy(n.rec.Name, 1)
	d.mu.Unlock()
	err = d.cl.ClaimBlockAt(n.rec.Name, block)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.blocks.setBusy(n.rec.Name, -1)
	if err != nil {
		return netip.Addr{}, conflict("ip %s: %w", a, err)
	}
	// Endpoints learnt and addresses reserved meanwhile count too.
	if err := d.checkFreeIPFor(owner, n, a); err != nil {
		return netip.Addr{}, err
	}
	if d.blocks.isReleasing(n.rec.Name, a) {
		return netip.Addr{}, conflict("ip %s: its address block is being given back by this node; try again", a)
	}
	d.reserveIPFor(owner, n, a)
	return a, nil
}

// checkFreeIP fails when a is taken in n; callers hold d.mu.
func (d *Daemon) checkFreeIP(n *localNetwork, a netip.Addr) error {
	if !d.usedIPs(n)[a] {
		return nil
	}
	if a == n.gw {
		return conflict("ip %s: is the gateway of network %q", a, n.rec.Name)
	}
	if a == n.gwHost {
		return conflict("ip %s: is this host's gateway address on network %q (routing mesh)", a, n.rec.Name)
	}
	for name, s := range d.clusterServices() {
		if s.vips[n.rec.Name] == a {
			return conflict("ip %s: already the VIP of service %q on network %q", a, name, n.rec.Name)
		}
	}
	return conflict("ip %s: already in use on network %q", a, n.rec.Name)
}

// reserveIPFor reserves a in n for the attach of container owner; callers
// hold d.mu.
func (d *Daemon) reserveIPFor(owner string, n *localNetwork, a netip.Addr) {
	if d.reservedIPs[n.rec.Name] == nil {
		d.reservedIPs[n.rec.Name] = map[netip.Addr]string{}
	}
	d.reservedIPs[n.rec.Name][a] = owner
	d.blocks.inUse(n.rec.Name, a)
}

// maxFreshBlocks bounds how many new blocks one allocation claims.
const maxFreshBlocks = 4

// allocateIP reserves the lowest free address of the blocks this node
// holds, or claims a block that still has a free address. A block found
// full after its claim (endpoints learnt during the claim round) is given
// back and the next one tried, within the same request. Blocks being
// released (releaseEmptyBlocks) are skipped.
//
// Claims are made one at a time (d.blockClaim): a block is this node's to
// allocate from only once its claim round has won it (ClaimedBlocks), so
// an allocation that waited for another one's claim looks at the blocks
// held again and takes its address from the block just won when it has
// room, instead of claiming one more block for each allocation in flight.
func (d *Daemon) allocateIP(owner string, n *localNetwork) (netip.Addr, error) {
	d.mu.Lock()
	a, ok := d.allocateHeld(owner, n)
	d.mu.Unlock()
	if ok {
		return a, nil
	}
	d.blockClaim.Lock()
	defer d.blockClaim.Unlock()
	d.mu.Lock()
	if a, ok := d.allocateHeld(owner, n); ok {
		d.mu.Unlock()
		return a, nil
	}
	return d.allocateFresh(owner, n)
}

// allocateHeld reserves the lowest free address of the blocks this node
// holds, if there is one; callers hold d.mu.
func (d *Daemon) allocateHeld(owner string, n *localNetwork) (netip.Addr, bool) {
	taken := d.ipTaken(n)
	for _, b := range d.cl.ClaimedBlocks(n.rec.Name) {
		if d.blocks.releasing[blockRef{n.rec.Name, b}] || d.blockFull(n, b) {
			continue
		}
		if a, err := allocateFunc(b, taken, n.subnet); err == nil {
			d.reserveIPFor(owner, n, a)
			return a, true
		}
	}
	return netip.Addr{}, false
}

// allocateFresh is allocateIP when every block held is full: it claims a
// block with a free address and reserves one. Callers hold d.blockClaim
// and d.mu, which it releases.
func (d *Daemon) allocateFresh(owner string, n *localNetwork) (netip.Addr, error) {
	held := d.cl.ClaimedBlocks(n.rec.Name)
	// Every block held is full: a look-up of the addresses in use outside
	// them, for choosing a block to claim (outside d.mu).
	takenOutside := d.claimTaken(n, held)
	// A block claimed below is empty until the address is reserved: the
	// release sweep leaves the network alone meanwhile.
	d.blocks.setBusy(n.rec.Name, 1)
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.blocks.setBusy(n.rec.Name, -1)
		d.mu.Unlock()
	}()
	bits := blockBits(n.subnet)
	for range maxFreshBlocks {
		usable := func(b netip.Prefix) bool {
			_, err := allocateFunc(b, takenOutside, n.subnet)
			return err == nil
		}
		b, err := d.cl.ClaimBlockFunc(n.rec.Name, n.subnet, bits, usable)
		if err != nil {
			return netip.Addr{}, conflict("network %q: no free address in %s: %v", n.rec.Name, n.subnet, noBlockCause(err))
		}
		d.mu.Lock()
		a, err := allocateFunc(b, d.ipTaken(n), n.subnet)
		if err == nil {
			d.reserveIPFor(owner, n, a)
		} else {
			// What was learnt during the claim counts for the next one.
			takenOutside = d.claimTaken(n, d.cl.ClaimedBlocks(n.rec.Name))
		}
		d.mu.Unlock()
		if err == nil {
			return a, nil
		}
		if err := d.cl.ReleaseBlock(n.rec.Name, b); err != nil {
			d.log.Warn("releasing a full address block", "network", n.rec.Name, "block", b, "err", err)
		}
	}
	return netip.Addr{}, conflict("network %q: no free address found in %d newly claimed blocks of %s", n.rec.Name, maxFreshBlocks, n.subnet)
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

// containerByNetns returns a container (not a host TAP) whose namespace is
// (dev, ino), or nil, from an index kept by containerChanged and made
// again after endpointsChanged. A gone container is not returned: its
// namespace was freed, and the kernel hands its inode number to a later
// namespace. Callers hold d.mu.
func (d *Daemon) containerByNetns(dev, ino uint64) *container {
	if d.byNetns == nil {
		d.byNetns = map[[2]uint64][]*container{}
		for _, c := range d.containers {
			if !c.hostTAP {
				k := [2]uint64{c.nsDev, c.nsIno}
				d.byNetns[k] = append(d.byNetns[k], c)
			}
		}
	}
	for _, c := range d.byNetns[[2]uint64{dev, ino}] {
		if !c.nsGone {
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
// endpoint left is forgotten; a managed one stays until `rm`. The state is
// saved before anything is destroyed, so a failed save changes nothing.
// The interface is deleted without d.mu (see teardown).
func (d *Daemon) Detach(name, network string) error {
	drained, err := d.drainBackends(name, network)
	if err != nil {
		return err
	}
	d.mu.Lock()
	ep, nsPath, release, err := d.detachRecord(name, network, drained != nil)
	d.flushDrained(drained)
	var next *endpoint // the remaining network that gets the default route
	if err == nil && !ep.ctr.hostTAP {
		if rest := ep.ctr.sortedEndpoints(); len(rest) > 0 {
			next = rest[0]
		}
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	var then func(string)
	if next != nil {
		// The container is marked tearingDown until teardown ends, so
		// next stays attached meanwhile.
		then = func(nsPath string) {
			addr := netip.PrefixFrom(next.ip, next.net.subnet.Bits())
			if err := d.sb.DefaultRoute(nsPath, next.ifname, addr, next.net.gw); err != nil {
				d.log.Warn("default route via the remaining network", "container", name, "network", next.net.rec.Name, "err", err)
			}
		}
	}
	d.teardown(name, nsPath, release, []string{ep.ifname}, nil, then)
	return nil
}

// detachRecord is Detach's part under d.mu: it takes the endpoint out of
// the records, the saved state, the cluster and the data plane, and
// returns it with a pinned path of its namespace ("" when that is gone)
// for teardown, the container marked tearingDown. Callers hold d.mu.
func (d *Daemon) detachRecord(name, network string, draining bool) (*endpoint, string, func(), error) {
	c, ok := d.containers[name]
	if !ok {
		return nil, "", nil, notFound("container %q: not found", name)
	}
	if err := d.checkChangeable(name); err != nil {
		return nil, "", nil, err
	}
	if network == "" {
		if len(c.endpoints) != 1 {
			return nil, "", nil, invalid("container %q: attached to %d networks; name one with --network", name, len(c.endpoints))
		}
		for k := range c.endpoints {
			network = k
		}
	}
	ep, ok := c.endpoints[network]
	if !ok {
		return nil, "", nil, notFound("container %q: not attached to network %q", name, network)
	}
	if d.leaving[name] && !draining {
		return nil, "", nil, conflict("container %q: its backends are draining before its removal; try again", name)
	}
	delete(c.endpoints, network)
	forget := len(c.endpoints) == 0 && !c.managed
	if forget {
		c.gone.Store(true)
		delete(d.containers, name)
	}
	d.containerChanged(c)
	if err := d.saveContainer(name); err != nil {
		c.endpoints[network] = ep
		if forget {
			d.containers[name] = c
			c.gone.Store(false)
		}
		d.containerChanged(c)
		return nil, "", nil, fmt.Errorf("container %q: %w", name, err)
	}
	nsPath, release, nsErr := d.pinNetns(c)
	if nsErr != nil {
		d.log.Warn("container's namespace is gone; its interface is forgotten, not deleted", "container", name, "netns", c.netns, "err", nsErr)
		nsPath, release = "", func() {}
	}
	d.endpointGone(ep)
	d.tearingDown[name] = true
	return ep, nsPath, release, nil
}

// checkChangeable fails when an attach, a removal or a detach of the
// container name is in progress; callers hold d.mu.
func (d *Daemon) checkChangeable(name string) error {
	if _, busy := d.attaching[name]; busy {
		return conflict("container %q: an attach of it is in progress; try again", name)
	}
	if d.tearingDown[name] {
		return conflict("container %q: being removed or detached; try again", name)
	}
	return nil
}

// teardown is the kernel's part of a removal or a detach, without d.mu:
// it deletes the interfaces ifnames from the namespace at nsPath (a
// pinned path; "" when the namespace is gone, and the interfaces with it),
// then, if owned is given (a managed container whose namespace was
// there), its named namespace, and ends the container's tearingDown
// mark. then, if not nil, runs in the namespace's pinned path after the
// interfaces are gone. Link deletions and namespace teardown wait on the
// kernel's rtnl lock, which every namespace of the machine shares: under
// d.mu they would stop every other request of the daemon meanwhile.
func (d *Daemon) teardown(name, nsPath string, release func(), ifnames []string, owned *container, then func(nsPath string)) {
	d.dropFast(name, nsPath, owned != nil)
	for _, ifname := range ifnames {
		if nsPath == "" {
			break
		}
		if err := d.sb.Unplug(nsPath, ifname); err != nil && !errors.Is(err, os.ErrNotExist) {
			d.log.Warn("removing interface", "container", name, "ifname", ifname, "err", err)
		}
	}
	if then != nil && nsPath != "" {
		then(nsPath)
	}
	// The name is deleted only while it still names the container's
	// namespace (KillNetns may have taken a while).
	if c := owned; c != nil {
		if dev, ino, err := d.sb.NetnsIdentity(c.netns); err == nil && dev == c.nsDev && ino == c.nsIno {
			if err := d.sb.DeleteNamedNetns(filepath.Base(c.netns)); err != nil && !errors.Is(err, os.ErrNotExist) {
				d.log.Warn("deleting netns", "container", name, "netns", c.netns, "err", err)
			}
		}
	}
	release()
	d.mu.Lock()
	delete(d.tearingDown, name)
	d.mu.Unlock()
}

// pinNetns returns a path that names c's own namespace until release is
// called. It fails when the namespace at c.netns is gone or is another
// one: after a reboot or `ip netns del`, a new namespace may carry the
// container's name, and nothing of it is the daemon's to touch.
func (d *Daemon) pinNetns(c *container) (nsPath string, release func(), err error) {
	if c.hostTAP {
		// Docker owns the namespace; the interface goes with its device.
		return "", func() {}, nil
	}
	return d.sb.PinNetns(c.netns, c.nsDev, c.nsIno)
}

// endpointGone stops forwarding for ep and takes it out of the cluster and
// DNS. The caller has taken ep out of its container's endpoints and holds
// d.mu; the interface is deleted after (teardown).
func (d *Daemon) endpointGone(ep *endpoint) {
	closePorts(ep.ports)
	d.unpersistHost(ep)
	d.unpublishEndpoint(ep)
	// The endpoint has left the records: applying the data plane without
	// it closes its device.
	if err := d.applyDataplane(); err != nil {
		d.log.Error("data plane", "err", err)
	}
	d.dnsDetached(ep.ctr)
	d.log.Info("endpoint detached", "container", ep.ctr.name, "network", ep.net.rec.Name)
}

// RemoveContainer removes a container: a managed one's processes are
// stopped and its namespace deleted; an attached one is detached from all
// its networks and its namespace left alone. A container whose namespace
// is gone (or whose path now names another namespace) is only forgotten:
// no process is killed and nothing is deleted. The record goes from the
// saved state before anything is destroyed, so a failed save leaves the
// container as it was, still removable. Stopping the processes, deleting
// the interfaces and the namespace are done without d.mu (see teardown):
// meanwhile the container is listed, and its name refused to changes.
func (d *Daemon) RemoveContainer(name string) error {
	// A start in flight (lifecycle.go) first: its process would outlive
	// the kill below.
	d.awaitStart(name)
	drained, err := d.drainBackends(name, "*")
	if err != nil {
		return err
	}
	d.mu.Lock()
	c, nsPath, release, nsErr, err := d.beginRemove(name, drained != nil)
	if err != nil {
		d.flushDrained(drained)
		d.mu.Unlock()
		return err
	}
	d.tearingDown[name] = true
	d.mu.Unlock()
	done := func() {
		release()
		d.mu.Lock()
		delete(d.tearingDown, name)
		d.mu.Unlock()
	}
	if c.managed && nsErr == nil {
		if err := d.sb.KillNetns(nsPath, sandbox.DefaultKillGrace); err != nil {
			d.mu.Lock()
			d.flushDrained(drained)
			d.mu.Unlock()
			done()
			return fmt.Errorf("container %q: stopping its processes: %w", name, err)
		}
	}
	d.mu.Lock()
	ifnames, err := d.forgetContainer(c)
	d.flushDrained(drained)
	d.mu.Unlock()
	if err != nil {
		done()
		return err
	}
	var owned *container
	if c.managed && nsErr == nil {
		owned = c
	}
	d.teardown(name, nsPath, release, ifnames, owned, nil)
	d.log.Info("container removed", "container", name)
	return nil
}

// beginRemove checks that the container name can be removed and pins its
// namespace (nsPath "" and nsErr set when it is gone); callers hold d.mu.
func (d *Daemon) beginRemove(name string, draining bool) (c *container, nsPath string, release func(), nsErr, err error) {
	c, ok := d.containers[name]
	if !ok {
		return nil, "", nil, nil, notFound("container %q: not found", name)
	}
	if err := d.checkChangeable(name); err != nil {
		return nil, "", nil, nil, err
	}
	if d.leaving[name] && !draining {
		return nil, "", nil, nil, conflict("container %q: its backends are draining before its removal; try again", name)
	}
	nsPath, release, nsErr = d.pinNetns(c)
	if nsErr != nil {
		d.log.Warn("container's namespace is gone; forgetting the container without touching the namespace", "container", name, "netns", c.netns, "err", nsErr)
		nsPath, release = "", func() {}
	}
	return c, nsPath, release, nsErr, nil
}

// forgetContainer takes c out of the records and the saved state, and
// each of its endpoints out of the cluster and the data plane; it returns
// the interface names for teardown. Callers hold d.mu.
func (d *Daemon) forgetContainer(c *container) ([]string, error) {
	c.gone.Store(true)
	delete(d.containers, c.name)
	d.containerChanged(c)
	if err := d.saveContainer(c.name); err != nil {
		d.containers[c.name] = c
		c.gone.Store(false)
		d.containerChanged(c)
		return nil, fmt.Errorf("container %q: %w", c.name, err)
	}
	var ifnames []string
	for _, ep := range c.sortedEndpoints() {
		delete(c.endpoints, ep.net.rec.Name)
		d.endpointGone(ep)
		ifnames = append(ifnames, ep.ifname)
	}
	return ifnames, nil
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
// The processes of every namespace are found with one scan, before the
// lock is taken: listing costs one scan however many containers there are.
func (d *Daemon) Containers() []api.Container {
	pids := d.netnsPIDs()
	d.mu.Lock()
	defer d.mu.Unlock()
	cs := d.sortedContainers()
	// A container whose daemonized processes left since its last recheck
	// is stopped now, with this scan: ps never says "exited" of one still
	// resolving and balanced to.
	d.stopExited(cs, pids, false)
	out := []api.Container{}
	for _, c := range cs {
		out = append(out, d.containerView(c, pids))
	}
	return out
}

// Container returns one container with its processes.
func (d *Daemon) Container(name string) (api.Container, error) {
	return d.container(name, true)
}

// ContainerNamespace returns one container without listing its
// processes: what `exec` and `--net container:` need (its namespace,
// whether it is gone), without a scan of every process on the host (42-73
// ms at 1,000 containers). PIDs is nil and Status empty.
func (d *Daemon) ContainerNamespace(name string) (api.Container, error) {
	return d.container(name, false)
}

func (d *Daemon) container(name string, processes bool) (api.Container, error) {
	var pids map[sandbox.NetnsID][]int
	if processes {
		pids = d.netnsPIDs()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.containers[name]
	if !ok {
		return api.Container{}, notFound("container %q: not found", name)
	}
	d.stopExited([]*container{c}, pids, false) // as Containers
	v := d.containerView(c, pids)
	if !processes {
		// A stopped container's status needs no processes: "exited N"
		// tells exec and --net container: that it is not running.
		v.PIDs = nil
		if !c.stopped || v.State == api.ContainerGone {
			v.Status = ""
		}
	}
	return v, nil
}

// netnsPIDs is the Sandbox's map of namespaces to processes; nil (no
// processes shown) if the processes cannot be listed.
func (d *Daemon) netnsPIDs() map[sandbox.NetnsID][]int {
	pids, err := d.sb.NetnsPIDs()
	if err != nil {
		d.log.Warn("listing processes", "err", err)
	}
	return pids
}

// containerView is what ps shows of c; pids maps namespaces to their
// processes (see netnsPIDs).
func (d *Daemon) containerView(c *container, pids map[sandbox.NetnsID][]int) api.Container {
	v := api.Container{Name: c.name, Netns: c.netns, Managed: c.managed, PIDs: []int{}, State: api.ContainerGone,
		ResolvConf: d.resolvConfPath(), MountNS: d.mountNS, Endpoints: []api.Endpoint{}}
	// Processes are listed only while the container's name still names
	// its own namespace, and only those of that namespace (by identity),
	// never those of another one that took its name. The name is checked
	// with one look-up, not opened: a listing does nothing in it.
	id := sandbox.NetnsID{Dev: c.nsDev, Ino: c.nsIno}
	if c.hostTAP {
		// Docker makes the namespace its sandbox key names after the
		// Join, so a Docker container has no recorded identity: it is
		// looked up now (one stat), for its processes.
		id = sandbox.NetnsID{}
		if pids != nil {
			if dev, ino, err := d.sb.NetnsIdentity(c.netns); err == nil {
				id = sandbox.NetnsID{Dev: dev, Ino: ino}
			}
		}
	}
	if c.hostTAP || d.sb.NetnsIs(c.netns, c.nsDev, c.nsIno) {
		v.State = api.ContainerUp
		if p := pids[id]; p != nil && id != (sandbox.NetnsID{}) {
			v.PIDs = p
		}
	}
	v.Status, v.ExitStatus = containerStatus(v.State, len(v.PIDs), c.exitStatus, c.stopped)
	if c.managed {
		v.Restart, v.RestartCount = c.policy.String(), c.restarts.count
		if c.command != nil {
			v.Command = append([]string(nil), c.command.Argv...)
		}
		if v.State != api.ContainerGone && c.restarting() {
			v.Status = api.StatusRestarting
		}
	}
	for _, ep := range c.sortedEndpoints() {
		v.Endpoints = append(v.Endpoints, d.endpointView(ep))
	}
	return v
}

// containerStatus is what ps shows (see api.Container.Status): a
// stopped container stays "exited N" whatever process entered its
// namespace since, until a main process is reported started again.
func containerStatus(state string, pids int, exit *int, stopped bool) (string, *int) {
	var e *int
	if exit != nil {
		v := *exit
		e = &v
	}
	switch {
	case state == api.ContainerGone:
		return api.StatusGone, e
	case e != nil && stopped:
		return fmt.Sprintf("exited %d", *e), e
	case stopped:
		// Stopped by `vxmesh stop`, its main process's status unknown.
		return api.StatusStopped, e
	case pids > 0:
		return api.StatusRunning, e
	case e != nil:
		return fmt.Sprintf("exited %d", *e), e
	}
	return api.StatusUp, e
}

// restore rebuilds networks and containers from the state directory and
// reopens every endpoint's persistent TAP inside its namespace. An
// endpoint whose namespace or interface is gone is kept, marked down, so
// the operator sees it and can remove it.
func (d *Daemon) restore() (*savedState, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, s, err := openStateStore(d.cfg.StateDir, d.log)
	if err != nil {
		return nil, err
	}
	d.restoredAt = time.Now()
	d.store = st
	for _, r := range s.RemovedServices {
		d.removals.add(r)
	}
	for _, rec := range s.Networks {
		if err := d.addLocalNetwork(rec.record()); err != nil {
			return nil, err
		}
		if a, err := netip.ParseAddr(rec.GatewayHost); err == nil {
			if n := d.networks[rec.Name]; n.subnet.Contains(a) && usableHost(n.subnet, a) && a != n.gw {
				n.gwHost, n.gwHostRestored = a, true
			}
		}
	}
	for _, sc := range s.Containers {
		if err := d.restoreContainer(sc); err != nil {
			return nil, err
		}
	}
	// Forward at once; the cluster's part follows with reconcile.
	if err := d.applyDataplane(); err != nil {
		d.log.Error("data plane", "err", err)
	}
	return s, nil
}

// restoreContainer rebuilds one saved container and reopens its
// endpoints' devices (see restore); callers hold d.mu.
func (d *Daemon) restoreContainer(sc savedContainer) error {
	c := &container{name: sc.Name, netns: sc.Netns, nsDev: sc.NsDev, nsIno: sc.NsIno, managed: sc.Managed, hostTAP: sc.HostTAP, endpoints: map[string]*endpoint{},
		mainPID: sc.MainPID, exitStatus: sc.ExitStatus, stopped: sc.Stopped && (sc.ExitStatus != nil || sc.ManualStop)}
	if err := restoreLifecycle(c, sc); err != nil {
		return err
	}
	d.containers[c.name] = c
	d.endpointsChanged()
	// A Docker endpoint's namespace has no recorded identity: its
	// device is looked for by MAC in Docker's sandbox, below.
	nsErr := error(nil)
	if !c.hostTAP {
		if dev, ino, err := d.sb.NetnsIdentity(c.netns); err != nil {
			nsErr = err
		} else if dev != c.nsDev || ino != c.nsIno {
			nsErr = fmt.Errorf("netns %q: the namespace at that path is not the container's any more", c.netns)
		}
	}
	for _, se := range sc.Endpoints {
		n, ok := d.networks[se.Network]
		if !ok {
			return fmt.Errorf("state: container %q: unknown network %q", sc.Name, se.Network)
		}
		ip, err := netip.ParseAddr(se.IP)
		if err != nil {
			return fmt.Errorf("state: container %q: %w", sc.Name, err)
		}
		mac, err := packet.ParseMAC(se.MAC)
		if err != nil {
			return fmt.Errorf("state: container %q: %w", sc.Name, err)
		}
		ep := &endpoint{ctr: c, net: n, ip: ip, mac: mac, ifname: se.IfName, aliases: se.Aliases}
		ep.port = ep.portName()
		for _, m := range se.Services {
			h := m.Health
			if !knownHealth(h) {
				h = backendHealthy
			}
			ep.services = append(ep.services, svcMember{name: m.Name, id: m.ID, weight: m.Weight, health: h})
		}
		c.endpoints[n.rec.Name] = ep
		d.endpointsChanged()
		d.restorePorts(ep, se.Published)
		if nsErr != nil {
			// Withdrawn (see withdrawGone): republish leaves it out,
			// so the cluster drops what it still holds of it.
			c.nsGone = true
			ep.down = downNetnsGone + ": " + nsErr.Error()
			d.log.Warn("endpoint down", "container", c.name, "network", n.rec.Name, "err", nsErr)
			continue
		}
		var dev netdev.Device
		if c.hostTAP {
			dev, err = d.reopenHost(ep)
		} else {
			dev, err = d.sb.Reopen(c.netns, ep.ifname)
		}
		if err != nil {
			ep.down = "down: " + err.Error()
			d.log.Warn("endpoint down", "container", c.name, "network", n.rec.Name, "err", err)
			continue
		}
		ep.dev = dev
		d.log.Info("endpoint restored", "container", c.name, "network", n.rec.Name, "ip", ip)
	}
	if nsErr == nil && len(c.endpoints) > 0 {
		d.dnsAttached(c)
	}
	return nil
}
