package daemon

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/dataplane"
	"github.com/vxmesh/vxmesh/tunnel"
)

// remoteVTEP returns the VTEP d's FDB sends mac to, or "".
func remoteVTEP(d *Daemon, network, mac string) string {
	f, _ := d.FDB(network)
	for _, e := range f {
		if e.MAC == mac {
			return e.VTEP
		}
	}
	return ""
}

// TestEndpointHijackRefused: a node publishing an endpoint with another
// node's address (and so its MAC) must not take it over, whatever the node
// names' order; the record is refused and shown as a conflict.
func TestEndpointHijackRefused(t *testing.T) {
	ds, _ := threeNodes(t)
	h1, h2, h3 := ds[0], ds[1], ds[2]
	if _, err := h1.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.3.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "web everywhere", func() bool { _, err := d.Network("web"); return err == nil })
	}
	victim := mustAttach(t, h1, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	waitFor(t, "c1 on h2", func() bool { return remoteVTEP(h2, "web", victim.MAC) == h1.cfg.Advertise.String() })

	// h3 sorts after h1: before the fix its record won on every node.
	forged, _ := json.Marshal(epRecord{Name: "evil", Network: "web", IP: victim.IP, MAC: victim.MAC, Node: "h3"})
	if err := h3.cl.Put(tblEndpoints, epKey("h3", "web", "evil"), forged); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*Daemon{h1, h2} {
		waitFor(t, "the forged record refused on "+d.cfg.Node, func() bool {
			n, _ := d.Network("web")
			return len(n.Conflicts) == 1 && strings.Contains(n.Conflicts[0], "evil@h3 "+victim.IP) && strings.Contains(n.Conflicts[0], `held by node "h1"`)
		})
		d.mu.Lock()
		d.reconcile()
		d.mu.Unlock()
		if got := d.Stats().RefusedRecords["endpoint-conflict"]; got != 1 {
			t.Errorf("%s: endpoint conflicts counted %d, want 1 (once per record version)", d.cfg.Node, got)
		}
	}
	if v := remoteVTEP(h2, "web", victim.MAC); v != h1.cfg.Advertise.String() {
		t.Fatalf("h2 sends c1's frames to %q, want h1 (%s)", v, h1.cfg.Advertise)
	}
	for _, e := range mustFDB(t, h1, "web") {
		if e.MAC == victim.MAC && e.Port == dataplane.TunnelPortName {
			t.Fatalf("h1 moved its own c1 behind the tunnel: %+v", e)
		}
	}
	n, _ := h2.Network("web")
	for _, ep := range n.Endpoints {
		if ep.Name == "evil" {
			t.Fatal("inspect lists the refused endpoint as an endpoint")
		}
	}

	// An address asked for explicitly must lie in a block this node can
	// hold: h2 cannot take one from h1's block.
	taken := netip.MustParseAddr(victim.IP).Next().Next()
	if _, err := h2.Attach(api.AttachRequest{Network: "web", Name: "c2", Create: true, IP: taken.String()}); err == nil || !strings.Contains(err.Error(), `held by node "h1"`) {
		t.Fatalf("h2 attached with an address of h1's block: %v", err)
	}
}

func mustFDB(t *testing.T, d *Daemon, network string) []api.FDBEntry {
	t.Helper()
	f, err := d.FDB(network)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestRestartedNodeHoldsItsEndpointsBlocks: after a restart a node's
// endpoints keep their addresses while its block claims of the previous
// run are gone; it claims those blocks again, so the other nodes keep
// accepting its endpoints and nobody else is handed their block.
func TestRestartedNodeHoldsItsEndpointsBlocks(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	ds, sbs := threeNodesOn(t, mem)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.3.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web on h2", func() bool { _, err := ds[1].Network("web"); return err == nil })
	ep := mustAttach(t, ds[1], api.AttachRequest{Network: "web", Name: "c2", Create: true})
	waitFor(t, "c2 on h1", func() bool { return remoteVTEP(ds[0], "web", ep.MAC) != "" })

	dir, addr, port := ds[1].cfg.StateDir, ds[1].cfg.Advertise, ds[1].cfg.GossipPort
	ds[1].Close()
	join := []string{ds[0].cfg.Advertise.String() + ":" + fmt.Sprint(ds[0].cfg.GossipPort)}
	cfg := nodeConfig(t, mem, "h2", addr, sbs[1], dir, join...)
	cfg.GossipPort = port // a restart on the same port, as in production
	d2 := startNode(t, cfg)
	t.Cleanup(d2.Close)
	block := blockOf(netip.MustParsePrefix("10.3.0.0/24"), netip.MustParseAddr(ep.IP))
	waitFor(t, "h2 holding c2's block again, seen from h1 and h3", func() bool {
		return ds[0].cl.Blocks("web")[block] == "h2" && ds[2].cl.Blocks("web")[block] == "h2"
	})
	for _, d := range []*Daemon{ds[0], ds[2]} {
		waitFor(t, "c2 accepted by "+d.cfg.Node+" after the restart", func() bool { return remoteVTEP(d, "web", ep.MAC) == addr.String() })
		if n, _ := d.Network("web"); len(n.Conflicts) > 0 {
			t.Fatalf("%s reports conflicts after h2's restart: %v", d.cfg.Node, n.Conflicts)
		}
	}
	if got := d2.Stats().RefusedRecords; len(got) > 0 {
		t.Fatalf("the restarted h2 reports refusals: %v", got)
	}
	for _, d := range []*Daemon{ds[0], ds[2]} {
		if got := d.Stats().RefusedRecords; len(got) > 0 {
			t.Errorf("%s refused records during h2's restart: %v", d.cfg.Node, got)
		}
	}
	// h3 is not handed c2's block.
	ep3 := mustAttach(t, ds[2], api.AttachRequest{Network: "web", Name: "c3", Create: true})
	if blockOf(netip.MustParsePrefix("10.3.0.0/24"), netip.MustParseAddr(ep3.IP)) == block {
		t.Fatalf("h3 got %s in h2's block %s", ep3.IP, block)
	}
}
