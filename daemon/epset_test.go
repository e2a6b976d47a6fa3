package daemon

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/packet"
)

// epSetWorld is a random cluster state for the endpoint set: networks,
// their block tables and endpoint records of three nodes, changed one
// step at a time.
type epSetWorld struct {
	rng     *rand.Rand
	version uint64
	nets    map[string]netRecord
	blocks  map[string]map[netip.Prefix]string
	recs    map[string]epRecord
}

var epSetNodes = []string{"self", "a", "b"}

func newEPSetWorld(seed uint64) *epSetWorld {
	w := &epSetWorld{rng: rand.New(rand.NewPCG(seed, 1)), nets: map[string]netRecord{}, blocks: map[string]map[netip.Prefix]string{}, recs: map[string]epRecord{}}
	w.nets["n1"] = netRecord{Name: "n1", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"}
	w.nets["n2"] = netRecord{Name: "n2", Subnet: "10.2.0.0/24", Gateway: "10.2.0.1"}
	for n := range w.nets {
		w.blocks[n] = map[netip.Prefix]string{}
	}
	return w
}

func (w *epSetWorld) pick(l []string) string { return l[w.rng.IntN(len(l))] }

// addr is one of a few addresses of network n (so that records collide),
// sometimes the gateway or outside the subnet.
func (w *epSetWorld) addr(n string) netip.Addr {
	third := map[string]byte{"n1": 1, "n2": 2, "n3": 3}[n]
	if w.rng.IntN(20) == 0 {
		return netip.AddrFrom4([4]byte{10, 9, 9, byte(w.rng.IntN(4))})
	}
	return netip.AddrFrom4([4]byte{10, third, 0, byte(1 + w.rng.IntN(24))})
}

// step makes one random change.
func (w *epSetWorld) step() {
	w.version++
	switch r := w.rng.IntN(100); {
	case r < 50: // put a record
		n := w.pick([]string{"n1", "n2", "n3"})
		ip := w.addr(n)
		rec := epRecord{Name: fmt.Sprintf("c%d", w.rng.IntN(12)), Network: n, IP: ip.String(), MAC: packet.MAC(macForIP(ip)).String(),
			Node: w.pick(epSetNodes), version: w.version}
		if w.rng.IntN(4) == 0 {
			rec.Aliases = []string{fmt.Sprintf("x%d", w.rng.IntN(3))}
		}
		w.recs[epKey(rec.Node, rec.Network, rec.Name)] = rec
	case r < 70: // delete a record
		for k := range w.recs {
			delete(w.recs, k)
			break
		}
	case r < 88: // a block changes hands, or is released
		n := w.pick([]string{"n1", "n2", "n3"})
		if w.blocks[n] == nil {
			return
		}
		b := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, map[string]byte{"n1": 1, "n2": 2, "n3": 3}[n], 0, byte(8 * w.rng.IntN(4))}), 29)
		if w.rng.IntN(5) == 0 { // a large block over several small ones
			b = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, map[string]byte{"n1": 1, "n2": 2, "n3": 3}[n], 0, 0}), 27)
		}
		if w.rng.IntN(4) == 0 {
			delete(w.blocks[n], b)
		} else {
			w.blocks[n][b] = w.pick(epSetNodes)
		}
	case r < 94: // a network comes or goes
		if _, ok := w.nets["n3"]; ok {
			delete(w.nets, "n3")
			delete(w.blocks, "n3")
		} else {
			w.nets["n3"] = netRecord{Name: "n3", Subnet: "10.3.0.0/24", Gateway: "10.3.0.1"}
			w.blocks["n3"] = map[netip.Prefix]string{}
		}
	default: // a network's gateway moves
		nr := w.nets["n1"]
		nr.Gateway = w.pick([]string{"10.1.0.1", "10.1.0.2", "10.1.0.3"})
		w.nets["n1"] = nr
	}
}

// input is the world as an epSetInput: fresh maps, records sorted by key.
func (w *epSetWorld) input(refusals *[]string) epSetInput {
	nets := map[string]netRecord{}
	for k, v := range w.nets {
		nets[k] = v
	}
	var recs []epRecord
	for _, r := range w.recs {
		recs = append(recs, r)
	}
	slices.SortFunc(recs, func(a, b epRecord) int {
		return strings.Compare(epKey(a.Node, a.Network, a.Name), epKey(b.Node, b.Network, b.Name))
	})
	return epSetInput{
		self: "self", nets: nets, recs: recPtrs(recs),
		blocksOf: func(n string) map[netip.Prefix]string {
			out := map[netip.Prefix]string{}
			for k, v := range w.blocks[n] {
				out[k] = v
			}
			return out
		},
		refuse: func(rec epRecord, err error) {
			*refusals = append(*refusals, fmt.Sprintf("%s v%d: %v", epKey(rec.Node, rec.Network, rec.Name), rec.version, err))
		},
	}
}

