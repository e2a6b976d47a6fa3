package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// runCheckedBackend is runBackend with the serve helper's HTTP health
// endpoint on svcPort+1, which fails while the file it returns exists.
func (e *env) runCheckedBackend(name, network, dir string, extra ...string) (backend, string) {
	e.t.Helper()
	file := filepath.Join(dir, name+"-unhealthy")
	args := append([]string{"run", "-d", "--network", network, "--name", name}, extra...)
	e.cli(append(args, "--", suite.self, helperArg, "serve", name, strconv.Itoa(svcPort), file)...)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, p := range []int{svcPort, svcPort + 1} {
		if err := testbed.WaitTCPListen(ctx, e.h.ContainerNetnsPath(name), p); err != nil {
			e.t.Fatalf("backend %s on %s: port %d: %v", name, e.h.Name, p, err)
		}
	}
	return backend{e, name}, file
}

// waitHealth waits until `service ps` on e shows container's health as
// want, and returns that backend.
func (e *env) waitHealth(service, container, want string) api.ServiceBackend {
	e.t.Helper()
	var got api.ServiceBackend
	eventually(e.t, 10*time.Second, func() error {
		var bs []api.ServiceBackend
		if err := e.h.CLIJSON(&bs, "service", "ps", service); err != nil {
			return err
		}
		for _, b := range bs {
			if b.Container == container {
				got = b
				if b.Health == want {
					return nil
				}
				return fmt.Errorf("health %s (%s), want %s", b.Health, b.HealthReason, want)
			}
		}
		return fmt.Errorf("%s is no backend", container)
	}, "service ps %s on %s: %s", service, e.h.Name, container)
	return got
}

// TestServiceHealthCheckEjectsAndRestores: a backend whose HTTP check
// fails is seen unhealthy on every host, gets no new connections and
// leaves tasks.NAME; when its check passes again it comes back.
func TestServiceHealthCheckEjectsAndRestores(t *testing.T) {
	needDig(t)
	es := newCluster(t, 2)
	h1, h2 := es[0], es[1]
	h1.network("web", "10.86.0.0/24")
	h2.waitNetwork("web")
	// Checks every 500 ms: unhealthy after 3 failures, back after 2
	// passes (the defaults), so each flip shows within seconds.
	h1.cli("service", "create", "hc", "--network", "web", "--health-http", ":8081/health interval=500ms")
	h2.waitService("hc")
	dir := t.TempDir()
	b1, _ := h1.runCheckedBackend("b1", "web", dir, "--service", "hc")
	b2, flip := h2.runCheckedBackend("b2", "web", dir, "--service", "hc")
	b3, _ := h2.runCheckedBackend("b3", "web", dir, "--service", "hc")
	h1.run("client", "web")
	for _, e := range es {
		e.waitBackends("hc", "b1", "b2", "b3")
	}
	target := h1.vip("hc", "web") + ":" + strconv.Itoa(svcPort)
	tasks := func(want ...backend) {
		t.Helper()
		ips := ipsOf(want...)
		eventually(t, 10*time.Second, func() error {
			if got := h1.digShort("client", "tasks.hc"); !slices.Equal(got, ips) {
				return fmt.Errorf("answers %v, want %v", got, ips)
			}
			return nil
		}, "dig tasks.hc")
	}
	tasks(b1, b2, b3)

	// b2's check fails: every host sees it unhealthy, its host with the
	// reason; no new connection reaches it and DNS drops it.
	if err := os.WriteFile(flip, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, e := range es {
		b := e.waitHealth("hc", "b2", "unhealthy")
		if e == h2 && b.HealthReason != "http 503" {
			t.Errorf("service ps on b2's host: reason %q, want http 503", b.HealthReason)
		}
	}
	t.Logf("b2 unhealthy on both hosts %s after its check started failing", time.Since(start).Round(10*time.Millisecond))
	r := h1.conns("client", target, 300, 8, 0)
	if r.Errors+r.Resets != 0 || r.Counts["b2"] != 0 || r.Counts["b1"] == 0 || r.Counts["b1"]+r.Counts["b3"] != 300 {
		t.Errorf("300 connections with b2 unhealthy: %v, %d errors (%s), %d resets; want all to b1 and b3", r.Counts, r.Errors, r.FirstErr, r.Resets)
	}
	tasks(b1, b3)

	// It passes again: back everywhere.
	if err := os.Remove(flip); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for _, e := range es {
		e.waitHealth("hc", "b2", "healthy")
	}
	t.Logf("b2 healthy on both hosts %s after its check passed again", time.Since(start).Round(10*time.Millisecond))
	r = h1.conns("client", target, 300, 8, 0)
	if r.Errors+r.Resets != 0 || r.Counts["b1"] != 100 || r.Counts["b2"] != 100 || r.Counts["b3"] != 100 {
		t.Errorf("300 connections with b2 healthy again: %v, %d errors (%s), %d resets; want 100 each", r.Counts, r.Errors, r.FirstErr, r.Resets)
	}
	tasks(b1, b2, b3)
}
