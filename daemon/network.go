package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/gateway"
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
	minMTU         = gateway.MinMTU // the gateway's: a smaller one would fail on every host after the create
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
	// gwHost is this host's gateway identity on the network while it has
	// a service with published ports (gateway_host.go), saved;
	// gwHostPublished says its record is in the cluster, gwHostPending
	// that an allocation runs.
	// gwHostRestored that it came from the saved state (gateway_host.go,
	// gatewayHostRestoreGrace).
	gwHost                                         netip.Addr
	gwHostPublished, gwHostPending, gwHostRestored bool
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
// every node, the VIPs of every service and the addresses reserved by
// attaches and service creates in flight.
func (d *Daemon) usedIPs(n *localNetwork) map[netip.Addr]bool {
	used := map[netip.Addr]bool{n.gw: true}
	if n.gwHost.IsValid() {
		used[n.gwHost] = true
	}
	for a := range d.reservedIPs[n.rec.Name] {
		used[a] = true
	}
	for _, ep := range d.endpointsOf(n) {
		used[ep.ip] = true
	}
	// The cluster's valid endpoint records, from the endpoint set's
	// address index (parsed once per record, not once per call).
	d.endpointSet()
	d.epSet.addrs(n.rec.Name, func(a netip.Addr) { used[a] = true })
	for _, s := range d.clusterServices() {
		if a := s.vips[n.rec.Name]; a.IsValid() {
			used[a] = true
		}
	}
	return used
}

// ipTaken is usedIPs as a look-up that does not list every address: the
// cluster's endpoint records are looked up in the endpoint set's address
// index, this node's endpoints in a per-network set kept until they
// change. Callers hold d.mu, also while they call the look-up.
func (d *Daemon) ipTaken(n *localNetwork) func(netip.Addr) bool {
	name := n.rec.Name
	local := d.ipsByNet[name]
	if local == nil {
		eps := d.endpointsOf(n)
		local = make(map[netip.Addr]int, len(eps))
		blocks := map[netip.Prefix]int{}
		for _, ep := range eps {
			local[ep.ip]++
			blocks[blockOf(n.subnet, ep.ip)]++
		}
		if d.ipsByNet == nil {
			d.ipsByNet, d.localInBlock = map[string]map[netip.Addr]int{}, map[string]map[netip.Prefix]int{}
		}
		d.ipsByNet[name], d.localInBlock[name] = local, blocks
	}
	vips := map[netip.Addr]bool{}
	for _, s := range d.clusterServices() {
		if a := s.vips[name]; a.IsValid() {
			vips[a] = true
		}
	}
	d.endpointSet() // brings the address index up to the cluster's generation
	return func(a netip.Addr) bool {
		if a == n.gw || (n.gwHost.IsValid() && a == n.gwHost) || local[a] > 0 || vips[a] {
			return true
		}
		if _, ok := d.reservedIPs[name][a]; ok {
			return true
		}
		return d.epSet.addrTaken(name, a)
	}
}

// claimTaken is ipTaken for the addresses outside the blocks of held (the
// blocks this node holds), as a look-up that may be called without d.mu:
// ClaimBlockFunc asks it, outside d.mu, which free blocks have a free
// address. A block this node holds is never a candidate, so only this
// node's endpoints in other blocks (few: the per-block counts say where)
// are copied, with the reservations and VIPs, instead of listing every
// address in use (usedIPs). The cluster's records are looked up in the
// endpoint set's address index, which has its own lock. Callers hold d.mu.
func (d *Daemon) claimTaken(n *localNetwork, held []netip.Prefix) func(netip.Addr) bool {
	name := n.rec.Name
	d.ipTaken(n) // brings the per-block counts and the address index up to date
	extra := map[netip.Addr]bool{n.gw: true}
	if n.gwHost.IsValid() {
		extra[n.gwHost] = true
	}
	for a := range d.reservedIPs[name] {
		extra[a] = true
	}
	for _, s := range d.clusterServices() {
		if a := s.vips[name]; a.IsValid() {
			extra[a] = true
		}
	}
	local := d.ipsByNet[name]
	for b := range d.localInBlock[name] {
		if slices.Contains(held, b) {
			continue
		}
		for a := b.Masked().Addr(); b.Contains(a); a = a.Next() {
			if local[a] > 0 {
				extra[a] = true
			}
		}
	}
	return func(a netip.Addr) bool {
		return extra[a] || d.epSet.addrTaken(name, a)
	}
}

