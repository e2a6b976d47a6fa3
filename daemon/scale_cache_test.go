package daemon

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/dataplane"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

// epEntry is an endpoints-table entry of node "peer" for container name
// at 10.30.x.y on network web.
func epEntry(i int, version uint64) cluster.Entry {
	ip := fmt.Sprintf("10.30.%d.%d", 1+i/250, 1+i%250)
	name := fmt.Sprintf("c%04d", i)
	v := fmt.Sprintf(`{"name":%q,"network":"web","ip":%q,"mac":%q,"node":"peer"}`, name, ip, packet.MAC(macForIP(netip.MustParseAddr(ip))).String())
	return cluster.Entry{Table: tblEndpoints, Key: epKey("peer", "web", name), Owner: "peer", Version: version, Value: []byte(v)}
}

// TestEndpointDecodeCacheDecodesOnlyChanges lists a thousand endpoint
// entries again after one changed: only that one is decoded again, and every
// result (valid or refused) is what decodeEndpoint says of the entry.
func TestEndpointDecodeCacheDecodesOnlyChanges(t *testing.T) {
	var es []cluster.Entry
	for i := range 1000 {
		es = append(es, epEntry(i, uint64(i+1)))
	}
	var c epDecodeCache
	check := func(es []cluster.Entry) {
		t.Helper()
		n := 0
		c.decodeAll(es, func(e cluster.Entry, rec epRecord, err error) {
			wantRec, wantErr := decodeEndpoint(e)
			if fmt.Sprint(err) != fmt.Sprint(wantErr) || (err == nil && !reflect.DeepEqual(rec, wantRec)) {
				t.Fatalf("entry %s: got %+v, %v; decodeEndpoint says %+v, %v", e.Key, rec, err, wantRec, wantErr)
			}
			n++
		})
		if n != len(es) {
			t.Fatalf("%d results for %d entries", n, len(es))
		}
	}
	check(es)
	if c.decodes != 1000 {
		t.Fatalf("first listing decoded %d entries, want 1000", c.decodes)
	}
	check(es)
	if c.decodes != 1000 {
		t.Fatalf("an unchanged listing decoded %d entries again", c.decodes-1000)
	}
	// A new version; then the same version with other bytes (a forged
	// copy must not be taken for the cached one); then an invalid value.
	es[7] = epEntry(7, 5000)
	check(es)
	es[8].Value = []byte(`{"name":"c0008","network":"web","ip":"10.30.1.9","mac":"02:42:0a:1e:01:09","node":"other"}`)
	check(es)
	es[9].Value = []byte(`not json`)
	check(es)
	if c.decodes != 1003 {
		t.Fatalf("three changed entries: %d decodes, want 3", c.decodes-1000)
	}
	// Deleted endpoints leave the cache.
	check(es[:10])
	if len(c.m) > 10+epDecodeSlack {
		t.Fatalf("the cache keeps %d entries for a listing of 10", len(c.m))
	}
}

// TestDerivedStateFollowsClusterGeneration checks that the endpoint set
// and the DNS index are derived once per cluster change (the same result
// while nothing changed) and follow every change.
func TestDerivedStateFollowsClusterGeneration(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	t.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.30.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "c1", Create: true}); err != nil {
		t.Fatal(err)
	}
	s1, s2 := d.endpointSet(), d.endpointSet()
	if len(s1.accepted) != 1 || &s1.accepted[0] != &s2.accepted[0] {
		t.Fatalf("endpoint set computed again without a change (or wrong: %+v)", s1.accepted)
	}
	d.refreshDNS()
	x1 := d.dns.idx.index.Load()
	d.refreshDNS()
	if x2 := d.dns.idx.index.Load(); x1 != x2 {
		t.Fatal("DNS index rebuilt without a change")
	}
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "c2", Create: true}); err != nil {
		t.Fatal(err)
	}
	if s := d.endpointSet(); len(s.accepted) != 2 {
		t.Fatalf("after a second run the endpoint set has %d records, want 2", len(s.accepted))
	}
	if got, ok := d.dns.idx.LookupName("c1", "c2"); !ok || len(got.Addrs) != 1 {
		t.Fatalf("c1 cannot resolve c2 after its run: %+v %v", got, ok)
	}
}

