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
	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/vswitch"
)

// VXLAN numbering and MTU defaults (docs/architecture.md, "Control plane").
const (
	firstVNI      = 4096
	maxVNI        = 1<<24 - 1
	vxlanOverhead = 50
	// espOverhead is what an encrypted network loses on top of
	// vxlanOverhead: the inner UDP header the ESP payload starts with and
	// the most ESP adds (header, padding, trailer, ICV).
	espOverhead    = 8 + esp.MaxOverhead
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
		return invalid("%s name: empty", kind)
	}
	if len(name) > maxNameLength || !validName.MatchString(name) {
		return invalid("%s %q: invalid name (letters, digits, '_', '.', '-'; at most %d characters)", kind, name, maxNameLength)
	}
	return nil
}

// localNetwork is an overlay network this host has: the cluster's record
// and what is parsed from it. Its switch and tunnel belong to the data
// plane, which builds them from the desired state (desiredDataplane).
type localNetwork struct {
	rec    netRecord
	subnet netip.Prefix
	gw     netip.Addr
	// cipher is the ESP transform of an encrypted network, 0 for a
	// cleartext one.
	cipher esp.Cipher
}

// addLocalNetwork makes the network of a record known locally; the next
// applyDataplane builds it. Callers hold d.mu.
func (d *Daemon) addLocalNetwork(rec netRecord) error {
	subnet, err := netip.ParsePrefix(rec.Subnet)
	if err != nil {
		return fmt.Errorf("network %q: subnet: %w", rec.Name, err)
	}
	gw, err := netip.ParseAddr(rec.Gateway)
	if err != nil {
		return fmt.Errorf("network %q: gateway: %w", rec.Name, err)
	}
	n := &localNetwork{rec: rec, subnet: subnet, gw: gw}
	if rec.Encrypted {
		if n.cipher, err = esp.ParseCipher(rec.Cipher); err != nil {
			return fmt.Errorf("network %q: %w", rec.Name, err)
		}
	}
	d.networks[rec.Name] = n
	d.log.Info("network known", "network", rec.Name, "subnet", rec.Subnet, "vni", rec.VNI, "mtu", rec.MTU)
	return nil
}

// removeLocalNetwork forgets a network; the next applyDataplane takes it
// down. Callers hold d.mu.
func (d *Daemon) removeLocalNetwork(n *localNetwork) {
	delete(d.networks, n.rec.Name)
	d.log.Info("network forgotten", "network", n.rec.Name)
}

// usedIPs returns the addresses taken in n: its gateway, the endpoints of
// every node and the addresses reserved by attaches in flight.
func (d *Daemon) usedIPs(n *localNetwork) map[netip.Addr]bool {
	used := map[netip.Addr]bool{n.gw: true}
	for a := range d.reservedIPs[n.rec.Name] {
		used[a] = true
	}
	for _, c := range d.containers {
		if ep := c.endpoints[n.rec.Name]; ep != nil {
			used[ep.ip] = true
		}
	}
	for _, rec := range d.clusterEndpoints() {
		if a, err := netip.ParseAddr(rec.IP); err == nil && rec.Network == n.rec.Name {
			used[a] = true
		}
	}
	return used
}

