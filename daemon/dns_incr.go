package daemon

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/vxmesh/vxmesh/dns"
	"github.com/vxmesh/vxmesh/internal/cowmap"
)

// dnsBuilder keeps the DNS index up to date with the accepted endpoint
// records and the services, changing only what a change touches: the
// index is copied per network that changed (the resolver reads the old
// one meanwhile), and of the precomputed answers only the names and
// addresses of the changed records are computed again. buildDNSIndex is
// the same index from scratch; a property test
// (TestDNSIndexIncrementalEqualsFull) holds the two equal.
type dnsBuilder struct {
	ok bool
	// recs are the records in the index (dnsIndexed).
	recs map[epID]epRecord
	// refs counts the records giving each name its address on a network,
	// as one address is listed once however many records give it.
	refs map[dnsRef]int
	// local counts, by local container name, its records on each
	// (lower-cased) network.
	local map[string]map[string]int
	svcs  []dnsService
	x     *dnsIndex
	// views are the answer views by asker group (groupKey).
	views map[string]*dns.AnswerView
	// groups are the askers of each group, by groupKey, and groupOf each
	// asker's group, kept by setNetworks: answers looks at the groups,
	// not at every asker.
	groups  map[string]map[string]bool
	groupOf map[string]string
	// moved are the askers whose group changed since the last answers.
	moved map[string]bool
}

// dnsRef is one name's address on a network.
type dnsRef struct {
	network, name string
	ip            netip.Addr
}

// dnsIndexed reports whether rec goes into the DNS index, and its address.
func dnsIndexed(rec *epRecord) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(rec.IP)
	return ip, err == nil && !rec.isGateway()
}

// dnsNames are the lower-cased names rec answers to on its network.
func dnsNames(rec *epRecord) []string {
	out := make([]string, 0, 1+len(rec.Aliases))
	for _, n := range append([]string{rec.Name}, rec.Aliases...) {
		out = append(out, strings.ToLower(n))
	}
	return out
}

// groupKey identifies the askers that see the same networks.
func groupKey(nets []string) string { return strings.Join(nets, "\x00") }

// dnsChange is what changed on one network: names and addresses to answer
// again.
type dnsChange struct {
	names map[string]bool
	addrs map[netip.Addr]bool
}

// dnsDelta tells update which records may have changed since its last
// call (possibly more), and their accepted version now, so that it does
// not compare every record.
type dnsDelta struct {
	ids    []epID
	lookup func(epID) (*epRecord, bool)
}

// update returns the index of the accepted records and the services,
// derived from the last one.
func (b *dnsBuilder) update(node string, accepted []*epRecord, svcs []dnsService) *dnsIndex {
	return b.updateDelta(node, accepted, nil, svcs)
}

// updateDelta is update, told by delta (if not nil) which records may
// have changed since the last call.
func (b *dnsBuilder) updateDelta(node string, accepted []*epRecord, delta *dnsDelta, svcs []dnsService) *dnsIndex {
	if !b.ok {
		delta = nil
		b.ok, b.recs, b.refs, b.views, b.local = true, map[epID]epRecord{}, map[dnsRef]int{}, map[string]*dns.AnswerView{}, map[string]map[string]int{}
		b.groups, b.groupOf, b.moved = map[string]map[string]bool{}, map[string]string{}, map[string]bool{}
		b.x = &dnsIndex{names: map[string]*nameAddrs{}, ptrs: map[string]*addrNames{},
			services: map[string]map[string]dns.Records{}, vips: map[string]map[netip.Addr]vipName{}, answers: dns.NewAnswers()}
	}
	var gone, added []epRecord
	if delta != nil {
		gone, added = b.takeDelta(delta)
	} else {
		gone, added = b.takeAll(accepted)
	}
	sameSvcs := reflect.DeepEqual(svcs, b.svcs)
	if len(gone) == 0 && len(added) == 0 && sameSvcs {
		return b.x
	}
	b.x = b.apply(node, gone, added, svcs, sameSvcs)
	b.svcs = svcs
	return b.x
}

