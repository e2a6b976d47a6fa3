package daemon

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/packet"
)

// TestStormLimitRecordAndFloodNoPeers: --storm-limit is validated, stored
// with the network (surviving a restart) and shown by inspect; a
// container's floods beyond it are dropped as "storm"; a flood on a node
// with no peer is counted under one name in stats and inspect, and not
// as an error.
func TestStormLimitRecordAndFloodNoPeers(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	d := newTestDaemon(t, sb, dir)
	for _, tc := range []struct {
		name        string
		limit, want int
	}{{"web", 0, 1000}, {"bulk", -1, -1}, {"tiny", 5, 5}} {
		n, err := d.CreateNetwork(api.NetworkCreateRequest{Name: tc.name, StormLimit: tc.limit})
		if err != nil || n.StormLimit != tc.want {
			t.Fatalf("create %s with storm limit %d: %+v, %v; want storm limit %d", tc.name, tc.limit, n, err, tc.want)
		}
	}
	for _, l := range []int{-2, maxStormLimit + 1} {
		if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "bad", StormLimit: l}); err == nil || !strings.Contains(err.Error(), "storm limit") {
			t.Errorf("storm limit %d: %v, want an error naming it", l, err)
		}
	}

	c1 := mustAttach(t, d, api.AttachRequest{Network: "tiny", Name: "c1", Create: true})
	mustAttach(t, d, api.AttachRequest{Network: "tiny", Name: "c2", Create: true})
	mac1, _ := packet.ParseMAC(c1.MAC)
	ctr1 := sb.iface("/run/netns/c1", "eth0").container
	const sent = 40
	for range sent {
		send(t, ctr1, ipv4Frame(mac1, packet.Broadcast, netip.MustParseAddr(c1.IP), netip.MustParseAddr("10.0.2.255"), []byte("flood")))
	}
	var ns api.NetworkStats
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, n := range d.Stats().Networks {
			if n.Network == "tiny" {
				ns = n
			}
		}
		// The port counts a frame when it reads it, the switch when it
		// has forwarded or dropped it: wait until all are accounted for.
		if ns.Flooded+ns.Drops["storm"] >= sent || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// 5 at once, 5 more per second.
	if storm := ns.Drops["storm"]; storm < sent/2 || ns.Flooded+storm != sent {
		t.Errorf("flooded %d, storm drops %d of %d floods; want most dropped", ns.Flooded, storm, sent)
	}
	insp, err := d.Network("tiny")
	if err != nil {
		t.Fatal(err)
	}
	if ns.FloodNoPeers == 0 || ns.FloodNoPeers != ns.Flooded || insp.FloodNoPeers != ns.FloodNoPeers {
		t.Errorf("flood without peers: stats %d (flooded %d), inspect %d; want the same non-zero count", ns.FloodNoPeers, ns.Flooded, insp.FloodNoPeers)
	}
	if ns.Drops["tx-error"] != 0 || insp.Drops["no-peer"] != 0 || insp.Drops["flood-no-peers"] != 0 {
		t.Errorf("a flood without peers counted as a drop: stats %v, inspect %v", ns.Drops, insp.Drops)
	}
	d.Close()

	d2 := newTestDaemon(t, sb, dir)
	defer d2.Close()
	for name, want := range map[string]int{"web": 1000, "bulk": -1, "tiny": 5} {
		if n, err := d2.Network(name); err != nil || n.StormLimit != want {
			t.Errorf("after restart %s: storm limit %d, %v; want %d", name, n.StormLimit, err, want)
		}
	}
}