// endpointsOf lists n's endpoints sorted by container name.
func (d *Daemon) endpointsOf(n *localNetwork) []*endpoint {
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
	rec, err := d.planNetwork(req)
	d.mu.Unlock()
	if err != nil {
		return api.Network{}, err
	}
	defer func() {
		d.mu.Lock()
		delete(d.creating, req.Name)
		d.mu.Unlock()
	}()
	// The confirmation round, without d.mu.
	if err := d.claimNetwork(&rec, createChoice{autoSubnet: req.Subnet == "" && req.Gateway == "", autoVNI: req.VNI == 0}); err != nil {
		return api.Network{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	err = d.publishNetwork(rec)
	d.releaseNetworkClaim(rec)
	if err != nil {
		return api.Network{}, fmt.Errorf("network %q: %w", req.Name, err)
	}
	applyErr := d.reconcile()
	n, ok := d.networks[rec.Name]
	if !ok {
		return api.Network{}, fmt.Errorf("network %q: removed again while it was being created", req.Name)
	}
	if err := networkError(applyErr, rec.Name); err != nil {
		return api.Network{}, fmt.Errorf("network %q: created, but not set up on this node: %w", req.Name, err)
	}
	d.log.Info("network created", "network", rec.Name, "subnet", rec.Subnet, "vni", rec.VNI, "mtu", rec.MTU)
	return d.networkView(n, false), nil
}

// planNetwork validates req against the networks known and in creation,
// fills in defaults and reserves the name, subnet and VNI it picked
// (d.creating) until the create ends; callers hold d.mu.
func (d *Daemon) planNetwork(req api.NetworkCreateRequest) (netRecord, error) {
	if err := d.reconcile(); err != nil {
		d.log.Error("data plane", "err", err)
	}
	if _, ok := d.networks[req.Name]; ok {
		return netRecord{}, conflict("network %q: already exists", req.Name)
	}
	if _, ok := d.creating[req.Name]; ok {
		return netRecord{}, conflict("network %q: already being created", req.Name)
	}
	subnet, err := d.planSubnet(req)
	if err != nil {
		return netRecord{}, err
	}
	gw := firstHost(subnet)
	if req.Gateway != "" {
		a, err := netip.ParseAddr(req.Gateway)
		if err != nil || !usableHost(subnet, a) {
			return netRecord{}, invalid("network %q: gateway %q: not a host address of %s", req.Name, req.Gateway, subnet)
		}
		gw = a
	}
	cipher := ""
	switch {
	case req.Encrypted:
		c := esp.AES128GCM
		if req.Cipher != "" {
			var err error
			if c, err = esp.ParseCipher(req.Cipher); err != nil {
				return netRecord{}, invalid("network %q: %v", req.Name, err)
			}
		}
		if len(req.VTEPs) > 0 {
			return netRecord{}, invalid("network %q: external VTEPs cannot be peers of an encrypted network (they do not have its keys)", req.Name)
		}
		cipher = c.String()
	case req.Cipher != "":
		return netRecord{}, invalid("network %q: a cipher needs an encrypted network (--encrypted)", req.Name)
	}
	mtu := d.cfg.UnderlayMTU - vxlanOverhead
	if req.Encrypted {
		mtu -= espOverhead
	}
	if req.MTU != 0 {
		if req.MTU < minMTU || req.MTU > maxNetworkMTU {
			return netRecord{}, invalid("network %q: mtu %d: out of range %d-%d", req.Name, req.MTU, minMTU, maxNetworkMTU)
		}
		mtu = req.MTU
	}
	storm, err := stormLimit(req)
	if err != nil {
		return netRecord{}, err
	}
	vni, err := d.planVNI(req)
	if err != nil {
		return netRecord{}, err
	}
	vteps, err := parseVTEPs(req.Name, req.VTEPs)
	if err != nil {
		return netRecord{}, err
	}
	id := make([]byte, networkIDBytes)
	rand.Read(id)
	rec := netRecord{
		Name: req.Name, ID: hex.EncodeToString(id), Subnet: subnet.String(), Gateway: gw.String(),
		MTU: mtu, VNI: vni, Created: time.Now().UTC().Truncate(time.Second), VTEPs: vteps,
		Encrypted: req.Encrypted, Cipher: cipher, StormLimit: storm,
	}
	d.creating[rec.Name] = netClaim{name: rec.Name, subnet: subnet, vni: vni}
	return rec, nil
}

// planSubnet returns req's subnet, or picks a free one; callers hold d.mu.
func (d *Daemon) planSubnet(req api.NetworkCreateRequest) (netip.Prefix, error) {
	if req.Subnet == "" {
		p, err := pickSubnet(d.usedSubnets())
		if err != nil {
			return netip.Prefix{}, conflict("network %q: %v", req.Name, err)
		}
		return p, nil
	}
	p, err := netip.ParsePrefix(req.Subnet)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, invalid("network %q: subnet %q: not an IPv4 CIDR", req.Name, req.Subnet)
	}
	if p.Bits() > 30 {
		return netip.Prefix{}, invalid("network %q: subnet %s: too small (at most /30)", req.Name, p)
	}
	subnet := p.Masked()
	for _, n := range d.sortedNetworks() {
		if overlaps(subnet, n.subnet) {
			return netip.Prefix{}, conflict("network %q: subnet %s overlaps network %q (%s)", req.Name, subnet, n.rec.Name, n.subnet)
		}
	}
	for _, c := range d.creating {
		if overlaps(subnet, c.subnet) {
			return netip.Prefix{}, conflict("network %q: subnet %s overlaps network %q (%s), being created", req.Name, subnet, c.name, c.subnet)
		}
	}
	return subnet, nil
}

// planVNI returns req's VNI, or picks a free one; callers hold d.mu.
func (d *Daemon) planVNI(req api.NetworkCreateRequest) (uint32, error) {
	vni := req.VNI
	if vni == 0 {
		return d.freeVNI(), nil
	}
	if vni > maxVNI {
		return 0, invalid("network %q: vni %d: out of range 1-%d", req.Name, vni, maxVNI)
	}
	for _, n := range d.networks {
		if n.rec.VNI == vni {
			return 0, conflict("network %q: vni %d: already used by network %q", req.Name, vni, n.rec.Name)
		}
	}
	for _, c := range d.creating {
		if c.vni == vni {
			return 0, conflict("network %q: vni %d: already used by network %q, being created", req.Name, vni, c.name)
		}
	}
	return vni, nil
}

// usedSubnets lists the subnets of the networks known and in creation;
// callers hold d.mu.
func (d *Daemon) usedSubnets() []netip.Prefix {
	var used []netip.Prefix
	for _, n := range d.networks {
		used = append(used, n.subnet)
	}
	for _, c := range d.creating {
		used = append(used, c.subnet)
	}
	return used
}

// maxStormLimit bounds a network's storm limit (flooded frames per second
// and port); -1 means unlimited.
const maxStormLimit = 10_000_000

// stormLimit validates req's storm limit and returns the one to record:
// 0 asks for the default (vswitch.DefaultStormLimit), -1 for no limit.
func stormLimit(req api.NetworkCreateRequest) (int, error) {
	switch l := req.StormLimit; {
	case l == 0:
		return vswitch.DefaultStormLimit, nil
	case l < -1 || l > maxStormLimit:
		return 0, fmt.Errorf("network %q: storm limit %d: out of range (1-%d frames/s, 0 for the default %d, -1 for no limit)", req.Name, l, maxStormLimit, vswitch.DefaultStormLimit)
	default:
		return l, nil
	}
}

// parseVTEPs validates external VTEP addresses and returns them sorted
// and de-duplicated.
func parseVTEPs(network string, in []string) ([]string, error) {
	set := map[netip.Addr]bool{}
	for _, v := range in {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
			return nil, invalid("network %q: vtep %q: not a unicast IPv4 address", network, v)
		}
		set[a] = true
	}
	out := make([]netip.Addr, 0, len(set))
	for a := range set {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	strs := make([]string, len(out))
	for i, a := range out {
		strs[i] = a.String()
	}
	return strs, nil
}

// UpdateNetwork adds and removes a network's external VTEPs.
func (d *Daemon) UpdateNetwork(name string, req api.NetworkUpdateRequest) (api.Network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[name]
	if !ok {
		return api.Network{}, notFound("network %q: not found", name)
	}
	add, err := parseVTEPs(name, req.AddVTEPs)
	if err != nil {
		return api.Network{}, err
	}
	rm, err := parseVTEPs(name, req.RemoveVTEPs)
	if err != nil {
		return api.Network{}, err
	}
	cur := map[string]bool{}
	for _, v := range n.rec.VTEPs {
		cur[v] = true
	}
	for _, v := range rm {
		if !cur[v] {
			return api.Network{}, notFound("network %q: vtep %s: not configured", name, v)
		}
		delete(cur, v)
	}
	for _, v := range add {
		cur[v] = true
	}
	all := make([]string, 0, len(cur))
	for v := range cur {
		all = append(all, v)
	}
	vteps, _ := parseVTEPs(name, all)
	if n.rec.Encrypted && len(add) > 0 {
		return api.Network{}, invalid("network %q: external VTEPs cannot be peers of an encrypted network (they do not have its keys)", name)
	}
	rec := n.rec
	rec.VTEPs = vteps
	if err := d.publishNetwork(rec); err != nil {
		return api.Network{}, err
	}
	if err := networkError(d.reconcile(), name); err != nil {
		return api.Network{}, fmt.Errorf("network %q: updated, but not applied on this node: %w", name, err)
	}
	return d.networkView(n, true), nil
}

// freeVNI returns the lowest VNI from firstVNI on that no network uses.
func (d *Daemon) freeVNI() uint32 {
	return d.freeVNIExcept(nil)
}

// RemoveNetwork deletes a network that has no endpoints left.
func (d *Daemon) RemoveNetwork(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[name]
	if !ok {
		return notFound("network %q: not found", name)
	}
	var names []string
	for _, ep := range d.endpointsOf(n) {
		names = append(names, ep.ctr.name)
	}
	for _, rec := range d.clusterEndpoints() {
		if rec.Network == name && rec.Node != d.cfg.Node {
			names = append(names, rec.Name+"@"+rec.Node)
		}
	}
	for ctr, network := range d.attaching {
		if network == name {
			names = append(names, ctr+" (attaching)")
		}
	}
	if len(names) > 0 {
		return conflict("network %q: still has %d endpoint(s) attached (%s); detach or remove them first", name, len(names), strings.Join(names, ", "))
	}
	if err := d.cl.Delete(tblNetworks, name); err != nil {
		return fmt.Errorf("network %q: %w", name, err)
	}
	if err := d.reconcile(); err != nil {
		d.log.Error("data plane", "err", err)
	}
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

func (d *Daemon) networkView(n *localNetwork, withEndpoints bool) api.Network {
	v := api.Network{
		Name: n.rec.Name, ID: n.rec.ID, Subnet: n.rec.Subnet, Gateway: n.rec.Gateway,
		MTU: n.rec.MTU, VNI: n.rec.VNI, Created: n.rec.Created, VTEPs: n.rec.VTEPs,
		Encrypted: n.rec.Encrypted, Cipher: n.rec.Cipher, StormLimit: n.rec.StormLimit,
	}
	if v.StormLimit == 0 {
		v.StormLimit = vswitch.DefaultStormLimit
	}
	if !withEndpoints {
		return v
	}
	for _, ep := range d.endpointsOf(n) {
		v.Endpoints = append(v.Endpoints, d.endpointView(ep))
	}
	for _, rec := range d.clusterEndpoints() {
		if rec.Network == n.rec.Name && rec.Node != d.cfg.Node {
			v.Endpoints = append(v.Endpoints, api.Endpoint{
				Name: rec.Name, Network: rec.Network, IP: rec.IP, MAC: rec.MAC,
				Aliases: rec.Aliases, Node: rec.Node, State: "remote",
			})
		}
	}
	nodeOf := map[netip.Addr]string{}
	for _, m := range d.cl.Members() {
		if m.Meta.DataAddr.IsValid() {
			nodeOf[m.Meta.DataAddr.Addr()] = m.Name
		}
	}
	_, ts, _ := d.dp.NetworkStats(n.rec.Name)
	for _, p := range ts.Peers {
		v.Peers = append(v.Peers, api.Peer{
			VTEP: p.Addr.String(), Node: nodeOf[p.Addr], RxPackets: p.RxPackets, RxBytes: p.RxBytes,
			TxPackets: p.TxPackets, TxBytes: p.TxBytes, TxDrops: p.TxDrops,
		})
	}
	if n.cipher != 0 {
		v.SAs = d.saViews(n.cipher)
	}
	if len(ts.Drops) > 0 {
		v.Drops = ts.Drops
	}
	v.FloodNoPeers = ts.FloodNoPeers
	return v
}
