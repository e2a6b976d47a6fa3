package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/lb"
)

// svcClaimsConflict is the conflict rule of tblSvcClaims: names compare
// as DNS names do; published ports (meshClaim: PORT/PROTO@SERVICE) by
// their PORT/PROTO.
func svcClaimsConflict(a, b string) bool {
	pa, _, ma := strings.Cut(a, "@")
	pb, _, mb := strings.Cut(b, "@")
	if ma && mb {
		return pa == pb
	}
	return strings.EqualFold(a, b)
}

// svcClaimTaken returns the services-table records of the claimed name:
// such a claim must lose.
func svcClaimTaken(cl *cluster.Cluster) func(group, resource string) []cluster.Entry {
	return func(group, resource string) []cluster.Entry {
		if group == meshClaimGroup {
			return meshPortTaken(cl, resource)
		}
		if group != svcClaimGroup {
			return nil
		}
		var out []cluster.Entry
		for _, e := range cl.List(tblServices) {
			if strings.EqualFold(e.Key, resource) {
				out = append(out, e)
			}
		}
		return out
	}
}

// meshPortTaken returns the services-table records of other services
// that publish the port of claim resource (PORT/PROTO@SERVICE).
func meshPortTaken(cl *cluster.Cluster, resource string) []cluster.Entry {
	key, service, _ := strings.Cut(resource, "@")
	var out []cluster.Entry
	for _, e := range cl.List(tblServices) {
		s, err := decodeService(e)
		if err != nil || strings.EqualFold(s.rec.Name, service) {
			continue
		}
		for _, m := range s.publish {
			if m.portKey() == key {
				out = append(out, e)
				break
			}
		}
	}
	return out
}

// vipOwner is the owner of a VIP's reservation in d.reservedIPs while a
// create or update of service name is in flight (':' is in no container
// name, so it is nobody else's).
func vipOwner(name string) string { return "service:" + name }

// releaseReserved gives up the addresses reserved for owner; callers
// hold d.mu.
func (d *Daemon) releaseReserved(owner string) {
	for _, ips := range d.reservedIPs {
		for a, o := range ips {
			if o == owner {
				delete(ips, a)
			}
		}
	}
}

// serviceSpecFromRequest parses everything of a create request but the
// networks and VIPs.
func serviceSpecFromRequest(req api.ServiceCreateRequest) (svcRecord, error) {
	rec := svcRecord{Name: req.Name, Mode: req.EndpointMode}
	if rec.Mode == "" {
		rec.Mode = modeVIP
	}
	if rec.Mode != modeVIP && rec.Mode != modeDNSRR {
		return rec, invalid("service %q: endpoint mode %q: want vip or dnsrr", req.Name, req.EndpointMode)
	}
	if rec.Mode == modeDNSRR && len(req.VIPs) > 0 {
		return rec, invalid("service %q: --vip: a dnsrr service has no VIP", req.Name)
	}
	s, err := lb.ParseScheduler(req.Scheduler)
	if err != nil {
		return rec, invalid("service %q: scheduler %q: want rr, wrr, lc, p2c or maglev", req.Name, req.Scheduler)
	}
	rec.Scheduler = s.String()
	if _, rec.Affinity, err = parseAffinity(req.Affinity); err != nil {
		return rec, invalid("service %q: %w", req.Name, err)
	}
	var ports []lb.Port
	if ports, rec.Ports, err = parsePorts(req.Ports); err != nil {
		return rec, invalid("service %q: %w", req.Name, err)
	}
	if _, rec.Publish, err = parseMeshPorts(req.Publish, ports, rec.Mode); err != nil {
		return rec, invalid("service %q: %w", req.Name, err)
	}
	if rec.Health, err = parseHealth(req.HealthTCP, req.HealthHTTP); err != nil {
		return rec, invalid("service %q: %w", req.Name, err)
	}
	g, err := parseDuration("stop grace period", req.StopGracePeriod, DefaultStopGrace, maxStopGrace, false)
	if err != nil {
		return rec, invalid("service %q: %w", req.Name, err)
	}
	ttl, err := parseDuration("dns ttl", req.DNSTTL, DefaultServiceTTL, maxServiceTTL, true)
	if err != nil {
		return rec, invalid("service %q: %w", req.Name, err)
	}
	rec.StopGrace, rec.DNSTTL = g.String(), ttl.String()
	return rec, nil
}

