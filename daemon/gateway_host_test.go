package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

// setPublish rewrites service name's record (as its creator d) with the
// given published ports, as `service create --publish` will.
func setPublish(t *testing.T, d *Daemon, name string, publish []string) {
	t.Helper()
	for _, e := range d.cl.List(tblServices) {
		if e.Key != name {
			continue
		}
		var rec svcRecord
		if err := json.Unmarshal(e.Value, &rec); err != nil {
			t.Fatal(err)
		}
		rec.Publish = publish
		b, _ := json.Marshal(rec)
		if err := d.cl.Put(tblServices, name, b); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("service %q not in the table", name)
}

// gwHostOf returns node d's gateway host address on network.
func gwHostOf(d *Daemon, network string) netip.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n := d.networks[network]; n != nil {
		return n.gwHost
	}
	return netip.Addr{}
}

// remoteGateways counts the remote FDB entries of d's network that are
// another node's gateway host address.
func remoteGateways(d *Daemon, network string, hosts []netip.Addr) int {
	f, _ := d.FDB(network)
	n := 0
	for _, e := range f {
		for _, h := range hosts {
			if h.IsValid() && e.Kind == "remote" && e.IP == h.String() && e.MAC == packet.MAC(macForIP(h)).String() {
				n++
			}
		}
	}
	return n
}

// TestMeshGatewayHosts: once a service of a network publishes ports,
// every node (also those with no endpoint on the network) gets a gateway
// host address of its own, unique, from its own blocks; every other node
// has it as a remote; a node with no endpoint can then dial the VIP from
// an outside client's address and the backend on another node sees that
// address; when the service stops publishing, the addresses are released.
func TestMeshGatewayHosts(t *testing.T) {
	ds, sbs := threeNodesOn(t, tunnel.NewMemNetwork(), claimSafeGrace)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.3.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds[1:] {
		waitFor(t, "the network on every node", func() bool { _, err := d.Network("web"); return err == nil })
	}
	svc, err := ds[0].CreateService(api.ServiceCreateRequest{Name: "websvc", Networks: []string{"web"}, Ports: []string{"80:8080"}})
	if err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr(svc.VIPs[0].VIP)
	mustAttach(t, ds[1], api.AttachRequest{Network: "web", Name: "b1", Create: true, Services: []api.ServiceMember{{Name: "websvc"}}})
	b1 := sbs[1].iface("/run/netns/b1", "eth0").stack
	b1.SetDefaultRoute(netip.MustParseAddr("10.3.0.1"))
	for _, d := range ds {
		if a := gwHostOf(d, "web"); a.IsValid() {
			t.Fatalf("node %s has a gateway host address %s before any service publishes", d.cfg.Node, a)
		}
	}

	setPublish(t, ds[0], "websvc", []string{"published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve"})
	hosts := make([]netip.Addr, len(ds))
	for i, d := range ds {
		waitFor(t, "a gateway host address on "+d.cfg.Node, func() bool { hosts[i] = gwHostOf(d, "web"); return hosts[i].IsValid() })
	}
	if hosts[0] == hosts[1] || hosts[1] == hosts[2] || hosts[0] == hosts[2] {
		t.Fatalf("gateway host addresses not unique: %v", hosts)
	}
	for i, d := range ds {
		waitFor(t, "the other nodes' gateways as remotes on "+d.cfg.Node, func() bool { return remoteGateways(d, "web", hosts) == 2 })
		if g := d.dp.Gateway("web"); g == nil || g.HostAddr() != hosts[i] {
			t.Fatalf("node %s's gateway has host address %v, want %s", d.cfg.Node, g.HostAddr(), hosts[i])
		}
	}

	// h1 and h3 have no endpoint on web: their gateways dial the VIP as an
	// outside client; b1 on h2 sees the client's address.
	ln, err := b1.Listen(8080)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for i, d := range []*Daemon{ds[0], ds[2]} {
		client := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), uint16(40000+i))
		saw := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				saw <- err.Error()
				return
			}
			defer c.Close()
			saw <- c.RemoteAddr().String()
			io.WriteString(c, "hello")
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := d.dp.Gateway("web").DialTCP(ctx, client, netip.AddrPortFrom(vip, 80))
		cancel()
		if err != nil {
			t.Fatalf("%s: dial the VIP from the gateway: %v", d.cfg.Node, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "hello" {
			t.Fatalf("%s: read %q, %v", d.cfg.Node, b, err)
		}
		c.Close()
		if got := <-saw; got != client.String() {
			t.Fatalf("%s: the backend saw %s, want %s", d.cfg.Node, got, client)
		}
	}

	setPublish(t, ds[0], "websvc", nil)
	for _, d := range ds {
		waitFor(t, "the gateway host address released on "+d.cfg.Node, func() bool {
			return !gwHostOf(d, "web").IsValid() && remoteGateways(d, "web", hosts) == 0
		})
	}
}

