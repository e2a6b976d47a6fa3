package daemon

import (
	"fmt"
	"iter"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// The endpoint set (endpointSet) is derived from three inputs: the valid
// endpoint records, the networks and each network's block table. A run
// changes one record, so epSetBuilder keeps what it derived last and
// re-judges only the records a change can affect: the changed records,
// the records at an address whose claim count changed, and every record
// of a network whose record or block table changed. fullEndpointSet is
// the same derivation from scratch; a property test
// (TestEndpointSetIncrementalEqualsFull) holds the two equal.

// epAt is an address on a network.
type epAt struct {
	network string
	ip      netip.Addr
}

// epID identifies an endpoint record (its epKey, without building the
// string).
type epID struct{ node, network, name string }

func idOf(rec epRecord) epID { return epID{rec.Node, rec.Network, rec.Name} }

// epSetBuilder derives the endpoint set incrementally. It is not safe for
// concurrent use (endpointSetCache serializes it).
type epSetBuilder struct {
	ok     bool
	nets   map[string]netRecord
	blocks map[string]map[netip.Prefix]string
	recs   map[epID]epRecord // the valid records
	ips    map[epID]netip.Addr
	atAddr map[epAt]map[epID]bool // the records at each address
	byNet  map[string]map[epID]bool
	passed map[epID]bool // records past the block check
	claims map[epAt]int  // passed records at each address
	// refusedBy holds the refused records' reasons.
	refusedBy map[epID]string
	set       endpointSet
	// acceptedKeys are the table keys of set.accepted.
	acceptedKeys []string
	// log holds, for the last sets made (set.seq), the records judged
	// again or gone in each: a superset of the records whose accepted
	// version differs from the previous set's (changedSince).
	log []epSetChange
}

// epSetChange is one entry of epSetBuilder.log.
type epSetChange struct {
	seq uint64
	ids []epID
}

// epSetLogLen bounds epSetBuilder.log: a reader further behind walks the
// whole set.
const epSetLogLen = 32

// epSetInput is what the endpoint set is derived from.
type epSetInput struct {
	self string
	nets map[string]netRecord
	// blocksOf returns a network's block table.
	blocksOf func(network string) map[netip.Prefix]string
	// recs are the valid records sorted by key (clusterEndpoints).
	recs []*epRecord
	// refuse is told of each refusal when a record is judged.
	refuse func(rec epRecord, err error)
	// delta, when set, is what changed in recs since the previous
	// update: recs is then not compared with the records judged before.
	delta *epDelta
}

// sameRecord reports whether a and b are the same record version with the
// same content.
func sameRecord(a, b epRecord) bool {
	return a.version == b.version && a.Name == b.Name && a.Network == b.Network && a.IP == b.IP && a.MAC == b.MAC &&
		a.Node == b.Node && a.Gateway == b.Gateway && slices.Equal(a.Aliases, b.Aliases) && slices.Equal(a.Services, b.Services)
}

// update derives the set from in, re-judging only what changed since the
// last call, and returns it. The returned set is not changed afterwards.
func (g *epSetBuilder) update(in epSetInput) endpointSet {
	if !g.ok {
		g.init()
	}
	dirty := map[epID]bool{} // records to judge again
	g.dirtyNetworks(in, dirty)
	gone := map[epID]bool{}
	g.takeRecords(in, dirty, gone)
	if len(dirty) == 0 && len(gone) == 0 {
		return g.set
	}
	g.judgeBlocks(in, dirty)
	g.judgeDuplicates(in, dirty)
	g.publish(dirty, gone)
	return g.set
}

// init makes the builder's empty maps on its first update.
func (g *epSetBuilder) init() {
	*g = epSetBuilder{ok: true, nets: map[string]netRecord{}, blocks: map[string]map[netip.Prefix]string{},
		recs: map[epID]epRecord{}, ips: map[epID]netip.Addr{}, atAddr: map[epAt]map[epID]bool{},
		byNet: map[string]map[epID]bool{}, passed: map[epID]bool{}, claims: map[epAt]int{}, refusedBy: map[epID]string{},
		set: endpointSet{refused: map[string][]string{}}}
}

// dirtyNetworks adds to dirty the records of every network whose record
// or block table changed (or that went), and takes in's networks and
// blocks.
func (g *epSetBuilder) dirtyNetworks(in epSetInput, dirty map[epID]bool) {
	for name := range g.byNet {
		if _, ok := in.nets[name]; !ok {
			if _, had := g.nets[name]; had {
				maps.Copy(dirty, g.byNet[name])
			}
		}
	}
	newBlocks := make(map[string]map[netip.Prefix]string, len(in.nets))
	for name, nr := range in.nets {
		b := in.blocksOf(name)
		newBlocks[name] = b
		old, had := g.nets[name]
		switch {
		case !had || old.Subnet != nr.Subnet || old.Gateway != nr.Gateway:
			maps.Copy(dirty, g.byNet[name])
		case !maps.Equal(b, g.blocks[name]):
			g.dirtyInBlocks(name, changedBlocks(g.blocks[name], b), dirty)
		}
	}
	g.nets, g.blocks = in.nets, newBlocks
}

// takeRecords takes in's changed, new and removed records (its delta, or
// the whole table), marking them in dirty and the removed ones in gone.
func (g *epSetBuilder) takeRecords(in epSetInput, dirty, gone map[epID]bool) {
	if in.delta != nil {
		for _, k := range in.delta.gone {
			g.remove(k, dirty, gone)
		}
		for _, rec := range in.delta.live {
			g.put(*rec, dirty)
		}
		return
	}
	for _, rec := range in.recs {
		g.put(*rec, dirty)
	}
	if len(in.recs) != len(g.recs) {
		seen := make(map[epID]bool, len(in.recs))
		for _, rec := range in.recs {
			seen[idOf(*rec)] = true
		}
		for k := range g.recs {
			if !seen[k] {
				g.remove(k, dirty, gone)
			}
		}
	}
}

// judgeBlocks runs the block check on the dirty records, then adds to
// dirty every record at an address whose claim count that changed.
func (g *epSetBuilder) judgeBlocks(in epSetInput, dirty map[epID]bool) {
	counted := map[epAt]bool{}
	for k := range dirty {
		rec, ok := g.recs[k]
		delete(g.refusedBy, k)
		pass := false
		if nr, known := g.nets[rec.Network]; ok && known {
			pass = rec.Node == in.self
			if !pass {
				err := checkOwnership(rec, nr, g.ips[k], g.blocks[rec.Network])
				if pass = err == nil; !pass {
					g.refusedBy[k] = err.Error()
					in.refuse(rec, err)
				}
			}
		}
		if pass != g.passed[k] {
			a := epAt{rec.Network, g.ips[k]}
			if pass {
				g.passed[k] = true
				g.claims[a]++
			} else {
				delete(g.passed, k)
				if g.claims[a]--; g.claims[a] <= 0 {
					delete(g.claims, a)
				}
			}
			counted[a] = true
		}
	}
	for a := range counted {
		maps.Copy(dirty, g.atAddr[a])
	}
}

// judgeDuplicates applies the duplicate-address rule to the dirty
// records that passed the block check.
func (g *epSetBuilder) judgeDuplicates(in epSetInput, dirty map[epID]bool) {
	for k := range dirty {
		if !g.passed[k] {
			continue
		}
		rec := g.recs[k]
		delete(g.refusedBy, k)
		if n := g.claims[epAt{rec.Network, g.ips[k]}]; n > 1 && rec.Node != in.self {
			err := fmt.Errorf("address %s also claimed by %d other endpoint record(s)", g.ips[k], n-1)
			g.refusedBy[k] = err.Error()
			in.refuse(rec, err)
		}
	}
}

// publish makes the next set from the judged records and logs which
// records the change touched.
func (g *epSetBuilder) publish(dirty, gone map[epID]bool) {
	seq := g.set.seq + 1
	g.set = g.snapshot(dirty, gone)
	g.set.seq = seq
	ids := make([]epID, 0, len(dirty)+len(gone))
	for _, m := range []map[epID]bool{dirty, gone} {
		for k := range m {
			ids = append(ids, k)
		}
	}
	if len(g.log) == epSetLogLen {
		g.log = slices.Delete(g.log, 0, 1)
	}
	g.log = append(g.log, epSetChange{seq, ids})
}

// changedBlocks lists the blocks that are in a or b with another holder
// (or none) in the other.
func changedBlocks(a, b map[netip.Prefix]string) []netip.Prefix {
	var out []netip.Prefix
	for p, h := range a {
		if h2, ok := b[p]; !ok || h2 != h {
			out = append(out, p)
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			out = append(out, p)
		}
	}
	return out
}

// maxChangedBlocks is the most changed blocks of a network for which
// dirtyInBlocks looks for the records inside them; beyond it every record
// of the network is judged again.
const maxChangedBlocks = 8

// dirtyInBlocks marks dirty the records of network whose address lies in
// one of the changed blocks: the block check (holderOf) of any other
// record finds the same holder as before. A claim (one block every
// fourteen runs on a /16) thus judges again the records of that block,
// not every record of the network.
func (g *epSetBuilder) dirtyInBlocks(network string, changed []netip.Prefix, dirty map[epID]bool) {
	if len(changed) > maxChangedBlocks {
		maps.Copy(dirty, g.byNet[network])
		return
	}
	// Small blocks (a claim's /28) are looked up address by address in
	// the address index, larger ones found by a walk of the records.
	if addrs, ok := blockAddrs(changed, len(g.byNet[network])); ok {
		for a := range addrs {
			maps.Copy(dirty, g.atAddr[epAt{network, a}])
		}
		return
	}
	for k := range g.byNet[network] {
		ip := g.ips[k]
		for _, p := range changed {
			if p.Contains(ip) {
				dirty[k] = true
				break
			}
		}
	}
}

// blockAddrs yields every address of blocks, and true, when they hold at
// most limit addresses in all.
func blockAddrs(blocks []netip.Prefix, limit int) (iter.Seq[netip.Addr], bool) {
	total := 0
	for _, p := range blocks {
		host := p.Addr().BitLen() - p.Bits()
		if host >= 31 || total+1<<host > limit {
			return nil, false
		}
		total += 1 << host
	}
	return func(yield func(netip.Addr) bool) {
		for _, p := range blocks {
			p = p.Masked()
			for a := p.Addr(); p.Contains(a); a = a.Next() {
				if !yield(a) {
					return
				}
			}
		}
	}, true
}

// changedSince returns the records (possibly more) whose accepted version
// in the current set may differ from the one in the set numbered seq, or
// false if the log does not reach back to it (seq 0: a set not made by
// this builder).
func (g *epSetBuilder) changedSince(seq uint64) ([]epID, bool) {
	switch {
	case seq == 0 || seq > g.set.seq:
		return nil, false
	case seq == g.set.seq:
		return []epID{}, true
	case len(g.log) == 0 || g.log[0].seq > seq+1:
		return nil, false
	}
	var out []epID
	for _, c := range g.log {
		if c.seq > seq {
			out = append(out, c.ids...)
		}
	}
	return out, true
}

// put takes rec in, unless the same version was judged already.
func (g *epSetBuilder) put(rec epRecord, dirty map[epID]bool) {
	k := idOf(rec)
	if old, ok := g.recs[k]; ok && sameRecord(old, rec) {
		return
	}
	g.forget(k, dirty)
	g.recs[k] = rec
	ip := netip.MustParseAddr(rec.IP) // validated by decodeEndpoint
	g.ips[k] = ip
	addTo(g.atAddr, epAt{rec.Network, ip}, k)
	addTo(g.byNet, rec.Network, k)
	dirty[k] = true
}

// remove drops record k, noting it in gone.
func (g *epSetBuilder) remove(k epID, dirty, gone map[epID]bool) {
	if _, ok := g.recs[k]; !ok {
		return
	}
	g.forget(k, dirty)
	delete(g.recs, k)
	gone[k] = true
}

// forget drops key k from the indexes, marking the records that shared its
// address dirty.
func (g *epSetBuilder) forget(k epID, dirty map[epID]bool) {
	rec, ok := g.recs[k]
	if !ok {
		return
	}
	a := epAt{rec.Network, g.ips[k]}
	if g.passed[k] {
		if g.claims[a]--; g.claims[a] <= 0 {
			delete(g.claims, a)
		}
		delete(g.passed, k)
		maps.Copy(dirty, g.atAddr[a])
	}
	delete(g.atAddr[a], k)
	if len(g.atAddr[a]) == 0 {
		delete(g.atAddr, a)
	}
	delete(g.byNet[rec.Network], k)
	if len(g.byNet[rec.Network]) == 0 {
		delete(g.byNet, rec.Network)
	}
	delete(g.refusedBy, k)
	delete(g.ips, k)
	delete(dirty, k)
}

// addTo adds k to the set m[a].
func addTo[A comparable](m map[A]map[epID]bool, a A, k epID) {
	if m[a] == nil {
		m[a] = map[epID]bool{}
	}
	m[a][k] = true
}

// snapshot returns the set as a new endpointSet: the previous accepted
// list (in key order) with the records judged again (dirty) and those gone
// taken out, and the dirty ones that are accepted now put back in; and
// the refusals by network, sorted.
func (g *epSetBuilder) snapshot(dirty, gone map[epID]bool) endpointSet {
	type at struct {
		key string
		rec *epRecord
	}
	var in []at // accepted dirty records, by key
	for k := range dirty {
		if g.passed[k] && g.refusedBy[k] == "" {
			rec := g.recs[k]
			in = append(in, at{epKey(k.node, k.network, k.name), &rec})
		}
	}
	slices.SortFunc(in, func(a, b at) int { return strings.Compare(a.key, b.key) })
	// Positions of the previous accepted records to take out.
	var drop []int
	for _, m := range []map[epID]bool{dirty, gone} {
		for k := range m {
			if i, ok := slices.BinarySearch(g.acceptedKeys, epKey(k.node, k.network, k.name)); ok {
				drop = append(drop, i)
			}
		}
	}
	slices.Sort(drop)
	drop = slices.Compact(drop)
	m := acceptedMerge{prevKeys: g.acceptedKeys, prev: g.set.accepted, drop: drop}
	n := len(m.prev) - len(drop) + len(in)
	m.keys, m.recs = make([]string, 0, n), make([]*epRecord, 0, n)
	i := 0 // next previous record to copy
	for _, x := range in {
		j := i + sort.SearchStrings(m.prevKeys[i:], x.key)
		m.copyKept(i, j)
		m.keys, m.recs = append(m.keys, x.key), append(m.recs, x.rec)
		i = j
	}
	m.copyKept(i, len(m.prev))
	out := endpointSet{accepted: m.recs, keys: m.keys, refused: map[string][]string{}}
	g.acceptedKeys = m.keys
	for k, why := range g.refusedBy {
		rec := g.recs[k]
		if _, known := g.nets[rec.Network]; !known {
			continue
		}
		out.refused[rec.Network] = append(out.refused[rec.Network], fmt.Sprintf("%s@%s %s: %s", rec.Name, rec.Node, rec.IP, why))
	}
	for _, l := range out.refused {
		sort.Strings(l)
	}
	return out
}

// acceptedMerge builds the next accepted list from the previous one:
// the previous records (keys and records, in key order) less those at the
// positions in drop, with the newly accepted ones put in between.
type acceptedMerge struct {
	prevKeys []string
	prev     []*epRecord
	drop     []int // positions in prev to leave out, sorted; consumed as passed
	keys     []string
	recs     []*epRecord
}

// copyKept appends prevKeys[i:j] and prev[i:j] to the outputs, leaving
// out the positions in drop.
func (m *acceptedMerge) copyKept(i, j int) {
	for len(m.drop) > 0 && m.drop[0] < j {
		d := m.drop[0]
		m.drop = m.drop[1:]
		m.keys, m.recs = append(m.keys, m.prevKeys[i:d]...), append(m.recs, m.prev[i:d]...)
		i = d + 1
	}
	m.keys, m.recs = append(m.keys, m.prevKeys[i:j]...), append(m.recs, m.prev[i:j]...)
}

// fullEndpointSet derives the endpoint set from scratch (the reference the
// incremental builder is tested against).
func fullEndpointSet(in epSetInput) endpointSet {
	blocks := map[string]map[netip.Prefix]string{}
	out := endpointSet{refused: map[string][]string{}}
	refuse := func(rec epRecord, err error) {
		in.refuse(rec, err)
		out.refused[rec.Network] = append(out.refused[rec.Network], fmt.Sprintf("%s@%s %s: %v", rec.Name, rec.Node, rec.IP, err))
	}
	ips := make([]netip.Addr, len(in.recs))
	passed := make([]int, 0, len(in.recs))
	claims := make(map[epAt]int, len(in.recs))
	for i, p := range in.recs {
		rec := *p
		nr, ok := in.nets[rec.Network]
		if !ok {
			continue // not (yet) a network here: nothing to apply it to
		}
		ip := netip.MustParseAddr(rec.IP) // validated by decodeEndpoint
		if rec.Node != in.self {
			if blocks[rec.Network] == nil {
				blocks[rec.Network] = in.blocksOf(rec.Network)
			}
			if err := checkOwnership(rec, nr, ip, blocks[rec.Network]); err != nil {
				refuse(rec, err)
				continue
			}
		}
		ips[i] = ip
		passed = append(passed, i)
		claims[epAt{rec.Network, ip}]++
	}
	for _, i := range passed {
		// The MAC is derived from the address, so a duplicate address
		// is a duplicate MAC too. This node's own endpoint keeps its
		// address; between others, nobody wins.
		rec := *in.recs[i]
		if n := claims[epAt{rec.Network, ips[i]}]; n > 1 && rec.Node != in.self {
			refuse(rec, fmt.Errorf("address %s also claimed by %d other endpoint record(s)", ips[i], n-1))
			continue
		}
		out.accepted = append(out.accepted, &rec)
	}
	for _, l := range out.refused {
		sort.Strings(l)
	}
	return out
}
