package cluster

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// aliveNode starts one node alone on an in-memory network, for driving its
// event delegate directly.
func aliveNode(tb testing.TB) *Cluster {
	tb.Helper()
	key, err := GenerateKey()
	if err != nil {
		tb.Fatal(err)
	}
	cfg := testConfig(simName(0), key, DefaultGossipPort, &logSink{})
	cfg.BindAddr, cfg.Network, cfg.ReconnectInterval = simAddr(0).Addr(), NewMemNetwork(), -1
	cfg.Logger = slog.New(slog.DiscardHandler)
	c, err := Start(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func fakeMember(i int) *memberlist.Node {
	a := simAddr(i)
	return &memberlist.Node{Name: simName(i), Addr: a.Addr().AsSlice(), Port: a.Port(), Meta: encodeMeta(NodeMeta{DataAddr: netip.AddrPortFrom(a.Addr(), 4789)})}
}

// The alive count that sizes the broadcast retransmissions and IPAM's
// quorum follows every membership event (joins, deaths, departures,
// returns, repeated events) without recounting the members.
func TestAliveCountFollowsMembershipEvents(t *testing.T) {
	c := aliveNode(t)
	d := (*delegate)(c)
	rng := rand.New(rand.NewPCG(1, 2))
	for step := range 2000 {
		n := fakeMember(1 + rng.IntN(40))
		switch rng.IntN(4) {
		case 0, 1:
			d.NotifyJoin(n)
		case 2:
			d.NotifyLeave(n)
		case 3:
			d.NotifyMsg((&message{Type: msgLeave, From: n.Name}).encode())
			d.NotifyLeave(n)
		}
		if want := countState(c.Members(), StateAlive); int(c.alive.Load()) != want {
			t.Fatalf("step %d: alive count %d, members alive %d", step, c.alive.Load(), want)
		}
	}
}

// BenchmarkNotifyJoin is the cost of one member joining a node that knows
// b.N members already: as a cluster forms, every node sees every other
// join once, under memberlist's node lock.
func BenchmarkNotifyJoin(b *testing.B) {
	for _, known := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("members=%d", known), func(b *testing.B) {
			c := aliveNode(b)
			d := (*delegate)(c)
			for i := range known {
				d.NotifyJoin(fakeMember(1 + i))
			}
			n := fakeMember(known + 1)
			b.ResetTimer()
			for range b.N {
				d.NotifyJoin(n)
				d.NotifyLeave(n)
			}
		})
	}
}

// BenchmarkSweep is one maintain tick's sweep on a node of a 1,000-node
// cluster holding 1,000 endpoints of other nodes, every member alive: the
// steady state, in which the sweep finds nothing to do.
func BenchmarkSweep(b *testing.B) {
	n := aliveNode(b)
	if err := n.DefineTable("endpoints", TableOptions{NodeScoped: true}); err != nil {
		b.Fatal(err)
	}
	d := (*delegate)(n)
	for i := 1; i <= 1000; i++ {
		d.NotifyJoin(fakeMember(i))
	}
	var es []Entry
	for i := 1; i <= 1000; i++ {
		owner := simName(i)
		es = append(es, Entry{Table: "endpoints", Key: owner + "/e", Owner: owner, Value: []byte("x"), Version: uint64(i + 1)})
	}
	n.merge(es, false)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		n.sweep(now)
	}
}

// The sweep's single pass over the entries still expires the node-scoped
// entries of an owner that is no member after NodeGrace, keeps those of a
// member, and reaps a tombstone after TombstoneTTL.
func TestSweepExpiresUnknownOwnersAndReapsTombstones(t *testing.T) {
	n := aliveNode(t)
	if err := n.DefineTable("endpoints", TableOptions{NodeScoped: true}); err != nil {
		t.Fatal(err)
	}
	(*delegate)(n).NotifyJoin(fakeMember(1))
	n.merge([]Entry{
		{Table: "endpoints", Key: "ghost/e", Owner: "ghost", Value: []byte("x"), Version: 1},
		{Table: "endpoints", Key: simName(1) + "/e", Owner: simName(1), Value: []byte("y"), Version: 2},
		{Table: "endpoints", Key: simName(1) + "/gone", Owner: simName(1), Version: 3, Deleted: true},
	}, false)
	now := time.Now()
	n.sweep(now)
	if got := len(n.List("endpoints")); got != 2 {
		t.Fatalf("right after the first sweep %d endpoints listed, want 2", got)
	}
	n.sweep(now.Add(n.cfg.NodeGrace))
	l := n.List("endpoints")
	if len(l) != 1 || l[0].Owner != simName(1) {
		t.Fatalf("after NodeGrace the endpoints are %v, want only %s's", l, simName(1))
	}
	n.sweep(now.Add(n.cfg.TombstoneTTL + time.Second))
	n.mu.Lock()
	_, kept := n.entries[tkey{"endpoints", simName(1) + "/gone"}]
	n.mu.Unlock()
	if kept {
		t.Fatal("the tombstone was not reaped after TombstoneTTL")
	}
}
