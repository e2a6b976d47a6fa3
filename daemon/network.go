package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/vswitch"
)

// VXLAN numbering and MTU defaults (DESIGN §4).
const (
	firstVNI       = 4096
	maxVNI         = 1<<24 - 1
	vxlanOverhead  = 50
	minMTU         = 68
	maxNetworkMTU  = packet.MaxFrame - 18
	maxNameLength  = 64
	networkIDBytes = 16
)

// validName is what network and container names may look like (Docker's
// rule for container names).
var validName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

func checkName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%s name: empty", kind)
	}
	if len(name) > maxNameLength || !validName.MatchString(name) {
		return fmt.Errorf("%s %q: invalid name (letters, digits, '_', '.', '-'; at most %d characters)", kind, name, maxNameLength)
	}
	return nil
}

// network is one overlay network on this host and its switch.
type network struct {
	rec    savedNetwork
	subnet netip.Prefix
	gw     netip.Addr
	sw     *vswitch.Switch
}

// newNetwork builds the runtime form of a validated record.
func newNetwork(rec savedNetwork) (*network, error) {
	subnet, err := netip.ParsePrefix(rec.Subnet)
	if err != nil {
		return nil, fmt.Errorf("network %q: subnet: %w", rec.Name, err)
	}
	gw, err := netip.ParseAddr(rec.Gateway)
	if err != nil {
		return nil, fmt.Errorf("network %q: gateway: %w", rec.Name, err)
	}
	n := &network{rec: rec, subnet: subnet, gw: gw}
	n.sw = vswitch.New(vswitch.Config{Name: rec.Name, GatewayIP: gw, GatewayMAC: macForIP(gw)})
	return n, nil
}

// usedIPs returns the addresses taken in n: its gateway and its endpoints.
func (d *Daemon) usedIPs(n *network) map[netip.Addr]bool {
	used := map[netip.Addr]bool{n.gw: true}
	for _, c := range d.containers {
		if ep := c.endpoints[n.rec.Name]; ep != nil {
			used[ep.ip] = true
		}
	}
	return used
}

// endpointsOf lists n's endpoints sorted by container name.
func (d *Daemon) endpointsOf(n *network) []*endpoint {
	var out []*endpoint
	for _, c := range d.containers {
		if ep := c.endpoints[n.rec.Name]; ep != nil {
			out = append(out, ep)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ctr.name < out[j].ctr.name })
	return out
}

