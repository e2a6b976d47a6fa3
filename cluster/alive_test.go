package cluster

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"testing"

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
