package daemon

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// vanishNetns makes the namespace at path gone, as the exit of the last
// process of an attach --pid namespace (/proc/PID/ns/net) or `ip netns
// del` does: its path no longer names it. The device stays open, as the
// daemon's TAP does (its descriptor holds the namespace).
func (f *fakeSandbox) vanishNetns(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ns, path)
}

// backendIPs returns the backends' addresses of the balancer services of
// network in d's desired data plane.
func backendIPs(d *Daemon, network string) []string {
	var out []string
	for _, s := range desiredServices(d, network) {
		for _, b := range s.Backends {
			out = append(out, b.IP.String())
		}
	}
	slices.Sort(out)
	return out
}

// TestGoneNamespaceIsWithdrawnEverywhere: a container whose namespace is
// gone stops being a name and a backend on every host, shows its endpoint
// down, stays withdrawn across a restart of its daemon and is still
// removed by rm.
func TestGoneNamespaceIsWithdrawnEverywhere(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	up := nxUpstream(t)
	p := newDNSPair(t, mem, up)
	h1, h2, sb1, sb2 := p.h1, p.h2, p.sb1, p.sb2
	if _, err := h1.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.9.7.0/24"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the network on h2", func() bool { _, err := h2.Network("web"); return err == nil })
	mustCreateService(t, h1, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}, StopGracePeriod: "10m"})
	waitFor(t, "the service on h2", func() bool { _, err := h2.Service("api"); return err == nil })

	// ap: a namespace another runtime made (attach --pid), a backend.
	const apNs = "/proc/4242/ns/net"
	sb1.addNetns(apNs)
	ap := mustAttach(t, h1, api.AttachRequest{Network: "web", Name: "ap", Netns: apNs, Aliases: []string{"apx"}, Services: []api.ServiceMember{{Name: "api"}}})
	b := mustAttach(t, h2, api.AttachRequest{Network: "web", Name: "b", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	mustAttach(t, h2, api.AttachRequest{Network: "web", Name: "client", Create: true})
	r := sb2.addr("/run/netns/client")
	both := []string{ap.IP, b.IP}
	slices.Sort(both)
	for _, d := range []*Daemon{h1, h2} {
		waitFor(t, d.cfg.Node+" balancing to ap and b", func() bool { return slices.Equal(backendIPs(d, "web"), both) })
	}
	waitFor(t, "ap in client's resolver", func() bool {
		_, got := ask(t, r, "ap", mdns.TypeA)
		return slices.Equal(got, []string{ap.IP})
	})

	sb1.vanishNetns(apNs)

	for _, name := range []string{"ap", "apx", "ap.web"} {
		waitFor(t, name+" to stop resolving on h2", func() bool {
			rcode, got := ask(t, r, name, mdns.TypeA)
			return rcode == "NXDOMAIN" && len(got) == 0
		})
	}
	if rcode, got := ask(t, r, reverse(ap.IP), mdns.TypePTR); rcode != "NXDOMAIN" || len(got) != 0 {
		t.Errorf("PTR of ap's address on h2: %s %v, want NXDOMAIN", rcode, got)
	}
	for _, d := range []*Daemon{h1, h2} {
		waitFor(t, d.cfg.Node+" balancing to b only", func() bool { return slices.Equal(backendIPs(d, "web"), []string{b.IP}) })
	}
	if s, _ := h2.Service("api"); len(s.Backends) != 1 || s.Backends[0].IP != b.IP {
		t.Errorf("service inspect on h2: backends %+v, want b only", s.Backends)
	}
	checkGone := func(when string) {
		t.Helper()
		c, err := h1.Container("ap")
		if err != nil {
			t.Fatalf("%s: ps ap: %v", when, err)
		}
		if c.Status != api.StatusGone || len(c.Endpoints) != 1 || c.Endpoints[0].IP != ap.IP {
			t.Errorf("%s: ps ap: %+v, want gone with its address", when, c)
		}
		for _, ep := range h1.Endpoints() {
			if ep.Name == "ap" && ep.State != downNetnsGone && !strings.HasPrefix(ep.State, downNetnsGone+": ") {
				t.Errorf("%s: endpoint ls: ap is %q, want %q", when, ep.State, downNetnsGone)
			}
		}
	}
	checkGone("after the namespace went")
	// Its address stays reserved until rm.
	if other := mustAttach(t, h1, api.AttachRequest{Network: "web", Name: "other", Create: true}); other.IP == ap.IP {
		t.Errorf("ap's address %s was handed out again before rm", ap.IP)
	}

	// A restart keeps it withdrawn: h1 does not announce it again.
	p.h1 = h1
	h1 = restartKeepsWithdrawn(t, mem, &p, up, r, "ap", b.IP)
	checkGone("after a restart")

	rmWithoutDrain(t, h1, "ap")
	if _, err := h1.Container("ap"); err == nil {
		t.Error("ap still listed after rm")
	}
}

// restartH1 restarts p's h1 with its state, joining h2, and returns it.
func restartH1(t *testing.T, mem *tunnel.MemNetwork, p *dnsPair, up netip.AddrPort) *Daemon {
	t.Helper()
	p.h1.Close()
	p.h1 = newDNSNode(t, mem, "h1", netip.MustParseAddr("127.0.0.1"), p.sb1, p.dir1, []netip.AddrPort{up},
		fmt.Sprintf("127.0.0.2:%d", p.h2.cfg.GossipPort))
	return p.h1
}

// restartKeepsWithdrawn restarts p's h1 and checks that it does not
// announce withdrawn container name again: for two reconcile intervals
// (for a republished record to come back) after h2 heard from the new h1
// (a container "late" attached after the restart resolves in h2's
// resolver r), name answers NXDOMAIN in r and h2 balances to left only.
// It returns the new h1.
func restartKeepsWithdrawn(t *testing.T, mem *tunnel.MemNetwork, p *dnsPair, up netip.AddrPort, r, name, left string) *Daemon {
	t.Helper()
	h1 := restartH1(t, mem, p, up)
	late := mustAttach(t, h1, api.AttachRequest{Network: "web", Name: "late", Create: true})
	waitFor(t, "late in client's resolver", func() bool {
		_, got := ask(t, r, "late", mdns.TypeA)
		return slices.Equal(got, []string{late.IP})
	})
	for deadline := time.Now().Add(2 * reconcileInterval); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if rcode, got := ask(t, r, name, mdns.TypeA); rcode != "NXDOMAIN" || len(got) != 0 {
			t.Fatalf("after h1 restarted, %s resolves on h2 again: %s %v", name, rcode, got)
		}
		if got := backendIPs(p.h2, "web"); !slices.Equal(got, []string{left}) {
			t.Fatalf("after h1 restarted, h2 balances to %v, want %s only", got, left)
		}
	}
	return h1
}

