package cluster

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// TestClaimRightAfterJoiningThroughAnotherNode has a node claim the moment
// its Join through n1 returns, before n2 has heard of it by gossip: n2
// must still answer, so the claim is confirmed at once instead of failing
// after ClaimTimeout.
func TestClaimRightAfterJoiningThroughAnotherNode(t *testing.T) {
	key := mustKey(t)
	nodes := startCluster(t, key, 2)
	for round := range 3 {
		n := startNode(t, "late"+itoa(round), key, 0)
		// One join is one push/pull within TCPTimeout, which a loaded
		// machine can miss (see startCluster).
		waitFor(t, 10*time.Second, "late"+itoa(round)+" joined", func() bool {
			_, err := n.Join([]string{nodes[0].addr()})
			return err == nil
		})
		start := time.Now()
		if _, err := n.ClaimBlock("web", netip.MustParsePrefix("10.0.0.0/16"), 24); err != nil {
			t.Fatalf("claim right after joining: %v", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("claim right after joining took %v", took)
		}
		nodes = append(nodes, n)
	}
}

// TestClaimsWithOverlapRulesAndTakenResources uses a claim table whose
// resources are prefixes that conflict when they overlap, and that are
// taken when a "networks" entry holds them.
func TestClaimsWithOverlapRulesAndTakenResources(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 3)
	overlap := func(a, b string) bool {
		pa, err1 := netip.ParsePrefix(a)
		pb, err2 := netip.ParsePrefix(b)
		return a == b || (err1 == nil && err2 == nil && pa.Overlaps(pb))
	}
	for _, n := range nodes {
		c := n.Cluster
		taken := func(group, resource string) []Entry {
			var out []Entry
			for _, e := range c.List("networks") {
				if overlap(string(e.Value), resource) {
					out = append(out, e)
				}
			}
			return out
		}
		if err := c.DefineClaims("subnets", overlap, taken); err != nil {
			t.Fatal(err)
		}
	}
	for round, pair := range [][2]string{{"10.0.0.0/16", "10.0.1.0/24"}, {"10.1.0.0/24", "10.1.0.0/24"}, {"10.2.0.0/25", "10.2.0.0/24"}} {
		errs := make(chan error, 2)
		gate := make(chan struct{})
		for i, res := range pair {
			go func() {
				<-gate
				errs <- nodes[i].Claim("subnets", "g", res)
			}()
		}
		close(gate)
		won, lost := 0, 0
		for range 2 {
			err := <-errs
			var cc *ClaimConflict
			switch {
			case err == nil:
				won++
			case errors.As(err, &cc):
				lost++
			default:
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if won != 1 || lost != 1 {
			t.Fatalf("round %d: %d won, %d lost; want one each", round, won, lost)
		}
	}
	// A resource taken by a record on n3 loses, and the claimer learns the
	// record from the answer.
	if err := nodes[2].Put("networks", "x", []byte("10.9.0.0/24")); err != nil {
		t.Fatal(err)
	}
	err := nodes[0].Claim("subnets", "g", "10.9.0.0/16")
	var cc *ClaimConflict
	if !errors.As(err, &cc) || cc.Node != "n3" {
		t.Fatalf("claim of a taken resource: %v, want a conflict with n3", err)
	}
	if _, ok := nodes[0].Get("networks", "x"); !ok {
		t.Fatal("the claimer did not learn the record that took the resource")
	}
	// A released claim frees the resource.
	if err := nodes[1].Claim("subnets", "g", "10.8.0.0/24"); err != nil {
		t.Fatal(err)
	}
	if err := nodes[1].ReleaseClaim("subnets", "g", "10.8.0.0/24"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the claim released everywhere", func() bool {
		for _, n := range nodes {
			if _, ok := n.Get("subnets", "g|10.8.0.0/24|n2"); ok {
				return false
			}
		}
		return true
	})
	if err := nodes[0].Claim("subnets", "g", "10.8.0.0/24"); err != nil {
		t.Fatalf("claim after release: %v", err)
	}
}

// TestClaimWaitsForMembersWronglyDeclaredDead: on a loaded host the failure
// detector declares live members dead for a moment. Two nodes that each
// believe the other dead (but not yet gone: its claims still count for
// NodeGrace) claim the same block at the same moment: they must still ask
// each other, so exactly one wins, instead of both winning alone.
func TestClaimWaitsForMembersWronglyDeclaredDead(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2, func(cfg *Config) { cfg.NodeGrace = time.Minute })
	(*delegate)(nodes[0].Cluster).NotifyLeave(&memberlist.Node{Name: "n2"})
	(*delegate)(nodes[1].Cluster).NotifyLeave(&memberlist.Node{Name: "n1"})
	for _, n := range nodes {
		if got := countState(n.Members(), StateDead); got != 1 {
			t.Fatalf("%s sees %d dead members, want 1", n.LocalName(), got)
		}
	}
	block := netip.MustParsePrefix("10.5.0.0/24")
	errs := make([]error, 2)
	var wg, gate sync.WaitGroup
	gate.Add(1)
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gate.Wait()
			errs[i] = n.ClaimBlockAt("web", block)
		}()
	}
	gate.Done()
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !strings.Contains(err.Error(), "held by node"):
			t.Fatalf("%s: %v", nodes[i].LocalName(), err)
		}
	}
	if won != 1 {
		t.Fatalf("%d nodes won block %s, want exactly 1", won, block)
	}
}

