package cniplugin

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/vxmesh/vxmesh/api"
)

// Versions are the CNI spec versions vxmesh-cni speaks (GC and STATUS from
// 1.1.0 on).
var Versions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// DNSServer is the address at which the daemon answers DNS in every
// namespace it attaches.
const DNSServer = "127.0.0.11"

// NamePrefix starts the name of every container vxmesh-cni attaches; GC
// only ever detaches containers with it.
const NamePrefix = "cni-"

// maxName is the daemon's limit on container names.
const maxName = 64

// Daemon is what the plugin needs of the vxmesh API (*api.Client has it).
type Daemon interface {
	Network(name string) (api.Network, error)
	Attach(req api.AttachRequest) (api.Endpoint, error)
	Detach(name, network string) error
	Container(name string) (api.Container, error)
	Containers() ([]api.Container, error)
}

// Link is what the plugin reads of an interface inside a namespace.
type Link struct {
	Up    bool
	MAC   string
	Addrs []netip.Prefix
	// DefaultGW is the gateway of the namespace's IPv4 default route
	// through this interface (invalid when there is none).
	DefaultGW netip.Addr
}

// Plugin runs the CNI commands. Dial and Inspect are the outside world:
// the daemon client for a socket, and a reader of an interface in a
// namespace (InspectLink on Linux).
type Plugin struct {
	Dial    func(socket string) Daemon
	Inspect func(netns, ifname string) (Link, error)
	// StateDir is where ADD records which configuration (by its CNI
	// name) made each attachment, so that one configuration's GC leaves
	// the attachments another made on the same vxmesh network; empty:
	// nothing is recorded, and GC goes by the vxmesh network alone.
	StateDir string
}

// New returns the plugin as the binary runs it.
func New() *Plugin {
	return &Plugin{
		Dial:     func(s string) Daemon { return api.NewClient(s) },
		Inspect:  InspectLink,
		StateDir: DefaultStateDir,
	}
}

// Funcs are the plugin's commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// ContainerName is the daemon's name for the container CNI calls id:
// NamePrefix and the ID, shortened with a hash of the whole ID when it
// would pass the daemon's 64-character limit. Every network of one
// container is an endpoint of the same daemon container.
func ContainerName(id string) string {
	name := NamePrefix + id
	if len(name) <= maxName {
		return name
	}
	sum := sha256.Sum256([]byte(id))
	h := hex.EncodeToString(sum[:4])
	return name[:maxName-len(h)-1] + "-" + h
}

// cniErr makes a CNI error with the given code.
func cniErr(code uint, format string, args ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, args...), "")
}

// parse parses the configuration, answering code 7 for a bad one.
func parse(args *skel.CmdArgs) (*Config, error) {
	c, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, cniErr(types.ErrInvalidNetworkConfig, "%v", err)
	}
	return c, nil
}

// daemonErr turns an API error into a CNI error: 11 (try again later) when
// the daemon did not answer (but 999 for a socket the plugin may not use:
// waiting will not help), 7 when it refused the request as invalid,
// code for an unknown object, 999 otherwise.
func daemonErr(err error, notFound uint) error {
	var ue *api.UnreachableError
	var se *api.StatusError
	switch {
	case errors.Is(err, syscall.EACCES):
		return cniErr(types.ErrInternal, "vxmesh-cni: %v", err)
	case errors.As(err, &ue):
		return cniErr(types.ErrTryAgainLater, "vxmesh-cni: %v", err)
	case errors.As(err, &se) && se.Code == http.StatusBadRequest:
		return cniErr(types.ErrInvalidNetworkConfig, "vxmesh-cni: %v", err)
	case errors.As(err, &se) && se.Code == http.StatusNotFound:
		return cniErr(notFound, "vxmesh-cni: %v", err)
	}
	return cniErr(types.ErrInternal, "vxmesh-cni: %v", err)
}

// network fetches the configured network from the daemon.
func (p *Plugin) network(c *Config) (Daemon, api.Network, error) {
	d := p.Dial(c.SocketPath())
	n, err := d.Network(c.Network)
	if err != nil {
		return nil, api.Network{}, daemonErr(err, types.ErrInvalidNetworkConfig)
	}
	return d, n, nil
}

