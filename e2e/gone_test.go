package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// twoHostsWithAPI starts two hosts that resolve names (with dig) and
// forward the rest to the test upstream, and makes network web on subnet
// with service api on it.
func twoHostsWithAPI(t *testing.T, subnet string) []*env {
	t.Helper()
	needDig(t)
	es := newCluster(t, 2, "--dns-upstream", testUpstream, "--dns-timeout", "2s")
	for _, e := range es {
		startHostUpstream(t, e.h)
	}
	es[0].network("web", subnet)
	es[1].waitNetwork("web")
	es[0].cli("service", "create", "api", "--network", "web")
	es[1].waitService("api")
	return es
}

// withB2AndClient runs backend b2 of api and container client on the
// second host of es, waits until both hosts balance api to name (a
// backend on the first) and b2 and client resolves name, checks that 20
// connections to api's VIP reach both, and returns the VIP's address and
// port.
func withB2AndClient(t *testing.T, es []*env, name string) string {
	t.Helper()
	h1, h2 := es[0], es[1]
	ip := addrOnly(h1.endpoint(name).IP)
	h2.runBackend("b2", "web", "--service", "api")
	h2.run("client", "web")
	for _, e := range es {
		e.waitBackends("api", name, "b2")
	}
	h2.wantDig(10*time.Second, "client", "NOERROR", []string{ip}, name)
	target := h2.vip("api", "web") + ":" + strconv.Itoa(svcPort)
	if r := h2.conns("client", target, 20, 2, 0); r.Counts[name] == 0 || r.Counts["b2"] == 0 || r.Errors+r.Resets != 0 {
		t.Fatalf("20 connections to the VIP: %+v, want both %s and b2", r, name)
	}
	return target
}

// TestGoneContainerStopsAnsweringAndBeingBalancedTo: a backend attached
// by --pid (a process in its own network namespace, as another runtime's
// container) is killed; its namespace goes with it. Its name stops
// resolving on the other host, its endpoint shows down, the service keeps
// answering every new connection from the backend left, and rm forgets it.
func TestGoneContainerStopsAnsweringAndBeingBalancedTo(t *testing.T) {
	es := twoHostsWithAPI(t, "10.93.0.0/24")
	h1, h2 := es[0], es[1]

	// ap: the serve helper in a namespace of its own, attached by PID.
	proc := startBackground(t, exec.Command("unshare", "--net", suite.self, helperArg, "serve", "ap", strconv.Itoa(svcPort)))
	pid := proc.cmd.Process.Pid
	nsPath := fmt.Sprintf("/proc/%d/ns/net", pid)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := testbed.WaitTCPListen(ctx, nsPath, svcPort); err != nil {
		t.Fatalf("serve helper in its namespace: %v\n%s", err, proc.out.String())
	}
	h1.cli("attach", "--network", "web", "--name", "ap", "--pid", strconv.Itoa(pid), "--service", "api")
	target := withB2AndClient(t, es, "ap")

	if err := proc.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-proc.done

	// Withdrawn everywhere within a few seconds (a check a second, then
	// the cluster's gossip): the name answers NXDOMAIN, as after rm.
	took := h2.wantDig(10*time.Second, "client", "NXDOMAIN", nil, "ap")
	t.Logf("ap stopped resolving on h2 %v after its process was killed", took.Round(10*time.Millisecond))
	for _, e := range es {
		e.waitBackends("api", "b2")
	}
	if got := psStatus(h1, "ap"); got != "gone" {
		t.Errorf("ps STATUS of ap = %q, want gone", got)
	}
	if st := h1.endpoint("ap").State; st != "down: namespace gone" {
		t.Errorf("endpoint ls: ap is %q, want down: namespace gone", st)
	}
	// Every new connection is answered, by the backend left.
	if r := h2.conns("client", target, 40, 2, 0); r.Counts["b2"] != 40 || r.Errors+r.Resets != 0 {
		t.Errorf("40 connections to the VIP after the kill: %+v, want all answered by b2", r)
	}
	for _, e := range es {
		var bs []api.ServiceBackend
		e.json(&bs, "service", "ps", "api")
		for _, b := range bs {
			if b.Container == "ap" {
				t.Errorf("service ps api on %s still lists ap: %+v", e.h.Name, b)
			}
		}
	}

	h1.cli("rm", "ap")
	if h1.hasEndpoint("ap") {
		t.Error("ap still has an endpoint after rm")
	}
	if _, ok := h1.container("ap"); ok {
		t.Error("ap still listed after rm")
	}
}

// TestExitedContainerStopsAnsweringAndBeingBalancedTo: the main process
// of a backend made by run -d exits (killed: 137). As Docker withdraws a
// stopped container, its name stops resolving on the other host, it
// leaves tasks.SERVICE and every balancer (every new connection reaches
// the backend left, with no error), ps still lists it exited with its
// address until rm, and exec into it is refused.
func TestExitedContainerStopsAnsweringAndBeingBalancedTo(t *testing.T) {
	es := twoHostsWithAPI(t, "10.94.0.0/24")
	h1, h2 := es[0], es[1]

	h1.runBackend("ex", "web", "--service", "api")
	exIP := addrOnly(h1.endpoint("ex").IP)
	target := withB2AndClient(t, es, "ex")
	b2IP := addrOnly(h2.endpoint("b2").IP)

	c, _ := h1.container("ex")
	if len(c.PIDs) != 1 {
		t.Fatalf("ps ex: %+v, want its one process", c)
	}
	if err := syscall.Kill(c.PIDs[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}

	took := h2.wantDig(10*time.Second, "client", "NXDOMAIN", nil, "ex")
	t.Logf("ex stopped resolving on h2 %v after its main process was killed", took.Round(10*time.Millisecond))
	h2.wantDig(5*time.Second, "client", "NOERROR", []string{b2IP}, "tasks.api")
	for _, e := range es {
		e.waitBackends("api", "b2")
	}
	if r := h2.conns("client", target, 40, 2, 0); r.Counts["b2"] != 40 || r.Errors+r.Resets != 0 {
		t.Errorf("40 connections to the VIP after the exit: %+v, want all answered by b2", r)
	}
	if got := psStatus(h1, "ex"); got != "exited 137" {
		t.Errorf("ps STATUS of ex = %q, want exited 137", got)
	}
	if ep := h1.endpoint("ex"); ep.State != "down: container exited" || addrOnly(ep.IP) != exIP {
		t.Errorf("endpoint ls: ex is %q at %s, want down: container exited at %s", ep.State, ep.IP, exIP)
	}
	_, err := h1.h.CLI("exec", "ex", "--", "true")
	if err == nil || !strings.Contains(err.Error(), `container "ex" is not running (exited 137`) {
		t.Errorf("exec into the exited ex: %v, want it refused as not running", err)
	}

	h1.cli("rm", "ex")
	if _, ok := h1.container("ex"); ok {
		t.Error("ex still listed after rm")
	}
}
