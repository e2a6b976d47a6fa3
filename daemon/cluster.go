package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
)

// Replicated tables (docs/architecture.md, "Cluster"). Networks (and
// services, tblServices) outlive the node that created them; endpoints
// belong to their node and leave with it.
const (
	tblNetworks  = "networks"
	tblEndpoints = "endpoints"
)

// reconcileInterval bounds how stale the data plane can be if a change
// notification is coalesced away (membership state, member metadata).
const reconcileInterval = 2 * time.Second

// netRecord is a network as replicated to every node (the value of a
// networks table entry, keyed by Name). It is the gossip schema, separate
// from the on-disk savedNetwork: every node must decode every other
// node's records, so fields are only added, with omitempty.
type netRecord struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	Subnet  string    `json:"subnet"`
	Gateway string    `json:"gateway"`
	MTU     int       `json:"mtu"`
	VNI     uint32    `json:"vni"`
	Created time.Time `json:"created"`
	// VTEPs are external RFC 7348 VTEPs of the network.
	VTEPs []string `json:"vteps,omitempty"`
	// Encrypted networks are carried in ESP between hosts with Cipher.
	Encrypted bool   `json:"encrypted,omitempty"`
	Cipher    string `json:"cipher,omitempty"`
	// StormLimit: -1 unlimited, 0 (a record from a node that predates
	// the field) the default.
	StormLimit int `json:"storm_limit,omitempty"`
	// Internal networks have no egress.
	Internal bool `json:"internal,omitempty"`
}

// saved is the network as state.json keeps it.
func (r netRecord) saved() savedNetwork {
	return savedNetwork{
		Name: r.Name, ID: r.ID, Subnet: r.Subnet, Gateway: r.Gateway, MTU: r.MTU, VNI: r.VNI,
		Created: r.Created, VTEPs: r.VTEPs, Encrypted: r.Encrypted, Cipher: r.Cipher, StormLimit: r.StormLimit,
		Internal: r.Internal,
	}
}

// epRecord is an endpoint as replicated to every node.
type epRecord struct {
	Name    string   `json:"name"`
	Network string   `json:"network"`
	IP      string   `json:"ip"`
	MAC     string   `json:"mac"`
	Node    string   `json:"node"`
	Aliases []string `json:"aliases,omitempty"`
	// Services are the services the endpoint joined as a backend.
	Services []epService `json:"services,omitempty"`
	// Gateway marks a host's gateway identity on the network (the
	// routing mesh, gateway_host.go), named gatewayRecordName.
	Gateway bool `json:"gateway,omitempty"`

	version uint64 // of the table entry, for logging a refusal once
}

func epKey(node, network, name string) string { return node + "/" + network + "/" + name }

// publishEndpoint announces a local endpoint to the cluster; not one of a
// container whose namespace is gone (withdrawGone) or that is stopped
// (exited.go).
func (d *Daemon) publishEndpoint(ep *endpoint) {
	if ep.ctr.withdrawn() {
		return
	}
	rec := epRecord{Name: ep.ctr.name, Network: ep.net.rec.Name, IP: ep.ip.String(), MAC: ep.mac.String(), Node: d.cfg.Node, Aliases: ep.aliases}
	for _, m := range ep.services {
		rec.Services = append(rec.Services, m.record())
	}
	b, _ := json.Marshal(rec)
	if err := d.cl.Put(tblEndpoints, epKey(d.cfg.Node, rec.Network, rec.Name), b); err != nil {
		d.log.Error("publishing endpoint", "container", rec.Name, "network", rec.Network, "err", err)
	}
}

func (d *Daemon) unpublishEndpoint(ep *endpoint) {
	if err := d.cl.Delete(tblEndpoints, epKey(d.cfg.Node, ep.net.rec.Name, ep.ctr.name)); err != nil {
		d.log.Error("withdrawing endpoint", "container", ep.ctr.name, "err", err)
	}
}

func (d *Daemon) publishNetwork(rec netRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return d.cl.Put(tblNetworks, rec.Name, b)
}