// takeDelta takes in the records delta names: those gone or changed since
// the last update, and those added or changed, are returned.
func (b *dnsBuilder) takeDelta(delta *dnsDelta) (gone, added []epRecord) {
	seen := make(map[epID]bool, len(delta.ids))
	for _, k := range delta.ids {
		if seen[k] {
			continue
		}
		seen[k] = true
		old, had := b.recs[k]
		rec, ok := delta.lookup(k)
		if ok {
			_, ok = dnsIndexed(rec)
		}
		switch {
		case !ok && had:
			gone = append(gone, old)
			delete(b.recs, k)
		case !ok, had && sameRecord(old, *rec):
		default:
			if had {
				gone = append(gone, old)
			}
			added = append(added, *rec)
			b.recs[k] = *rec
		}
	}
	return gone, added
}

// takeAll takes in accepted whole, comparing every record with the one
// taken in before.
func (b *dnsBuilder) takeAll(accepted []*epRecord) (gone, added []epRecord) {
	n := 0
	for i := range accepted {
		rec := accepted[i]
		if _, ok := dnsIndexed(rec); !ok {
			continue
		}
		n++
		k := idOf(*rec)
		old, had := b.recs[k]
		if had && sameRecord(old, *rec) {
			continue
		}
		if had {
			gone = append(gone, old)
		}
		added = append(added, *rec)
		b.recs[k] = *rec
	}
	if n != len(b.recs) {
		seen := make(map[epID]bool, n)
		for i := range accepted {
			if _, ok := dnsIndexed(accepted[i]); ok {
				seen[idOf(*accepted[i])] = true
			}
		}
		for k, rec := range b.recs {
			if !seen[k] {
				gone = append(gone, rec)
				delete(b.recs, k)
			}
		}
	}
	return gone, added
}

// apply makes the next index from b.x: gone records out, added ones in,
// the services again if they or the addresses of their networks changed.
func (b *dnsBuilder) apply(node string, gone, added []epRecord, svcs []dnsService, sameSvcs bool) *dnsIndex {
	old := b.x
	x := &dnsIndex{networks: old.networks, names: maps.Clone(old.names), ptrs: maps.Clone(old.ptrs), services: old.services, vips: old.vips}
	e := dnsEdit{b: b, node: node, old: old, changes: map[string]*dnsChange{},
		nameW:  map[string]*cowmap.Writer[string, []netip.Addr, cowmap.Strings]{},
		ptrW:   map[string]*cowmap.Writer[netip.Addr, []string, cowmap.Addrs]{},
		askers: map[string]bool{}}
	for i := range gone {
		e.remove(&gone[i])
	}
	for i := range added {
		e.add(&added[i])
	}
	e.commitMaps(x)
	e.commitNetworks(x)
	b.applyServices(x, old, svcs, sameSvcs, e.changes)
	x.answers = b.answers(x, old, e.changes)
	return x
}

// dnsEdit is one change of the index in progress (apply): what changed
// on each network, the writers of the changed networks' maps (copies of
// the old ones, shard by shard as they are written) and the local
// containers whose networks changed.
type dnsEdit struct {
	b       *dnsBuilder
	node    string
	old     *dnsIndex
	changes map[string]*dnsChange
	nameW   map[string]*cowmap.Writer[string, []netip.Addr, cowmap.Strings]
	ptrW    map[string]*cowmap.Writer[netip.Addr, []string, cowmap.Addrs]
	askers  map[string]bool
}

// changeOf returns the change of network nw, starting it (and its
// writers) on first use.
func (e *dnsEdit) changeOf(nw string) *dnsChange {
	if e.changes[nw] == nil {
		e.changes[nw] = &dnsChange{names: map[string]bool{}, addrs: map[netip.Addr]bool{}}
		e.nameW[nw], e.ptrW[nw] = cowmap.NewWriter(e.old.names[nw]), cowmap.NewWriter(e.old.ptrs[nw])
	}
	return e.changes[nw]
}

// touch returns rec's address, its network's key and that network's
// change, with the address marked as changed.
func (e *dnsEdit) touch(rec *epRecord) (netip.Addr, string, *dnsChange) {
	ip, _ := dnsIndexed(rec)
	nw := strings.ToLower(rec.Network)
	c := e.changeOf(nw)
	c.addrs[ip] = true
	return ip, nw, c
}

