package daemon

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/tunnel"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// threeNodes starts three daemons on one in-memory underlay, sharing a
// cluster key, each with netstack containers.
func threeNodes(t *testing.T) ([]*Daemon, []*fakeSandbox) {
	t.Helper()
	return threeNodesOn(t, tunnel.NewMemNetwork())
}

// threeNodesOn is threeNodes on a given in-memory underlay; tune, if
// given, adjusts each node's configuration.
func threeNodesOn(t *testing.T, mem *tunnel.MemNetwork, tune ...func(*Config)) ([]*Daemon, []*fakeSandbox) {
	t.Helper()
	var ds []*Daemon
	var sbs []*fakeSandbox
	for i := 1; i <= 3; i++ {
		d, sb := addNode(t, mem, ds, i, tune...)
		ds = append(ds, d)
		sbs = append(sbs, sb)
	}
	return ds, sbs
}

// addNode starts daemon h<i> at 127.0.0.<i> on mem, with netstack
// containers; after the first node (which makes the cluster key) it uses
// ds[0]'s key and joins ds[0].
func addNode(t *testing.T, mem *tunnel.MemNetwork, ds []*Daemon, i int, tune ...func(*Config)) (*Daemon, *fakeSandbox) {
	t.Helper()
	sb := newFakeSandbox()
	sb.useNetstack = true
	dir := t.TempDir()
	var join []string
	if len(ds) > 0 {
		key, err := readFile(ds[0].cfg.StateDir + "/cluster.key")
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, dir+"/cluster.key", key)
		join = []string{ds[0].cfg.Advertise.String() + ":" + fmt.Sprint(ds[0].cfg.GossipPort)}
	}
	addr := netip.AddrFrom4([4]byte{127, 0, 0, byte(i)})
	cfg := nodeConfig(t, mem, fmt.Sprintf("h%d", i), addr, sb, dir, join...)
	for _, f := range tune {
		f(&cfg)
	}
	d := startNode(t, cfg)
	t.Cleanup(d.Close)
	return d, sb
}

// everyMemberAlive waits until each of ds sees every one of them alive: a
// write is spread to the members its host sees alive (the last node to
// join is seen a moment later).
func everyMemberAlive(t *testing.T, ds []*Daemon) {
	t.Helper()
	for _, d := range ds {
		waitFor(t, d.cfg.Node+" sees every member alive", func() bool {
			alive := 0
			for _, m := range d.cl.Members() {
				if m.State == cluster.StateAlive {
					alive++
				}
			}
			return alive == len(ds)
		})
	}
}

// claimSafeGrace is the NodeGrace of the tests that race claims across
// nodes. A claim is exclusive among nodes that have not been cut off from
// each other for NodeGrace (cluster.ClaimBlock); a race-instrumented
// daemon on a loaded machine can go unanswered for seconds, and with the
// 3 s grace of the other tests two creates of one service name both
// succeeded at load ~240.
func claimSafeGrace(c *Config) { c.NodeGrace = time.Minute }