// clusterNetworks decodes and validates the networks table; invalid
// records are left out, counted and logged once.
func (d *Daemon) clusterNetworks() map[string]netRecord {
	valid, _ := d.networkRecords()
	return valid
}

// netRecordsCache keeps networkRecords' last result with the cluster
// generation it was read at: it depends only on the networks table and
// the membership (vtepRules), and every change asks for it several times.
type netRecordsCache struct {
	mu      sync.Mutex
	ok      bool
	gen     uint64
	valid   map[string]netRecord
	invalid map[string]bool
}

// networkRecords is clusterNetworks that also returns the names of the
// invalid records, so that reconcile leaves this node's copy alone. The
// maps are shared: callers only read them.
func (d *Daemon) networkRecords() (valid map[string]netRecord, invalid map[string]bool) {
	c := &d.netRecs
	c.mu.Lock()
	defer c.mu.Unlock()
	gen := d.cl.Generation() // before reading the table
	if c.ok && c.gen == gen {
		return c.valid, c.invalid
	}
	valid, invalid = d.readNetworkRecords()
	c.ok, c.gen, c.valid, c.invalid = true, gen, valid, invalid
	return valid, invalid
}

// readNetworkRecords is networkRecords without the cache.
func (d *Daemon) readNetworkRecords() (valid map[string]netRecord, invalid map[string]bool) {
	valid, invalid = map[string]netRecord{}, map[string]bool{}
	rules := d.vtepRules()
	for _, e := range d.cl.List(tblNetworks) {
		rec, err := decodeNetwork(e, rules)
		if err != nil {
			d.refused.note(d.log, tblNetworks, e.Key, e.Owner, e.Version, err)
			invalid[e.Key] = true
			continue
		}
		valid[rec.Name] = rec
	}
	return valid, invalid
}

// clusterEndpoints decodes and validates the endpoints table; invalid
// records are left out, counted and logged once. The records are not
// checked against the address blocks: see endpointSet.
//
// The list is kept with cluster.Changes (epFeed): only the entries written
// since the last call are decoded. It is shared, so callers only read it.
func (d *Daemon) clusterEndpoints() []*epRecord {
	recs, _, _ := d.endpointsSince(0)
	return recs
}

// endpointsSince is clusterEndpoints that also returns what changed since
// the feed revision rev (nil when the feed cannot tell: diff the list) and
// the current revision.
func (d *Daemon) endpointsSince(rev uint64) ([]*epRecord, *epDelta, uint64) {
	c := &d.epDecoded
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readLocked(d.cl, func(e cluster.Entry, err error) {
		d.refused.note(d.log, tblEndpoints, e.Key, e.Owner, e.Version, err)
	})
	var delta *epDelta
	if rev != 0 {
		delta = c.feed.since(rev)
	}
	return c.feed.out, delta, c.feed.rev
}

// watchCluster reconciles the local data plane with the cluster's tables
// whenever they or the membership change, and periodically; after each
// pass it has the blocks of this node's addresses kept (keepBlocks) and,
// without d.mu, gives back the empty ones (releaseEmptyBlocks).
func (d *Daemon) watchCluster(ctx context.Context) {
	ch, cancel := d.cl.Subscribe()
	defer cancel()
	t := time.NewTicker(reconcileInterval)
	defer t.Stop()
	var p pacer
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-t.C:
		}
		if !p.wait(ctx) {
			return
		}
		d.mu.Lock()
		start := time.Now()
		if err := d.reconcile(); err != nil {
			d.log.Error("data plane", "err", err)
		}
		p.done(start)
		d.passes.reconcile.Add(1)
		ctrs := len(d.containers)
		d.mu.Unlock()
		// How long the pass held d.mu: an attach waits for it.
		d.log.Debug("reconcile pass", "took", time.Since(start), "containers", ctrs)
		select {
		case d.holdKick <- struct{}{}:
		default: // a run is asked for already
		}
		d.releaseEmptyBlocks(time.Now())
		d.saveMembers()
	}
}

// keepBlocks runs holdBlocks when watchCluster asks (holdKick), until ctx
// is done. It runs beside the cluster watch: a keep that waits for this
// node's claim round in progress holds up neither the API nor the
// reconcile passes.
func (d *Daemon) keepBlocks(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.holdKick:
		}
		d.holdBlocks()
	}
}