// remove takes a gone record's names and PTR name out of its network's
// maps (a name's address only when no other record gives it).
func (e *dnsEdit) remove(rec *epRecord) {
	b := e.b
	ip, nw, c := e.touch(rec)
	names, ptrs := e.nameW[nw], e.ptrW[nw]
	for _, name := range dnsNames(rec) {
		c.names[name] = true
		r := dnsRef{nw, name, ip}
		if b.refs[r]--; b.refs[r] <= 0 {
			delete(b.refs, r)
			cur, _ := names.Map().Get(name)
			if l := slices.DeleteFunc(slices.Clone(cur), func(a netip.Addr) bool { return a == ip }); len(l) > 0 {
				names.Set(name, l)
			} else {
				names.Delete(name)
			}
		}
	}
	ptr := strings.ToLower(rec.Name) + "." + nw
	cur, _ := ptrs.Map().Get(ip)
	l := slices.Clone(cur)
	if j := slices.Index(l, ptr); j >= 0 {
		l = slices.Delete(l, j, j+1)
	}
	if len(l) > 0 {
		ptrs.Set(ip, l)
	} else {
		ptrs.Delete(ip)
	}
	if rec.Node == e.node {
		e.askers[rec.Name] = true
		if b.local[rec.Name][nw]--; b.local[rec.Name][nw] <= 0 {
			delete(b.local[rec.Name], nw)
		}
	}
}

// add puts an added record's names and PTR name into its network's maps.
func (e *dnsEdit) add(rec *epRecord) {
	b := e.b
	ip, nw, c := e.touch(rec)
	names, ptrs := e.nameW[nw], e.ptrW[nw]
	for _, name := range dnsNames(rec) {
		c.names[name] = true
		r := dnsRef{nw, name, ip}
		if b.refs[r]++; b.refs[r] == 1 {
			cur, _ := names.Map().Get(name)
			l := append(slices.Clone(cur), ip)
			slices.SortFunc(l, netip.Addr.Compare)
			names.Set(name, l)
		}
	}
	cur, _ := ptrs.Map().Get(ip)
	l := append(slices.Clone(cur), strings.ToLower(rec.Name)+"."+nw)
	slices.Sort(l)
	ptrs.Set(ip, l)
	if rec.Node == e.node {
		e.askers[rec.Name] = true
		if b.local[rec.Name] == nil {
			b.local[rec.Name] = map[string]int{}
		}
		b.local[rec.Name][nw]++
	}
}

// commitMaps puts the changed networks' written maps into x, leaving out
// those left empty.
func (e *dnsEdit) commitMaps(x *dnsIndex) {
	for nw := range e.changes {
		if e.nameW[nw].Map().Len() == 0 && e.ptrW[nw].Map().Len() == 0 {
			delete(x.names, nw)
			delete(x.ptrs, nw)
		} else {
			x.names[nw], x.ptrs[nw] = e.nameW[nw].Map(), e.ptrW[nw].Map()
		}
	}
}

// commitNetworks sets again in x the networks each asker whose networks
// changed sees.
func (e *dnsEdit) commitNetworks(x *dnsIndex) {
	if len(e.askers) == 0 {
		return
	}
	nets := cowmap.NewWriter(e.old.networks)
	for asker := range e.askers {
		e.b.setNetworks(nets, asker)
	}
	x.networks = nets.Map()
	if x.networks.Len() == 0 {
		x.networks = nil
	}
}

// setNetworks sets the networks of local container asker in nets: each
// network once per record on it, sorted.
func (b *dnsBuilder) setNetworks(nets *cowmap.Writer[string, []string, cowmap.Strings], asker string) {
	var l []string
	for nw, n := range b.local[asker] {
		for range n {
			l = append(l, nw)
		}
	}
	if len(l) == 0 {
		nets.Delete(asker)
		delete(b.local, asker)
		b.setGroup(asker, "", false)
		return
	}
	slices.Sort(l)
	nets.Set(asker, l)
	b.setGroup(asker, groupKey(l), true)
}