// parseVIPRequests maps the networks to the VIPs asked for them: IP (only
// with a single network) or NETWORK=IP, for one of networks.
func parseVIPRequests(service string, vips, networks []string) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range vips {
		network, ip, named := strings.Cut(v, "=")
		if !named {
			if len(networks) != 1 {
				return nil, invalid("service %q: --vip %s: with several networks, write NETWORK=IP", service, v)
			}
			network, ip = networks[0], v
		}
		found := false
		for _, n := range networks {
			found = found || n == network
		}
		if !found {
			return nil, invalid("service %q: --vip %s: network %q is not one the service is added to", service, v, network)
		}
		if _, dup := out[network]; dup {
			return nil, invalid("service %q: --vip: two VIPs for network %q", service, network)
		}
		if _, err := parseVIP(ip); err != nil {
			return nil, invalid("service %q: %w", service, err)
		}
		out[network] = ip
	}
	return out, nil
}

// CreateService validates req, confirms the name with every member,
// reserves a VIP on each network (from this node's address blocks, or
// the one asked for) and publishes the service.
func (d *Daemon) CreateService(req api.ServiceCreateRequest) (api.Service, error) {
	if err := checkServiceName(req.Name); err != nil {
		return api.Service{}, err
	}
	rec, err := serviceSpecFromRequest(req)
	if err != nil {
		return api.Service{}, err
	}
	nets, err := serviceNetworks(req.Name, req.Networks)
	if err != nil {
		return api.Service{}, err
	}
	want, err := parseVIPRequests(req.Name, req.VIPs, nets)
	if err != nil {
		return api.Service{}, err
	}
	if err := d.planServiceCreate(rec, nets); err != nil {
		return api.Service{}, err
	}
	owner := vipOwner(req.Name)
	defer func() {
		d.mu.Lock()
		delete(d.svcCreating, strings.ToLower(req.Name))
		d.releaseReserved(owner)
		d.mu.Unlock()
	}()
	// The confirmation round and the VIPs' block claims, without d.mu.
	if err := d.claimService(req.Name); err != nil {
		return api.Service{}, err
	}
	// Once created, the record is spread to the other hosts before the
	// claims are released (below, at return), and the name claim's
	// release after that (this defer runs last): a host that learnt of
	// a release before the record would find the name (or a published
	// port) free for another create.
	var created bool
	defer func() {
		if created {
			d.spreadRecord("service claim", req.Name, d.cl.ClaimRef(tblSvcClaims, svcClaimGroup, req.Name))
		}
	}()
	defer func() {
		if err := d.cl.ReleaseClaim(tblSvcClaims, svcClaimGroup, req.Name); err != nil {
			d.log.Warn("releasing service claim", "service", req.Name, "err", err)
		}
	}()
	release, err := d.claimMeshPorts(rec, nil)
	defer release()
	if err != nil {
		return api.Service{}, err
	}
	if err := d.reserveServiceVIPs(&rec, nets, want); err != nil {
		return api.Service{}, err
	}
	d.stampService(&rec)
	view, err := d.commitServiceView(rec)
	if err != nil {
		return api.Service{}, err
	}
	d.log.Info("service created", "service", rec.Name, "mode", rec.Mode, "vips", fmt.Sprint(rec.VIPs))
	d.spreadRecord("service", req.Name, cluster.Ref{Table: tblServices, Key: req.Name})
	created = true
	return view, nil
}

// serviceNetworks returns the networks a service create names, sorted,
// refusing none and any named twice.
func serviceNetworks(service string, networks []string) ([]string, error) {
	nets := append([]string(nil), networks...)
	sort.Strings(nets)
	if len(nets) == 0 {
		return nil, invalid("service %q: want at least one --network", service)
	}
	for i := 1; i < len(nets); i++ {
		if nets[i] == nets[i-1] {
			return nil, invalid("service %q: network %q given twice", service, nets[i])
		}
	}
	return nets, nil
}