// blockFull reports whether this node's endpoints on n use every usable
// address of block b (then no address of b is free, whatever else is
// taken). Callers hold d.mu and called ipTaken(n) first.
func (d *Daemon) blockFull(n *localNetwork, b netip.Prefix) bool {
	b = b.Masked()
	if b.Bits() != blockBits(n.subnet) || !b.Addr().Is4() {
		return false
	}
	usable := 1 << (32 - b.Bits())
	if n.subnet.Bits() < 31 {
		if b.Contains(n.subnet.Masked().Addr()) {
			usable--
		}
		if b.Contains(broadcastAddr(n.subnet)) {
			usable--
		}
	}
	return d.localInBlock[n.rec.Name][b] >= usable
}

// endpointsOf lists n's endpoints sorted by container name; callers hold
// d.mu and only read the list. Lists are kept until an endpoint or
// container comes or goes (endpointsChanged): every change asks for them.
func (d *Daemon) endpointsOf(n *localNetwork) []*endpoint {
	if out, ok := d.epsByNet[n.rec.Name]; ok {
		return out
	}
	var out []*endpoint
	for _, c := range d.containers {
		if ep := c.endpoints[n.rec.Name]; ep != nil {
			out = append(out, ep)
		}
	}
	slices.SortFunc(out, func(a, b *endpoint) int { return strings.Compare(a.ctr.name, b.ctr.name) })
	if d.epsByNet == nil {
		d.epsByNet = map[string][]*endpoint{}
	}
	d.epsByNet[n.rec.Name] = out
	return out
}

// endpointsChanged drops the lists of endpointsOf: callers changed a
// container's endpoints or the containers. Callers hold d.mu.
func (d *Daemon) endpointsChanged() {
	clear(d.epsByNet)
	clear(d.ipsByNet)
	clear(d.localInBlock)
	d.backendCtrs = nil
	d.byNetns = nil
	clear(d.portsOf)
}

// containerChanged is endpointsChanged for a change of one container c:
// its endpoints, or whether it is in d.containers. Each kept endpointsOf
// list that changes is replaced by a new list with c's endpoint taken
// out, put in or replaced at its place, not made and sorted again.
// Callers hold d.mu.
func (d *Daemon) containerChanged(c *container) {
	present := d.containers[c.name] == c
	if d.byNetns != nil {
		k := [2]uint64{c.nsDev, c.nsIno}
		l := slices.DeleteFunc(slices.Clone(d.byNetns[k]), func(o *container) bool { return o == c })
		if present && !c.hostTAP {
			l = append(l, c)
		}
		if len(l) == 0 {
			delete(d.byNetns, k)
		} else {
			d.byNetns[k] = l
		}
	}
	if d.backendCtrs != nil {
		if present && c.isBackend() {
			d.backendCtrs[c] = true
		} else {
			delete(d.backendCtrs, c)
		}
	}
	for name, eps := range d.epsByNet {
		var now *endpoint
		if present {
			now = c.endpoints[name]
		}
		i, found := slices.BinarySearchFunc(eps, c.name, func(ep *endpoint, n string) int { return strings.Compare(ep.ctr.name, n) })
		var out []*endpoint
		switch {
		case found && now == nil:
			out = slices.Concat(eps[:i], eps[i+1:])
		case found && now != eps[i]:
			out = slices.Clone(eps)
			out[i] = now
		case !found && now != nil:
			out = slices.Concat(eps[:i], []*endpoint{now}, eps[i:])
		default:
			continue
		}
		if len(out) == 0 {
			out = nil
		}
		d.epsByNet[name] = out
		// The addresses of the list, patched the same way (counted: the
		// map is shared by no one, ipTaken's callers hold d.mu).
		n := d.networks[name]
		if ips := d.ipsByNet[name]; ips != nil && n == nil {
			delete(d.ipsByNet, name)
			delete(d.localInBlock, name)
		} else if ips != nil {
			blocks := d.localInBlock[name]
			if found {
				if ips[eps[i].ip]--; ips[eps[i].ip] <= 0 {
					delete(ips, eps[i].ip)
				}
				if b := blockOf(n.subnet, eps[i].ip); blocks[b] > 1 {
					blocks[b]--
				} else {
					delete(blocks, b)
				}
			}
			if now != nil {
				ips[now.ip]++
				blocks[blockOf(n.subnet, now.ip)]++
			}
		}
	}
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
	view, published, err := d.commitNetwork(rec)
	// The claim goes only once every alive host has the record (or
	// spreadTimeout passed): a host that learnt of the release first
	// would find the name, subnet and VNI free for another create.
	if published {
		d.spreadRecord("network", rec.Name, cluster.Ref{Table: tblNetworks, Key: rec.Name})
	}
	d.releaseNetworkClaim(rec)
	d.spreadRecord("network claim", rec.Name, d.netClaimRef(rec))
	if err != nil {
		return api.Network{}, err
	}
	// Every host has the record; an encrypted network is usable once
	// they can also seal frames to each other.
	if c, cerr := esp.ParseCipher(rec.Cipher); rec.Encrypted && cerr == nil {
		d.awaitSAs("network", rec.Name, c, "")
	}
	return view, nil
}