func TestThreeNodesTCPAcrossTheOverlay(t *testing.T) {
	ds, sbs := threeNodes(t)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.3.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds[1:] {
		waitFor(t, "the network on every node", func() bool { _, err := d.Network("web"); return err == nil })
	}
	var eps []api.Endpoint
	for i, d := range ds {
		eps = append(eps, mustAttach(t, d, api.AttachRequest{Network: "web", Name: fmt.Sprintf("c%d", i+1), Create: true}))
	}
	seen := map[string]bool{}
	for _, ep := range eps {
		if seen[ep.IP] {
			t.Fatalf("address %s handed out twice", ep.IP)
		}
		seen[ep.IP] = true
	}
	for _, d := range ds {
		waitFor(t, "remote endpoints in every FDB", func() bool {
			f, _ := d.FDB("web")
			remote := 0
			for _, e := range f {
				if e.Kind == "remote" && e.VTEP != "" {
					remote++
				}
			}
			return remote == 2
		})
	}
	// TCP from c1 (h1) to c3 (h3), byte-exact.
	tcpOnce(t, sbs[0], sbs[2], "/run/netns/c1", "/run/netns/c3", netip.MustParseAddr(eps[2].IP), 5001, 2<<20)
	n, _ := ds[0].Network("web")
	if len(n.Endpoints) != 3 || len(n.Peers) != 2 {
		t.Fatalf("inspect on h1: %d endpoints, %d peers; want 3 and 2", len(n.Endpoints), len(n.Peers))
	}
	// The ARP for c3 was answered on h1 from the remote entry: nothing was
	// flooded to the other hosts for it.
	st := ds[0].Stats()
	if st.Networks[0].ARPSuppressed == 0 {
		t.Fatal("h1 answered no ARP request locally")
	}

	// h3 stops: its endpoint leaves h1's FDB; the network stays.
	ds[2].Close()
	waitFor(t, "h3's endpoint gone from h1", func() bool {
		f, _ := ds[0].FDB("web")
		for _, e := range f {
			if e.MAC == eps[2].MAC {
				return false
			}
		}
		return true
	})
	if _, err := ds[1].Network("web"); err != nil {
		t.Fatal("the network left with the node that stopped")
	}
}

func TestNetworkRemovedEverywhere(t *testing.T) {
	ds, _ := threeNodes(t)
	if _, err := ds[1].CreateNetwork(api.NetworkCreateRequest{Name: "db"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "db on every node", func() bool { _, err := d.Network("db"); return err == nil })
	}
	if _, err := ds[2].CreateNetwork(api.NetworkCreateRequest{Name: "db"}); err == nil {
		t.Fatal("a second db was created on another node")
	}
	mustAttach(t, ds[0], api.AttachRequest{Network: "db", Name: "x", Create: true})
	waitFor(t, "x visible on h3", func() bool { n, _ := ds[2].Network("db"); return len(n.Endpoints) == 1 })
	if err := ds[2].RemoveNetwork("db"); err == nil {
		t.Fatal("removed a network with an endpoint on another node")
	}
	if err := ds[0].RemoveContainer("x"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "x gone on h3", func() bool { n, _ := ds[2].Network("db"); return len(n.Endpoints) == 0 })
	if err := ds[2].RemoveNetwork("db"); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "db gone everywhere", func() bool { _, err := d.Network("db"); return err != nil })
	}
}

// TestCreatedIsUsableOnEveryHostAtOnce: what a create returned for is
// usable on every other host right away, as a script running `network
// create` on one host and `run` on another expects (gossip alone brings
// it a few hundred milliseconds later).
func TestCreatedIsUsableOnEveryHostAtOnce(t *testing.T) {
	ds, _ := threeNodesOn(t, tunnel.NewMemNetwork())
	for i := range 5 {
		net, svc := fmt.Sprintf("net%d", i), fmt.Sprintf("svc%d", i)
		if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: net, Subnet: fmt.Sprintf("10.7.%d.0/24", i)}); err != nil {
			t.Fatal(err)
		}
		for _, d := range ds[1:] {
			if _, err := d.Attach(api.AttachRequest{Network: net, Name: "c-" + net + "-" + d.cfg.Node, Create: true}); err != nil {
				t.Fatalf("attach on %s right after %s was created on h1: %v", d.cfg.Node, net, err)
			}
		}
		if _, err := ds[1].CreateService(api.ServiceCreateRequest{Name: svc, Networks: []string{net}}); err != nil {
			t.Fatal(err)
		}
		for _, d := range []*Daemon{ds[0], ds[2]} {
			if _, err := d.Service(svc); err != nil {
				t.Fatalf("%s right after %s was created on h2: %v", d.cfg.Node, svc, err)
			}
		}
		// And what a remove returned for is gone everywhere: the name
		// is free for a create on another host.
		if err := ds[1].RemoveService(svc); err != nil {
			t.Fatal(err)
		}
		if _, err := ds[2].CreateService(api.ServiceCreateRequest{Name: svc, Networks: []string{net}}); err != nil {
			t.Fatalf("create of %s on h3 right after its removal on h2: %v", svc, err)
		}
		tmp := fmt.Sprintf("tmp%d", i)
		if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: tmp, Subnet: fmt.Sprintf("10.8.%d.0/24", i)}); err != nil {
			t.Fatal(err)
		}
		if err := ds[0].RemoveNetwork(tmp); err != nil {
			t.Fatal(err)
		}
		if _, err := ds[2].CreateNetwork(api.NetworkCreateRequest{Name: tmp, Subnet: fmt.Sprintf("10.9.%d.0/24", i)}); err != nil {
			t.Fatalf("create of %s on h3 right after its removal on h1: %v", tmp, err)
		}
	}
}

