package daemon

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/tunnel"
)

// allAlive reports whether d sees want members, all alive.
func allAlive(d *Daemon, want int) bool {
	nodes := d.Nodes()
	if len(nodes) != want {
		return false
	}
	for _, n := range nodes {
		if n.State != "alive" {
			return false
		}
	}
	return true
}

// restartNode closes d and starts it again with the same name, state
// directory, addresses and ports, without --join.
func restartNode(t *testing.T, mem *tunnel.MemNetwork, d *Daemon, sb *fakeSandbox) *Daemon {
	t.Helper()
	d.Close()
	return startAgain(t, mem, d.cfg, sb)
}

// startAgain starts a stopped node of configuration old again, without
// --join.
func startAgain(t *testing.T, mem *tunnel.MemNetwork, old Config, sb *fakeSandbox) *Daemon {
	t.Helper()
	cfg := nodeConfig(t, mem, old.Node, old.Advertise, sb, old.StateDir)
	cfg.GossipPort = old.GossipPort
	nd := startNode(t, cfg)
	t.Cleanup(nd.Close)
	return nd
}

// stoppedCluster starts three nodes, waits until each sees all three
// alive, and stops them all.
func stoppedCluster(t *testing.T, mem *tunnel.MemNetwork) ([]*Daemon, []*fakeSandbox) {
	t.Helper()
	ds, sbs := threeNodesOn(t, mem)
	for _, d := range ds {
		waitFor(t, d.cfg.Node+" seeing three alive", func() bool { return allAlive(d, 3) })
	}
	for _, d := range ds {
		d.Close()
	}
	return ds, sbs
}

// TestSeedRestartRejoinsTheCluster restarts the node the others joined
// through (started without --join) with a clean shutdown: it must see all
// the others alive again, and they it.
func TestSeedRestartRejoinsTheCluster(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	ds, sbs := threeNodesOn(t, mem)
	for _, d := range ds {
		waitFor(t, d.cfg.Node+" seeing three alive", func() bool { return allAlive(d, 3) })
	}
	seed := restartNode(t, mem, ds[0], sbs[0])
	for _, d := range []*Daemon{seed, ds[1], ds[2]} {
		waitFor(t, d.cfg.Node+" seeing three alive after the seed's restart", func() bool { return allAlive(d, 3) })
	}
}

// TestWholeClusterRestartWithoutJoin stops every node and starts them all
// again without --join: the members saved in the state directories are
// enough for them to find each other.
func TestWholeClusterRestartWithoutJoin(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	ds, sbs := stoppedCluster(t, mem)
	var back []*Daemon
	for i := len(ds) - 1; i >= 0; i-- {
		back = append(back, startAgain(t, mem, ds[i].cfg, sbs[i]))
	}
	for _, d := range back {
		waitFor(t, d.cfg.Node+" seeing three alive after the restart", func() bool { return allAlive(d, 3) })
	}
}

// TestRestartWithJoinBeforeItsSeed: a whole cluster restarted at once
// comes up in any order. Here h2, whose --join names h1, starts while h1
// is still down: it starts anyway (it was in the cluster before) and finds
// h1 in the background once h1 is back. A new node whose --join reaches
// no one still fails at start.
func TestRestartWithJoinBeforeItsSeed(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	ds, sbs := stoppedCluster(t, mem)
	old := ds[1].cfg
	cfg := nodeConfig(t, mem, old.Node, old.Advertise, sbs[1], old.StateDir, old.Join...)
	cfg.GossipPort = old.GossipPort
	h2, err := New(cfg)
	if err != nil {
		t.Fatalf("h2 restarting with its seed down: %v", err)
	}
	t.Cleanup(h2.Close)
	back := []*Daemon{h2, startAgain(t, mem, ds[0].cfg, sbs[0]), startAgain(t, mem, ds[2].cfg, sbs[2])}
	for _, d := range back {
		waitFor(t, d.cfg.Node+" seeing three alive after the restart", func() bool { return allAlive(d, 3) })
	}

	fresh := nodeConfig(t, mem, "h4", netip.AddrFrom4([4]byte{127, 0, 0, 4}), newFakeSandbox(), t.TempDir(), old.Join...)
	fresh.GossipPort = freePort(t, fresh.Advertise)
	back[1].Close() // h1, the seed, is gone again
	if d, err := New(fresh); err == nil {
		d.Close()
		t.Fatal("a new node whose --join reaches no one started")
	} else if je := (*cluster.JoinError)(nil); !errors.As(err, &je) {
		t.Fatalf("a new node whose --join reaches no one: %v, want a join error", err)
	}
}
