package cluster

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// claimKeys lists the keys of claims by block, sorted (comparable).
func claimKeys(claims map[netip.Prefix][]*Entry) map[netip.Prefix]string {
	out := map[netip.Prefix]string{}
	for b, es := range claims {
		var keys []string
		for _, e := range es {
			keys = append(keys, fmt.Sprintf("%s@%d", e.Key, e.Version))
		}
		slices.Sort(keys)
		out[b] = fmt.Sprint(keys)
	}
	return out
}

// entryKeys lists the keys of es, sorted.
func entryKeys(es []*Entry) []string {
	var keys []string
	for _, e := range es {
		keys = append(keys, fmt.Sprintf("%s@%d", e.Key, e.Version))
	}
	slices.Sort(keys)
	return keys
}

// bruteCovering is overlapIndex.covering as it was before the blocks
// inside b were looked up one by one: a walk of every block for those.
func bruteCovering(idx overlapIndex, b netip.Prefix) *Entry {
	for bits := b.Bits(); bits >= 0; bits-- {
		p, _ := b.Addr().Prefix(bits)
		if w := claimWinner(idx[p]); w != nil {
			return w
		}
	}
	var w *Entry
	for p, claims := range idx {
		if p.Bits() > b.Bits() && b.Contains(p.Addr()) {
			if e := claimWinner(claims); e != nil && (w == nil || earlier(e, w)) {
				w = e
			}
		}
	}
	return w
}

// TestClaimIndexEqualsWalk makes random claims of blocks of several sizes
// by two nodes in two networks, releases, keeps, raw claim keys that are
// no prefix, a departed node's expiry and the reaping of tombstones, and
// checks on both nodes after each step that the indexed claims of each
// network, the conflicting claims of candidate blocks and the covering
// claim of each equal those a walk of every claim finds.
func TestClaimIndexEqualsWalk(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2)
	subnet := netip.MustParsePrefix("10.83.0.0/24")
	rng := rand.New(rand.NewPCG(5, 6))
	networks := []string{"sc", "other"}
	check := func(step int) {
		t.Helper()
		for _, n := range nodes {
			n.mu.Lock()
			for _, network := range networks {
				got, want := n.claimsLocked(network), n.claimsWalkLocked(network)
				if g, w := claimKeys(got), claimKeys(want); !maps.Equal(g, w) {
					n.mu.Unlock()
					t.Fatalf("step %d: %s's indexed claims of %s %v, a walk finds %v", step, n.cfg.NodeName, network, g, w)
				}
				idx := overlapIndex(got)
				for _, bits := range []int{24, 26, 28, 30} {
					for i := range uint64(1) << (bits - 24) {
						b := nthBlock(subnet, bits, i)
						g := entryKeys(n.conflictingLocked(ipamTable, network, b.String()))
						w := entryKeys(n.conflictingWalkLocked(ipamTable, network, b.String()))
						if !slices.Equal(g, w) {
							n.mu.Unlock()
							t.Fatalf("step %d: %s: claims conflicting with %s in %s: index %v, walk %v", step, n.cfg.NodeName, b, network, g, w)
						}
						if gc, wc := idx.covering(b), bruteCovering(idx, b); gc != wc {
							n.mu.Unlock()
							t.Fatalf("step %d: %s: covering %s in %s: %v, a walk %v", step, n.cfg.NodeName, b, network, gc, wc)
						}
					}
				}
			}
			n.mu.Unlock()
		}
	}
	for step := range 150 {
		func() {
			n := nodes[rng.IntN(2)]
			network := networks[rng.IntN(2)]
			switch rng.IntN(7) {
			case 0, 1:
				bits := []int{26, 28, 28, 30}[rng.IntN(4)]
				b, err := n.ClaimBlock(network, subnet, bits)
				if err != nil {
					break // no free block of that size
				}
				// The other node learns it (so that it has claims of
				// both, and expires them).
				other, key := nodes[0], claimKey(network, b.String())+n.cfg.NodeName
				if n == other {
					other = nodes[1]
				}
				waitFor(t, 10*time.Second, "the claim on the other node", func() bool { _, ok := other.Get(ipamTable, key); return ok })
			case 2:
				if held := n.ClaimedBlocks(network); len(held) > 0 {
					if err := n.ReleaseBlock(network, held[rng.IntN(len(held))]); err != nil {
						t.Fatal(err)
					}
				}
			case 3:
				n.KeepBlock(network, nthBlock(subnet, 29, uint64(rng.IntN(32))))
			case 4:
				// A claim whose resource is no prefix, or a prefix not
				// masked: kept as written.
				res := []string{"junk", "10.83.0.5/28", "10.83.0.64/27"}[rng.IntN(3)]
				if err := n.Put(ipamTable, claimKey(network, res)+n.cfg.NodeName, nil); err != nil {
					t.Fatal(err)
				}
			case 5:
				other := nodes[0]
				if n == other {
					other = nodes[1]
				}
				n.mu.Lock()
				n.expireOwnerLocked(other.cfg.NodeName, time.Now())
				n.mu.Unlock()
				// After the check, n takes the other's claims again (as
				// when it returns).
				defer func() {
					n.mu.Lock()
					delete(n.gone, other.cfg.NodeName)
					n.mu.Unlock()
				}()
			case 6:
				n.mu.Lock()
				for k, r := range n.entries {
					if k.table == ipamTable && r.Deleted && rng.IntN(2) == 0 {
						n.dropLocked(k)
					}
				}
				n.mu.Unlock()
			}
			check(step)
		}()
	}
}