// TestDuplicateAddressRecordsRefused: two records of one node at one
// address inside that node's block are both refused by the other nodes
// ("also claimed by 1 other"), while the node itself keeps its own.
func TestDuplicateAddressRecordsRefused(t *testing.T) {
	ds, _ := threeNodes(t)
	h1, h3 := ds[0], ds[2]
	if _, err := h1.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.3.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web on h3", func() bool { _, err := h3.Network("web"); return err == nil })
	c3 := mustAttach(t, h3, api.AttachRequest{Network: "web", Name: "c3", Create: true})
	dup, _ := json.Marshal(epRecord{Name: "dup", Network: "web", IP: c3.IP, MAC: c3.MAC, Node: "h3"})
	if err := h3.cl.Put(tblEndpoints, epKey("h3", "web", "dup"), dup); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both records refused on h1", func() bool {
		n, _ := h1.Network("web")
		if len(n.Conflicts) != 2 {
			return false
		}
		for i, name := range []string{"c3", "dup"} {
			if !strings.Contains(n.Conflicts[i], name+"@h3 "+c3.IP) || !strings.Contains(n.Conflicts[i], "also claimed by 1 other") {
				return false
			}
		}
		return true
	})
	set := h3.endpointSet()
	var names []string
	for _, r := range set.accepted {
		names = append(names, r.Name)
	}
	if fmt.Sprint(names) != "[c3 dup]" || len(set.refused["web"]) != 0 {
		t.Fatalf("h3 accepts %v and refuses %v; want its own c3 and dup kept, sorted", names, set.refused["web"])
	}
}

// TestNetworksAndEndpointListsFollowChanges checks that the decoded
// networks table and the per-network endpoint lists are made once per
// change (the same maps and lists while nothing changed) and follow a
// network create, a run and an rm.
func TestNetworksAndEndpointListsFollowChanges(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	t.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.30.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	v1, _ := d.networkRecords()
	v2, _ := d.networkRecords()
	d.mu.Unlock()
	if reflect.ValueOf(v1).Pointer() != reflect.ValueOf(v2).Pointer() {
		t.Fatal("networks table decoded again without a change")
	}
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "db", Subnet: "10.31.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	if nets := d.clusterNetworks(); len(nets) != 2 {
		t.Fatalf("after a second create the networks table has %d networks, want 2", len(nets))
	}
	endpoints := func() []string {
		d.mu.Lock()
		defer d.mu.Unlock()
		var out []string
		for _, ep := range d.endpointsOf(d.networks["web"]) {
			out = append(out, ep.ctr.name)
		}
		return out
	}
	for _, name := range []string{"c2", "c1", "c3"} {
		if _, err := d.Attach(api.AttachRequest{Network: "web", Name: name, Create: true}); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	l1, l2 := d.endpointsOf(d.networks["web"]), d.endpointsOf(d.networks["web"])
	d.mu.Unlock()
	if &l1[0] != &l2[0] {
		t.Fatal("endpoint list made again without a change")
	}
	if got := endpoints(); !slices.Equal(got, []string{"c1", "c2", "c3"}) {
		t.Fatalf("endpoints of web: %v, want c1 c2 c3", got)
	}
	if err := d.RemoveContainer("c2"); err != nil {
		t.Fatal(err)
	}
	if got := endpoints(); !slices.Equal(got, []string{"c1", "c3"}) {
		t.Fatalf("endpoints of web after rm c2: %v, want c1 c3", got)
	}
	if err := d.Detach("c3", "web"); err != nil {
		t.Fatal(err)
	}
	if got := endpoints(); !slices.Equal(got, []string{"c1"}) {
		t.Fatalf("endpoints of web after detaching c3: %v, want c1", got)
	}
}