// Add attaches the namespace and prints the result.
func (p *Plugin) Add(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	res, err := p.add(c, args)
	if err != nil {
		return err
	}
	return types.PrintResult(res, c.CNIVersion)
}

// add attaches the namespace and returns the result (with the results of
// earlier plugins of a chain).
func (p *Plugin) add(c *Config, args *skel.CmdArgs) (*current.Result, error) {
	ip, bits, err := c.FixedIP(args.Args)
	if err != nil {
		return nil, cniErr(types.ErrInvalidNetworkConfig, "%v", err)
	}
	if _, err := os.Stat(args.Netns); err != nil {
		return nil, cniErr(types.ErrInvalidNetNS, "vxmesh-cni: netns %s: %v", args.Netns, err)
	}
	prev, err := prevResult(c)
	if err != nil {
		return nil, err
	}
	d, n, err := p.network(c)
	if err != nil {
		return nil, err
	}
	subnet, err := netip.ParsePrefix(n.Subnet)
	if err != nil {
		return nil, cniErr(types.ErrInternal, "vxmesh-cni: network %q: daemon sent subnet %q: %v", n.Name, n.Subnet, err)
	}
	if bits >= 0 && bits != subnet.Bits() {
		return nil, cniErr(types.ErrInvalidNetworkConfig, "vxmesh-cni: ip %s/%d: network %q is %s", ip, bits, n.Name, subnet)
	}
	req := api.AttachRequest{
		Network: c.Network, Name: ContainerName(args.ContainerID), Netns: args.Netns,
		IfName: args.IfName, Aliases: c.Aliases(),
	}
	if ip.IsValid() {
		req.IP = ip.String()
	}
	ep, err := d.Attach(req)
	if err != nil {
		return nil, daemonErr(err, types.ErrInvalidNetworkConfig)
	}
	if err := p.record(c.Name, req.Name, ep.IfName); err != nil {
		return nil, cniErr(types.ErrInternal, "vxmesh-cni: attached, but recording it for GC: %v", err)
	}
	link, err := p.Inspect(args.Netns, ep.IfName)
	if err != nil {
		return nil, cniErr(types.ErrInternal, "vxmesh-cni: attached, but reading %s in netns %s: %v", ep.IfName, args.Netns, err)
	}
	gw, _ := netip.ParseAddr(n.Gateway)
	res, err := BuildResult(c, n, ep, args.Netns, link.DefaultGW.IsValid() && link.DefaultGW == gw)
	if err != nil {
		return nil, cniErr(types.ErrInternal, "vxmesh-cni: %v", err)
	}
	return mergePrev(prev, res), nil
}

// prevResult is the result of the plugins before this one in a chain (nil
// when it is the first).
func prevResult(c *Config) (*current.Result, error) {
	if c.RawPrevResult == nil {
		return nil, nil
	}
	if err := version.ParsePrevResult(&c.PluginConf); err != nil {
		return nil, cniErr(types.ErrDecodingFailure, "vxmesh-cni: prevResult: %v", err)
	}
	r, err := current.NewResultFromResult(c.PrevResult)
	if err != nil {
		return nil, cniErr(types.ErrDecodingFailure, "vxmesh-cni: prevResult: %v", err)
	}
	return r, nil
}

// mergePrev appends res to the result of earlier plugins of a chain.
func mergePrev(prev, res *current.Result) *current.Result {
	if prev == nil {
		return res
	}
	off := len(prev.Interfaces)
	prev.Interfaces = append(prev.Interfaces, res.Interfaces...)
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(*ipc.Interface + off)
		prev.IPs = append(prev.IPs, ipc)
	}
	prev.Routes = append(prev.Routes, res.Routes...)
	prev.DNS = res.DNS
	prev.CNIVersion = res.CNIVersion
	return prev
}