// TestEndpointSetIncrementalEqualsFull applies random sequences of record,
// block and network changes and checks after each that the incrementally
// updated endpoint set equals the one derived from scratch: the same
// accepted records in the same order and the same refusals, and that
// every refusal the full derivation reports for a changed record was
// reported by the incremental one too (so none goes unlogged).
func TestEndpointSetIncrementalEqualsFull(t *testing.T) {
	seeds := uint64(50)
	if testing.Short() {
		seeds = 10
	}
	for seed := range seeds {
		w := newEPSetWorld(seed)
		var g epSetBuilder
		var incRefusals []string
		noted := map[string]bool{}
		history := map[uint64]endpointSet{}
		for i := range 150 {
			w.step()
			var fullRefusals []string
			want := fullEndpointSet(w.input(&fullRefusals))
			got := g.update(w.input(&incRefusals))
			for _, r := range incRefusals {
				noted[r] = true
			}
			incRefusals = incRefusals[:0]
			if !reflect.DeepEqual(got.accepted, want.accepted) && (len(got.accepted)+len(want.accepted) > 0) {
				t.Fatalf("seed %d step %d: accepted\n got %v\nwant %v", seed, i, got.accepted, want.accepted)
			}
			if !reflect.DeepEqual(got.refused, want.refused) {
				t.Fatalf("seed %d step %d: refused\n got %v\nwant %v", seed, i, got.refused, want.refused)
			}
			for _, r := range fullRefusals {
				if !noted[r] {
					t.Fatalf("seed %d step %d: refusal %q never reported by the incremental set", seed, i, r)
				}
			}
			history[got.seq] = got
			checkChangedSince(t, &g, history, got, w.rng.Uint64N(got.seq+2))
		}
	}
}

// checkChangedSince checks what refreshDNS relies on: g.changedSince(seq)
// names every record whose accepted version differs between the set
// numbered seq (in history) and the current set cur, which lookup finds
// by key; and it answers whenever the set is still in the log.
func checkChangedSince(t *testing.T, g *epSetBuilder, history map[uint64]endpointSet, cur endpointSet, seq uint64) {
	t.Helper()
	ids, ok := g.changedSince(seq)
	old, known := history[seq]
	if !ok {
		if known && seq != 0 && cur.seq-seq < epSetLogLen {
			t.Fatalf("changedSince(%d) unknown at set %d, within the log", seq, cur.seq)
		}
		return
	}
	if !known {
		t.Fatalf("changedSince(%d) answered for a set never made (current %d)", seq, cur.seq)
	}
	named := map[epID]bool{}
	for _, k := range ids {
		named[k] = true
	}
	was := map[epID]epRecord{}
	for _, rec := range old.accepted {
		was[idOf(*rec)] = *rec
	}
	for _, p := range cur.accepted {
		rec := *p
		if got, ok := cur.lookup(idOf(rec)); !ok || !sameRecord(*got, rec) {
			t.Fatalf("lookup(%v) = %v, %v; want %v", idOf(rec), got, ok, rec)
		}
		if prev, ok := was[idOf(rec)]; (!ok || !sameRecord(prev, rec)) && !named[idOf(rec)] {
			t.Fatalf("set %d: %v changed since set %d but changedSince does not name it", cur.seq, idOf(rec), seq)
		}
		delete(was, idOf(rec))
	}
	for k := range was {
		if !named[k] {
			t.Fatalf("set %d: %v gone since set %d but changedSince does not name it", cur.seq, k, seq)
		}
	}
}

// TestEndpointSetFromFeedEqualsFull drives a second builder the way
// endpointSet does: the world's changes reach an epFeed as cluster.Changes
// answers (sometimes a full one, sometimes with records written again
// unchanged), and the builder, catching up only now and then, takes in
// the feed's delta since its last revision. Its set must equal the one
// derived from scratch, and the feed's list the world's records.
func TestEndpointSetFromFeedEqualsFull(t *testing.T) {
	seeds := uint64(50)
	if testing.Short() {
		seeds = 10
	}
	deltas := 0
	for seed := range seeds {
		w := newEPSetWorld(seed)
		var f epFeed
		var g epSetBuilder
		var rev uint64
		prev := map[string]epRecord{}
		decode := func(e cluster.Entry) (epRecord, bool) { return w.recs[e.Key], true }
		var ignore []string
		for i := range 200 {
			w.step()
			var live []cluster.Entry
			removed := []string{}
			for k, r := range w.recs {
				if old, ok := prev[k]; !ok || !sameRecord(old, r) || w.rng.IntN(10) == 0 {
					live = append(live, cluster.Entry{Key: k})
				}
			}
			for k := range prev {
				if _, ok := w.recs[k]; !ok {
					removed = append(removed, k)
				}
			}
			if w.rng.IntN(25) == 0 { // a full resync
				live, removed = nil, nil
				for k := range w.recs {
					live = append(live, cluster.Entry{Key: k})
				}
			}
			slices.SortFunc(live, func(a, b cluster.Entry) int { return strings.Compare(a.Key, b.Key) })
			f.apply(live, removed, uint64(i), decode)
			prev = maps.Clone(w.recs)
			in := w.input(&ignore)
			if !reflect.DeepEqual(f.out, in.recs) && len(f.out)+len(in.recs) > 0 {
				t.Fatalf("seed %d step %d: feed\n got %v\nwant %v", seed, i, f.out, in.recs)
			}
			if w.rng.IntN(3) != 0 {
				continue
			}
			if rev != 0 {
				in.delta = f.since(rev)
			}
			if in.delta != nil {
				deltas++
			}
			in.recs = f.out
			got := g.update(in)
			rev = f.rev
			want := fullEndpointSet(w.input(&ignore))
			if !reflect.DeepEqual(got.accepted, want.accepted) && (len(got.accepted)+len(want.accepted) > 0) {
				t.Fatalf("seed %d step %d: accepted\n got %v\nwant %v", seed, i, got.accepted, want.accepted)
			}
			if !reflect.DeepEqual(got.refused, want.refused) {
				t.Fatalf("seed %d step %d: refused\n got %v\nwant %v", seed, i, got.refused, want.refused)
			}
		}
	}
	if deltas == 0 {
		t.Fatal("the builder never took a delta in")
	}
}