// TestDecodeGatewayRecord: a gateway identity's record is accepted only
// as gatewayRecordName with the address-derived MAC and without aliases
// or services; an endpoint record cannot take that name.
func TestDecodeGatewayRecord(t *testing.T) {
	entry := func(key, v string) cluster.Entry { return cluster.Entry{Key: key, Owner: "peer", Value: []byte(v)} }
	good := entry("peer/base/.gateway", `{"name":".gateway","network":"base","ip":"10.0.0.3","mac":"02:42:0a:00:00:03","node":"peer","gateway":true}`)
	if rec, err := decodeEndpoint(good); err != nil || !rec.isGateway() {
		t.Fatalf("a valid gateway record: %v (gateway %v)", err, rec.isGateway())
	}
	for what, e := range map[string]cluster.Entry{
		"aliases":          entry("peer/base/.gateway", `{"name":".gateway","network":"base","ip":"10.0.0.3","mac":"02:42:0a:00:00:03","node":"peer","gateway":true,"aliases":["x"]}`),
		"services":         entry("peer/base/.gateway", `{"name":".gateway","network":"base","ip":"10.0.0.3","mac":"02:42:0a:00:00:03","node":"peer","gateway":true,"services":[{"name":"a","id":"abababababababababababababababab","weight":1,"state":"active","health":"healthy"}]}`),
		"a container name": entry("peer/base/g", `{"name":"g","network":"base","ip":"10.0.0.3","mac":"02:42:0a:00:00:03","node":"peer","gateway":true}`),
		"another MAC":      entry("peer/base/.gateway", `{"name":".gateway","network":"base","ip":"10.0.0.3","mac":"02:42:0a:00:00:04","node":"peer","gateway":true}`),
		"not a gateway":    entry("peer/base/.gateway", `{"name":".gateway","network":"base","ip":"10.0.0.3","mac":"02:42:0a:00:00:03","node":"peer"}`),
	} {
		if _, err := decodeEndpoint(e); err == nil {
			t.Errorf("a gateway record with %s was accepted", what)
		}
	}
}