// commitNetwork publishes a confirmed network record and sets the network
// up on this node; published says whether the record was written.
func (d *Daemon) commitNetwork(rec netRecord) (view api.Network, published bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.publishNetwork(rec); err != nil {
		return api.Network{}, false, fmt.Errorf("network %q: %w", rec.Name, err)
	}
	applyErr := d.reconcile()
	n, ok := d.networks[rec.Name]
	if !ok {
		return api.Network{}, true, fmt.Errorf("network %q: removed again while it was being created", rec.Name)
	}
	if err := networkError(applyErr, rec.Name); err != nil {
		return api.Network{}, true, fmt.Errorf("network %q: created, but not set up on this node: %w", rec.Name, err)
	}
	d.log.Info("network created", "network", rec.Name, "subnet", rec.Subnet, "vni", rec.VNI, "mtu", rec.MTU)
	return d.networkView(n, false), true, nil
}

// spreadTimeout bounds how long a create waits for the other hosts to
// acknowledge its record (spreadRecord).
const spreadTimeout = 2 * time.Second

// spreadRecord waits, up to spreadTimeout and without d.mu, until every
// alive member has merged this node's writes refs of what name, so that a
// command run on another host right after a create or remove finds what
// it did (gossip alone takes a few hundred milliseconds). A member that
// did not answer in time gets the writes by gossip; that is logged, not
// failed: the create or remove is done.
func (d *Daemon) spreadRecord(what, name string, refs ...cluster.Ref) {
	if err := d.cl.Spread(spreadTimeout, refs...); err != nil {
		d.log.Warn("done, but not yet known on every host", what, name, "err", err)
	}
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
	rec, err := d.networkFromRequest(req)
	if err != nil {
		return netRecord{}, asInvalid(err)
	}
	subnet := netip.MustParsePrefix(rec.Subnet)
	for _, n := range d.sortedNetworks() {
		if overlaps(subnet, n.subnet) {
			return netRecord{}, conflict("network %q: subnet %s overlaps network %q (%s)", req.Name, subnet, n.rec.Name, n.subnet)
		}
	}
	for _, c := range d.creating {
		if overlaps(subnet, c.subnet) {
			return netRecord{}, conflict("network %q: subnet %s overlaps network %q (%s), being created", req.Name, subnet, c.name, c.subnet)
		}
	}
	for _, n := range d.networks {
		if req.VNI != 0 && n.rec.VNI == req.VNI {
			return netRecord{}, conflict("network %q: vni %d: already used by network %q", req.Name, req.VNI, n.rec.Name)
		}
	}
	for _, c := range d.creating {
		if req.VNI != 0 && c.vni == req.VNI {
			return netRecord{}, conflict("network %q: vni %d: already used by network %q, being created", req.Name, req.VNI, c.name)
		}
	}
	d.creating[rec.Name] = netClaim{name: rec.Name, subnet: subnet, vni: rec.VNI}
	return rec, nil
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

// underlaySubnets is what an automatically picked subnet must not
// overlap besides the other networks: the underlay's LAN and every
// node's underlay address. An overlay subnet holding them would take
// those addresses from the containers' egress (they would be overlay
// destinations) and from the client addresses published ports preserve.
func (d *Daemon) underlaySubnets(rules *vtepRules) []netip.Prefix {
	var out []netip.Prefix
	if d.underlayLAN.IsValid() {
		out = append(out, d.underlayLAN)
	}
	for a := range rules.nodes {
		if a.Is4() {
			out = append(out, netip.PrefixFrom(a, 32))
		}
	}
	return out
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

// checkMTUFits refuses a create's --mtu that this host's underlay cannot
// carry between hosts: the tunnel sends with DF and never fragments, so
// every frame above it to another host would be dropped ("tx-error"),
// a TCP connection across hosts stalling at its first full segment.
func (d *Daemon) checkMTUFits(req api.NetworkCreateRequest, underlay int) error {
	overhead, what := vxlanOverhead, "VXLAN"
	if req.Encrypted {
		overhead, what = vxlanOverhead+espOverhead, "VXLAN and ESP"
	}
	if most := underlay - overhead; req.MTU > most {
		return fmt.Errorf("network %q: mtu %d: more than the underlay carries between hosts (%d: this host's underlay MTU %d less %d of %s); give at most %d or raise the underlay's MTU",
			req.Name, req.MTU, most, underlay, overhead, what, most)
	}
	return nil
}

// networkFromRequest fills in the defaults of a create request and
// returns the record, checked by validateNetwork like every record read
// from the cluster; callers hold d.mu.
func (d *Daemon) networkFromRequest(req api.NetworkCreateRequest) (netRecord, error) {
	rec := netRecord{
		Name: req.Name, Subnet: req.Subnet, Gateway: req.Gateway, MTU: req.MTU, VNI: req.VNI,
		Created: time.Now().UTC().Truncate(time.Second), Encrypted: req.Encrypted, Cipher: req.Cipher,
	}
	id := make([]byte, networkIDBytes)
	rand.Read(id)
	rec.ID = hex.EncodeToString(id)
	rules := d.vtepRules()
	if rec.Subnet == "" {
		p, err := pickSubnet(append(d.usedSubnets(), d.underlaySubnets(rules)...))
		if err != nil && d.underlayLAN.IsValid() && overlaps(d.underlayLAN, defaultPool) {
			return rec, conflict("network %q: %w outside the underlay's LAN %s: give --subnet", req.Name, err, d.underlayLAN)
		}
		if err != nil {
			return rec, conflict("network %q: %w", req.Name, err)
		}
		rec.Subnet = p.String()
	}
	if rec.Gateway == "" {
		if p, err := netip.ParsePrefix(rec.Subnet); err == nil && p.Addr().Is4() {
			rec.Gateway = firstHost(p).String()
		}
	}
	if req.Encrypted && rec.Cipher == "" {
		rec.Cipher = esp.AES128GCM.String()
	}
	if req.Encrypted {
		if c, err := esp.ParseCipher(rec.Cipher); err == nil {
			rec.Cipher = c.String()
		}
	}
	underlay := d.underlayMTU()
	if err := d.checkMTUFits(req, underlay); err != nil {
		return rec, err
	}
	if rec.MTU == 0 {
		rec.MTU = underlay - vxlanOverhead
		if req.Encrypted {
			rec.MTU -= espOverhead
		}
	}
	if rec.VNI == 0 {
		rec.VNI = d.freeVNI()
	}
	storm, err := stormLimit(req)
	if err != nil {
		return rec, err
	}
	rec.StormLimit = storm
	rec.Internal = req.Internal
	vteps, err := parseVTEPs(req.Name, req.VTEPs, rules)
	if err != nil {
		return rec, err
	}
	if len(vteps) > 0 {
		rec.VTEPs = vteps
	}
	if err := validateNetwork(&rec, rules); err != nil {
		return rec, err
	}
	return rec, rules.checkUnderlay(req.Name, rec.Subnet)
}

// UpdateNetwork adds and removes a network's external VTEPs; it returns
// once the other hosts know (spreadRecord), as create and remove do.
func (d *Daemon) UpdateNetwork(name string, req api.NetworkUpdateRequest) (api.Network, error) {
	v, err := d.updateNetwork(name, req)
	if err == nil {
		d.spreadRecord("network", name, cluster.Ref{Table: tblNetworks, Key: name})
	}
	return v, err
}

// updateNetwork is UpdateNetwork's work on this node.
func (d *Daemon) updateNetwork(name string, req api.NetworkUpdateRequest) (api.Network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.catchUpNetworks()
	n, ok := d.networks[name]
	if !ok {
		return api.Network{}, notFound("network %q: not found", name)
	}
	rules := d.vtepRules()
	add, err := parseVTEPs(name, req.AddVTEPs, rules)
	if err != nil {
		return api.Network{}, err
	}
	rm, err := parseVTEPs(name, req.RemoveVTEPs, nil)
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
	vteps, _ := parseVTEPs(name, all, nil)
	if n.rec.Encrypted && len(add) > 0 {
		return api.Network{}, invalid("network %q: external VTEPs cannot be peers of an encrypted network (they do not have its keys)", name)
	}
	rec := n.rec
	rec.VTEPs = nil
	if len(vteps) > 0 {
		rec.VTEPs = vteps
	}
	if err := validateNetwork(&rec, rules); err != nil {
		return api.Network{}, asInvalid(err)
	}
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

// RemoveNetwork deletes a network that has no endpoints left; it returns
// once the other hosts know (spreadRecord).
func (d *Daemon) RemoveNetwork(name string) error {
	if err := d.removeNetwork(name); err != nil {
		return err
	}
	d.spreadRecord("network", name, cluster.Ref{Table: tblNetworks, Key: name})
	return nil
}

// removeNetwork is RemoveNetwork's work on this node.
func (d *Daemon) removeNetwork(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.catchUpNetworks()
	n, ok := d.networks[name]
	if !ok {
		return notFound("network %q: not found", name)
	}
	var names []string
	for _, ep := range d.endpointsOf(n) {
		names = append(names, ep.ctr.name)
	}
	for _, rec := range d.clusterEndpoints() {
		if rec.Network == name && rec.Node != d.cfg.Node && !rec.isGateway() {
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
	var svcs []string
	for sname, s := range d.clusterServices() {
		if s.onNetwork(name) {
			svcs = append(svcs, sname)
		}
	}
	if len(svcs) > 0 {
		sort.Strings(svcs)
		return conflict("network %q: used by service(s) %s; remove them or take the network away with service update --network-rm", name, strings.Join(svcs, ", "))
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

// catchUpNetworks sets up and takes down now the networks that the
// cluster table gained or lost since the last reconcile pass, so that the
// API reads what another host's create or remove returned for (it waits
// until every host has merged the record: spreadRecord) rather than what
// the paced pass shows a moment later. It costs a map comparison when
// nothing changed; callers hold d.mu.
func (d *Daemon) catchUpNetworks() {
	want, invalid := d.networkRecords()
	stale := false
	for name, rec := range want {
		if n := d.networks[name]; n == nil || n.rec.ID != rec.ID || !slices.Equal(n.rec.VTEPs, rec.VTEPs) {
			stale = true
			break
		}
	}
	for name, n := range d.networks {
		if _, ok := want[name]; !ok && !invalid[name] && len(d.endpointsOf(n)) == 0 {
			stale = true // removed, and no endpoint of this node keeps it
			break
		}
	}
	if !stale {
		return
	}
	if err := d.reconcile(); err != nil {
		d.log.Error("data plane", "err", err)
	}
}

// Networks lists every network.
func (d *Daemon) Networks() []api.Network {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.catchUpNetworks()
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
	d.catchUpNetworks()
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
		Internal: n.rec.Internal,
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
	set := d.endpointSet()
	v.Conflicts = set.refused[n.rec.Name]
	for _, rec := range set.accepted {
		if rec.Network == n.rec.Name && rec.Node != d.cfg.Node && !rec.isGateway() {
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

// diffEndpoints compares two endpointsOf lists (sorted by container
// name, one endpoint per container) and returns the endpoints of a that
// are not in b (gone) and those of b not in a (added), each in list
// order; an endpoint replaced under the same container name is in both.
// It walks the lists comparing pointers, so a list patched by
// containerChanged costs a pass over pointers, not a derivation per
// endpoint.
func diffEndpoints(a, b []*endpoint) (gone, added []*endpoint) {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if a[i] == b[j] {
			i, j = i+1, j+1
			continue
		}
		switch c := strings.Compare(a[i].ctr.name, b[j].ctr.name); {
		case c < 0:
			gone = append(gone, a[i])
			i++
		case c > 0:
			added = append(added, b[j])
			j++
		default:
			gone, added = append(gone, a[i]), append(added, b[j])
			i, j = i+1, j+1
		}
	}
	return append(gone, a[i:]...), append(added, b[j:]...)
}
