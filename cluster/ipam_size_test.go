package cluster

import (
	"maps"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestClaimBlockSkipsOverlappingClaims: a block held by a node of the
// previous version (one large block per host) covers the small blocks
// inside it: a new claim takes the first small block outside it, and an
// explicit claim inside it fails naming the holder.
func TestClaimBlockSkipsOverlappingClaims(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2)
	subnet := netip.MustParsePrefix("10.81.0.0/16")
	big := netip.MustParsePrefix("10.81.0.0/20")
	if err := nodes[0].KeepBlock("sc", big); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the large block on n2", func() bool { return nodes[1].Blocks("sc")[big] == "n1" })
	b, err := nodes[1].ClaimBlock("sc", subnet, 28)
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParsePrefix("10.81.16.0/28"); b != want {
		t.Fatalf("claimed %s, want %s (the first /28 outside n1's %s)", b, want, big)
	}
	err = nodes[1].ClaimBlockAt("sc", netip.MustParsePrefix("10.81.0.16/28"))
	if err == nil || !strings.Contains(err.Error(), `held by node "n1"`) {
		t.Fatalf("claim inside n1's large block: %v", err)
	}
	// The holder itself may claim inside its own large block.
	if err := nodes[0].ClaimBlockAt("sc", netip.MustParsePrefix("10.81.0.16/28")); err != nil {
		t.Fatalf("the holder claiming inside its own block: %v", err)
	}
}

// TestClaimOverlappingBlocksConcurrently: two nodes claiming overlapping
// blocks of different sizes at the same moment never both win.
func TestClaimOverlappingBlocksConcurrently(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2)
	for round := range 8 {
		network := "net" + itoa(round)
		blocks := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24"), netip.MustParsePrefix("10.9.0.32/28")}
		errs := make([]error, 2)
		var wg, gate sync.WaitGroup
		gate.Add(1)
		for i := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				gate.Wait()
				errs[i] = nodes[i].ClaimBlockAt(network, blocks[i])
			}()
		}
		gate.Done()
		wg.Wait()
		if errs[0] == nil && errs[1] == nil {
			t.Fatalf("round %d: both %s (n1) and %s (n2) were granted", round, blocks[0], blocks[1])
		}
		for _, err := range errs {
			if err != nil && !strings.Contains(err.Error(), "held by node") {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
}

// TestBlocksOverlap is the conflict rule of the block claim table.
func TestBlocksOverlap(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"10.0.0.0/28", "10.0.0.0/28", true},
		{"10.0.0.0/20", "10.0.3.16/28", true},
		{"10.0.3.16/28", "10.0.0.0/20", true},
		{"10.0.0.0/28", "10.0.0.16/28", false},
		{"junk", "junk", true},
		{"junk", "10.0.0.0/28", false},
	} {
		if got := blocksOverlap(c.a, c.b); got != c.want {
			t.Errorf("blocksOverlap(%s, %s) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

// TestClaimBlockManyContenders: twelve nodes claim a block of one network
// at the same moment (a service scaled out across a cluster): every one
// gets a block of its own, and the losers of a round do not all contend
// for the same next block again.
func TestClaimBlockManyContenders(t *testing.T) {
	nodes := startGentleCluster(t, 12)
	subnet := netip.MustParsePrefix("10.81.0.0/16")
	got := make([]netip.Prefix, len(nodes))
	errs := make([]error, len(nodes))
	var wg, gate sync.WaitGroup
	gate.Add(1)
	start := time.Now()
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gate.Wait()
			got[i], errs[i] = n.ClaimBlock("sc", subnet, 28)
		}()
	}
	gate.Done()
	wg.Wait()
	t.Logf("%d concurrent claims took %v", len(nodes), time.Since(start))
	owner := map[netip.Prefix]int{}
	for i, b := range got {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i, errs[i])
		}
		if j, dup := owner[b]; dup {
			t.Fatalf("block %s given to nodes %d and %d", b, j, i)
		}
		owner[b] = i
	}
}

