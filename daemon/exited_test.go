package daemon

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// TestExitedContainerIsWithdrawnUntilItStartsAgain: a container made by
// run whose main process exited, with no process left, stops being a
// name, a task and a backend on every host and closes its published port
// at once (as Docker does for a stopped container), shows exited with its
// address kept, stays so across a restart of its daemon, is published
// again when a main process is reported started in it, and is removed by
// rm without a drain. A main process that exits leaving others running
// is withdrawn when they are gone.
func TestExitedContainerIsWithdrawnUntilItStartsAgain(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	up := nxUpstream(t)
	p := newDNSPair(t, mem, up)
	h1, h2, sb1 := p.h1, p.h2, p.sb1
	if _, err := h1.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.9.6.0/24"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the network on h2", func() bool { _, err := h2.Network("web"); return err == nil })
	mustCreateService(t, h1, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}, StopGracePeriod: "10m"})
	waitFor(t, "the service on h2", func() bool { _, err := h2.Service("api"); return err == nil })

	port := freeTCPPort(t)
	x := mustAttach(t, h1, api.AttachRequest{Network: "web", Name: "x", Create: true, Aliases: []string{"xa"},
		Services: []api.ServiceMember{{Name: "api"}}, Publish: []string{fmt.Sprintf("127.0.0.1:%d:80", port)}})
	b := mustAttach(t, h2, api.AttachRequest{Network: "web", Name: "b", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	mustAttach(t, h2, api.AttachRequest{Network: "web", Name: "client", Create: true})
	r := p.sb2.addr("/run/netns/client")
	sb1.setPIDs(x.Netns, 4242)
	if err := h1.SetMainProcess("x", api.MainProcess{PID: 4242}); err != nil {
		t.Fatal(err)
	}
	both := []string{x.IP, b.IP}
	slices.Sort(both)
	published := func(when string) {
		t.Helper()
		for _, d := range []*Daemon{h1, h2} {
			waitFor(t, when+": "+d.cfg.Node+" balancing to x and b", func() bool { return slices.Equal(backendIPs(d, "web"), both) })
		}
		for _, name := range []string{"x", "xa", "tasks.api"} {
			waitFor(t, when+": "+name+" resolving to x on h2", func() bool {
				_, got := ask(t, r, name, mdns.TypeA)
				return slices.Contains(got, x.IP)
			})
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err != nil {
			t.Errorf("%s: x's published port: %v", when, err)
		} else {
			c.Close()
		}
	}
	published("running")

	// Leaving a process behind, the exit withdraws nothing yet: ps says
	// running.
	sb1.setPIDs(x.Netns, 4243)
	zero := 0
	if err := h1.SetMainProcess("x", api.MainProcess{PID: 4242, ExitStatus: &zero}); err != nil {
		t.Fatal(err)
	}
	if c := status(t, h1, "x"); c.Status != api.StatusRunning {
		t.Fatalf("exited leaving a process: ps %q, want running", c.Status)
	}
	if got := backendIPs(h1, "web"); !slices.Equal(got, both) {
		t.Fatalf("exited leaving a process: h1 balances to %v, want both", got)
	}
	sb1.setPIDs(x.Netns) // the process it left is gone too

	withdrawn := func(when string) {
		t.Helper()
		for _, name := range []string{"x", "xa", "x.web"} {
			waitFor(t, when+": "+name+" to stop resolving on h2", func() bool {
				rcode, got := ask(t, r, name, mdns.TypeA)
				return rcode == "NXDOMAIN" && len(got) == 0
			})
		}
		if rcode, got := ask(t, r, reverse(x.IP), mdns.TypePTR); rcode != "NXDOMAIN" || len(got) != 0 {
			t.Errorf("%s: PTR of x's address on h2: %s %v, want NXDOMAIN", when, rcode, got)
		}
		waitFor(t, when+": tasks.api without x on h2", func() bool {
			_, got := ask(t, r, "tasks.api", mdns.TypeA)
			return slices.Equal(got, []string{b.IP})
		})
		for _, d := range []*Daemon{h1, h2} {
			waitFor(t, when+": "+d.cfg.Node+" balancing to b only", func() bool { return slices.Equal(backendIPs(d, "web"), []string{b.IP}) })
		}
		c := status(t, h1, "x")
		if c.Status != "exited 0" || len(c.Endpoints) != 1 || c.Endpoints[0].IP != x.IP || c.Endpoints[0].State != downExited ||
			len(c.Endpoints[0].Published) != 1 || c.Endpoints[0].Published[0].State != downExited {
			t.Errorf("%s: ps x: %+v, want exited 0 with its address, its endpoint and port %q", when, c, downExited)
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			c.Close()
			t.Errorf("%s: x's published port still accepts", when)
		}
		ns, err := h1.ContainerNamespace("x")
		if err != nil || ns.Status != "exited 0" {
			t.Errorf("%s: the namespace look-up (exec): %+v, %v; want exited 0", when, ns, err)
		}
	}
	withdrawn("after the processes left")
	// Its address stays reserved until rm.
	if other := mustAttach(t, h1, api.AttachRequest{Network: "web", Name: "other", Create: true}); other.IP == x.IP {
		t.Errorf("x's address %s was handed out again before rm", x.IP)
	}
	// A process entering its namespace some other way starts nothing.
	sb1.setPIDs(x.Netns, 5000)
	if c := status(t, h1, "x"); c.Status != "exited 0" {
		t.Errorf("a process in a stopped container's namespace: ps %q, want exited 0", c.Status)
	}
	sb1.setPIDs(x.Netns)

	// A restart keeps it withdrawn.
	p.h1 = h1
	h1 = restartKeepsWithdrawn(t, mem, &p, up, r, "x", b.IP)
	withdrawn("after a restart")

	// Started again (the restart kept no main process: a new one), it is
	// published again.
	sb1.setPIDs(x.Netns, 6000)
	if err := h1.SetMainProcess("x", api.MainProcess{PID: 6000}); err != nil {
		t.Fatal(err)
	}
	published("started again")
	if c := status(t, h1, "x"); c.Status != api.StatusRunning || c.Endpoints[0].State == downExited {
		t.Errorf("started again: ps x %+v, want running and its endpoint up", c)
	}

	// The exit of a main process started before a restart is taken
	// after it: the daemon saved the main process when it stopped.
	y := mustAttach(t, h1, api.AttachRequest{Network: "web", Name: "y", Create: true})
	sb1.setPIDs(y.Netns, 7000)
	if err := h1.SetMainProcess("y", api.MainProcess{PID: 7000}); err != nil {
		t.Fatal(err)
	}
	h1 = restartH1(t, mem, &p, up)
	sb1.setPIDs(y.Netns)
	one := 1
	if err := h1.SetMainProcess("y", api.MainProcess{PID: 7000, ExitStatus: &one}); err != nil {
		t.Fatalf("the exit of the main process started before a restart: %v", err)
	}
	if c := status(t, h1, "y"); c.Status != "exited 1" || c.Endpoints[0].State != downExited {
		t.Errorf("after the exit: ps y %+v, want exited 1 and its endpoint %q", c, downExited)
	}
	sb1.setPIDs(x.Netns)
	if err := h1.SetMainProcess("x", api.MainProcess{PID: 6000, ExitStatus: &zero}); err != nil {
		t.Fatal(err)
	}

	rmWithoutDrain(t, h1, "x")
	if _, err := h1.Container("x"); err == nil {
		t.Error("x still listed after rm")
	}
}

// TestExitRecheckBacksOff: a container whose main process left others
// running is looked at again after 1 s, then twice as long each time, up
// to 32 s: a daemonized server costs a scan of the host's processes every
// 32 s, not every second.
func TestExitRecheckBacksOff(t *testing.T) {
	now := time.Unix(1000, 0)
	var r exitRecheck
	if !r.due(now) {
		t.Fatal("a first check is not due at once")
	}
	var got []time.Duration
	for range 8 {
		r = r.next(now)
		if r.due(now) || !r.due(now.Add(r.every)) {
			t.Fatalf("%+v due at the wrong time from %v", r, now)
		}
		got = append(got, r.at.Sub(now))
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 32, 32}
	for i := range want {
		want[i] *= time.Second
	}
	if !slices.Equal(got, want) {
		t.Errorf("intervals %v, want %v", got, want)
	}
}

// TestExitOfUnknownMainProcessIsTaken: a container whose main process
// the daemon does not know (its start was reported to a daemon killed
// before it saved it, or to a version that saved none) is stopped by the
// exit its monitor reports, instead of staying up and a backend; that
// PID is its main process then, so another exit changes nothing.
func TestExitOfUnknownMainProcessIsTaken(t *testing.T) {
	d, sb := newServiceDaemon(t)
	ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	sb.setPIDs(ep.Netns, 4242)
	if c := status(t, d, "c1"); c.Status != api.StatusRunning {
		t.Fatalf("with a process, none reported: %+v, want running", c)
	}
	sb.setPIDs(ep.Netns)
	three, four := 3, 4
	if err := d.SetMainProcess("c1", api.MainProcess{PID: 4242, ExitStatus: &three}); err != nil {
		t.Fatalf("the exit of a main process the daemon did not know: %v", err)
	}
	if c := status(t, d, "c1"); c.Status != "exited 3" || c.Endpoints[0].State != downExited {
		t.Errorf("after the exit: %+v, want exited 3 and its endpoint %q", c, downExited)
	}
	if got := backendIPs(d, "web"); len(got) != 0 {
		t.Errorf("after the exit: balancing to %v, want nothing", got)
	}
	if err := d.SetMainProcess("c1", api.MainProcess{PID: 5000, ExitStatus: &four}); err == nil || !strings.Contains(err.Error(), "not its main process") {
		t.Errorf("another exit for the stopped container: %v, want refused", err)
	}
	if c := status(t, d, "c1"); c.Status != "exited 3" {
		t.Errorf("after another exit: %+v, want exited 3", c)
	}
}

// TestPsNeverShowsExitedWhileBalanced: once the processes a daemonized
// main process left are gone, the ps that first sees it "exited" has
// withdrawn it too, not up to 32 s later at its next recheck: no
// "exited 0" container still balanced to.
func TestPsNeverShowsExitedWhileBalanced(t *testing.T) {
	d, sb := newServiceDaemon(t)
	for _, name := range []string{"a", "b"} {
		ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: name, Create: true, Services: []api.ServiceMember{{Name: "api"}}})
		sb.setPIDs(ep.Netns, 4242, 4243)
		if err := d.SetMainProcess(name, api.MainProcess{PID: 4242}); err != nil {
			t.Fatal(err)
		}
		zero := 0
		sb.setPIDs(ep.Netns, 4243) // the server it left runs on
		if err := d.SetMainProcess(name, api.MainProcess{PID: 4242, ExitStatus: &zero}); err != nil {
			t.Fatal(err)
		}
		if got := backendIPs(d, "web"); !slices.Contains(got, ep.IP) {
			t.Fatalf("%s left a process running: balancing to %v, want it too", name, got)
		}
		sb.setPIDs(ep.Netns) // and it is gone
	}
	// b through the one-container look-up, a through the list.
	if c := status(t, d, "b"); c.Status != "exited 0" || c.Endpoints[0].State != downExited {
		t.Errorf("ps b: %+v, want exited 0 and its endpoint %q", c, downExited)
	}
	for _, c := range d.Containers() {
		if c.Status != "exited 0" || c.Endpoints[0].State != downExited {
			t.Errorf("ps: %+v, want exited 0 and its endpoint %q", c, downExited)
		}
	}
	if got := backendIPs(d, "web"); len(got) != 0 {
		t.Errorf("ps says exited: balancing to %v, want nothing", got)
	}
}

// newServiceDaemon is one daemon with network web and service api on it;
// it is closed when the test ends.
func newServiceDaemon(t *testing.T) (*Daemon, *fakeSandbox) {
	t.Helper()
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	t.Cleanup(func() { d.Close() })
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}})
	return d, sb
}
