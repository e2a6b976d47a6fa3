package daemon

import (
	"maps"
	"time"
)

// Networks are saved in the state with the rest; the removals this node
// saw are kept with the services' (removals, service_persist.go), so that
// a network removed while a node was down stays removed when the whole
// cluster stops and that node starts first (docs/architecture.md,
// "Services are kept").

// networkGone notes that network n left this node because the cluster no
// longer has it: removed, or replaced by another incarnation under its
// name. Callers hold d.mu.
func (d *Daemon) networkGone(n *localNetwork) {
	d.removals.add(savedRemoval{Kind: removedNetwork, Name: n.rec.Name, ID: n.rec.ID, At: time.Now()})
}

// removeNetworksAgain handles the networks of want (the cluster's valid
// records) whose incarnation this node saw removed: a node that missed
// the removal announced it again when the cluster restarted without the
// nodes that knew. Where this node has a later incarnation of the name
// (removed and created again while that node was down), it announces
// that one in its place; else it removes the network again, unless
// endpoints use the name (a node's containers keep a network removed
// while it was down: reconcileTables), in which case it forgets the
// removal. It returns want as this node
// should now take it, a copy if changed (want is shared). Callers hold
// d.mu.
func (d *Daemon) removeNetworksAgain(want map[string]netRecord) map[string]netRecord {
	out, copied := want, false
	for name, rec := range want {
		if !d.removals.has(removedNetwork, name, rec.ID) {
			continue
		}
		if !copied {
			out, copied = maps.Clone(want), true
		}
		if n := d.networks[name]; n != nil && n.rec.ID != rec.ID && !d.removals.has(removedNetwork, name, n.rec.ID) {
			d.log.Warn("announcing again the later network that a node replaced after missing its removal", "network", name, "id", n.rec.ID, "stale_id", rec.ID)
			if err := d.publishNetwork(n.rec); err != nil {
				d.log.Error("announcing network", "network", name, "err", err)
			}
			out[name] = n.rec
			continue
		}
		if d.networkInUse(name) {
			// Kept for the containers on it, as a running cluster keeps
			// it: a network again, that their leaving does not remove.
			if d.removals.forget(savedRemoval{Kind: removedNetwork, Name: name, ID: rec.ID}) {
				d.log.Info("keeping a network removed while a node was down: that node's containers use it", "network", name, "id", rec.ID)
			}
			continue
		}
		d.log.Warn("removing again a network that a node announced after missing its removal", "network", name, "id", rec.ID)
		if err := d.cl.Delete(tblNetworks, name); err != nil {
			d.log.Error("removing network", "network", name, "err", err)
			continue
		}
		delete(out, name)
	}
	return out
}

// networkInUse reports whether a container endpoint of any node is on
// network name. Callers hold d.mu.
func (d *Daemon) networkInUse(name string) bool {
	if n := d.networks[name]; n != nil && len(d.endpointsOf(n)) > 0 {
		return true
	}
	for _, rec := range d.clusterEndpoints() {
		if rec.Network == name && !rec.isGateway() {
			return true
		}
	}
	return false
}
