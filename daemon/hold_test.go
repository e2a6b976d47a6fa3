package daemon

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/tunnel"
)

// TestAPIAnswersWhileABlockWaitsToBeHeldAgain: a reconcile pass that must
// hold a block again (an endpoint of this node outside the blocks it
// holds, as after a restart) waits for this node's claim round in
// progress, which lasts as long as a member does not answer (here h2, cut
// off). The API answers meanwhile, and the block is held once the round
// ended. (The pass kept the block with d.mu held: `network ls` and `ps`
// waited for the claim round.)
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
	passes := h1.passes.reconcile.Load()
	waitFor(t, "a reconcile pass that saw c2", func() bool {
		return h1.passes.reconcile.Load() > passes
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