// TestMeshGatewayHostSurvivesRestart: a restarted node keeps its gateway
// host address (saved state), applies it before it rejoins, and the other
// nodes have it again as a remote.
func TestMeshGatewayHostSurvivesRestart(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	dir1, dir2 := t.TempDir(), t.TempDir()
	h1 := newNode(t, mem, "h1", netip.MustParseAddr("127.0.0.1"), newFakeSandbox(), dir1)
	t.Cleanup(h1.Close)
	key, _ := readFile(dir1 + "/cluster.key")
	writeFile(t, dir2+"/cluster.key", key)
	join := h1.cfg.Advertise.String() + ":" + fmt.Sprint(h1.cfg.GossipPort)
	h2 := startNode(t, nodeConfig(t, mem, "h2", netip.MustParseAddr("127.0.0.2"), newFakeSandbox(), dir2, join))
	if _, err := h1.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.9.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	mustCreateService(t, h1, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}})
	setPublish(t, h1, "api", []string{"published=8080,target=80,protocol=tcp,mode=ingress,client-ip=snat"})
	var a netip.Addr
	waitFor(t, "h2's gateway host address", func() bool { a = gwHostOf(h2, "web"); return a.IsValid() })
	waitFor(t, "h2's gateway on h1", func() bool { return remoteGateways(h1, "web", []netip.Addr{a}) == 1 })
	h2.Close()
	waitFor(t, "h2's gateway gone from h1", func() bool { return remoteGateways(h1, "web", []netip.Addr{a}) == 0 })

	h2 = startNode(t, nodeConfig(t, mem, "h2", netip.MustParseAddr("127.0.0.2"), newFakeSandbox(), dir2, join))
	t.Cleanup(h2.Close)
	if got := gwHostOf(h2, "web"); got != a {
		t.Fatalf("restarted h2 has gateway host address %v, want the saved %s", got, a)
	}
	if g := h2.dp.Gateway("web"); g == nil || g.HostAddr() != a {
		t.Fatalf("restarted h2's gateway has host address %v, want %s", g.HostAddr(), a)
	}
	waitFor(t, "the restarted h2's gateway on h1", func() bool { return remoteGateways(h1, "web", []netip.Addr{a}) == 1 })
	if got := gwHostOf(h2, "web"); got != a {
		t.Fatalf("restarted h2 moved to %v from %s", got, a)
	}
}

// TestGatewayDNSAskersFollowRunsAndRemovals: the resolver at a network's
// gateway names each asker by its container, after runs and an rm, and a
// sync with nothing changed leaves the askers alone.
func TestGatewayDNSAskersFollowRunsAndRemovals(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	t.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.30.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	ips := map[string]netip.Addr{}
	for _, name := range []string{"c1", "c2"} {
		ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: name, Create: true})
		ips[name] = netip.MustParseAddr(ep.IP)
	}
	resolver := func() *gatewayResolver {
		t.Helper()
		d.mu.Lock()
		defer d.mu.Unlock()
		d.syncGatewayDNS()
		r := d.gwDNS["web"]
		if r == nil {
			t.Fatal("no resolver at web's gateway")
		}
		return r
	}
	r := resolver()
	for name, ip := range ips {
		if got := r.askerOf(ip); got != name {
			t.Fatalf("asker at %s is %q, want %q", ip, got, name)
		}
	}
	from := r.from
	if !sameEndpoints(resolver().from, from) {
		t.Fatal("a sync with nothing changed made the askers again")
	}
	ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c3", Create: true})
	if got := resolver().askerOf(netip.MustParseAddr(ep.IP)); got != "c3" {
		t.Fatalf("asker at c3's address is %q after its run", got)
	}
	if err := d.RemoveContainer("c1"); err != nil {
		t.Fatal(err)
	}
	if got := resolver().askerOf(ips["c1"]); got != "" {
		t.Fatalf("asker at c1's address is %q after its rm, want none", got)
	}
	if got := resolver().askerOf(ips["c2"]); got != "c2" {
		t.Fatalf("asker at c2's address is %q after c1's rm", got)
	}
}

// TestHoldBlocksTakesBackAReleasedBlock: holdBlocks skips a network whose
// endpoints and blocks are as they were when all were held, but a block
// of an endpoint that this node no longer holds is kept again at the next
// reconcile, its endpoints unchanged.
func TestHoldBlocksTakesBackAReleasedBlock(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	t.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.30.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	ip := netip.MustParseAddr(ep.IP)
	block := func() (netip.Prefix, string) {
		b, holder, _ := holderOf(d.cl.Blocks("web"), ip)
		return b, holder
	}
	b, holder := block()
	if holder != d.cfg.Node {
		t.Fatalf("c1's block %s is held by %q, want this node", b, holder)
	}
	reconcile := d.holdBlocks
	reconcile()
	reconcile()
	if err := d.cl.ReleaseBlock("web", b); err != nil {
		t.Fatal(err)
	}
	if _, holder := block(); holder == d.cfg.Node {
		t.Fatal("the block is still held after its release")
	}
	reconcile()
	if _, holder := block(); holder != d.cfg.Node {
		t.Fatalf("after a reconcile c1's block is held by %q, want this node again", holder)
	}
}
