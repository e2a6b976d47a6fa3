package daemon

import (
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

// TestConcurrentAllocationsNeverUseABlockStillBeingClaimed races, many
// times over, what the routing mesh and a run do at once when a service
// with a published port is created: h2 allocates its gateway host address
// while h3 allocates its gateway host address and an endpoint's, all
// needing a new block of the same small subnet. Every address handed out
// must lie in a block its node holds once the cluster agrees on the block
// table. (An allocation that took an address from a block its node was
// still claiming kept it when that claim lost to h2's: in an e2e run h3's
// backend and h2's gateway identity got the same address, and every
// node refused one of them.)
func TestConcurrentAllocationsNeverUseABlockStillBeingClaimed(t *testing.T) {
	ds, _ := threeNodes(t)
	everyMemberAlive(t, ds)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.87.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	nets := make([]*localNetwork, len(ds))
	for i, d := range ds {
		waitFor(t, d.cfg.Node+" knows the network", func() bool {
			d.mu.Lock()
			defer d.mu.Unlock()
			nets[i] = d.networks["web"]
			return nets[i] != nil
		})
	}
	type alloc struct {
		node  int
		owner string
	}
	for iter := range 30 {
		allocs := []alloc{{1, " gateway"}, {2, " gateway"}, {2, "b3"}}
		addrs := make([]netip.Addr, len(allocs))
		errs := make([]error, len(allocs))
		var wg sync.WaitGroup
		for i, a := range allocs {
			wg.Go(func() { addrs[i], errs[i] = ds[a.node].allocateIP(a.owner, nets[a.node]) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: %s on %s: %v", iter, allocs[i].owner, ds[allocs[i].node].cfg.Node, err)
			}
		}
		var blocks map[netip.Prefix]string
		waitFor(t, "every node agreeing on the block table", func() bool {
			blocks = ds[0].cl.Blocks("web")
			return maps.Equal(ds[1].cl.Blocks("web"), blocks) && maps.Equal(ds[2].cl.Blocks("web"), blocks)
		})
		seen := map[netip.Addr]string{}
		for i, a := range allocs {
			node, ip := ds[a.node].cfg.Node, addrs[i]
			who := fmt.Sprintf("%s's %q", node, a.owner)
			if other, dup := seen[ip]; dup {
				t.Fatalf("round %d: %s and %s both got %s (blocks %v)", iter, other, who, ip, blocks)
			}
			seen[ip] = who
			if b, holder, _ := holderOf(blocks, ip); holder != node {
				t.Fatalf("round %d: %s got %s, in block %s held by %q (blocks %v)", iter, who, ip, b, holder, blocks)
			}
		}
		// Give everything back for the next round, which races for the
		// same blocks again.
		for i, a := range allocs {
			d := ds[a.node]
			d.mu.Lock()
			delete(d.reservedIPs["web"], addrs[i])
			d.mu.Unlock()
		}
		for _, d := range ds {
			for _, b := range d.cl.ClaimedBlocks("web") {
				if err := d.cl.ReleaseBlock("web", b); err != nil {
					t.Fatal(err)
				}
			}
		}
		waitFor(t, "every block given back", func() bool {
			for _, d := range ds {
				if len(d.cl.Blocks("web")) > 0 {
					return false
				}
			}
			return true
		})
	}
}

// TestConcurrentAllocationsShareTheBlockOneClaims starts several
// allocations at once on a node holding no block of the network: one
// claims a block, and the others, which found no room either, take their
// addresses from it once it is won rather than claiming a block each (a
// compose file's containers starting together on a /24 would otherwise
// take as many of its 32 blocks).
func TestConcurrentAllocationsShareTheBlockOneClaims(t *testing.T) {
	ds, _ := threeNodes(t)
	everyMemberAlive(t, ds)
	for round := range 5 {
		name := fmt.Sprintf("web%d", round)
		if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: name, Subnet: fmt.Sprintf("10.88.%d.0/24", round)}); err != nil {
			t.Fatal(err)
		}
		d := ds[2]
		var n *localNetwork
		waitFor(t, "h3 knows the network", func() bool {
			d.mu.Lock()
			defer d.mu.Unlock()
			n = d.networks[name]
			return n != nil
		})
		const runs = 4 // a /29 holds 6 host addresses
		addrs := make([]netip.Addr, runs)
		var wg sync.WaitGroup
		for i := range runs {
			wg.Go(func() {
				var err error
				if addrs[i], err = d.allocateIP(fmt.Sprintf("c%d", i), n); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if held := d.cl.ClaimedBlocks(name); len(held) != 1 {
			t.Fatalf("round %d: %d runs at once got %v and claimed blocks %v, want one block", round, runs, addrs, held)
		}
	}
}
