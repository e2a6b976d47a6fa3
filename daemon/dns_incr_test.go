package daemon

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/dns"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

// dnsWorld is a random set of accepted endpoint records of three nodes
// on three networks (with names that differ only in case, shared
// aliases, shared addresses, gateway records and bad addresses) and of
// services on them, changed one step at a time.
type dnsWorld struct {
	rng     *rand.Rand
	version uint64
	recs    map[string]epRecord
	svcs    []dnsService
}

func (w *dnsWorld) pick(l []string) string { return l[w.rng.IntN(len(l))] }

func (w *dnsWorld) step() {
	w.version++
	switch r := w.rng.IntN(100); {
	case r < 55:
		nw := w.pick([]string{"web", "Web", "db", "back"})
		rec := epRecord{Name: w.pick([]string{"c1", "C1", "c2", "c3", "c4", "c5", "c6.x"}), Network: nw,
			IP: fmt.Sprintf("10.0.0.%d", 2+w.rng.IntN(8)), Node: w.pick([]string{"h1", "h1", "h2", "h3"}), version: w.version}
		switch w.rng.IntN(12) {
		case 0:
			rec.IP = "nope"
		case 1:
			rec.Gateway = true
		case 2, 3:
			rec.Aliases = []string{w.pick([]string{"svc", "Svc", "c2", "db"})}
		}
		rec.MAC = packet.MAC(macForIP(netip.MustParseAddr("10.0.0.1"))).String()
		w.recs[epKey(rec.Node, rec.Network, rec.Name)] = rec
	case r < 85:
		for k := range w.recs {
			delete(w.recs, k)
			break
		}
	case r < 95:
		s := dnsService{Name: w.pick([]string{"api", "svc", "c2"}), Network: w.pick([]string{"web", "db"}), TTL: time.Duration(w.rng.IntN(3)) * time.Second,
			Ports: []lb.Port{{Proto: packet.ProtoTCP, Port: 80}, {Proto: packet.ProtoUDP, Port: 53, Target: 5353}}}
		if w.rng.IntN(2) == 0 {
			s.VIP = netip.MustParseAddr(fmt.Sprintf("10.0.1.%d", 1+w.rng.IntN(3)))
		}
		for range w.rng.IntN(3) {
			s.Tasks = append(s.Tasks, netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", 2+w.rng.IntN(8))))
		}
		w.svcs = append(slices.Clone(w.svcs), s)
	default:
		if len(w.svcs) > 0 {
			w.svcs = slices.Clone(w.svcs[1:])
		}
	}
}

// accepted is the records sorted by key, as endpointSet gives them.
// delta is what changed from the accepted records prev to now, as a
// dnsDelta: every record added, removed or changed, and a few unchanged
// ones, some twice.
func (w *dnsWorld) delta(prev, now []epRecord) *dnsDelta {
	at := map[epID]*epRecord{}
	for i := range now {
		at[idOf(now[i])] = &now[i]
	}
	var ids []epID
	for _, rec := range prev {
		if cur, ok := at[idOf(rec)]; !ok || !sameRecord(*cur, rec) {
			ids = append(ids, idOf(rec))
		}
	}
	was := map[epID]bool{}
	for _, rec := range prev {
		was[idOf(rec)] = true
	}
	for _, rec := range now {
		if !was[idOf(rec)] || w.rng.IntN(4) == 0 {
			ids = append(ids, idOf(rec))
		}
	}
	if len(ids) > 0 && w.rng.IntN(3) == 0 {
		ids = append(ids, ids[0])
	}
	return &dnsDelta{ids: ids, lookup: func(k epID) (*epRecord, bool) {
		rec, ok := at[k]
		return rec, ok
	}}
}

// recPtrs is recs as an endpointSet's accepted list.
func recPtrs(recs []epRecord) []*epRecord {
	out := make([]*epRecord, len(recs))
	for i := range recs {
		out[i] = &recs[i]
	}
	return out
}

func (w *dnsWorld) accepted() []epRecord {
	var out []epRecord
	for _, r := range w.recs {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b epRecord) int {
		return strings.Compare(epKey(a.Node, a.Network, a.Name), epKey(b.Node, b.Network, b.Name))
	})
	return out
}

// TestDNSIndexIncrementalEqualsFull applies random sequences of record and
// service changes and checks after each that the incrementally updated DNS
// index equals the one built from scratch: the same askers, names, PTR
// names, services, VIPs and precomputed wire answers of every asker.
func TestDNSIndexIncrementalEqualsFull(t *testing.T) {
	seeds := uint64(40)
	if testing.Short() {
		seeds = 10
	}
	for seed := range seeds {
		w := &dnsWorld{rng: rand.New(rand.NewPCG(seed, 2)), recs: map[string]epRecord{}}
		// b compares every record; bd is told what changed (dnsDelta),
		// with some unchanged records among them, as endpointSetSince
		// tells refreshDNS.
		var b, bd dnsBuilder
		var prev []epRecord
		for i := range 120 {
			w.step()
			recs := w.accepted()
			want := buildDNSIndex("h1", recs, w.svcs)
			delta := w.delta(prev, recs)
			prev = recs
			for _, v := range []struct {
				name string
				got  *dnsIndex
			}{{"full walk", b.update("h1", recPtrs(recs), w.svcs)}, {"delta", bd.updateDelta("h1", recPtrs(recs), delta, w.svcs)}} {
				got := v.got
				for _, f := range []struct {
					name      string
					got, want any
				}{
					{"networks", got.networks, want.networks}, {"names", got.names, want.names}, {"ptrs", got.ptrs, want.ptrs},
					{"services", got.services, want.services}, {"vips", got.vips, want.vips},
					{"askers", got.answers.Askers(), want.answers.Askers()}, {"answers", answerViews(got.answers), answerViews(want.answers)},
				} {
					if !reflect.DeepEqual(f.got, f.want) {
						t.Fatalf("seed %d step %d (%s): %s differ\n got %+v\nwant %+v", seed, i, v.name, f.name, f.got, f.want)
					}
				}
			}
		}
	}
}

// answerViews is each asker's view of a: what the resolver answers it,
// whatever the table's layout and however the views were patched.
func answerViews(a *dns.Answers) map[string]*dns.AnswerView {
	out := map[string]*dns.AnswerView{}
	for _, asker := range a.Askers() {
		out[asker] = a.View(asker).Flatten()
	}
	return out
}
