package daemon

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"
)

// Services are saved in the state, with the removals this node saw, so
// that a cluster whose nodes all stopped gets its services back and not
// those removed meanwhile (docs/architecture.md, "Services are kept").
// Networks are saved with the rest of the state; their removals are kept
// in the same set (network_persist.go).

// removals is the set of service and network removals this node
// remembers, by savedRemoval.key. The daemon's d.mu guards it.
type removals map[string]savedRemoval

// add notes r; it reports whether r is new.
func (rs removals) add(r savedRemoval) bool {
	if _, ok := rs[r.key()]; ok {
		return false
	}
	rs[r.key()] = r
	return true
}

// has reports whether the incarnation id of the service or network
// (kind) name was removed.
func (rs removals) has(kind, name, id string) bool {
	_, ok := rs[savedRemoval{Kind: kind, Name: name, ID: id}.key()]
	return ok
}

// forget drops the removal r; it reports whether there was one.
func (rs removals) forget(r savedRemoval) bool {
	if _, ok := rs[r.key()]; !ok {
		return false
	}
	delete(rs, r.key())
	return true
}

// list returns the removals still within removalRetention at now, the
// newest maxRemovals, sorted by key; it forgets the others.
func (rs removals) list(now time.Time) []savedRemoval {
	out := make([]savedRemoval, 0, len(rs))
	for k, r := range rs {
		if now.Sub(r.At) > removalRetention {
			delete(rs, k)
			continue
		}
		out = append(out, r)
	}
	if len(out) > maxRemovals {
		sort.Slice(out, func(i, j int) bool { return out[i].At.After(out[j].At) })
		for _, r := range out[maxRemovals:] {
			delete(rs, r.key())
		}
		out = out[:maxRemovals]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key() < out[j].key() })
	return out
}

// savedServices is the cluster's valid service records, sorted by name,
// as the state keeps them; callers hold d.mu.
func (d *Daemon) savedServices() []svcRecord {
	var out []svcRecord
	for _, v := range d.clusterServices() {
		out = append(out, v.rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// servicesToSave returns the cluster's valid services that this node
// did not see removed, after noting the removals of those on disk: a
// tombstone under their name, or another service under it. Where the
// cluster holds an incarnation this node saw removed (announced by a node
// that missed the removal) and this node has a later one saved under the
// name, the saved one is kept: removeAgain announces it in place of the
// stale one. Callers hold d.mu, with d.store open.
func (d *Daemon) servicesToSave() []svcRecord {
	live := d.savedServices()
	byName := map[string]string{}
	for _, v := range live {
		byName[v.Name] = v.ID
	}
	for name, b := range d.store.services {
		var old svcRecord
		if json.Unmarshal(b, &old) != nil || old.ID == "" || byName[name] == old.ID {
			continue
		}
		if d.removals.has(removedService, name, byName[name]) {
			continue // a stale incarnation in the cluster does not remove ours
		}
		if _, isLive := byName[name]; isLive || d.cl.Known(tblServices, name) {
			d.removals.add(savedRemoval{Kind: removedService, Name: name, ID: old.ID, At: time.Now()})
		}
	}
	kept := live[:0]
	for _, v := range live {
		if !d.removals.has(removedService, v.Name, v.ID) {
			kept = append(kept, v)
		} else if later, ok := d.laterSaved(v.Name); ok {
			kept = append(kept, later)
		}
	}
	return kept
}

// laterSaved returns the service saved under name if this node did not
// see that incarnation removed. Callers hold d.mu.
func (d *Daemon) laterSaved(name string) (svcRecord, bool) {
	if d.store == nil {
		return svcRecord{}, false
	}
	b, ok := d.store.services[name]
	if !ok {
		return svcRecord{}, false
	}
	var rec svcRecord
	if json.Unmarshal(b, &rec) != nil || rec.ID == "" || d.removals.has(removedService, name, rec.ID) {
		return svcRecord{}, false
	}
	return rec, true
}

// removeAgain removes each live service whose incarnation this node saw
// removed: a node that missed the removal announced it again when the
// cluster restarted without the nodes that knew. Callers hold d.mu.
func (d *Daemon) removeAgain() {
	for _, v := range d.savedServices() {
		if !d.removals.has(removedService, v.Name, v.ID) {
			continue
		}
		if later, ok := d.laterSaved(v.Name); ok {
			// Removed and created again while that node was down: the
			// later incarnation is the service, not a removal.
			if _, err := validateService(&later); err == nil {
				b, err := json.Marshal(later)
				if err == nil {
					err = d.cl.Put(tblServices, later.Name, b)
				}
				if err == nil {
					d.log.Warn("announcing again the later service that a node replaced after missing its removal", "service", v.Name, "id", later.ID, "stale_id", v.ID)
					continue
				}
				d.log.Error("announcing service", "service", v.Name, "err", err)
			}
		}
		d.log.Warn("removing again a service that a node announced after missing its removal", "service", v.Name, "id", v.ID)
		if err := d.cl.Delete(tblServices, v.Name); err != nil {
			d.log.Error("removing service", "service", v.Name, "err", err)
		}
	}
}

// saveServices persists the changes of the cluster's services alone (the
// reconcile pass calls it on every change of the tables): its cost grows
// with the number of services, not of containers. Callers hold d.mu.
func (d *Daemon) saveServices() error {
	if d.store == nil {
		return nil // not restored yet: the first save writes everything
	}
	p := newPending()
	err := d.store.diffServices(p, d.servicesToSave(), d.removals.list(time.Now()))
	if err == nil && (len(p.buf) > 0 || p.snapshot) {
		if p.snapshot || d.store.needsSnapshot(len(p.buf)) {
			err = d.store.compact(d.currentState())
		} else {
			err = d.store.commit(p)
		}
	}
	if err != nil {
		return fmt.Errorf("saving services: %w", err)
	}
	return nil
}