// TestIPTakenEqualsUsedIPs: the address look-up allocation uses says of
// every address of the subnet's first blocks what the full list of used
// addresses says: the gateway, this node's endpoints, a record in the
// cluster's table without a local endpoint, and a reserved address, but
// not a record of another network.
func TestIPTakenEqualsUsedIPs(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	t.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.30.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if _, err := d.Attach(api.AttachRequest{Network: "web", Name: fmt.Sprintf("c%02d", i), Create: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.RemoveContainer("c07"); err != nil {
		t.Fatal(err)
	}
	stale := epRecord{Name: "gone", Network: "web", IP: "10.30.0.60", MAC: "02:42:0a:1e:00:3c", Node: "h1"}
	b, _ := json.Marshal(stale)
	if err := d.cl.Put(tblEndpoints, epKey("h1", "web", "gone"), b); err != nil {
		t.Fatal(err)
	}
	// A record at an address of web's subnet, but on another network.
	other := epRecord{Name: "elsewhere", Network: "db", IP: "10.30.0.80", MAC: "02:42:0a:1e:00:50", Node: "h1"}
	b, _ = json.Marshal(other)
	if err := d.cl.Put(tblEndpoints, epKey("h1", "db", "elsewhere"), b); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.networks["web"]
	d.reserveIPFor("someone", n, netip.MustParseAddr("10.30.0.70"))
	used, taken := d.usedIPs(n), d.ipTaken(n)
	count := 0
	for i := range 256 {
		a := netip.AddrFrom4([4]byte{10, 30, 0, byte(i)})
		if taken(a) != used[a] {
			t.Errorf("%s: ipTaken says %v, usedIPs %v", a, taken(a), used[a])
		}
		if used[a] {
			count++
		}
	}
	// claimTaken answers the same outside the blocks it is told are held
	// (this node's endpoints in the others count: tell it of all but the
	// first block).
	held := d.cl.ClaimedBlocks("web")
	if len(held) < 3 {
		t.Fatalf("this node holds %v, want at least 3 blocks", held)
	}
	// An endpoint of this node whose record the cluster lost (it is
	// published again by the next reconcile, which waits for d.mu).
	if err := d.cl.Delete(tblEndpoints, epKey(d.cfg.Node, "web", "c01")); err != nil {
		t.Fatal(err)
	}
	outside := d.claimTaken(n, held[1:])
	for i := range 256 {
		a := netip.AddrFrom4([4]byte{10, 30, 0, byte(i)})
		if !slices.ContainsFunc(held[1:], func(b netip.Prefix) bool { return b.Contains(a) }) && outside(a) != used[a] {
			t.Errorf("%s: claimTaken says %v, usedIPs %v", a, outside(a), used[a])
		}
	}
	if count != 1+39+1+1 {
		t.Errorf("%d addresses used, want 42 (gateway, 39 endpoints, a record, a reservation)", count)
	}
	if used[netip.MustParseAddr("10.30.0.60")] != true || used[netip.MustParseAddr("10.30.0.80")] {
		t.Errorf("usedIPs: the record on web counts %v (want true), the one on db %v (want false)",
			used[netip.MustParseAddr("10.30.0.60")], used[netip.MustParseAddr("10.30.0.80")])
	}
}

// TestPatchedEndpointListsEqualFresh makes random runs, attaches to a
// second network, detaches and removals, and checks after each that every
// kept endpointsOf list (patched by containerChanged) equals the list
// made from scratch, the same endpoints in the same order, and the kept
// addresses and data-plane ports of each list and index of containers by
// netns the ones made from scratch.
func TestPatchedEndpointListsEqualFresh(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	t.Cleanup(d.Close)
	for i, name := range []string{"web", "db"} {
		if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: name, Subnet: fmt.Sprintf("10.%d.0.0/16", 40+i)}); err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(step int) {
		t.Helper()
		d.mu.Lock()
		defer d.mu.Unlock()
		kept := map[string][]*endpoint{}
		for _, n := range d.networks {
			kept[n.rec.Name] = d.endpointsOf(n)
		}
		d.containerByNetns(0, 0)
		keptNetns := maps.Clone(d.byNetns)
		keptIPs := map[string]map[netip.Addr]int{}
		keptPorts := map[string][]dataplane.PortConfig{}
		keptBlocks := map[string]map[netip.Prefix]int{}
		for _, n := range d.networks {
			d.ipTaken(n)
			keptIPs[n.rec.Name] = maps.Clone(d.ipsByNet[n.rec.Name])
			keptBlocks[n.rec.Name] = maps.Clone(d.localInBlock[n.rec.Name])
			keptPorts[n.rec.Name] = d.desiredPorts(n)
		}
		// The gateway resolvers' askers, patched sync by sync, are
		// those of the endpoints now.
		d.syncGatewayDNS()
		for _, n := range d.networks {
			r := d.gwDNS[n.rec.Name]
			if r == nil {
				t.Fatalf("step %d: no resolver at %s's gateway", step, n.rec.Name)
			}
			want := map[netip.Addr]string{}
			for _, ep := range d.endpointsOf(n) {
				want[ep.ip] = ep.ctr.name
			}
			r.mu.RLock()
			got := maps.Clone(r.askers)
			r.mu.RUnlock()
			if !maps.Equal(got, want) {
				t.Fatalf("step %d: gateway askers of %s: %v, want %v", step, n.rec.Name, got, want)
			}
		}
		d.endpointsChanged()
		for _, n := range d.networks {
			d.ipTaken(n)
			if got, want := keptIPs[n.rec.Name], d.ipsByNet[n.rec.Name]; !maps.Equal(got, want) {
				t.Fatalf("step %d: addresses of %s: kept %v, fresh %v", step, n.rec.Name, got, want)
			}
			if got, want := keptBlocks[n.rec.Name], d.localInBlock[n.rec.Name]; !maps.Equal(got, want) {
				t.Fatalf("step %d: addresses by block of %s: kept %v, fresh %v", step, n.rec.Name, got, want)
			}
			if got, want := keptPorts[n.rec.Name], d.desiredPorts(n); !slices.Equal(got, want) {
				t.Fatalf("step %d: ports of %s: kept %v, fresh %v", step, n.rec.Name, got, want)
			}
		}
		for _, n := range d.networks {
			// The empty blocks the release sweep finds with the kept
			// counts are those the full list of used addresses shows:
			// among the blocks held, every block of the first addresses
			// (some used, some not) and a block of another size.
			blockAfter := func(b netip.Prefix) netip.Prefix {
				a := b.Addr().As4()
				v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
				v += 1 << (32 - b.Bits())
				return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), b.Bits())
			}
			held := d.cl.ClaimedBlocks(n.rec.Name)
			bits := blockBits(n.subnet)
			for b := netip.PrefixFrom(n.subnet.Addr(), bits); b.Addr().As4()[2] == 0; b = blockAfter(b) {
				held = append(held, b)
			}
			held = append(held, netip.PrefixFrom(n.subnet.Addr(), 24))
			if got, want := d.emptyHeldBlocks(n, held), emptyBlocks(held, d.usedIPs(n), n.gw); !slices.Equal(got, want) {
				t.Fatalf("step %d: empty blocks of %s: %v, want %v", step, n.rec.Name, got, want)
			}
		}
		d.containerByNetns(0, 0)
		if !maps.EqualFunc(keptNetns, d.byNetns, func(a, b []*container) bool { return len(a) == 1 && len(b) == 1 && a[0] == b[0] }) {
			t.Fatalf("step %d: containers by netns: kept index %d long, fresh one %d long", step, len(keptNetns), len(d.byNetns))
		}
		for _, n := range d.networks {
			if got, want := kept[n.rec.Name], d.endpointsOf(n); !slices.Equal(got, want) {
				t.Fatalf("step %d: endpoints of %s: kept list %d long, fresh one %d long", step, n.rec.Name, len(got), len(want))
			}
		}
	}
	for step := range 120 {
		name := fmt.Sprintf("c%d", rng.IntN(10))
		network := []string{"web", "db"}[rng.IntN(2)]
		switch rng.IntN(3) {
		case 0:
			d.Attach(api.AttachRequest{Network: network, Name: name, Create: true})
		case 1:
			d.Detach(name, network)
		default:
			d.RemoveContainer(name)
		}
		d.mu.Lock()
		for _, n := range d.networks {
			d.endpointsOf(n) // keep every list, so that the next change patches it
			d.ipTaken(n)     // and its addresses
		}
		d.containerByNetns(0, 0) // and the index by netns
		d.mu.Unlock()
		check(step)
	}
}

