package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

// natState returns e's published-port NAT state from `vxmesh stats`.
func (e *env) natState() api.NATStats {
	e.t.Helper()
	var st api.Stats
	e.json(&st, "stats")
	if st.Egress.NAT == nil {
		return api.NATStats{}
	}
	return *st.Egress.NAT
}

// TestRoutingMeshNATHeedsTheInputFirewall: with the default
// --mesh-nat=auto and a re-check interval of a minute, a mode=ingress,
// client-ip=preserve port on a host without a backend (h2) is translated
// per packet while h2's namespace has no firewall; an nftables `inet
// filter input` chain dropping the outside client's TCP to port 8080,
// added in h2's namespace, removes the steering at once (the daemon is
// notified of nftables changes; the connection open through the NAT then
// is counted as cut) and the firewall holds: the client's
// connection through h2 times out, and the NAT starts no flow. Once the
// table is deleted, h2 steers again and the client's connections are
// translated by the NAT again.
func TestRoutingMeshNATHeedsTheInputFirewall(t *testing.T) {
	testenv.RequireCommand(t, "nft", "nftables")
	h2, peer := natMeshCluster(t, "10.87.0.0/24", "--kernel-tunnel-recheck", recheckSlow)
	addr := h2.h.Addr + ":8080"
	want := "b1 " + peer.Addr
	steered := func(what string) api.NATStats {
		t.Helper()
		var n api.NATStats
		eventually(t, 10*time.Second, func() error {
			n = h2.natState()
			if filters, taps := steerFilters(t, h2); n.Mode != "auto" || !n.Active || n.Ports != 1 || len(filters) != 1 || len(taps) != 1 {
				return fmt.Errorf("NAT %+v, filters %q, TAPs %v; want auto, steering one port", n, filters, taps)
			}
			return nil
		}, "h2's steering "+what)
		before := n.Total
		c, _, line := publishedLine(t, peer, addr)
		c.Close()
		if line != want {
			t.Errorf("%s: h2 answered %q, want %q", what, line, want)
		}
		if n = h2.natState(); n.Total <= before {
			t.Errorf("%s: the NAT started %d flows before the connection and %d after; want it translated", what, before, n.Total)
		}
		return n
	}
	steered("without a firewall")

	nft := func(cmd string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "exec", h2.h.Netns, "nft", cmd).CombinedOutput(); err != nil {
			t.Fatalf("nft %s in %s: %v\n%s", cmd, h2.h.Netns, err, out)
		}
	}
	// A connection open through the NAT when the firewall comes is cut:
	// counted in the stats.
	open, _, line := publishedLine(t, peer, addr)
	defer open.Close()
	if line != want {
		t.Errorf("the connection left open: h2 answered %q, want %q", line, want)
	}
	nft("add table inet filter")
	nft("add chain inet filter input { type filter hook input priority 0; }")
	nft("add rule inet filter input ip saddr " + peer.Addr + " tcp dport 8080 drop")
	var n api.NATStats
	eventually(t, 10*time.Second, func() error {
		n = h2.natState()
		if filters, taps := steerFilters(t, h2); n.Active || !strings.Contains(n.Reason, `"inet filter input" on the input hook`) || n.Cut != 1 || len(filters) != 0 || len(taps) != 0 {
			return fmt.Errorf("NAT %+v, filters %q, TAPs %v; want steering off, naming the chain, one connection cut", n, filters, taps)
		}
		return nil
	}, "h2's steering with an input firewall (well within the minute's re-check: notified)")
	if c, err := dialFrom(t, peer, "tcp4", addr); err == nil {
		c.Close()
		t.Errorf("a connection from %s to %s was accepted with h2's firewall dropping it", peer.Addr, addr)
	}
	if m := h2.natState(); m.Total != n.Total {
		t.Errorf("the NAT started %d flows with the firewall up, want none", m.Total-n.Total)
	}
	t.Logf("h2 with the firewall: NAT %+v", n)

	nft("delete table inet filter")
	n = steered("after the firewall went")
	t.Logf("h2 after the firewall went: NAT %+v", n)
}
