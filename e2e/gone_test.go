package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// TestGoneContainerStopsAnsweringAndBeingBalancedTo: a backend attached
// by --pid (a process in its own network namespace, as another runtime's
// container) is killed; its namespace goes with it. Its name stops
// resolving on the other host, its endpoint shows down, the service keeps
// answering every new connection from the backend left, and rm forgets it.
func TestGoneContainerStopsAnsweringAndBeingBalancedTo(t *testing.T) {
	needDig(t)
	es := newCluster(t, 2, "--dns-upstream", testUpstream, "--dns-timeout", "2s")
	h1, h2 := es[0], es[1]
	for _, e := range es {
		startHostUpstream(t, e.h)
	}
	h1.network("web", "10.93.0.0/24")
	h2.waitNetwork("web")
	h1.cli("service", "create", "api", "--network", "web")
	h2.waitService("api")

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
	apIP := addrOnly(h1.endpoint("ap").IP)
	h2.runBackend("b2", "web", "--service", "api")
	h2.run("client", "web")
	for _, e := range es {
		e.waitBackends("api", "ap", "b2")
	}
	h2.wantDig(10*time.Second, "client", "NOERROR", []string{apIP}, "ap")
	target := h2.vip("api", "web") + ":" + strconv.Itoa(svcPort)
	if r := h2.conns("client", target, 20, 2, 0); r.Counts["ap"] == 0 || r.Counts["b2"] == 0 || r.Errors+r.Resets != 0 {
		t.Fatalf("20 connections to the VIP before the kill: %+v, want both backends", r)
	}

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
