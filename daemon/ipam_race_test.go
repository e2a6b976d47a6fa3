package daemon

import (
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/tunnel"
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

// TestAPIAnswersWhileABlockWaitsToBeHeldAgain: a reconcile pass that must
// hold a block again (an endpoint of this node outside the blocks it
// holds, as after a restart) waits for this node's claim round in
// progress, which lasts as long as a member does not answer (here h2, cut
// off). The API answers meanwhile, reconcile passes go on, and the block
// is held once the round ended. (The pass kept the block with d.mu held:
// `network ls`, `ps` and the next passes waited for the claim round.)
func TestAPIAnswersWhileABlockWaitsToBeHeldAgain(t *testing.T) {
	cmem := cluster.NewMemNetwork()
	onMem := func(c *Config) {
		// h2 cut off is waited for (dead or not) until the test lets
		// it answer again.
		c.NodeGrace = time.Minute
		tune := c.tuneCluster
		c.tuneCluster = func(cc *cluster.Config) {
			tune(cc)
			cc.Network = cmem
		}
	}
	mem := tunnel.NewMemNetwork()
	h1, _ := addNode(t, mem, nil, 1, onMem)
	h2, _ := addNode(t, mem, []*Daemon{h1}, 2, onMem)
	everyMemberAlive(t, []*Daemon{h1, h2})
	subnet := netip.MustParsePrefix("10.61.0.0/24")
	if _, err := h1.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: subnet.String()}); err != nil {
		t.Fatal(err)
	}

	h2gossip := netip.AddrPortFrom(h2.cfg.Advertise, uint16(h2.cfg.GossipPort))
	cmem.Cut(h2gossip, true)
	uncut := func() { cmem.Cut(h2gossip, false) }
	t.Cleanup(uncut)
	claimed := make(chan error, 1)
	go func() {
		_, err := h1.cl.ClaimBlock("web", subnet, blockBits(subnet))
		claimed <- err
	}()
	waitFor(t, "h1's claim round under way", func() bool {
		return len(h1.cl.Blocks("web")) > len(h1.cl.ClaimedBlocks("web"))
	})

	// An endpoint of h1 in a block it does not hold.
	ip := netip.MustParseAddr("10.61.0.200")
	h1.mu.Lock()
	n := h1.networks["web"]
	c := &container{name: "c2", endpoints: map[string]*endpoint{}}
	c.endpoints["web"] = &endpoint{ctr: c, net: n, ip: ip, mac: macForIP(ip), ifname: "eth0"}
	h1.containers["c2"] = c
	h1.containerChanged(c)
	h1.mu.Unlock()
	// The pass after the one that saw c2 ran too: the keep waits aside.
	passes := h1.passes.reconcile.Load()
	waitFor(t, "two reconcile passes after c2 came", func() bool {
		return h1.passes.reconcile.Load() > passes+1
	})
	if got := len(h1.Containers()); got != 1 {
		t.Fatalf("ps lists %d containers, want c2", got)
	}
	if got := h1.Networks(); len(got) != 1 || got[0].Name != "web" {
		t.Fatalf("network ls lists %v, want web", got)
	}
	_, holder, _ := holderOf(h1.cl.Blocks("web"), ip)
	select {
	case err := <-claimed:
		t.Fatalf("the claim round ended (%v) before the test could look: it shows nothing", err)
	default:
	}
	if holder == h1.cfg.Node {
		t.Fatalf("c2's block is held during the claim round: the test shows nothing")
	}

	uncut()
	select {
	case err := <-claimed:
		if err != nil {
			t.Fatalf("the claim with h2 back: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the claim round did not end with h2 back")
	}
	waitFor(t, "c2's block held by h1", func() bool {
		_, holder, _ := holderOf(h1.cl.Blocks("web"), ip)
		return holder == h1.cfg.Node
	})
}
