package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestKeys(t *testing.T) {
	k := mustKey(t)
	if len(k) != KeySize {
		t.Fatalf("key len %d", len(k))
	}
	got, err := DecodeKey(EncodeKey(k) + "\n")
	if err != nil || !bytes.Equal(got, k) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := DecodeKey("c2hvcnQ="); err == nil {
		t.Fatal("short key accepted")
	}
	if _, err := DecodeKey("not base64!"); err == nil {
		t.Fatal("garbage accepted")
	}

	path := filepath.Join(t.TempDir(), "state", "cluster.key")
	k1, created, err := LoadOrCreateKeyFile(path)
	if err != nil || !created {
		t.Fatalf("create: %v created=%v", err, created)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v err %v", fi.Mode(), err)
	}
	k2, created, err := LoadOrCreateKeyFile(path)
	if err != nil || created || !bytes.Equal(k1, k2) {
		t.Fatalf("reload: %v created=%v", err, created)
	}
	k3, err := LoadKeyFile(path)
	if err != nil || !bytes.Equal(k1, k3) {
		t.Fatalf("load: %v", err)
	}
	if _, err := LoadKeyFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("missing file loaded")
	}
	if _, err := Start(Config{NodeName: "x", Key: []byte("short")}); err == nil {
		t.Fatal("Start accepted a short key")
	}
}

func TestBeatsOrder(t *testing.T) {
	a := Entry{Version: 2, Owner: "b"}
	b := Entry{Version: 1, Owner: "a"}
	if !a.beats(&b) || b.beats(&a) {
		t.Fatal("higher version must win")
	}
	c := Entry{Version: 2, Owner: "a"}
	if !c.beats(&a) || a.beats(&c) {
		t.Fatal("lower owner must win on equal versions")
	}
	d := Entry{Version: 2, Owner: "a", Deleted: true}
	if !d.beats(&c) || c.beats(&d) {
		t.Fatal("tombstone must win on equal version and owner")
	}
	if c.beats(&c) {
		t.Fatal("an entry must not beat itself")
	}
}

func getAll(nodes []*testNode, table, key string) []Entry {
	out := make([]Entry, len(nodes))
	for i, n := range nodes {
		out[i], _ = n.Get(table, key)
	}
	return out
}

func TestReplication(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 3)

	// Membership.
	ms := nodes[0].Members()
	if len(ms) != 3 || !ms[0].Self || ms[0].Name != "n1" || ms[1].Self {
		t.Fatalf("members: %+v", ms)
	}
	for _, m := range ms {
		if m.Meta.DataAddr.Port() != 4789 || m.Addr.Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Fatalf("member %+v", m)
		}
	}

	// Put on one, visible on all.
	if err := nodes[0].Put("networks", "web", []byte("10.0.1.0/24")); err != nil {
		t.Fatal(err)
	}
	if err := nodes[1].Put("nosuchtable", "k", nil); err == nil {
		t.Fatal("put to undefined table succeeded")
	}
	ch, cancel := nodes[2].Subscribe()
	defer cancel()
	start := time.Now()
	waitFor(t, 5*time.Second, "put visible everywhere", func() bool {
		for _, e := range getAll(nodes, "networks", "web") {
			if string(e.Value) != "10.0.1.0/24" || e.Owner != "n1" {
				return false
			}
		}
		return true
	})
	t.Logf("put spread to 3 nodes in %v", time.Since(start))
	select {
	case <-ch:
	default:
		t.Fatal("subscriber not signalled")
	}
	if l := nodes[2].List("networks"); len(l) != 1 || l[0].Key != "web" {
		t.Fatalf("list: %+v", l)
	}

	// Delete propagates.
	if err := nodes[1].Delete("networks", "web"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "delete visible everywhere", func() bool {
		for _, n := range nodes {
			if _, ok := n.Get("networks", "web"); ok || len(n.List("networks")) != 0 {
				return false
			}
		}
		return true
	})

	// Concurrent conflicting writes converge to the same winner.
	for round := range 5 {
		key := fmt.Sprintf("conflict-%d", round)
		var wg sync.WaitGroup
		written := make([]Entry, len(nodes))
		for i, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := n.Put("networks", key, []byte(n.LocalName())); err != nil {
					t.Error(err)
				}
				written[i], _ = n.Get("networks", key)
			}()
		}
		wg.Wait()
		var want *Entry
		for i := range written {
			if want == nil || written[i].beats(want) {
				want = &written[i]
			}
		}
		waitFor(t, 5*time.Second, "conflict "+key+" converges", func() bool {
			for _, e := range getAll(nodes, "networks", key) {
				if e.Owner != want.Owner || e.Version != want.Version || !bytes.Equal(e.Value, want.Value) {
					return false
				}
			}
			return true
		})
	}
}