// CreateNetwork validates req, fills in defaults and creates the network.
func (d *Daemon) CreateNetwork(req api.NetworkCreateRequest) (api.Network, error) {
	if err := checkName("network", req.Name); err != nil {
		return api.Network{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.networks[req.Name]; ok {
		return api.Network{}, fmt.Errorf("network %q: already exists", req.Name)
	}
	var used []netip.Prefix
	for _, n := range d.networks {
		used = append(used, n.subnet)
	}
	var subnet netip.Prefix
	if req.Subnet == "" {
		p, err := pickSubnet(used)
		if err != nil {
			return api.Network{}, fmt.Errorf("network %q: %w", req.Name, err)
		}
		subnet = p
	} else {
		p, err := netip.ParsePrefix(req.Subnet)
		if err != nil || !p.Addr().Is4() {
			return api.Network{}, fmt.Errorf("network %q: subnet %q: not an IPv4 CIDR", req.Name, req.Subnet)
		}
		if p.Bits() > 30 {
			return api.Network{}, fmt.Errorf("network %q: subnet %s: too small (at most /30)", req.Name, p)
		}
		subnet = p.Masked()
		for _, n := range d.sortedNetworks() {
			if overlaps(subnet, n.subnet) {
				return api.Network{}, fmt.Errorf("network %q: subnet %s overlaps network %q (%s)", req.Name, subnet, n.rec.Name, n.subnet)
			}
		}
	}
	gw := firstHost(subnet)
	if req.Gateway != "" {
		a, err := netip.ParseAddr(req.Gateway)
		if err != nil || !usableHost(subnet, a) {
			return api.Network{}, fmt.Errorf("network %q: gateway %q: not a host address of %s", req.Name, req.Gateway, subnet)
		}
		gw = a
	}
	mtu := d.cfg.UnderlayMTU - vxlanOverhead
	if req.MTU != 0 {
		if req.MTU < minMTU || req.MTU > maxNetworkMTU {
			return api.Network{}, fmt.Errorf("network %q: mtu %d: out of range %d-%d", req.Name, req.MTU, minMTU, maxNetworkMTU)
		}
		mtu = req.MTU
	}
	vni := req.VNI
	if vni != 0 {
		if vni > maxVNI {
			return api.Network{}, fmt.Errorf("network %q: vni %d: out of range 1-%d", req.Name, vni, maxVNI)
		}
		for _, n := range d.networks {
			if n.rec.VNI == vni {
				return api.Network{}, fmt.Errorf("network %q: vni %d: already used by network %q", req.Name, vni, n.rec.Name)
			}
		}
	} else {
		vni = d.freeVNI()
	}
	id := make([]byte, networkIDBytes)
	rand.Read(id)
	rec := savedNetwork{
		Name: req.Name, ID: hex.EncodeToString(id), Subnet: subnet.String(), Gateway: gw.String(),
		MTU: mtu, VNI: vni, Created: time.Now().UTC().Truncate(time.Second),
	}
	n, err := newNetwork(rec)
	if err != nil {
		return api.Network{}, err
	}
	d.networks[rec.Name] = n
	if err := d.save(); err != nil {
		delete(d.networks, rec.Name)
		n.sw.Close()
		return api.Network{}, err
	}
	d.log.Info("network created", "network", rec.Name, "subnet", rec.Subnet, "vni", rec.VNI, "mtu", rec.MTU)
	return d.networkView(n, false), nil
}

// freeVNI returns the lowest VNI from firstVNI on that no network uses.
func (d *Daemon) freeVNI() uint32 {
	taken := map[uint32]bool{}
	for _, n := range d.networks {
		taken[n.rec.VNI] = true
	}
	v := uint32(firstVNI)
	for taken[v] {
		v++
	}
	return v
}

// RemoveNetwork deletes a network that has no endpoints left.
func (d *Daemon) RemoveNetwork(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[name]
	if !ok {
		return notFound("network %q: not found", name)
	}
	if eps := d.endpointsOf(n); len(eps) > 0 {
		names := make([]string, len(eps))
		for i, ep := range eps {
			names[i] = ep.ctr.name
		}
		return fmt.Errorf("network %q: still has %d endpoint(s) attached (%s); detach or remove them first", name, len(eps), strings.Join(names, ", "))
	}
	delete(d.networks, name)
	if err := d.save(); err != nil {
		d.networks[name] = n
		return err
	}
	n.sw.Close()
	d.log.Info("network removed", "network", name)
	return nil
}

// Networks lists every network.
func (d *Daemon) Networks() []api.Network {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := []api.Network{}
	for _, n := range d.sortedNetworks() {
		out = append(out, d.networkView(n, false))
	}
	return out
}

// Network returns one network with its endpoints.
func (d *Daemon) Network(name string) (api.Network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[name]
	if !ok {
		return api.Network{}, notFound("network %q: not found", name)
	}
	return d.networkView(n, true), nil
}

func (d *Daemon) networkView(n *network, withEndpoints bool) api.Network {
	v := api.Network{
		Name: n.rec.Name, ID: n.rec.ID, Subnet: n.rec.Subnet, Gateway: n.rec.Gateway,
		MTU: n.rec.MTU, VNI: n.rec.VNI, Created: n.rec.Created,
	}
	if withEndpoints {
		for _, ep := range d.endpointsOf(n) {
			v.Endpoints = append(v.Endpoints, d.endpointView(ep))
		}
	}
	return v
}
