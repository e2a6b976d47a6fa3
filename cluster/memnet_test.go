package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// memCluster starts count nodes on one MemNetwork with the tests' fast
// timing and joins them.
func memCluster(t *testing.T, count int, tune func(*Config)) (*MemNetwork, []*Cluster) {
	t.Helper()
	mem := NewMemNetwork()
	key := mustKey(t)
	var cs []*Cluster
	for i := range count {
		cfg := testConfig(simName(i), key, DefaultGossipPort, &logSink{})
		cfg.BindAddr, cfg.Network = simAddr(i).Addr(), mem
		if tune != nil {
			tune(&cfg)
		}
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
	// 30 s: at load 10 with the race detector the 100 ms probes make
	// suspicions often enough that every node seeing every member alive
	// at once took over 10 s in 1 run of 240.
	waitFor(t, 30*time.Second, "all members alive", func() bool {
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
	mem, cs := memCluster(t, 3, nil)
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

// Config.TimeScale stretches every timer: memberlist's probes and
// suspicion, and the cluster's NodeGrace and sweep. With timers stretched
// five times, a node cut off is declared dead no sooner than five times
// the (test) suspicion timeout, and its entries leave no sooner than five
// times NodeGrace after that.
func TestTimeScaleStretchesFailureDetectionAndGrace(t *testing.T) {
	const k = 5
	mem, cs := memCluster(t, 2, func(cfg *Config) {
		cfg.NodeGrace = 400 * time.Millisecond
		cfg.TimeScale = k
	})
	cfg := testConfig("", nil, 0, nil)
	if err := cs[1].Put("endpoints", "ep", []byte("v")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "entry on the other node", func() bool {
		_, ok := cs[0].Get("endpoints", "ep")
		return ok
	})
	cut := time.Now()
	mem.Cut(simAddr(1), true)
	// dead is when a poll first saw the node dead, alive when the poll
	// before it still did not: it died in between, and a poll delayed by
	// the machine's load makes dead late, never alive.
	var dead, alive time.Duration
	waitFor(t, 60*time.Second, "cut node's entry gone", func() bool {
		if dead == 0 {
			now := time.Since(cut)
			for _, m := range cs[0].Members() {
				if m.Name == simName(1) && m.State == StateDead {
					dead = now
				}
			}
			if dead == 0 {
				alive = now
			}
		}
		_, ok := cs[0].Get("endpoints", "ep")
		return !ok
	})
	gone := time.Since(cut)
	// memberlist suspects a node after a failed probe and declares it dead
	// SuspicionMult probe intervals later (with one other member).
	if want := k * time.Duration(cfg.SuspicionMult) * cfg.ProbeInterval; dead == 0 || dead < want {
		t.Errorf("cut node declared dead after %v, want at least %v (x%d stretched)", dead, want, k)
	}
	if want := alive + k*400*time.Millisecond; gone < want {
		t.Errorf("cut node's entry gone after %v, want at least %v: dead after %v (seen alive at %v) plus NodeGrace x%d", gone, want, dead, alive, k)
	}
	t.Logf("dead after %v, entry gone after %v", dead, gone)
}

// DisableCompression sends gossip uncompressed: the same compressible
// entries cost more bytes than with memberlist's compression, and a node
// without compression converges with one that compresses (each reads the
// other's packets and streams).
func TestDisableCompressionSendsUncompressedAndMixes(t *testing.T) {
	value := []byte(strings.Repeat("compressible endpoint record ", 30))
	sent := func(off0, off1 bool) MemStats {
		mem, cs := memCluster(t, 2, func(cfg *Config) {
			cfg.DisableCompression = cfg.NodeName == simName(0) && off0 || cfg.NodeName == simName(1) && off1
		})
		before := mem.Stats()
		for i := range 20 {
			if err := cs[i%2].Put("endpoints", fmt.Sprintf("ep%d", i), value); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 10*time.Second, "every entry on both nodes", func() bool {
			return len(cs[0].List("endpoints")) == 20 && len(cs[1].List("endpoints")) == 20
		})
		return mem.Stats().Sub(before)
	}
	on := sent(false, false)
	off := sent(true, true)
	sent(true, false) // mixed: converges
	if off.Bytes() <= on.Bytes() {
		t.Fatalf("uncompressed gossip sent %d bytes, compressed %d: want more", off.Bytes(), on.Bytes())
	}
	t.Logf("20 entries of %d bytes: %d bytes compressed, %d uncompressed", len(value), on.Bytes(), off.Bytes())
}