// rmWithoutDrain removes withdrawn container name from d, which must not
// drain it: a drained backend would hold rm for its services' stop grace
// period (the tests give 10 minutes).
func rmWithoutDrain(t *testing.T, d *Daemon, name string) {
	t.Helper()
	rm := make(chan error, 1)
	go func() { rm <- d.RemoveContainer(name) }()
	var rmErr error
	waitFor(t, "rm of "+name, func() bool {
		select {
		case rmErr = <-rm:
			return true
		default:
			return false
		}
	})
	if rmErr != nil {
		t.Fatal(rmErr)
	}
}

// TestGoneNamespacesInodeServesANewNamespace: once a container's
// namespace is gone the kernel may give its inode number to the next
// namespace made; attaching that one under another name works (it is not
// the gone container's), and the gone container is still gone.
func TestGoneNamespacesInodeServesANewNamespace(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.9.8.0/24"}); err != nil {
		t.Fatal(err)
	}
	const oldNs, newNs = "/proc/4242/ns/net", "/proc/5151/ns/net"
	sb.addNetns(oldNs)
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "ap", Netns: oldNs})
	sb.mu.Lock()
	ino := sb.ns[oldNs]
	sb.mu.Unlock()
	sb.vanishNetns(oldNs)
	waitFor(t, "ap's endpoint down: namespace gone", func() bool {
		for _, ep := range d.Endpoints() {
			if ep.Name == "ap" && ep.State == downNetnsGone {
				return true
			}
		}
		return false
	})

	sb.mu.Lock()
	sb.ns[newNs] = ino // the freed inode number, handed out again
	sb.mu.Unlock()
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "bp", Netns: newNs}); err != nil {
		t.Fatalf("attach of a new namespace that has a gone one's inode number: %v", err)
	}
	// The gone container's name is not reusable until rm, and says so,
	// on its network or another.
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "db", Subnet: "10.9.9.0/24"}); err != nil {
		t.Fatal(err)
	}
	for _, network := range []string{"web", "db"} {
		_, err := d.Attach(api.AttachRequest{Network: network, Name: "ap", Netns: newNs})
		if err == nil || !strings.Contains(err.Error(), "namespace "+oldNs+" is gone") || !strings.Contains(err.Error(), "vxmesh rm") {
			t.Errorf("attach of gone ap to %s: %v; want it said gone, with rm", network, err)
		}
	}
	if c, err := d.Container("ap"); err != nil || c.Status != api.StatusGone {
		t.Errorf("ps ap after bp's attach: %+v, %v; want gone", c, err)
	}
	if c, err := d.Container("bp"); err != nil || c.Status == api.StatusGone {
		t.Errorf("ps bp: %+v, %v; want it there", c, err)
	}
}