// planServiceCreate reserves rec's name (d.svcCreating) and checks its
// published ports against the mesh, under d.mu; on error nothing stays
// reserved.
func (d *Daemon) planServiceCreate(rec svcRecord, nets []string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.planService(rec.Name, nets)
	if err == nil {
		if err = d.checkMeshRecord(rec); err != nil {
			delete(d.svcCreating, strings.ToLower(rec.Name))
		}
	}
	return err
}

// claimService confirms the service name with every member (the
// confirmation round), without d.mu.
func (d *Daemon) claimService(name string) error {
	if err := d.cl.Claim(tblSvcClaims, svcClaimGroup, name); err != nil {
		var lost *cluster.ClaimConflict
		if errors.As(err, &lost) {
			return conflict("service %q: created concurrently on node %s", name, lost.Node)
		}
		return fmt.Errorf("service %q: %w", name, err)
	}
	return nil
}

// reserveServiceVIPs appends one VIP entry per network to rec, reserving
// an address on each when rec is in VIP mode (want[network], or the
// lowest free one).
func (d *Daemon) reserveServiceVIPs(rec *svcRecord, nets []string, want map[string]string) error {
	for _, network := range nets {
		v := svcVIP{Network: network}
		if rec.Mode == modeVIP {
			a, err := d.reserveVIP(rec.Name, network, want[network])
			if err != nil {
				return err
			}
			v.VIP = a.String()
		}
		rec.VIPs = append(rec.VIPs, v)
	}
	return nil
}

// stampService gives rec a fresh ID and this node's creation stamp.
func (d *Daemon) stampService(rec *svcRecord) {
	id := make([]byte, networkIDBytes)
	rand.Read(id)
	rec.ID = hex.EncodeToString(id)
	rec.Created, rec.CreatedBy = time.Now().UTC().Truncate(time.Second), d.cfg.Node
}

// commitServiceView publishes rec and returns the service's view, under
// d.mu.
func (d *Daemon) commitServiceView(rec svcRecord) (api.Service, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	spec, err := d.commitService(rec, nil)
	if err != nil {
		return api.Service{}, err
	}
	return d.serviceView(spec, nil, false), nil
}

// planService checks a create's name and networks against what this node
// knows and reserves the name (d.svcCreating); callers hold d.mu.
func (d *Daemon) planService(name string, nets []string) error {
	if err := d.reconcile(); err != nil {
		d.log.Error("data plane", "err", err)
	}
	if s := d.findService(name); s != nil {
		return conflict("service %q: already exists", s.rec.Name)
	}
	if d.svcCreating[strings.ToLower(name)] {
		return conflict("service %q: already being created", name)
	}
	for _, network := range nets {
		if d.networks[network] == nil {
			return notFound("service %q: network %q: not found", name, network)
		}
	}
	if err := d.checkNameFree(name); err != nil {
		return err
	}
	d.svcCreating[strings.ToLower(name)] = true
	return nil
}

// checkNameFree refuses a service name that is a container's name or
// alias anywhere in the cluster: the resolver answers both from one
// namespace (docs/architecture.md, "Services"); callers hold d.mu.
func (d *Daemon) checkNameFree(name string) error {
	for _, rec := range d.clusterEndpoints() {
		for _, n := range append([]string{rec.Name}, rec.Aliases...) {
			if strings.EqualFold(n, name) {
				return conflict("service %q: a container on node %s is called %q (DNS names of containers and services must differ)", name, rec.Node, n)
			}
		}
	}
	for ctr := range d.attaching {
		if strings.EqualFold(ctr, name) {
			return conflict("service %q: a container of that name is being attached", name)
		}
	}
	return nil
}

// reserveVIP reserves a VIP for service on network: want, or the lowest
// free address of this node's address blocks. The address is reserved
// (d.reservedIPs) until the create or update ends, and the block stays
// this node's, so no node hands it to a container meanwhile; once
// published, usedIPs counts every service's VIPs on every node.
func (d *Daemon) reserveVIP(service, network, want string) (netip.Addr, error) {
	d.mu.Lock()
	n := d.networks[network]
	d.mu.Unlock()
	if n == nil {
		return netip.Addr{}, notFound("service %q: network %q: not found", service, network)
	}
	a, err := d.reserveIP(vipOwner(service), n, want)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("service %q: vip: %w", service, err)
	}
	return a, nil
}

