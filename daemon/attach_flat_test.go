package daemon

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

// TestDesiredRemotesFollowTheCluster: the remotes the data plane is given
// (kept between changes that touch no other node's record) are those
// derived afresh from the accepted records, after each of random runs and
// removals on this node and on the others, seen by this node once its
// endpoint set has the others' records.
func TestDesiredRemotesFollowTheCluster(t *testing.T) {
	ds, _ := threeNodes(t)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.50.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web on every node", func() bool {
		for _, d := range ds {
			d.mu.Lock()
			n := d.networks["web"]
			d.mu.Unlock()
			if n == nil {
				return false
			}
		}
		return true
	})
	rng := rand.New(rand.NewPCG(3, 4))
	live := map[string]int{} // container -> node index
	for step := range 40 {
		name := fmt.Sprintf("c%d", rng.IntN(8))
		if i, ok := live[name]; ok && rng.IntN(2) == 0 {
			if err := ds[i].RemoveContainer(name); err != nil {
				t.Fatal(err)
			}
			delete(live, name)
		} else if !ok {
			i := rng.IntN(len(ds))
			if _, err := ds[i].Attach(api.AttachRequest{Network: "web", Name: name, Create: true}); err != nil {
				t.Fatal(err)
			}
			live[name] = i
		}
		d := ds[0]
		waitFor(t, fmt.Sprintf("step %d: h1's endpoint set", step), func() bool {
			n := 0
			for _, rec := range d.endpointSet().accepted {
				if i, ok := live[rec.Name]; !ok || ds[i].cfg.Node != rec.Node {
					return false
				}
				n++
			}
			return n == len(live)
		})
		d.mu.Lock()
		accepted, got := d.desiredRemotes()
		want := d.remotesOf(accepted, d.vteps())
		d.mu.Unlock()
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: remotes %v, want %v", step, got, want)
		}
	}
}

// TestHoldBlocksLooksAtAddedEndpoints: once every endpoint of a network
// was found in a block this node holds, a reconcile looks only at the
// endpoints added since (the block table unchanged); one whose block this
// node does not hold (an endpoint kept from an earlier run) gets its
// block held.
func TestHoldBlocksLooksAtAddedEndpoints(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	t.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.30.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	d.holdBlocks()
	d.holdBlocks()
	d.mu.Lock()
	n := d.networks["web"]
	ip := netip.MustParseAddr("10.30.200.5")
	c := &container{name: "c2", endpoints: map[string]*endpoint{}}
	c.endpoints["web"] = &endpoint{ctr: c, net: n, ip: ip, mac: macForIP(ip), ifname: "eth0"}
	d.containers["c2"] = c
	d.containerChanged(c)
	d.mu.Unlock()
	d.holdBlocks()
	if _, holder, _ := holderOf(d.cl.Blocks("web"), ip); holder != d.cfg.Node {
		t.Fatalf("the block of c2's %s is held by %q after a reconcile, want this node", ip, holder)
	}
}