func TestLateJoinerGetsState(t *testing.T) {
	key := mustKey(t)
	nodes := startCluster(t, key, 2)
	for i := range 50 {
		if err := nodes[i%2].Put("networks", fmt.Sprintf("net%02d", i), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	nodes[0].Put("endpoints", "ep-n1", []byte("10.0.1.2"))
	nodes[1].Delete("networks", "net07")
	waitFor(t, 5*time.Second, "first two converge", func() bool {
		return len(nodes[0].List("networks")) == 49 && len(nodes[1].List("networks")) == 49
	})
	late := startNode(t, "n3", key, 0)
	if n, err := late.Join([]string{nodes[1].addr()}); err != nil || n != 1 {
		t.Fatalf("join: %d %v", n, err)
	}
	// The join's push/pull carries the whole state.
	waitFor(t, 5*time.Second, "late joiner has everything", func() bool {
		_, gotEP := late.Get("endpoints", "ep-n1")
		_, gotDeleted := late.Get("networks", "net07")
		return len(late.List("networks")) == 49 && gotEP && !gotDeleted
	})
}

func TestDeadNodeEntriesExpireAndReturn(t *testing.T) {
	key := mustKey(t)
	nodes := startCluster(t, key, 3)
	n3 := nodes[2]
	if err := n3.Put("endpoints", "c3", []byte("10.0.1.3")); err != nil {
		t.Fatal(err)
	}
	if err := n3.Put("networks", "db", []byte("10.0.2.0/24")); err != nil {
		t.Fatal(err)
	}
	others := nodes[:2]
	waitFor(t, 5*time.Second, "n3's entries everywhere", func() bool {
		for _, n := range others {
			_, a := n.Get("endpoints", "c3")
			_, b := n.Get("networks", "db")
			if !a || !b {
				return false
			}
		}
		return true
	})

	// Hard stop: no Leave.
	n3.Close()
	stopped := time.Now()
	waitFor(t, 10*time.Second, "n3 seen dead", func() bool {
		for _, n := range others {
			if st := memberState(n, "n3"); st != StateDead {
				return false
			}
		}
		return true
	})
	waitFor(t, 10*time.Second, "n3's endpoint expired", func() bool {
		for _, n := range others {
			if _, ok := n.Get("endpoints", "c3"); ok {
				return false
			}
		}
		return true
	})
	if d := time.Since(stopped); d < time.Second {
		t.Fatalf("entries expired %v after the stop, before NodeGrace", d)
	}
	for _, n := range others {
		if _, ok := n.Get("networks", "db"); !ok {
			t.Fatalf("%s lost the non-scoped entry of the dead node", n.LocalName())
		}
	}

	// Restart with the same name and address: it re-announces its entries.
	n3b := startNode(t, "n3", key, n3.port)
	if err := n3b.Put("endpoints", "c3", []byte("10.0.1.3")); err != nil {
		t.Fatal(err)
	}
	if _, err := n3b.Join([]string{nodes[0].addr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "n3's endpoint back everywhere", func() bool {
		for _, n := range others {
			if e, ok := n.Get("endpoints", "c3"); !ok || string(e.Value) != "10.0.1.3" || e.Owner != "n3" {
				return false
			}
			if memberState(n, "n3") != StateAlive {
				return false
			}
		}
		return true
	})
	// The restarted node received the non-scoped entry its previous run wrote.
	waitFor(t, 5*time.Second, "restarted node has the network", func() bool {
		_, ok := n3b.Get("networks", "db")
		return ok
	})
}

func TestRestartRefutesStaleOwnEntries(t *testing.T) {
	key := mustKey(t)
	nodes := startCluster(t, key, 2)
	n2 := nodes[1]
	n2.Put("endpoints", "old", []byte("1"))
	n2.Put("endpoints", "kept", []byte("old-value"))
	waitFor(t, 5*time.Second, "n1 has n2's entries", func() bool {
		return len(nodes[0].List("endpoints")) == 2
	})
	n2.Close()
	// Restart before NodeGrace ends: n1 still holds the old entries. The
	// new process only re-creates "kept", with another value and a low version.
	n2b := startNode(t, "n2", key, n2.port)
	n2b.Put("endpoints", "kept", []byte("new-value"))
	// Joined as the restarted daemon does, until one push/pull gets
	// through within TCPTimeout on a loaded machine.
	waitFor(t, 10*time.Second, "the restarted n2 joined", func() bool {
		_, err := n2b.Join([]string{nodes[0].addr()})
		return err == nil
	})
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// Seen once in a full CI run and not reproduced since: keep what
		// each node held and logged.
		for _, n := range []*testNode{nodes[0], n2b} {
			t.Logf("%s endpoints: %+v members: %+v", n.LocalName(), n.List("endpoints"), n.Members())
			n.logs.mu.Lock()
			t.Logf("%s log:\n%s", n.LocalName(), strings.Join(n.logs.msgs, "\n"))
			n.logs.mu.Unlock()
		}
	})
	waitFor(t, 10*time.Second, "stale entries refuted", func() bool {
		for _, n := range []*testNode{nodes[0], n2b} {
			l := n.List("endpoints")
			if len(l) != 1 || l[0].Key != "kept" || string(l[0].Value) != "new-value" {
				return false
			}
		}
		return true
	})
}

// TestOwnEntriesReceivedBeforeTheirTableIsDefinedAreRefuted: a restarted
// node can receive its previous run's entries between Start and
// DefineTable (its peers still see it alive at its address and push their
// state to it). Once the node-scoped table is defined, they are refuted
// like those received after; before, such an entry stayed for good, held
// by every node as the new run's own (TestRestartRefutesStaleOwnEntries
// failed 7 of 60 runs under load that way).
func TestOwnEntriesReceivedBeforeTheirTableIsDefinedAreRefuted(t *testing.T) {
	key := mustKey(t)
	nodes := startCluster(t, key, 2, func(c *Config) { c.NodeGrace = time.Minute })
	n1, n2 := nodes[0], nodes[1]
	n2.Put("endpoints", "old", []byte("1"))
	waitFor(t, 5*time.Second, "n1 has n2's entry", func() bool { _, ok := n1.Get("endpoints", "old"); return ok })
	n2.Close()
	cfg := testConfig("n2", key, n2.port, &logSink{})
	cfg.NodeGrace = time.Minute
	n2b, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n2b.Close() })
	waitFor(t, 10*time.Second, "the restarted n2 joined", func() bool {
		_, err := n2b.Join([]string{n1.addr()})
		return err == nil
	})
	waitFor(t, 5*time.Second, "the previous run's entry on the restarted node", func() bool {
		_, ok := n2b.Get("endpoints", "old")
		return ok
	})
	if err := n2b.DefineTable("endpoints", TableOptions{NodeScoped: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the previous run's entry refuted on both nodes", func() bool {
		_, on1 := n1.Get("endpoints", "old")
		_, on2 := n2b.Get("endpoints", "old")
		return !on1 && !on2
	})
}

