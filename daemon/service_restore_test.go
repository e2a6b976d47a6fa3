package daemon

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// serviceSummary is what a user compares of a service across a restart:
// its identity, VIPs, published ports and backends.
func serviceSummary(t *testing.T, d *Daemon, name string) string {
	t.Helper()
	s, err := d.Service(name)
	if err != nil {
		return "error: " + err.Error()
	}
	var backends []string
	for _, b := range s.Backends {
		backends = append(backends, b.Node+"/"+b.Container+"/"+b.IP+"/"+b.State)
	}
	return fmt.Sprintf("id=%s vips=%v publish=%v backends=%v", s.ID, s.VIPs, s.Published, backends)
}

// TestOneNodeRestartKeepsServices: a one-host cluster's daemon restarted
// comes back with its services (same ID, VIP, published port), and the
// restored container is their backend again, as it was.
func TestOneNodeRestartKeepsServices(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	d := newTestDaemon(t, sb, dir)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.31.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}})
	setPublish(t, d, "api", []string{"published=8080,target=80,protocol=tcp,mode=ingress,client-ip=snat"})
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "gone", Networks: []string{"web"}})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	if err := d.RemoveService("gone"); err != nil {
		t.Fatal(err)
	}
	before := serviceSummary(t, d, "api")
	if !strings.Contains(before, "/c1/") || !strings.Contains(before, "8080") {
		t.Fatalf("before the restart: %s", before)
	}
	d.Close()

	d2 := newTestDaemon(t, sb, dir)
	defer d2.Close()
	if after := serviceSummary(t, d2, "api"); after != before {
		t.Fatalf("after the restart:\n  %s\nbefore:\n  %s", after, before)
	}
	if _, err := d2.Service("gone"); err == nil {
		t.Fatal("a service removed before the restart came back")
	}
	// Removed after the restart, it stays removed across the next one.
	if err := d2.RemoveService("api"); err != nil {
		t.Fatal(err)
	}
	d2.Close()
	d3 := newTestDaemon(t, sb, dir)
	defer d3.Close()
	if got := d3.Services(); len(got) != 0 {
		t.Fatalf("after rm and a restart: %+v", got)
	}
}

