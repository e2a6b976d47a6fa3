package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/packet"
)

// Replicated tables (DESIGN §5). Networks outlive the node that created
// them; endpoints belong to their node and leave with it.
const (
	tblNetworks  = "networks"
	tblEndpoints = "endpoints"
)

// reconcileInterval bounds how stale the data plane can be if a change
// notification is coalesced away (membership state, member metadata).
const reconcileInterval = 2 * time.Second

// epRecord is an endpoint as replicated to every node.
type epRecord struct {
	Name    string   `json:"name"`
	Network string   `json:"network"`
	IP      string   `json:"ip"`
	MAC     string   `json:"mac"`
	Node    string   `json:"node"`
	Aliases []string `json:"aliases,omitempty"`

	version uint64 // of the table entry, for logging a refusal once
}

func epKey(node, network, name string) string { return node + "/" + network + "/" + name }

// publishEndpoint announces a local endpoint to the cluster.
func (d *Daemon) publishEndpoint(ep *endpoint) {
	rec := epRecord{Name: ep.ctr.name, Network: ep.net.rec.Name, IP: ep.ip.String(), MAC: ep.mac.String(), Node: d.cfg.Node, Aliases: ep.aliases}
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

func (d *Daemon) publishNetwork(rec savedNetwork) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return d.cl.Put(tblNetworks, rec.Name, b)
}

// clusterNetworks decodes and validates the networks table; invalid
// records are left out, counted and logged once.
func (d *Daemon) clusterNetworks() map[string]savedNetwork {
	valid, _ := d.networkRecords()
	return valid
}

// networkRecords is clusterNetworks that also returns the names of the
// invalid records, so that reconcile leaves this node's copy alone.
func (d *Daemon) networkRecords() (valid map[string]savedNetwork, invalid map[string]bool) {
	valid, invalid = map[string]savedNetwork{}, map[string]bool{}
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
func (d *Daemon) clusterEndpoints() []epRecord {
	var out []epRecord
	for _, e := range d.cl.List(tblEndpoints) {
		rec, err := decodeEndpoint(e)
		if err != nil {
			d.refused.note(d.log, tblEndpoints, e.Key, e.Owner, e.Version, err)
			continue
		}
		out = append(out, rec)
	}
	return out
}

// watchCluster reconciles the local data plane with the cluster's tables
// whenever they or the membership change, and periodically.
func (d *Daemon) watchCluster(ctx context.Context) {
	ch, cancel := d.cl.Subscribe()
	defer cancel()
	t := time.NewTicker(reconcileInterval)
	defer t.Stop()
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
		d.mu.Lock()
		d.reconcile()
		d.mu.Unlock()
		d.saveMembers()
	}
}

// reconcile makes the local networks, remote FDB entries and VTEP peers
// match the cluster's tables; callers hold d.mu. Records are validated
// before use, so reconcile does not panic; should it still, the panic is
// counted ("reconcile-panic") and logged instead of killing the daemon.
func (d *Daemon) reconcile() {
	defer func() {
		if r := recover(); r != nil {
			d.refused.note(d.log, "reconcile-panic", fmt.Sprint(r), "", 0, fmt.Errorf("%v\n%s", r, debug.Stack()))
		}
	}()
	d.reconcileTables()
}

// reconcileTables is reconcile without its safety net.
func (d *Daemon) reconcileTables() {
	want, invalid := d.networkRecords()
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
		d.removeLocalNetwork(n)
		changed = true
	}
	if changed {
		if err := d.save(); err != nil {
			d.log.Error("saving state", "err", err)
		}
	}
	d.holdBlocks()
	d.applyRemotes()
	d.reconcileKeys()
}

// applyRemotes installs every other node's endpoints as static switch
// entries behind the tunnel port (so their ARP is answered locally and
// they are never flooded to) and as MAC -> VTEP entries in the tunnel,
// and sets each network's flooding peers: nodes with endpoints on it plus
// its external VTEPs.
func (d *Daemon) applyRemotes() {
	vtepOf := map[string]netip.Addr{}
	for _, m := range d.cl.Members() {
		if !m.Self && m.Meta.DataAddr.IsValid() {
			vtepOf[m.Name] = m.Meta.DataAddr.Addr()
		}
	}
	type remote struct {
		ip   netip.Addr
		vtep netip.Addr
	}
	byNet := map[string]map[packet.MAC]remote{}
	for _, rec := range d.endpointSet().accepted {
		if rec.Node == d.cfg.Node {
			continue
		}
		vtep, ok := vtepOf[rec.Node]
		if !ok {
			continue
		}
		mac, _ := packet.ParseMAC(rec.MAC)
		ip, _ := netip.ParseAddr(rec.IP)
		if byNet[rec.Network] == nil {
			byNet[rec.Network] = map[packet.MAC]remote{}
		}
		byNet[rec.Network][mac] = remote{ip, vtep}
	}
	for name, n := range d.networks {
		want := byNet[name]
		remotes := make(map[packet.MAC]netip.Addr, len(want))
		peerSet := map[netip.Addr]bool{}
		for mac, r := range want {
			remotes[mac] = r.vtep
			peerSet[r.vtep] = true
		}
		var external []netip.Addr
		for _, v := range n.rec.VTEPs {
			if a, err := netip.ParseAddr(v); err == nil {
				peerSet[a] = true
				external = append(external, a)
			}
		}
		peers := make([]netip.Addr, 0, len(peerSet))
		for a := range peerSet {
			peers = append(peers, a)
		}
		sort.Slice(peers, func(i, j int) bool { return peers[i].Less(peers[j]) })
		if err := n.tn.SetPeers(peers); err != nil {
			d.log.Error("setting VTEP peers", "network", name, "err", err)
		}
		if err := n.tn.SetRemotes(remotes); err != nil {
			d.log.Error("setting remote endpoints", "network", name, "err", err)
		}
		// MACs are learned behind external VTEPs only.
		if err := n.tn.SetExternal(external); err != nil {
			d.log.Error("setting external VTEPs", "network", name, "err", err)
		}
		for mac, ip := range n.remotes {
			if r, ok := want[mac]; !ok || r.ip != ip {
				n.sw.RemoveStatic(mac)
				delete(n.remotes, mac)
			}
		}
		for mac, r := range want {
			if _, ok := n.remotes[mac]; ok {
				continue
			}
			if err := n.sw.AddStatic(mac, r.ip, n.tport); err != nil {
				d.log.Warn("remote endpoint", "network", name, "mac", mac, "err", err)
				continue
			}
			n.remotes[mac] = r.ip
		}
	}
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

// startCluster joins the gossip cluster with the cluster key (creating a
// key in the state directory for a first, standalone node).
func (d *Daemon) startCluster() error {
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
		return fmt.Errorf("cluster key: %w", err)
	}
	cfg := cluster.Config{
		NodeName: d.cfg.Node, BindAddr: d.cfg.Advertise, AdvertiseAddr: d.cfg.Advertise,
		GossipPort: d.cfg.GossipPort, Key: key, NodeGrace: d.cfg.NodeGrace,
		Meta:   cluster.NodeMeta{DataAddr: netip.AddrPortFrom(d.cfg.Advertise, d.cfg.DataPort)},
		Logger: d.log.With("component", "cluster"),
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
	}{{tblNetworks, cluster.TableOptions{}}, {tblEndpoints, cluster.TableOptions{NodeScoped: true}}} {
		if err := cl.DefineTable(t.name, t.opt); err != nil {
			cl.Close()
			return err
		}
	}
	if err := cl.DefineClaims(tblNetClaims, netClaimsConflict, netClaimTaken(cl)); err != nil {
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