// TestBackendContainersFollowRunsAndRemovals: the set of containers
// syncHealth looks at (those with an endpoint that joined a service), kept
// up to date run by run, equals the one found by walking every container,
// after each of random runs (with and without a service), attaches,
// detaches and removals; and the health checks' targets are those of the
// backends that exist.
func TestBackendContainersFollowRunsAndRemovals(t *testing.T) {
	sb := newHealthSandbox(t)
	d := startNode(t, nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, t.TempDir()))
	t.Cleanup(d.Close)
	for i, name := range []string{"web", "db"} {
		if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: name, Subnet: fmt.Sprintf("10.%d.0.0/16", 40+i)}); err != nil {
			t.Fatal(err)
		}
	}
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web", "db"}, HealthHTTP: ":80/health interval=1h"})
	rng := rand.New(rand.NewPCG(3, 4))
	backends := 0
	for step := range 150 {
		name := fmt.Sprintf("c%d", rng.IntN(10))
		network := []string{"web", "db"}[rng.IntN(2)]
		switch rng.IntN(4) {
		case 0:
			d.Attach(api.AttachRequest{Network: network, Name: name, Create: true})
		case 1:
			d.Attach(api.AttachRequest{Network: network, Name: name, Create: true, Services: []api.ServiceMember{{Name: "api"}}})
		case 2:
			d.Detach(name, network)
		default:
			d.RemoveContainer(name)
		}
		d.mu.Lock()
		kept := maps.Clone(d.backendContainers())
		targets := map[string]bool{}
		for _, r := range d.healthRefs {
			targets[r.container+"/"+r.network] = true
		}
		d.backendCtrs = nil
		fresh := d.backendContainers()
		want := map[string]bool{}
		for _, c := range d.containers {
			for _, ep := range c.endpoints {
				if len(ep.services) > 0 {
					want[c.name+"/"+ep.net.rec.Name] = true
				}
			}
		}
		d.mu.Unlock()
		if !maps.Equal(kept, fresh) {
			t.Fatalf("step %d: kept set of backend containers has %d, a fresh walk %d", step, len(kept), len(fresh))
		}
		if !maps.Equal(targets, want) {
			t.Fatalf("step %d: health check targets %v, want %v", step, targets, want)
		}
		backends = max(backends, len(kept))
	}
	if backends == 0 {
		t.Fatal("no step had a backend: the test checked nothing")
	}
}

// TestAddressFreedInAFullBlockIsReused: allocation skips the blocks this
// node's endpoints fill, from counts kept run by run; an address freed by
// an rm in a full block makes that block count again, and the next run
// gets that address (the lowest free one), not one in a later block.
func TestAddressFreedInAFullBlockIsReused(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	t.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.44.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	ips := map[string]string{}
	for i := range 40 {
		name := fmt.Sprintf("c%02d", i)
		ep, err := d.Attach(api.AttachRequest{Network: "web", Name: name, Create: true})
		if err != nil {
			t.Fatal(err)
		}
		ips[name] = ep.IP
	}
	for _, victim := range []string{"c03", "c20"} {
		if err := d.RemoveContainer(victim); err != nil {
			t.Fatal(err)
		}
		ep, err := d.Attach(api.AttachRequest{Network: "web", Name: victim + "-new", Create: true})
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.Split(ips[victim], "/")[0]; strings.Split(ep.IP, "/")[0] != want {
			t.Errorf("after rm %s (%s), the next run got %s, want the freed address", victim, ips[victim], ep.IP)
		}
	}
}