// TestCreatedNetworkIsListedOnEveryHostAtOnce: what a network create or
// remove returned for is what `network ls`, `network inspect` and
// `network rm` on any other host see at once, not a reconcile pass later
// (a user checks with `network ls` on another host).
func TestCreatedNetworkIsListedOnEveryHostAtOnce(t *testing.T) {
	ds, _ := threeNodesOn(t, tunnel.NewMemNetwork())
	everyMemberAlive(t, ds)
	listed := func(d *Daemon, name string) bool {
		for _, n := range d.Networks() {
			if n.Name == name {
				return true
			}
		}
		return false
	}
	for i := range 5 {
		name := fmt.Sprintf("ls%d", i)
		if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: name, Subnet: fmt.Sprintf("10.7.%d.0/24", i)}); err != nil {
			t.Fatal(err)
		}
		if !listed(ds[1], name) {
			t.Fatalf("network ls on h2 right after %s was created on h1: not listed", name)
		}
		if _, err := ds[2].Network(name); err != nil {
			t.Fatalf("network inspect on h3 right after %s was created on h1: %v", name, err)
		}
		if err := ds[1].RemoveNetwork(name); err != nil {
			t.Fatalf("network rm on h2 right after %s was created on h1: %v", name, err)
		}
		for _, d := range []*Daemon{ds[0], ds[2]} {
			if listed(d, name) {
				t.Fatalf("network ls on %s right after %s was removed on h2: still listed", d.cfg.Node, name)
			}
			if _, err := d.Network(name); err == nil {
				t.Fatalf("network inspect on %s right after %s was removed on h2: still there", d.cfg.Node, name)
			}
		}
	}
}

// TestUpdateIsSeenOnEveryHostAtOnce: what a service or network update
// returned for is what `service inspect` and `network inspect` show on
// any other host at once, as after a create (a user checks the change,
// or curls an added published port, through another host).
func TestUpdateIsSeenOnEveryHostAtOnce(t *testing.T) {
	ds, _ := threeNodesOn(t, tunnel.NewMemNetwork())
	everyMemberAlive(t, ds)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.7.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds[0].CreateService(api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}}); err != nil {
		t.Fatal(err)
	}
	for i, sched := range []string{"lc", "maglev", "wrr", "p2c", "rr"} {
		publish := fmt.Sprintf("%d:80", 18000+i)
		if _, err := ds[i%3].UpdateService("api", api.ServiceUpdateRequest{Scheduler: &sched, PublishAdd: []string{publish}}); err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			s, err := d.Service("api")
			if err != nil {
				t.Fatal(err)
			}
			if s.Scheduler != sched || len(s.Published) != i+1 {
				t.Fatalf("service inspect on %s right after an update to %s with %s on %s: scheduler %s, published %v",
					d.cfg.Node, sched, publish, ds[i%3].cfg.Node, s.Scheduler, s.Published)
			}
		}
		vtep := fmt.Sprintf("192.0.2.%d", 10+i)
		if _, err := ds[i%3].UpdateNetwork("web", api.NetworkUpdateRequest{AddVTEPs: []string{vtep}}); err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			n, err := d.Network("web")
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(n.VTEPs, vtep) {
				t.Fatalf("network inspect on %s right after --add-vtep %s on %s: vteps %v", d.cfg.Node, vtep, ds[i%3].cfg.Node, n.VTEPs)
			}
		}
	}
}