func TestLeaveRemovesEntriesAtOnce(t *testing.T) {
	key := mustKey(t)
	nodes := startCluster(t, key, 2)
	nodes[1].Put("endpoints", "c2", []byte("x"))
	waitFor(t, 5*time.Second, "entry spread", func() bool {
		_, ok := nodes[0].Get("endpoints", "c2")
		return ok
	})
	if err := nodes[1].Leave(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	nodes[1].Close()

	waitFor(t, 5*time.Second, "left node's entries gone", func() bool {
		_, ok := nodes[0].Get("endpoints", "c2")
		return !ok && memberState(nodes[0], "n2") == StateLeft
	})
}

func memberState(n *testNode, name string) string {
	for _, m := range n.Members() {
		if m.Name == name {
			return m.State
		}
	}
	return ""
}

func TestWrongKeyCannotJoin(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 1)
	intruder := startNode(t, "intruder", mustKey(t), 0)
	target := nodes[0].addr()
	for range 3 {
		n, err := intruder.Join([]string{target})
		if err == nil || n != 0 {
			t.Fatalf("join with the wrong key: n=%d err=%v", n, err)
		}
		want := "join " + target + ": no node answered; wrong cluster key or unreachable"
		if err.Error() != want {
			t.Fatalf("error %q, want %q", err, want)
		}
		var je *JoinError
		if !errors.As(err, &je) || je.Err == nil {
			t.Fatalf("not a JoinError with a cause: %#v", err)
		}
	}
	if len(nodes[0].Members()) != 1 || len(intruder.Members()) != 1 {
		t.Fatal("the intruder became a member")
	}
	const msg = "refusing gossip from a node with a different cluster key"
	waitFor(t, 5*time.Second, "refusal logged", func() bool { return nodes[0].logs.count(msg) > 0 })
	if n := nodes[0].logs.count(msg); n != 1 {
		t.Fatalf("refusal logged %d times for one peer, want once", n)
	}
	// A bare host gets the configured gossip port.
	if _, err := intruder.Join([]string{"127.0.0.2"}); err == nil || !strings.Contains(err.Error(), "join 127.0.0.2:"+itoa(intruder.port)+":") {
		t.Fatalf("bare host: %v", err)
	}
}