// BuildResult is the CNI result of endpoint ep of network n in the
// namespace at netns: one interface (the container side; the TAP has no
// host side, the daemon holds its descriptor), its address with the
// network's gateway, the default route via the gateway when the namespace
// has it through this interface (the daemon gives it to a container's
// first network only), and the daemon's resolver with the configuration's
// search domains and options (ndots:0 by default, as the daemon's own
// resolv.conf has).
func BuildResult(c *Config, n api.Network, ep api.Endpoint, netns string, defaultRoute bool) (*current.Result, error) {
	subnet, err := netip.ParsePrefix(n.Subnet)
	if err != nil {
		return nil, fmt.Errorf("network %q: subnet %q: %v", n.Name, n.Subnet, err)
	}
	ip, err := netip.ParseAddr(ep.IP)
	if err != nil || !subnet.Contains(ip) {
		return nil, fmt.Errorf("network %q: endpoint address %q is not in %s", n.Name, ep.IP, subnet)
	}
	gw, err := netip.ParseAddr(n.Gateway)
	if err != nil {
		return nil, fmt.Errorf("network %q: gateway %q: %v", n.Name, n.Gateway, err)
	}
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{{Name: ep.IfName, Mac: ep.MAC, Mtu: n.MTU, Sandbox: netns}},
		IPs: []*current.IPConfig{{
			Interface: current.Int(0),
			Address:   net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)},
			Gateway:   gw.AsSlice(),
		}},
		DNS: types.DNS{Nameservers: []string{DNSServer}, Domain: c.DNS.Domain, Search: c.DNS.Search, Options: c.DNS.Options},
	}
	if len(res.DNS.Options) == 0 {
		res.DNS.Options = []string{"ndots:0"}
	}
	if defaultRoute {
		res.Routes = []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw.AsSlice()}}
	}
	return res, nil
}

// endpointOf returns the container's endpoint on network through ifname.
func endpointOf(ct api.Container, network, ifname string) (api.Endpoint, bool) {
	for _, ep := range ct.Endpoints {
		if ep.Network == network && ep.IfName == ifname {
			return ep, true
		}
	}
	return api.Endpoint{}, false
}

// Del detaches the container's interface. A container, network or
// endpoint the daemon does not know is success: DEL may come twice, or
// after a failed ADD. So is an endpoint on the network through another
// interface name: it is not this attachment.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	d := p.Dial(c.SocketPath())
	name := ContainerName(args.ContainerID)
	ct, err := d.Container(name)
	if api.IsNotFound(err) {
		return p.forget(c.Name, name, args.IfName)
	}
	if err != nil {
		return daemonErr(err, types.ErrInternal)
	}
	if _, ok := endpointOf(ct, c.Network, args.IfName); !ok {
		return p.forget(c.Name, name, args.IfName)
	}
	if err := d.Detach(name, c.Network); err != nil && !api.IsNotFound(err) {
		return daemonErr(err, types.ErrInternal)
	}
	return p.forget(c.Name, name, args.IfName)
}

// Check verifies that the attachment in prevResult is still what the
// daemon has on record and what the namespace holds: the endpoint is up,
// the interface exists, is up, has the endpoint's MAC and address, and
// the default route via the gateway when prevResult has one.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	prev, err := prevResult(c)
	if err != nil {
		return err
	}
	if prev == nil {
		return cniErr(types.ErrInvalidNetworkConfig, "vxmesh-cni: CHECK: no prevResult in the network config")
	}
	d, n, err := p.network(c)
	if err != nil {
		return err
	}
	ct, err := d.Container(ContainerName(args.ContainerID))
	if err != nil {
		return daemonErr(err, types.ErrUnknownContainer)
	}
	ep, ok := endpointOf(ct, c.Network, args.IfName)
	if !ok {
		return cniErr(types.ErrUnknownContainer, "vxmesh-cni: container %q: no interface %s on network %q", ct.Name, args.IfName, c.Network)
	}
	if ep.State != "up" {
		return cniErr(types.ErrInternal, "vxmesh-cni: container %q: interface %s on network %q is %s", ct.Name, args.IfName, c.Network, ep.State)
	}
	want, err := BuildResult(c, n, ep, args.Netns, len(prev.Routes) > 0)
	if err != nil {
		return cniErr(types.ErrInternal, "vxmesh-cni: %v", err)
	}
	if err := matchPrev(prev, want, args.IfName); err != nil {
		return cniErr(types.ErrInternal, "vxmesh-cni: container %q: %v", ct.Name, err)
	}
	link, err := p.Inspect(args.Netns, args.IfName)
	if err != nil {
		return cniErr(types.ErrInternal, "vxmesh-cni: container %q: %v", ct.Name, err)
	}
	if err := matchLink(link, want); err != nil {
		return cniErr(types.ErrInternal, "vxmesh-cni: container %q: netns %s: %s: %v", ct.Name, args.Netns, args.IfName, err)
	}
	return nil
}