// TestClaimAsksAMemberAgainOnlyOnceItsSendIsDone: a claim round asks a
// member that has not answered again, but not while the previous request
// to it is still being sent (a member under load whose TCP accepts
// nothing: the dial waits for TCPTimeout). Requests stacked every second
// on such a member, each answered later, only add to the load that delays
// the round. A member that read and dropped the request (its stream
// closed unread) is asked again and confirms the claim.
func TestClaimAsksAMemberAgainOnlyOnceItsSendIsDone(t *testing.T) {
	subnet := netip.MustParsePrefix("10.0.0.0/24")
	t.Run("send in flight", func(t *testing.T) {
		nodes := startCluster(t, mustKey(t), 2, func(c *Config) {
			c.TCPTimeout = 10 * time.Second
			c.ProbeInterval = 10 * time.Second // n2 stays alive to n1 meanwhile
			c.ClaimTimeout = 3500 * time.Millisecond
			c.NodeGrace = time.Minute
		})
		blackhole(t, nodes[1])
		if memberState(nodes[0], "n2") != StateAlive {
			t.Skip("n1 already saw n2 fail")
		}
		_, err := nodes[0].ClaimBlock("web", subnet, 28)
		if err == nil || !strings.Contains(err.Error(), "not confirmed by n2") || !strings.Contains(err.Error(), "down or unreachable") {
			t.Fatalf("claim with n2 not answering: %v", err)
		}
		if n := nodes[0].Drops()["claim-resent"]; n != 0 {
			t.Fatalf("n1 asked n2 %d more times while its first request was still dialling", n)
		}
	})
	t.Run("request dropped unread", func(t *testing.T) {
		nodes := startCluster(t, mustKey(t), 2)
		// n2 closes every stream unread until n1 has asked again.
		var dropped atomic.Int64
		drop := func() bool {
			if nodes[0].Drops()["claim-resent"] > 0 {
				return false
			}
			dropped.Add(1)
			return true
		}
		nodes[1].tr.dropStream.Store(&drop)
		if _, err := nodes[0].ClaimBlock("web", subnet, 28); err != nil {
			t.Fatalf("claim with n2 dropping the first request: %v", err)
		}
		if dropped.Load() == 0 {
			t.Fatal("n2 dropped no stream: the test did not test anything")
		}
	})
}

// A claim held up by a member declared dead says so through ClaimWaits
// (the member, since when it is dead, until when the claim waits at most)
// while it waits, and ClaimWaits is empty once the claim went on without
// it after NodeGrace.
func TestClaimWaitsReportsTheDeadMember(t *testing.T) {
	const grace = 3 * time.Second
	mem, cs := memCluster(t, 2, func(c *Config) { c.NodeGrace = grace })
	if w := cs[0].ClaimWaits(); w != nil {
		t.Fatalf("waits %v with no claim running", w)
	}
	mem.Cut(simAddr(1), true)
	waitFor(t, 10*time.Second, "the cut member declared dead", func() bool {
		return countState(cs[0].Members(), StateDead) == 1
	})
	done := make(chan error, 1)
	go func() { done <- cs[0].ClaimBlockAt("web", netip.MustParsePrefix("10.5.0.0/24")) }()
	var waits []ClaimWait
	waitFor(t, grace, "the claim reporting its wait", func() bool {
		waits = cs[0].ClaimWaits()
		return len(waits) > 0
	})
	if len(waits) != 1 || waits[0].Member != simName(1) || waits[0].Until.Sub(waits[0].DeadSince) != grace {
		t.Fatalf("waits %+v, want %s until %v after its death", waits, simName(1), grace)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("claim after the grace: %v", err)
		}
	case <-time.After(3 * grace):
		t.Fatal("the claim still waits three node graces later")
	}
	if w := cs[0].ClaimWaits(); w != nil {
		t.Fatalf("waits %v after the claim ended", w)
	}
}

// TestClaimedBlocksLeavesOutTheBlockBeingConfirmed holds n1's claim round
// at n2 and checks that n1 does not report the block as its own
// (ClaimedBlocks: the blocks it allocates from) before the round has
// decided it: another node's earlier claim, heard of only in n2's answer,
// may still win it. Once the round is won, the block is n1's.
func TestClaimedBlocksLeavesOutTheBlockBeingConfirmed(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2)
	subnet := netip.MustParsePrefix("10.9.0.0/24")
	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release) // before the nodes close: n2's streams wait on it
	hold := func() bool { <-gate; return false }
	nodes[1].tr.dropStream.Store(&hold)

	type result struct {
		block netip.Prefix
		err   error
	}
	done := make(chan result, 1)
	go func() {
		b, err := nodes[0].ClaimBlock("web", subnet, 28)
		done <- result{b, err}
	}()
	waitFor(t, 5*time.Second, "n1's claim written", func() bool {
		return len(nodes[0].Blocks("web")) > 0
	})
	if got := nodes[0].Blocks("web"); got[netip.MustParsePrefix("10.9.0.0/28")] != "n1" {
		t.Fatalf("blocks %v while n1 claims, want 10.9.0.0/28 claimed by n1", got)
	}
	if held := nodes[0].ClaimedBlocks("web"); len(held) != 0 {
		t.Fatalf("n1 reports %v as its blocks while n2 has not confirmed its claim yet", held)
	}
	release()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if held := nodes[0].ClaimedBlocks("web"); len(held) != 1 || held[0] != r.block {
		t.Fatalf("n1 holds %v after winning %s", held, r.block)
	}
}