// TestClaimBlockConcurrent: three nodes claim blocks of a small subnet at
// the same moment, round after round; no block is given to two nodes.
// On a loaded host the test's fast failure detection declares members dead
// for a moment; claims stay exclusive as long as no member is dead for
// NodeGrace (then its claims expire: a partition), hence a long one here,
// and a member slow to answer must not fail the claim (ClaimTimeout).
func TestClaimBlockConcurrent(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 3, func(cfg *Config) { cfg.NodeGrace, cfg.ClaimTimeout = time.Minute, 30*time.Second })
	subnet := netip.MustParsePrefix("10.0.0.0/24")

	// Many rounds of all nodes claiming at once from a small space, so the
	// same block is often contended.
	for round := range 6 {
		network := fmt.Sprintf("net%d", round)
		results := make([][]netip.Prefix, len(nodes))
		var wg sync.WaitGroup
		var startGate sync.WaitGroup
		startGate.Add(1)
		for i, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				startGate.Wait()
				for range 2 {
					b, err := n.ClaimBlock(network, subnet, 26) // 4 blocks for 6 claims
					if err != nil {
						if !strings.Contains(err.Error(), "no free") {
							t.Errorf("%s: %v", n.LocalName(), err)
						}
						return
					}
					results[i] = append(results[i], b)
				}
			}()
		}
		startGate.Done()
		wg.Wait()
		owner := map[netip.Prefix]string{}
		total := 0
		for i, bs := range results {
			for _, b := range bs {
				total++
				if o, dup := owner[b]; dup {
					t.Fatalf("round %d: block %s given to %s and %s", round, b, o, nodes[i].LocalName())
				}
				owner[b] = nodes[i].LocalName()
			}
		}
		if total != 4 {
			t.Fatalf("round %d: %d blocks claimed, want all 4: %v", round, total, results)
		}
		waitFor(t, 5*time.Second, "Blocks agrees everywhere", func() bool {
			for _, n := range nodes {
				got := n.Blocks(network)
				if len(got) != len(owner) {
					return false
				}
				for b, o := range owner {
					if got[b] != o {
						return false
					}
				}
			}
			return true
		})
	}
	// Release makes a block free again.
	var mine netip.Prefix
	for b, o := range nodes[0].Blocks("net0") {
		if o == "n1" {
			mine = b
		}
	}
	if mine.IsValid() {
		if err := nodes[0].ReleaseBlock("net0", mine); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "release visible", func() bool {
			_, ok := nodes[2].Blocks("net0")[mine]
			return !ok
		})
		b, err := nodes[2].ClaimBlock("net0", subnet, 26)
		if err != nil || b != mine {
			t.Fatalf("reclaim after release: %v %v", b, err)
		}
	}
	if _, err := nodes[0].ClaimBlock("x", subnet, 20); err == nil {
		t.Fatal("block larger than the subnet accepted")
	}
}

func TestNthBlock(t *testing.T) {
	if got := nthBlock(netip.MustParsePrefix("10.0.0.0/16"), 24, 3); got.String() != "10.0.3.0/24" {
		t.Fatal(got)
	}
	if got := nthBlock(netip.MustParsePrefix("fd00::/64"), 80, 1); got.String() != "fd00::1:0:0:0/80" {
		t.Fatal(got)
	}
}

// TestGenerationFollowsChanges checks that Generation moves on with every
// change a consumer could derive state from (a local write, a merged remote
// write, a delete, a dead node's entries expiring) and not with reads, so
// that a cache keyed by it is never stale and stays valid while idle.
func TestGenerationFollowsChanges(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2)
	n1, n2 := nodes[0], nodes[1]
	moved := func(what string, before uint64, c *testNode) uint64 {
		t.Helper()
		g := c.Generation()
		if g == before {
			t.Fatalf("%s: generation still %d", what, g)
		}
		return g
	}
	g1, g2 := n1.Generation(), n2.Generation()
	if err := n1.Put("endpoints", "c1", []byte("10.0.1.1")); err != nil {
		t.Fatal(err)
	}
	g1 = moved("local put", g1, n1)
	waitFor(t, 5*time.Second, "put merged", func() bool { _, ok := n2.Get("endpoints", "c1"); return ok })
	g2 = moved("merged put", g2, n2)
	n2.List("endpoints")
	n2.Get("endpoints", "c1")
	n2.Members()
	n2.Blocks("web")
	if g := n2.Generation(); g != g2 {
		t.Fatalf("reads moved the generation from %d to %d", g2, g)
	}
	if err := n1.Delete("endpoints", "c1"); err != nil {
		t.Fatal(err)
	}
	moved("local delete", g1, n1)
	waitFor(t, 5*time.Second, "delete merged", func() bool { _, ok := n2.Get("endpoints", "c1"); return !ok })
	g2 = moved("merged delete", g2, n2)
	if err := n1.Put("endpoints", "c2", []byte("10.0.1.2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "put merged", func() bool { _, ok := n2.Get("endpoints", "c2"); return ok })
	g2 = n2.Generation()
	n1.Close()
	waitFor(t, 15*time.Second, "n1's entry expired", func() bool { _, ok := n2.Get("endpoints", "c2"); return !ok })
	moved("expiry", g2, n2)
}