// The pacing of the passes the cluster's changes drive (reconcile, the
// DNS records): a pass reads every table whole, so under a stream of
// changes (a hundred endpoints a second across the cluster reach every
// node) one pass per change would cost every node a pass per change. A
// pass starts no sooner than minPassGap after the previous one ended, nor
// sooner than passShare-1 times that pass's own duration (so passes take
// at most 1/passShare of a core however large the tables), nor later than
// maxPassGap; the changes that arrive meanwhile are taken by one pass. A
// change after a quiet spell is taken at once.
const (
	minPassGap = 100 * time.Millisecond
	maxPassGap = time.Second
	passShare  = 10
)

// pacer spaces the passes of one loop (see minPassGap).
type pacer struct {
	next time.Time // the earliest start of the next pass
}

// wait sleeps until the next pass may start; false if ctx ended first.
func (p *pacer) wait(ctx context.Context) bool {
	d := time.Until(p.next)
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// done records a pass that started at start and ends now.
func (p *pacer) done(start time.Time) {
	now := time.Now()
	gap := min(max(minPassGap, (passShare-1)*now.Sub(start)), maxPassGap)
	p.next = now.Add(gap)
}

// reconcile makes the local networks match the cluster's tables, then
// applies the desired data-plane state (networks, endpoints, remotes,
// peers, SAs) and returns what the data plane could not apply; callers
// hold d.mu. Records are validated before use, so reconcile does not
// panic; should it still, the panic is counted ("reconcile-panic"),
// logged and returned instead of killing the daemon. Once Close began,
// reconcile changes nothing.
func (d *Daemon) reconcile() (err error) {
	defer func() {
		if r := recover(); r != nil {
			d.refused.note(d.log, "reconcile-panic", fmt.Sprint(r), "", 0, fmt.Errorf("%v\n%s", r, debug.Stack()))
			err = fmt.Errorf("reconcile: %v", r)
		}
	}()
	if d.stopping {
		return nil
	}
	return d.reconcileTables()
}

// reconcileTables is reconcile without its safety net.
func (d *Daemon) reconcileTables() error {
	want, invalid := d.networkRecords()
	want = d.removeNetworksAgain(want)
	changed := false
	for name, rec := range want {
		n := d.networks[name]
		switch {
		case n == nil:
			if err := d.addLocalNetwork(rec); err != nil {
				d.log.Error("network from the cluster", "network", name, "err", err)
				continue
			}
			changed = true
		case n.rec.ID != rec.ID && n.rec.Encrypted && !rec.Encrypted:
			// Two creates of one name met (only possible across a
			// partition: creates are confirmed with every member). An
			// encrypted network is never silently downgraded: publish
			// it again, so that it wins everywhere.
			d.log.Error("a cleartext record of an encrypted network met it; keeping the encrypted one", "network", name, "other_id", rec.ID)
			if err := d.publishNetwork(n.rec); err != nil {
				d.log.Error("publishing network", "network", name, "err", err)
			}
		case n.rec.ID != rec.ID:
			// A concurrent create of the same name elsewhere won.
			if len(d.endpointsOf(n)) > 0 {
				d.log.Error("network replaced in the cluster while this node has endpoints on it", "network", name)
				continue
			}
			d.networkGone(n)
			d.removeLocalNetwork(n)
			if err := d.addLocalNetwork(rec); err != nil {
				d.log.Error("network from the cluster", "network", name, "err", err)
			}
			changed = true
		case strings.Join(n.rec.VTEPs, ",") != strings.Join(rec.VTEPs, ","):
			n.rec.VTEPs = rec.VTEPs
			changed = true
		}
	}
	for name, n := range d.networks {
		if _, ok := want[name]; ok || invalid[name] {
			continue
		}
		if len(d.endpointsOf(n)) > 0 {
			// Removed elsewhere while our endpoints use it: keep it
			// here (and announce it again) rather than cut them off.
			d.publishNetwork(n.rec)
			continue
		}
		d.networkGone(n)
		d.removeLocalNetwork(n)
		changed = true
	}
	if d.syncGatewayHosts() {
		changed = true
	}
	d.removeAgain()
	if changed {
		if err := d.save(); err != nil {
			d.log.Error("saving state", "err", err)
		}
	} else if err := d.saveServices(); err != nil {
		d.log.Error("saving state", "err", err)
	}
	return d.reconcileKeys()
}

// Nodes lists the cluster members and the networks each has endpoints on.
func (d *Daemon) Nodes() []api.Node {
	nets := map[string]map[string]bool{}
	for _, rec := range d.clusterEndpoints() {
		if nets[rec.Node] == nil {
			nets[rec.Node] = map[string]bool{}
		}
		nets[rec.Node][rec.Network] = true
	}
	out := []api.Node{}
	for _, m := range d.cl.Members() {
		n := api.Node{Name: m.Name, Addr: m.Addr.String(), State: m.State, Self: m.Self, Networks: []string{}}
		if m.Meta.DataAddr.IsValid() {
			n.DataAddr = m.Meta.DataAddr.String()
		}
		for net := range nets[m.Name] {
			n.Networks = append(n.Networks, net)
		}
		sort.Strings(n.Networks)
		out = append(out, n)
	}
	return out
}

// ClaimWaits returns the members declared dead that this host's claim in
// progress (a network or service create, an address block) waits for:
// the CLI polls it while a create takes long, to say what it waits for.
func (d *Daemon) ClaimWaits() []api.ClaimWait {
	out := []api.ClaimWait{}
	now := time.Now()
	for _, w := range d.cl.ClaimWaits() {
		out = append(out, api.ClaimWait{Node: w.Member, DeadSeconds: now.Sub(w.DeadSince).Seconds(),
			LeftSeconds: max(0, w.Until.Sub(now).Seconds())})
	}
	return out
}

// loadClusterKey reads the cluster key (creating a key in the state
// directory for a first, standalone node).
func (d *Daemon) loadClusterKey() ([]byte, error) {
	var key []byte
	var err error
	if d.cfg.ClusterKeyFile != "" {
		key, err = cluster.LoadKeyFile(d.cfg.ClusterKeyFile)
	} else {
		var created bool
		path := d.cfg.StateDir + "/cluster.key"
		key, created, err = cluster.LoadOrCreateKeyFile(path)
		if created {
			d.log.Info("created a cluster key; give it to other hosts with --cluster-key-file", "path", path)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	return key, nil
}

// startCluster joins the gossip cluster with the cluster key.
func (d *Daemon) startCluster(key []byte) error {
	cfg := cluster.Config{
		NodeName: d.cfg.Node, BindAddr: d.cfg.Advertise, AdvertiseAddr: d.cfg.Advertise,
		GossipPort: d.cfg.GossipPort, Key: key, NodeGrace: d.cfg.NodeGrace,
		Meta:   cluster.NodeMeta{DataAddr: netip.AddrPortFrom(d.cfg.Advertise, d.cfg.DataPort)},
		Logger: d.log, // the cluster tags its lines component=cluster itself
	}
	if d.cfg.tuneCluster != nil {
		d.cfg.tuneCluster(&cfg)
	}
	cl, err := cluster.Start(cfg)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	for _, t := range []struct {
		name string
		opt  cluster.TableOptions
	}{{tblNetworks, cluster.TableOptions{}}, {tblEndpoints, cluster.TableOptions{NodeScoped: true}}, {tblServices, cluster.TableOptions{}}, {tblMeshState, cluster.TableOptions{NodeScoped: true}}} {
		if err := cl.DefineTable(t.name, t.opt); err != nil {
			cl.Close()
			return err
		}
	}
	if err := cl.DefineClaims(tblNetClaims, netClaimsConflict, netClaimTaken(cl)); err != nil {
		cl.Close()
		return err
	}
	if err := cl.DefineClaims(tblSvcClaims, svcClaimsConflict, svcClaimTaken(cl)); err != nil {
		cl.Close()
		return err
	}
	if err := defineKeyTables(cl); err != nil {
		cl.Close()
		return err
	}
	d.cl = cl
	return nil
}