// TestWholeClusterRestartKeepsServices: a service removed while a node
// was down stays removed when that node comes back to the running
// cluster; then every node stopped and started again (in another order,
// without --join) has the remaining service again, with the same ID and
// its backend on another node.
func TestWholeClusterRestartKeepsServices(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	ds, sbs := threeWithWeb(t, mem, "10.32.0.0/24")
	mustCreateService(t, ds[0], api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}})
	mustCreateService(t, ds[0], api.ServiceCreateRequest{Name: "old", Networks: []string{"web"}})
	mustAttach(t, ds[2], api.AttachRequest{Network: "web", Name: "c3", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	waitFor(t, "h1 seeing c3 as api's backend", func() bool { return strings.Contains(serviceSummary(t, ds[0], "api"), "/c3/") })
	before := serviceSummary(t, ds[0], "api")

	ds[1].Close()
	if err := ds[0].RemoveService("old"); err != nil {
		t.Fatal(err)
	}
	h2 := startAgain(t, mem, ds[1].cfg, sbs[1]) // it still has "old" saved
	waitFor(t, "h2 back", func() bool { return allAlive(h2, 3) })
	for _, d := range []*Daemon{ds[0], h2, ds[2]} {
		waitFor(t, d.cfg.Node+" without the service removed while h2 was down", func() bool { _, err := d.Service("old"); return err != nil })
	}

	for _, d := range []*Daemon{ds[0], h2, ds[2]} {
		d.Close()
	}
	h3 := startAgain(t, mem, ds[2].cfg, sbs[2])
	h2 = startAgain(t, mem, h2.cfg, sbs[1])
	h1 := startAgain(t, mem, ds[0].cfg, sbs[0])
	for _, d := range []*Daemon{h1, h2, h3} {
		waitFor(t, d.cfg.Node+" seeing three alive after the restart", func() bool { return allAlive(d, 3) })
		ok := false
		for i := 0; i < 50 && !ok; i++ {
			ok = serviceSummary(t, d, "api") == before
			time.Sleep(100 * time.Millisecond)
		}
		if !ok {
			t.Fatalf("%s: %s, want %s", d.cfg.Node, serviceSummary(t, d, "api"), before)
		}
		if _, err := d.Service("old"); err == nil {
			t.Errorf("%s: the removed service is back", d.cfg.Node)
		}
	}
}

// removable is a kind of cluster object whose removals a node keeps
// (savedRemoval), as a test makes and looks at one.
type removable struct {
	kind string
	// create makes name on d, variant i of it (another subnet, another
	// port), and returns its ID.
	create func(t *testing.T, d *Daemon, name string, i int) string
	remove func(d *Daemon, name string) error
	// id returns name's ID as d knows it.
	id func(d *Daemon, name string) (string, error)
}

var (
	removableService = removable{
		kind: "service",
		create: func(t *testing.T, d *Daemon, name string, i int) string {
			return mustCreateService(t, d, api.ServiceCreateRequest{Name: name, Networks: []string{"web"}, Ports: []string{fmt.Sprint(8080 + i)}}).ID
		},
		remove: (*Daemon).RemoveService,
		id: func(d *Daemon, name string) (string, error) {
			s, err := d.Service(name)
			return s.ID, err
		},
	}
	removableNetwork = removable{
		kind: "network",
		create: func(t *testing.T, d *Daemon, name string, i int) string {
			t.Helper()
			n, err := d.CreateNetwork(api.NetworkCreateRequest{Name: name, Subnet: fmt.Sprintf("10.%d.0.0/24", 40+i)})
			if err != nil {
				t.Fatal(err)
			}
			return n.ID
		},
		remove: (*Daemon).RemoveNetwork,
		id: func(d *Daemon, name string) (string, error) {
			n, err := d.Network(name)
			return n.ID, err
		},
	}
)

// TestServiceRemovalMissedByTheFirstToStartHolds: h2 is down while a
// service is removed, then the whole cluster stops and h2 starts first,
// alone, and announces the service it still has saved. The nodes that saw
// the removal remove it again as they come back: it ends removed on every
// node, and the other service is kept.
func TestServiceRemovalMissedByTheFirstToStartHolds(t *testing.T) {
	testRemovalMissedByTheFirstToStartHolds(t, removableService)
}

// TestNetworkRemovalMissedByTheFirstToStartHolds is the same for a
// network.
func TestNetworkRemovalMissedByTheFirstToStartHolds(t *testing.T) {
	testRemovalMissedByTheFirstToStartHolds(t, removableNetwork)
}

func testRemovalMissedByTheFirstToStartHolds(t *testing.T, k removable) {
	mem := tunnel.NewMemNetwork()
	ds, sbs := threeWithWeb(t, mem, "10.33.0.0/24")
	k.create(t, ds[0], "kept", 0)
	k.create(t, ds[0], "old", 1)
	for _, d := range ds {
		waitFor(t, d.cfg.Node+" having old", func() bool { _, err := k.id(d, "old"); return err == nil })
	}
	ds[1].Close()
	if err := k.remove(ds[0], "old"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "h3 seeing old removed", func() bool { _, err := k.id(ds[2], "old"); return err != nil })
	ds[0].Close()
	ds[2].Close()

	h2 := startAgain(t, mem, ds[1].cfg, sbs[1])
	if _, err := k.id(h2, "old"); err != nil {
		t.Fatalf("h2, alone, lost the %s it had saved: %v", k.kind, err)
	}
	h3 := startAgain(t, mem, ds[2].cfg, sbs[2])
	h1 := startAgain(t, mem, ds[0].cfg, sbs[0])
	for _, d := range []*Daemon{h1, h2, h3} {
		waitFor(t, d.cfg.Node+" seeing three alive", func() bool { return allAlive(d, 3) })
		waitFor(t, d.cfg.Node+" without the removed "+k.kind, func() bool { _, err := k.id(d, "old"); return err != nil })
		if _, err := k.id(d, "kept"); err != nil {
			t.Errorf("%s lost kept: %v", d.cfg.Node, err)
		}
	}
	// Created again under the name, it is another one, and stays
	// across the restart of a node that saw the first one removed.
	again := k.create(t, h3, "old", 2)
	h1 = restartNode(t, mem, h1, sbs[0])
	waitFor(t, "h1 back", func() bool { return allAlive(h1, 3) })
	for _, d := range []*Daemon{h1, h2, h3} {
		waitFor(t, d.cfg.Node+" having the new old", func() bool { id, err := k.id(d, "old"); return err == nil && id == again })
	}
}

// TestServiceRecreatedWhileANodeWasDownHolds: h2 is down while a service
// is removed and created again under its name, then the whole cluster
// stops and h2 starts first and announces the removed incarnation. The
// nodes that saw the change put the later one back: every node ends with
// the service created last, with its ports.
func TestServiceRecreatedWhileANodeWasDownHolds(t *testing.T) {
	testRecreatedWhileANodeWasDownHolds(t, removableService)
}

// TestNetworkRecreatedWhileANodeWasDownHolds is the same for a network
// (created again on another subnet).
func TestNetworkRecreatedWhileANodeWasDownHolds(t *testing.T) {
	testRecreatedWhileANodeWasDownHolds(t, removableNetwork)
}

func testRecreatedWhileANodeWasDownHolds(t *testing.T, k removable) {
	mem := tunnel.NewMemNetwork()
	ds, sbs := threeWithWeb(t, mem, "10.33.0.0/24")
	first := k.create(t, ds[0], "api", 0)
	for _, d := range ds {
		waitFor(t, d.cfg.Node+" having api", func() bool { _, err := k.id(d, "api"); return err == nil })
	}
	ds[1].Close()
	if err := k.remove(ds[0], "api"); err != nil {
		t.Fatal(err)
	}
	second := k.create(t, ds[0], "api", 1)
	if second == first {
		t.Fatalf("the %s created again has the removed one's ID", k.kind)
	}
	waitFor(t, "h3 seeing the second api", func() bool { id, err := k.id(ds[2], "api"); return err == nil && id == second })
	ds[0].Close()
	ds[2].Close()

	h2 := startAgain(t, mem, ds[1].cfg, sbs[1])
	if id, err := k.id(h2, "api"); err != nil || id != first {
		t.Fatalf("h2, alone, has api %s, %v; want the first one it had saved, %s", id, err, first)
	}
	// The others join h2, so they learn its api before they would
	// announce their own.
	h1, h3 := startJoining(t, mem, ds[0], sbs[0], h2), startJoining(t, mem, ds[2], sbs[2], h2)
	for _, d := range []*Daemon{h1, h2, h3} {
		waitFor(t, d.cfg.Node+" seeing three alive", func() bool { return allAlive(d, 3) })
		waitFor(t, d.cfg.Node+" having the api created last", func() bool { id, err := k.id(d, "api"); return err == nil && id == second })
	}
	// And it is what each node saved: a restart of one keeps it.
	h3 = restartNode(t, mem, h3, sbs[2])
	waitFor(t, "h3 back with the api created last", func() bool { id, err := k.id(h3, "api"); return err == nil && id == second })
}

// startJoining starts stopped node d again with its state, joining seed
// first, so that it learns seed's records before it would announce its
// own.
func startJoining(t *testing.T, mem *tunnel.MemNetwork, d *Daemon, sb *fakeSandbox, seed *Daemon) *Daemon {
	t.Helper()
	cfg := nodeConfig(t, mem, d.cfg.Node, d.cfg.Advertise, sb, d.cfg.StateDir, seed.cfg.Advertise.String()+":"+fmt.Sprint(seed.cfg.GossipPort))
	cfg.GossipPort = d.cfg.GossipPort
	n := startNode(t, cfg)
	t.Cleanup(n.Close)
	return n
}

// threeWithWeb starts three nodes on mem, waits until each sees all
// three alive, and creates network web on subnet.
func threeWithWeb(t *testing.T, mem *tunnel.MemNetwork, subnet string) ([]*Daemon, []*fakeSandbox) {
	t.Helper()
	ds, sbs := threeNodesOn(t, mem)
	for _, d := range ds {
		waitFor(t, d.cfg.Node+" seeing three alive", func() bool { return allAlive(d, 3) })
	}
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: subnet}); err != nil {
		t.Fatal(err)
	}
	return ds, sbs
}