// setGroup moves asker to group k (out of every group if !in), noting it
// in b.moved if that changed its group.
func (b *dnsBuilder) setGroup(asker, k string, in bool) {
	old, had := b.groupOf[asker]
	if had == in && old == k {
		return
	}
	b.moved[asker] = true
	if had {
		delete(b.groups[old], asker)
		if len(b.groups[old]) == 0 {
			delete(b.groups, old)
		}
		delete(b.groupOf, asker)
	}
	if in {
		if b.groups[k] == nil {
			b.groups[k] = map[string]bool{}
		}
		b.groups[k][asker] = true
		b.groupOf[asker] = k
	}
}

// applyServices indexes the services again when they changed or an
// address on one of their networks did (their SRV targets are container
// names), marking the names and VIPs that changed.
func (b *dnsBuilder) applyServices(x, old *dnsIndex, svcs []dnsService, sameSvcs bool, changes map[string]*dnsChange) {
	if sameSvcs {
		touched := false
		for nw := range changes {
			touched = touched || len(old.services[nw]) > 0
		}
		if !touched {
			return
		}
	}
	x.services, x.vips = map[string]map[string]dns.Records{}, map[string]map[netip.Addr]vipName{}
	for _, s := range svcs {
		x.addService(s)
	}
	for _, idx := range []*dnsIndex{old, x} {
		for nw, m := range idx.services {
			c := changes[nw]
			if c == nil {
				c = &dnsChange{names: map[string]bool{}, addrs: map[netip.Addr]bool{}}
				changes[nw] = c
			}
			for name := range m {
				c.names[name] = true
			}
			for ip := range idx.vips[nw] {
				c.addrs[ip] = true
			}
		}
	}
}

// answers makes the precomputed answers of x from those of old: a view is
// shared while none of its networks changed, patched with the changed
// names and addresses when some did, and made from scratch for a group of
// networks new to this node. It looks at the groups (b.groups) and at the
// askers that changed group (b.moved), not at every asker.
func (b *dnsBuilder) answers(x, old *dnsIndex, changes map[string]*dnsChange) *dns.Answers {
	a := old.answers.Next()
	for k, askers := range b.groups {
		var asker string
		for asker = range askers {
			break
		}
		nets, _ := x.networks.Get(asker)
		lookupName := func(name string) (dns.Records, bool) { return x.lookupName(asker, name) }
		lookupAddr := func(ip netip.Addr) ([]string, uint32) { return x.lookupAddr(asker, ip) }
		v := b.views[k]
		if v == nil {
			names, addrs := x.groupNames(nets)
			b.views[k] = dns.NewAnswerView(names, addrs, lookupName, lookupAddr)
			continue // its askers moved to it: set below
		}
		var names []string
		var addrs []netip.Addr
		for _, n := range nets {
			if c := changes[n]; c != nil {
				for name := range c.names {
					names = append(names, name, name+"."+n)
				}
				for ip := range c.addrs {
					addrs = append(addrs, ip)
				}
			}
		}
		if len(names) > 0 || len(addrs) > 0 {
			b.views[k] = v.Patch(names, addrs, lookupName, lookupAddr)
			a.ReplaceView(v, b.views[k])
		}
	}
	for k, v := range b.views {
		if b.groups[k] == nil {
			a.ReplaceView(v, nil)
			delete(b.views, k)
		}
	}
	for asker := range b.moved {
		if k, ok := b.groupOf[asker]; ok {
			a.SetView([]string{asker}, b.views[k])
		} else {
			a.Remove(asker)
		}
	}
	clear(b.moved)
	return a
}

// groupNames lists every name (NAME and NAME.NETWORK, containers' and
// services') and address (containers' and VIPs) of nets.
func (x *dnsIndex) groupNames(nets []string) ([]string, []netip.Addr) {
	var names []string
	var addrs []netip.Addr
	for _, n := range nets {
		for name := range x.names[n].All() {
			names = append(names, name, name+"."+n)
		}
		for name := range x.services[n] {
			names = append(names, name, name+"."+n)
		}
		for ip := range x.ptrs[n].All() {
			addrs = append(addrs, ip)
		}
		for ip := range x.vips[n] {
			addrs = append(addrs, ip)
		}
	}
	return names, addrs
}