// commitService validates rec, checks that its name is still free (or,
// for an update, still the service of ID old) and its networks still
// known, publishes it and applies the data plane; callers hold d.mu.
func (d *Daemon) commitService(rec svcRecord, old *svcSpec) (*svcSpec, error) {
	spec, err := validateService(&rec)
	if err != nil {
		return nil, asInvalid(err)
	}
	cur := d.findService(rec.Name)
	switch {
	case old == nil && cur != nil:
		return nil, conflict("service %q: created concurrently on node %s", rec.Name, cur.rec.CreatedBy)
	case old != nil && (cur == nil || cur.rec.ID != old.rec.ID):
		return nil, conflict("service %q: removed or replaced during the update", rec.Name)
	}
	for _, v := range rec.VIPs {
		if d.networks[v.Network] == nil {
			return nil, conflict("service %q: network %q: removed meanwhile", rec.Name, v.Network)
		}
	}
	if err := d.checkMeshPorts(spec); err != nil {
		return nil, err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	if err := d.cl.Put(tblServices, rec.Name, b); err != nil {
		return nil, fmt.Errorf("service %q: %w", rec.Name, err)
	}
	if err := d.reconcile(); err != nil {
		d.log.Error("data plane", "err", err)
	}
	d.refreshDNS()
	return spec, nil
}

// findService returns the valid service record of name (compared
// case-insensitively), or nil.
func (d *Daemon) findService(name string) *svcSpec {
	for n, s := range d.clusterServices() {
		if strings.EqualFold(n, name) {
			return s
		}
	}
	return nil
}

// clusterServices decodes and validates the services table; invalid
// records are left out, counted and logged once.
func (d *Daemon) clusterServices() map[string]*svcSpec {
	out := map[string]*svcSpec{}
	for _, e := range d.cl.List(tblServices) {
		s, err := decodeService(e)
		if err != nil {
			d.refused.note(d.log, tblServices, e.Key, e.Owner, e.Version, err)
			continue
		}
		out[s.rec.Name] = s
	}
	return out
}

// UpdateService changes a service: its policy, and its networks (an added
// network gets a VIP, a removed one loses its VIP). It returns once the
// other hosts know, as create and remove do.
func (d *Daemon) UpdateService(name string, req api.ServiceUpdateRequest) (api.Service, error) {
	d.mu.Lock()
	old := d.findService(name)
	if old == nil {
		d.mu.Unlock()
		return api.Service{}, notFound("service %q: not found", name)
	}
	rec, want, err := d.updatedService(old, req)
	if err == nil {
		err = d.checkMeshRecord(rec)
	}
	d.mu.Unlock()
	if err != nil {
		return api.Service{}, err
	}
	owner := vipOwner(rec.Name)
	defer func() {
		d.mu.Lock()
		d.releaseReserved(owner)
		d.mu.Unlock()
	}()
	release, err := d.claimMeshPorts(rec, old)
	defer release()
	if err != nil {
		return api.Service{}, err
	}
	for i, v := range rec.VIPs {
		w, ok := want[v.Network]
		if rec.Mode != modeVIP || (v.VIP != "" && !ok) || (ok && w == v.VIP) {
			continue
		}
		a, err := d.reserveVIP(rec.Name, v.Network, w)
		if err != nil {
			return api.Service{}, err
		}
		rec.VIPs[i].VIP = a.String()
	}
	d.mu.Lock()
	spec, err := d.commitService(rec, old)
	if err != nil {
		d.mu.Unlock()
		return api.Service{}, err
	}
	d.log.Info("service updated", "service", rec.Name, "vips", fmt.Sprint(rec.VIPs))
	view := d.serviceView(spec, nil, false)
	d.mu.Unlock()
	// As after a create: the other hosts have the new record before the
	// call returns and before the published ports' claims are released
	// (deferred above), so no host finds an added port free meanwhile.
	d.spreadRecord("service", rec.Name, cluster.Ref{Table: tblServices, Key: rec.Name})
	return view, nil
}

// updatedService applies req to old's record; VIPs still to reserve are
// left empty (want says which address was asked for). Callers hold d.mu.
func (d *Daemon) updatedService(old *svcSpec, req api.ServiceUpdateRequest) (svcRecord, map[string]string, error) {
	rec := old.rec
	name := rec.Name
	cr := api.ServiceCreateRequest{
		Name: name, EndpointMode: rec.Mode, Scheduler: rec.Scheduler, Affinity: rec.Affinity, Ports: rec.Ports,
		StopGracePeriod: rec.StopGrace, DNSTTL: rec.DNSTTL,
	}
	setStr := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	setStr(&cr.EndpointMode, req.EndpointMode)
	setStr(&cr.Scheduler, req.Scheduler)
	setStr(&cr.Affinity, req.Affinity)
	setStr(&cr.StopGracePeriod, req.StopGracePeriod)
	setStr(&cr.DNSTTL, req.DNSTTL)
	if req.Ports != nil {
		cr.Ports = *req.Ports
	}
	var err error
	if cr.Publish, err = updatedPublish(name, rec.Publish, req.PublishAdd, req.PublishRemove); err != nil {
		return rec, nil, err
	}
	next, err := serviceSpecFromRequest(cr)
	if err != nil {
		return rec, nil, err
	}
	next.Health = rec.Health
	if req.NoHealth || req.HealthTCP != nil || req.HealthHTTP != nil {
		tcp, http := 0, ""
		if req.HealthTCP != nil {
			tcp = *req.HealthTCP
			if tcp == 0 {
				return rec, nil, invalid("service %q: --health-tcp 0: want a port 1-65535 (--no-health removes the check)", name)
			}
		}
		if req.HealthHTTP != nil {
			http = *req.HealthHTTP
		}
		if req.NoHealth && (tcp != 0 || http != "") {
			return rec, nil, invalid("service %q: --no-health and a health check: choose one", name)
		}
		if next.Health, err = parseHealth(tcp, http); err != nil {
			return rec, nil, invalid("service %q: %w", name, err)
		}
	}
	nets, err := d.updatedNetworks(old, req)
	if err != nil {
		return rec, nil, err
	}
	want, err := parseVIPRequests(name, req.VIPs, nets)
	if err != nil {
		return rec, nil, err
	}
	if next.Mode == modeDNSRR && len(req.VIPs) > 0 {
		return rec, nil, invalid("service %q: --vip: a dnsrr service has no VIP", name)
	}
	next.ID, next.Created, next.CreatedBy = rec.ID, rec.Created, rec.CreatedBy
	for _, network := range nets {
		v := svcVIP{Network: network}
		if next.Mode == modeVIP && old.vips[network].IsValid() {
			v.VIP = old.vips[network].String()
		}
		if _, ok := want[network]; ok && next.Mode == modeVIP {
			v.VIP = "" // reserved again below (unless it stays the same)
			if want[network] == old.vips[network].String() {
				v.VIP = want[network]
			}
		}
		next.VIPs = append(next.VIPs, v)
	}
	return next, want, nil
}

// updatedNetworks is old's networks with req's added and removed, sorted;
// callers hold d.mu.
func (d *Daemon) updatedNetworks(old *svcSpec, req api.ServiceUpdateRequest) ([]string, error) {
	name := old.rec.Name
	set := map[string]bool{}
	for _, n := range old.networks() {
		set[n] = true
	}
	for _, n := range req.RemoveNetworks {
		if !set[n] {
			return nil, notFound("service %q: --network-rm %s: not one of its networks", name, n)
		}
		delete(set, n)
	}
	for _, n := range req.AddNetworks {
		if set[n] {
			return nil, conflict("service %q: --network-add %s: already one of its networks", name, n)
		}
		if d.networks[n] == nil {
			return nil, notFound("service %q: network %q: not found", name, n)
		}
		set[n] = true
	}
	if len(set) == 0 {
		return nil, invalid("service %q: would have no network left (remove the service instead)", name)
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// RemoveService deletes a service. Its backends stay as they are, no
// longer backends: their memberships name a service ID that is gone.
func (d *Daemon) RemoveService(name string) error {
	key, err := d.removeService(name)
	if err != nil {
		return err
	}
	d.spreadRecord("service", key, cluster.Ref{Table: tblServices, Key: key})
	return nil
}

// removeService deletes service name and returns its record's key.
func (d *Daemon) removeService(name string) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.findService(name)
	if s == nil {
		return "", notFound("service %q: not found", name)
	}
	if err := d.cl.Delete(tblServices, s.rec.Name); err != nil {
		return "", fmt.Errorf("service %q: %w", name, err)
	}
	if err := d.reconcile(); err != nil {
		d.log.Error("data plane", "err", err)
	}
	d.refreshDNS()
	d.log.Info("service removed", "service", s.rec.Name)
	return s.rec.Name, nil
}

// Services lists every service.
func (d *Daemon) Services() []api.Service {
	d.mu.Lock()
	defer d.mu.Unlock()
	set := d.serviceSet(d.endpointSet().accepted)
	out := []api.Service{}
	for _, name := range set.names() {
		out = append(out, d.serviceView(set.specs[name], set.backends[name], false))
	}
	return out
}

// Service returns one service with its backends and this node's counters.
func (d *Daemon) Service(name string) (api.Service, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	set := d.serviceSet(d.endpointSet().accepted)
	for n, s := range set.specs {
		if strings.EqualFold(n, name) {
			return d.serviceView(s, set.backends[n], true), nil
		}
	}
	return api.Service{}, notFound("service %q: not found", name)
}

// serviceView is what the API shows of s: with its backends and this
// node's counters when full.
func (d *Daemon) serviceView(s *svcSpec, backends []svcBackend, full bool) api.Service {
	r := s.rec
	v := api.Service{
		Name: r.Name, ID: r.ID, EndpointMode: r.Mode, Scheduler: r.Scheduler, Affinity: r.Affinity,
		Ports: append([]string{}, r.Ports...), HealthCheck: r.Health, StopGracePeriod: r.StopGrace, DNSTTL: r.DNSTTL,
		Created: r.Created, CreatedBy: r.CreatedBy, VIPs: []api.ServiceVIP{},
		Published: append([]string{}, r.Publish...),
	}
	for _, x := range r.VIPs {
		v.VIPs = append(v.VIPs, api.ServiceVIP{Network: x.Network, VIP: x.VIP})
	}
	if !full {
		return v
	}
	v.PublishState = d.meshStateView(s)
	stats := map[string]map[netip.Addr]lb.BackendStats{}
	for _, x := range r.VIPs {
		for _, st := range d.lbStats(x.Network) {
			if st.Name != r.Name {
				continue
			}
			v.Stats = append(v.Stats, serviceStatsView(x.Network, st))
			stats[x.Network] = map[netip.Addr]lb.BackendStats{}
			for _, b := range st.Backends {
				stats[x.Network][b.IP] = b
			}
		}
	}
	v.Backends = []api.ServiceBackend{}
	local := d.healthStatus()
	for _, b := range backends {
		bv := api.ServiceBackend{
			Node: b.rec.Node, Container: b.rec.Name, Network: b.rec.Network, IP: b.rec.IP,
			Weight: b.m.Weight, State: b.m.State, Health: b.m.Health,
		}
		if lh, ok := local[healthRef{container: b.rec.Name, network: b.rec.Network, service: r.Name}]; ok && b.rec.Node == d.cfg.Node {
			bv.HealthReason, bv.HealthSince = lh.reason, lh.since
		}
		if st, ok := stats[b.rec.Network][b.ip]; ok {
			bv.ActiveConns, bv.NewConns, bv.Bytes, bv.Retries, bv.Ejections = st.Active, st.NewConns, st.Bytes, st.Retries, st.Ejections
		}
		v.Backends = append(v.Backends, bv)
	}
	return v
}

func serviceStatsView(network string, st lb.ServiceStats) api.ServiceStats {
	return api.ServiceStats{
		Service: st.Name, Network: network, VIP: st.VIP.String(), NewConns: st.NewConns, Active: st.Active,
		Packets: st.Packets, Bytes: st.Bytes, Retries: st.Retries, Rejects: st.Rejects, Ejections: st.Ejections,
	}
}