// TestNetworkRemovedWhileItsNodeWasDownIsKeptForItsContainers: h2 is
// down, with a container on network old, while old is removed (h2's
// endpoints left the cluster after --node-grace). After a whole-cluster
// stop in which h2 starts first, its container keeps the network, as when
// h2 rejoins a running cluster: the nodes that saw the removal do not
// remove it again while an endpoint uses it.
func TestNetworkRemovedWhileItsNodeWasDownIsKeptForItsContainers(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	ds, sbs := threeWithWeb(t, mem, "10.33.0.0/24")
	removableNetwork.create(t, ds[0], "old", 1)
	waitFor(t, "h2 having old", func() bool { _, err := ds[1].Network("old"); return err == nil })
	mustAttach(t, ds[1], api.AttachRequest{Network: "old", Name: "c2", Create: true})
	ds[1].Close()
	waitFor(t, "h1 forgetting h2's endpoints", func() bool { return ds[0].RemoveNetwork("old") == nil })
	waitFor(t, "h3 seeing old removed", func() bool { _, err := ds[2].Network("old"); return err != nil })
	ds[0].Close()
	ds[2].Close()

	h2 := startAgain(t, mem, ds[1].cfg, sbs[1])
	h3 := startAgain(t, mem, ds[2].cfg, sbs[2])
	h1 := startAgain(t, mem, ds[0].cfg, sbs[0])
	all := []*Daemon{h1, h2, h3}
	for _, d := range all {
		waitFor(t, d.cfg.Node+" seeing three alive", func() bool { return allAlive(d, 3) })
		waitFor(t, d.cfg.Node+" having old with c2", func() bool {
			n, err := d.Network("old")
			return err == nil && len(n.Endpoints) == 1 && n.Endpoints[0].Name == "c2"
		})
	}
	// It stays: no node removes it again (h2 would announce it again,
	// and so on), nor once c2 is gone: kept, it is a network again, also
	// across a restart of a node that saw it removed.
	stays := func(when string) {
		t.Helper()
		for range 20 {
			for _, d := range all {
				if _, err := d.Network("old"); err != nil {
					t.Fatalf("%s: %s: %v", when, d.cfg.Node, err)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	stays("with c2")
	if err := h2.RemoveContainer("c2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "h1 seeing c2 gone", func() bool { n, err := h1.Network("old"); return err == nil && len(n.Endpoints) == 0 })
	stays("after c2's rm")
	all[0] = restartNode(t, mem, h1, sbs[0])
	waitFor(t, "h1 back", func() bool { return allAlive(all[0], 3) })
	waitFor(t, "h1 having old", func() bool { _, err := all[0].Network("old"); return err == nil })
	stays("after h1's restart")
}
