package e2e

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/netdev"
)

// natSteers reports whether e's daemon translates published ports per
// packet (--mesh-nat, some port steered).
func (e *env) natSteers() bool {
	e.t.Helper()
	var st api.Stats
	e.json(&st, "stats")
	return st.Egress.NAT != nil && st.Egress.NAT.Ports > 0
}

// steerFilters lists the steering filters and TAPs in e's host
// namespace: the `tc filter show dev eth0 ingress` lines of the
// steering's priorities and the links named like its TAPs.
func steerFilters(t *testing.T, e *env) (filters, taps []string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", e.h.Netns, "tc", "filter", "show", "dev", "eth0", "ingress").CombinedOutput()
	if err != nil {
		t.Fatalf("tc filter show: %v: %s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		for _, p := range netdev.SteerPriorities {
			if strings.Contains(l, fmt.Sprintf("pref %d ", p)) && strings.Contains(l, " fh ") && !strings.Contains(l, "ht divisor") {
				filters = append(filters, strings.TrimSpace(l))
			}
		}
	}
	links, err := e.h.Links()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l, netdev.SteerTAPPrefix) {
			taps = append(taps, l)
		}
	}
	return filters, taps
}

// TestRoutingMeshNAT: a mode=ingress, client-ip=preserve port on a host
// without a backend (h2) is translated per packet: the backend on h1
// sees the outside client's own address, h2's gateway opens no flow
// (its published-port flow counters stay at zero) while the port's
// counters in service inspect and the NAT's count the connections; the
// steering's filters are on h2's uplink while the port is published, one
// per host address and port, replaced (not doubled) after a kill -9 and
// restart, and gone with its TAP once the daemon stops. A connection
// open through h2 when its daemon is killed is reset at the client's next
// segment after the restart (the NAT lost the flow), not left to
// retransmit into silence.
func TestRoutingMeshNAT(t *testing.T) {
	h2, peer := natMeshCluster(t, "10.86.0.0/24", "--mesh-nat")
	addr := h2.h.Addr + ":8080"
	const n = 20
	for i := range n {
		c, _, line := publishedLine(t, peer, addr) // retried: a try that fails counts as failed
		if _, err := c.Write([]byte("hi\n")); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if want := "b1 " + peer.Addr; line != want {
			t.Fatalf("connection %d through h2 answered %q, want %q", i, line, want)
		}
	}
	var st api.Stats
	eventually(t, 10*time.Second, func() error {
		st = api.Stats{}
		h2.json(&st, "stats")
		if nat := st.Egress.NAT; nat == nil || nat.Open != 0 {
			return fmt.Errorf("NAT %+v: want no connection open", nat)
		}
		return nil
	}, "h2's NAT after the connections closed")
	if eg := st.Egress; eg.IngressTotal != 0 || eg.IngressTCP != 0 || eg.NAT.Total < n || eg.NAT.Ports != 1 {
		t.Errorf("h2: the gateway opened %d published flows (want 0), the NAT started %d (want >= %d) on %d ports (want 1)", eg.IngressTotal, eg.NAT.Total, n, eg.NAT.Ports)
	}
	var port api.ServicePublishState
	for _, p := range h2.service("api").PublishState {
		if p.Node == h2.h.Name && strings.HasPrefix(p.Published, "published=8080,") {
			port = p
		}
	}
	if port.Total-port.Failed < n || port.Active != 0 || port.BytesIn < 3*n || port.BytesOut < uint64(n*len("b1 "+peer.Addr+"\n")) {
		t.Errorf("service inspect on h2, port 8080: %+v; want >= %d flows that did not fail, none open, >= %d bytes in and a line per flow out", port, n, 3*n)
	}
	t.Logf("h2's port 8080: %d flows, %d failed (tries publishedLine retried); NAT %+v", port.Total, port.Failed, *st.Egress.NAT)

	filters, taps := steerFilters(t, h2)
	if len(filters) != 1 || len(taps) != 1 {
		t.Fatalf("h2 steers with filters %q and TAPs %v; want one filter (one address, one port) and one TAP", filters, taps)
	}
	held, heldR, _ := publishedLine(t, peer, addr)
	defer held.Close()
	if err := h2.h.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	if filters, _ := steerFilters(t, h2); len(filters) != 1 {
		t.Fatalf("after kill -9 %d filters, want the dead daemon's one left", len(filters))
	}
	if err := h2.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	h2.waitPublishState("api", h2.h.Name, "published=8080,", "up")
	eventually(t, 10*time.Second, func() error {
		if filters, taps := steerFilters(t, h2); len(filters) != 1 || len(taps) != 1 {
			return fmt.Errorf("filters %q, TAPs %v", filters, taps)
		}
		return nil
	}, "h2's steering after a restart")
	if _, err := held.Write([]byte("hi\n")); err != nil {
		t.Fatal(err)
	}
	held.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := heldR.ReadString('\n'); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("a connection open across h2's restart read %q, %v; want a reset", line, err)
	}
	c, _, line := publishedLine(t, peer, addr)
	c.Close()
	if want := "b1 " + peer.Addr; line != want {
		t.Errorf("after the restart h2 answered %q, want %q", line, want)
	}
	if err := h2.h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if filters, taps := steerFilters(t, h2); len(filters) != 0 || len(taps) != 0 {
		t.Errorf("after the daemon stopped: filters %q, TAPs %v; want none", filters, taps)
	}
}

// natMeshCluster starts two hosts with daemon flags, network web (subnet)
// and service api publishing 8080 -> 7000 with one backend, b1, on h1,
// and an outside client on the underlay; it returns h2 (the ingress host
// without a backend) and the client once both hosts balance to b1 and
// have the port up.
func natMeshCluster(t *testing.T, subnet string, flags ...string) (*env, *testbed.UnderlayPeer) {
	t.Helper()
	es := newCluster(t, 2, flags...)
	h1, h2 := es[0], es[1]
	peer, err := h1.tb.AddUnderlayPeer("client")
	if err != nil {
		t.Fatal(err)
	}
	h1.network("web", subnet)
	h2.waitNetwork("web")
	h1.cli("service", "create", "api", "--network", "web", "--port", "7000", "--publish", "8080:7000")
	h2.waitService("api")
	h1.meshBackend("b1", "web", "api", "serve")
	for _, e := range es {
		e.waitBackends("api", "b1")
		e.waitPublishState("api", e.h.Name, "published=8080,", "up")
	}
	return h2, peer
}