// matchPrev checks that prev (the result of ADD) holds the daemon's view
// want of interface ifname: its MAC and address.
func matchPrev(prev, want *current.Result, ifname string) error {
	wi, wip := want.Interfaces[0], want.IPs[0]
	for i, itf := range prev.Interfaces {
		if itf.Name != ifname || itf.Sandbox == "" {
			continue
		}
		if !strings.EqualFold(itf.Mac, wi.Mac) {
			return fmt.Errorf("interface %s: prevResult has MAC %s, the daemon %s", ifname, itf.Mac, wi.Mac)
		}
		for _, ipc := range prev.IPs {
			if ipc.Interface != nil && *ipc.Interface == i {
				if ipc.Address.String() != wip.Address.String() {
					return fmt.Errorf("interface %s: prevResult has address %s, the daemon %s", ifname, ipc.Address.String(), wip.Address.String())
				}
				return nil
			}
		}
		return fmt.Errorf("interface %s: prevResult has no address for it", ifname)
	}
	return fmt.Errorf("interface %s: not in prevResult", ifname)
}

// matchLink checks the interface as read in the namespace against want.
func matchLink(l Link, want *current.Result) error {
	wi := want.Interfaces[0]
	if !l.Up {
		return errors.New("interface is down")
	}
	if !strings.EqualFold(l.MAC, wi.Mac) {
		return fmt.Errorf("MAC is %s, want %s", l.MAC, wi.Mac)
	}
	a := want.IPs[0].Address
	ip, _ := netip.AddrFromSlice(a.IP.To4())
	ones, _ := a.Mask.Size()
	p := netip.PrefixFrom(ip, ones)
	found := false
	for _, have := range l.Addrs {
		found = found || have == p
	}
	if !found {
		return fmt.Errorf("address %s missing (has %v)", p, l.Addrs)
	}
	if len(want.Routes) > 0 {
		gw, _ := netip.AddrFromSlice(want.Routes[0].GW.To4())
		if l.DefaultGW != gw {
			return fmt.Errorf("default route via %s missing", gw)
		}
	}
	return nil
}

// GC detaches, from the configured network, every interface of a
// container vxmesh-cni attached (named NamePrefix...) that the runtime
// does not list as valid, but those another configuration (another CNI
// name) recorded as its own. Containers attached otherwise are never
// touched.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	valid := map[[2]string]bool{}
	for _, a := range c.ValidAttachments {
		valid[[2]string{ContainerName(a.ContainerID), a.IfName}] = true
	}
	d := p.Dial(c.SocketPath())
	cts, err := d.Containers()
	if err != nil {
		return daemonErr(err, types.ErrInternal)
	}
	var errs []error
	exist := map[string]bool{}
	for _, ct := range cts {
		if ct.Managed || !strings.HasPrefix(ct.Name, NamePrefix) {
			continue
		}
		for _, ep := range ct.Endpoints {
			if ep.Network != c.Network || valid[[2]string{ct.Name, ep.IfName}] ||
				p.recordedByOther(c.Name, ct.Name, ep.IfName) {
				exist[recordName(ct.Name, ep.IfName)] = true
				continue
			}
			if err := d.Detach(ct.Name, c.Network); err != nil && !api.IsNotFound(err) {
				errs = append(errs, err)
				exist[recordName(ct.Name, ep.IfName)] = true
			}
		}
	}
	p.forgetGone(c.Name, exist)
	if err := errors.Join(errs...); err != nil {
		return daemonErr(err, types.ErrInternal)
	}
	return nil
}

// Status reports whether ADD can work: the daemon answers and has the
// network (50, plugin not available, otherwise).
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := parse(args)
	if err != nil {
		return err
	}
	if _, err := p.Dial(c.SocketPath()).Network(c.Network); err != nil {
		return cniErr(types.ErrPluginNotAvailable, "vxmesh-cni: %v", err)
	}
	return nil
}
