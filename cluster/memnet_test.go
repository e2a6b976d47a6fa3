package cluster

import (
	"strings"
	"testing"
	"time"
)

// memCluster starts count nodes on one MemNetwork with the tests' fast
// timing and joins them.
func memCluster(t *testing.T, count int) (*MemNetwork, []*Cluster) {
	t.Helper()
	mem := NewMemNetwork()
	key := mustKey(t)
	var cs []*Cluster
	for i := range count {
		cfg := testConfig(simName(i), key, DefaultGossipPort, &logSink{})
		cfg.BindAddr, cfg.Network = simAddr(i).Addr(), mem
		c, err := Start(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.DefineTable("endpoints", TableOptions{NodeScoped: true}); err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			if _, err := c.Join([]string{simAddr(0).String()}); err != nil {
				t.Fatal(err)
			}
		}
		cs = append(cs, c)
	}
	waitFor(t, 10*time.Second, "all members alive", func() bool {
		for _, c := range cs {
			if countState(c.Members(), StateAlive) != count {
				return false
			}
		}
		return true
	})
	return mem, cs
}

// A node cut off the in-memory network is declared dead by the others,
// which drop its node-scoped entries after NodeGrace; what it sent while
// cut is counted as lost.
func TestMemNetworkCutNodeIsDeadAndItsEntriesLeave(t *testing.T) {
	mem, cs := memCluster(t, 3)
	if err := cs[2].Put("endpoints", "ep", []byte("v")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "entry everywhere", func() bool {
		_, ok0 := cs[0].Get("endpoints", "ep")
		_, ok1 := cs[1].Get("endpoints", "ep")
		return ok0 && ok1
	})
	before := mem.NodeStats(simAddr(2))
	mem.Cut(simAddr(2), true)
	waitFor(t, 10*time.Second, "cut node dead and its entry gone", func() bool {
		for _, c := range cs[:2] {
			if _, ok := c.Get("endpoints", "ep"); ok {
				return false
			}
			for _, m := range c.Members() {
				if m.Name == simName(2) && m.State != StateDead {
					return false
				}
			}
		}
		return true
	})
	if d := mem.NodeStats(simAddr(2)).Sub(before); d.Lost == 0 || d.Lost != d.Packets {
		t.Fatalf("cut node sent %d packets, %d counted lost; want all of them, at least one", d.Packets, d.Lost)
	}
	if s := mem.Stats(); s.Packets == 0 || s.Streams == 0 || s.StreamBytes == 0 {
		t.Fatalf("joins and gossip not counted: %+v", s)
	}
}

func TestMemNetworkRefusesAnAddressInUse(t *testing.T) {
	mem := NewMemNetwork()
	key := mustKey(t)
	cfg := testConfig("a", key, DefaultGossipPort, &logSink{})
	cfg.BindAddr, cfg.Network = simAddr(1).Addr(), mem
	c, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg.NodeName = "b"
	if _, err := Start(cfg); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("second node on %s: err %v, want already in use", simAddr(1), err)
	}
}