// startGentleCluster is startCluster with timing that twenty nodes on a
// loaded test machine keep up with: no member is declared dead because
// the machine was busy, which would split the cluster (and claims are
// only exclusive between members that see each other alive).
func startGentleCluster(t *testing.T, count int) []*testNode {
	t.Helper()
	key := mustKey(t)
	var nodes []*testNode
	for i := 1; i <= count; i++ {
		logs := &logSink{}
		cfg := testConfig("n"+itoa(i), key, freePort(t), logs)
		cfg.ProbeInterval, cfg.ProbeTimeout = time.Second, 800*time.Millisecond
		cfg.GossipInterval, cfg.PushPullInterval = 50*time.Millisecond, 2*time.Second
		cfg.SuspicionMult, cfg.ClaimTimeout, cfg.NodeGrace = 6, 30*time.Second, time.Minute
		cfg.TCPTimeout = 5 * time.Second
		c, err := Start(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		n := &testNode{Cluster: c, port: cfg.GossipPort, logs: logs}
		if i > 1 {
			// One join is one push/pull within TCPTimeout; on a loaded
			// machine the first node, busy with the others, may miss it.
			waitFor(t, 30*time.Second, "n"+itoa(i)+" joined", func() bool {
				_, err := n.Join([]string{nodes[0].addr()})
				return err == nil
			})
		}
		nodes = append(nodes, n)
	}
	waitFor(t, 30*time.Second, "all members alive", func() bool {
		for _, n := range nodes {
			if countState(n.Members(), StateAlive) != count {
				return false
			}
		}
		return true
	})
	return nodes
}

// FuzzBlocksOverlap: the conflict rule of block claims, applied to claim
// keys from other nodes, is symmetric, true for equal resources and never
// panics.
func FuzzBlocksOverlap(f *testing.F) {
	f.Add("10.0.0.0/28", "10.0.0.0/20")
	f.Add("10.0.0.16/28", "10.0.0.0/28")
	f.Add("fd00::/64", "10.0.0.0/8")
	f.Add("junk", "10.0.0.0/28")
	f.Fuzz(func(t *testing.T, a, b string) {
		if blocksOverlap(a, b) != blocksOverlap(b, a) {
			t.Fatalf("blocksOverlap(%q, %q) is not symmetric", a, b)
		}
		if !blocksOverlap(a, a) {
			t.Fatalf("blocksOverlap(%q, itself) is false", a)
		}
	})
}

// TestBlocksFollowClaims: the block table Blocks keeps between changes of
// the claims table is the one derived from the claims afresh after each
// change: claims and releases of this node and of another (arriving by
// gossip), a claim of another network, and the expiry of a departed
// node's claims (changed in place).
func TestBlocksFollowClaims(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2)
	subnet := netip.MustParsePrefix("10.82.0.0/16")
	fresh := func(n *testNode, network string) map[netip.Prefix]string {
		n.mu.Lock()
		defer n.mu.Unlock()
		out := map[netip.Prefix]string{}
		for b, claims := range n.claimsWalkLocked(network) {
			out[b] = claimWinner(claims).Owner
		}
		return out
	}
	check := func(step string) {
		t.Helper()
		for _, n := range nodes {
			if got, want := n.Blocks("sc"), fresh(n, "sc"); !maps.Equal(got, want) {
				t.Fatalf("%s: %s's blocks %v, want %v", step, n.cfg.NodeName, got, want)
			}
		}
	}
	check("no claim")
	b1, err := nodes[0].ClaimBlock("sc", subnet, 28)
	if err != nil {
		t.Fatal(err)
	}
	check("n1 claimed")
	waitFor(t, 5*time.Second, "n1's claim on n2", func() bool { return nodes[1].Blocks("sc")[b1] == "n1" })
	b2, err := nodes[1].ClaimBlock("sc", subnet, 28)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "n2's claim on n1", func() bool { return nodes[0].Blocks("sc")[b2] == "n2" })
	check("n2 claimed")
	if _, err := nodes[0].ClaimBlock("other", subnet, 28); err != nil {
		t.Fatal(err)
	}
	check("n1 claimed in another network")
	if err := nodes[0].ReleaseBlock("sc", b1); err != nil {
		t.Fatal(err)
	}
	check("n1 released")
	if _, ok := nodes[0].Blocks("sc")[b1]; ok {
		t.Fatalf("n1 still holds %s after releasing it", b1)
	}
	waitFor(t, 5*time.Second, "n1's release on n2", func() bool { _, ok := nodes[1].Blocks("sc")[b1]; return !ok })
	nodes[0].mu.Lock()
	nodes[0].expireOwnerLocked("n2", time.Now())
	nodes[0].mu.Unlock()
	check("n2's entries expired on n1")
	if _, ok := nodes[0].Blocks("sc")[b2]; ok {
		t.Fatalf("n1 still lists %s of departed n2", b2)
	}
}
