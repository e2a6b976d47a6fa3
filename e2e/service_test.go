package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// The tests in this file drive services through the CLI on three
// namespace hosts: backends run the serve helper (svchelper_test.go),
// which answers every connection with its own name and the address the
// connection came from.

// svcPort is the port every backend serves on.
const svcPort = 8080

// backend is a service backend container and the host it runs on.
type backend struct {
	e    *env
	name string
}

// runBackend starts a container on e that joins service (with extra run
// flags) and serves svcPort, and waits until it listens.
func (e *env) runBackend(name, network string, extra ...string) backend {
	e.t.Helper()
	args := append([]string{"run", "-d", "--network", network, "--name", name}, extra...)
	e.cli(append(args, "--", suite.self, helperArg, "serve", name, strconv.Itoa(svcPort))...)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := testbed.WaitTCPListen(ctx, e.h.ContainerNetnsPath(name), svcPort); err != nil {
		e.t.Fatalf("backend %s on %s: %v", name, e.h.Name, err)
	}
	return backend{e, name}
}

// service returns `service inspect name` on e.
func (e *env) service(name string) api.Service {
	e.t.Helper()
	var s api.Service
	e.json(&s, "service", "inspect", name)
	return s
}

// waitService waits until service name is known on e.
func (e *env) waitService(name string) {
	e.t.Helper()
	// Gossip brings a new service in well under a second; a lost gossip
	// packet (a loaded machine drops UDP) is repaired by memberlist's
	// push-pull, every 30 s: that is the bound (failed at 10 s once
	// under load 8).
	eventually(e.t, 35*time.Second, func() error {
		var s api.Service
		return e.h.CLIJSON(&s, "service", "inspect", name)
	}, "service %s on %s", name, e.h.Name)
}

// vip returns the VIP of service name on network.
func (e *env) vip(name, network string) string {
	e.t.Helper()
	for _, v := range e.service(name).VIPs {
		if v.Network == network && v.VIP != "" {
			return addrOnly(v.VIP)
		}
	}
	e.t.Fatalf("service %s has no VIP on %s", name, network)
	return ""
}

// waitBackends waits until `service ps name` on e lists exactly want
// (container names) as active and healthy backends.
func (e *env) waitBackends(name string, want ...string) {
	e.t.Helper()
	slices.Sort(want)
	eventually(e.t, 15*time.Second, func() error {
		var bs []api.ServiceBackend
		if err := e.h.CLIJSON(&bs, "service", "ps", name); err != nil {
			return err
		}
		var got []string
		for _, b := range bs {
			if b.State == "active" && b.Health == "healthy" {
				got = append(got, b.Container)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Errorf("active backends %v, want %v", got, want)
		}
		return nil
	}, "service ps %s on %s", name, e.h.Name)
}

// conns runs the conns helper in container from: n connections to addr,
// par at a time (or as many as fit in dur, if dur > 0).
func (e *env) conns(from, addr string, n, par int, dur time.Duration) connReport {
	e.t.Helper()
	args := []string{suite.self, helperArg, "conns", addr, strconv.Itoa(n), strconv.Itoa(par)}
	if dur > 0 {
		args = append(args, dur.String())
	}
	out, err := e.h.Exec(from, args...)
	if err != nil {
		e.t.Fatalf("conns from %s to %s: %v", from, addr, err)
	}
	var r connReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		e.t.Fatalf("conns from %s: %v: %q", from, err, out)
	}
	return r
}

// helperJSON runs a helper mode in container from and decodes its report.
func (e *env) helperJSON(v any, from string, args ...string) {
	e.t.Helper()
	out, err := e.h.Exec(from, append([]string{suite.self, helperArg}, args...)...)
	if err != nil {
		e.t.Fatalf("helper %v in %s: %v", args, from, err)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		e.t.Fatalf("helper %v in %s: %v: %q", args, from, err, out)
	}
}

// digShort returns the sorted answers of `dig +short` for name from
// container c.
func (e *env) digShort(c string, args ...string) []string {
	e.t.Helper()
	out, err := e.h.Exec(c, append([]string{"dig", "+short", "+tries=1", "+time=2", "@127.0.0.11"}, args...)...)
	if err != nil {
		e.t.Fatalf("dig %v in %s: %v", args, c, err)
	}
	f := strings.Fields(out)
	sort.Strings(f)
	return f
}

// ipsOf returns the sorted addresses of containers.
func ipsOf(bs ...backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.e.ip(b.name))
	}
	sort.Strings(out)
	return out
}

func TestServiceVIPBalancesAcrossThreeHostsWithoutSNAT(t *testing.T) {
	needDig(t)
	// Timeouts scaled down: an established connection lives 8 s idle
	// here, as 24 h does by default (Docker's IPVS: 900 s).
	es := newCluster(t, 3, "--conntrack-timeouts", "tcp-established=8s,udp=3s")
	h1, h2, h3 := es[0], es[1], es[2]
	h1.network("web", "10.81.0.0/24")
	for _, e := range es[1:] {
		e.waitNetwork("web")
	}
	h1.cli("service", "create", "api", "--network", "web")
	for _, e := range es[1:] {
		e.waitService("api")
	}
	bs := []backend{
		h1.runBackend("b1", "web", "--service", "api"),
		h2.runBackend("b2", "web", "--service", "api"),
		h3.runBackend("b3", "web", "--service", "api"),
	}
	h1.run("client", "web")
	h2.run("client2", "web")
	for _, e := range es {
		e.waitBackends("api", "b1", "b2", "b3")
	}
	vip := h1.vip("api", "web")
	if slices.Contains(ipsOf(bs...), vip) || vip == h1.ip("client") {
		t.Fatalf("VIP %s is a container's address", vip)
	}
	for _, e := range es {
		if v := e.vip("api", "web"); v != vip {
			t.Errorf("service inspect api on %s: VIP %s, on h1 %s", e.h.Name, v, vip)
		}
	}
	target := vip + ":" + strconv.Itoa(svcPort)

	// Round robin splits 3000 new connections exactly evenly, and every
	// backend, local or remote, sees the client's own address.
	r := h1.conns("client", target, 3000, 8, 0)
	if r.Errors+r.Resets != 0 {
		t.Errorf("3000 connections to the VIP: %d connect errors (first: %s), %d resets (%s)", r.Errors, r.FirstErr, r.Resets, r.ResetErr)
	}
	for _, b := range bs {
		if r.Counts[b.name] != 1000 {
			t.Errorf("rr: %s got %d of 3000 connections, want 1000 (all: %v)", b.name, r.Counts[b.name], r.Counts)
		}
	}
	if want := []string{h1.ip("client")}; !slices.Equal(r.Peers, want) {
		t.Errorf("backends saw clients %v, want only the client's own address %v", r.Peers, want)
	}
	// A client on another host gets the same service, balanced there.
	r = h2.conns("client2", target, 30, 4, 0)
	if r.Errors+r.Resets != 0 || len(r.Counts) != 3 || !slices.Equal(r.Peers, []string{h2.ip("client2")}) {
		t.Errorf("30 connections from h2: %+v, want all three backends, no errors, peer %s", r, h2.ip("client2"))
	}

	// DNS: the name answers the VIP, tasks. the backends, PTR the name.
	if got := h1.digShort("client", "api"); !slices.Equal(got, []string{vip}) {
		t.Errorf("dig api: %v, want the VIP %s", got, vip)
	}
	if got, want := h1.digShort("client", "tasks.api"), ipsOf(bs...); !slices.Equal(got, want) {
		t.Errorf("dig tasks.api: %v, want %v", got, want)
	}
	if got := h1.digShort("client", "-x", vip); !slices.Equal(got, []string{"api.web."}) {
		t.Errorf("dig -x %s: %v, want api.web.", vip, got)
	}

	// A port nobody serves is refused at once (RST from the backend,
	// through the VIP), not a black hole.
	if out, err := h1.h.Exec("client", suite.self, helperArg, "conns", vip+":9", "1", "1"); err != nil || !strings.Contains(out, "refused") {
		t.Errorf("connection to VIP port 9: %v %s, want refused", err, out)
	}

	// An idle connection outlives what IPVS would keep (scaled: 2 s here
	// is 6 h at the default 24 h) and keeps its backend.
	var idle idleReport
	h1.helperJSON(&idle, "client", "idle", target, "2s")
	if idle.Err != "" || idle.First == "" || idle.After != idle.First {
		t.Errorf("idle connection: %+v, want the same backend before and after 2 s idle", idle)
	}

	// Stats: the client's host counted the connections per backend.
	s := h1.service("api")
	var total uint64
	for _, st := range s.Stats {
		total += st.NewConns
	}
	if total < 3000 {
		t.Errorf("service inspect api on h1: %d new connections counted, want at least 3000: %+v", total, s.Stats)
	}
}

func TestServiceChurnIsInvisibleToClients(t *testing.T) {
	es := newCluster(t, 3)
	h1, h2, h3 := es[0], es[1], es[2]
	h1.network("web", "10.82.0.0/24")
	for _, e := range es[1:] {
		e.waitNetwork("web")
	}
	h1.cli("service", "create", "api", "--network", "web", "--stop-grace-period", "2s")
	for _, e := range es[1:] {
		e.waitService("api")
	}
	h1.runBackend("b1", "web", "--service", "api")
	h2.runBackend("b2", "web", "--service", "api")
	h3.runBackend("b3", "web", "--service", "api")
	h3.runBackend("b4", "web", "--service", "api")
	h1.run("client", "web")
	for _, e := range es {
		e.waitBackends("api", "b1", "b2", "b3", "b4")
	}
	target := h1.vip("api", "web") + ":" + strconv.Itoa(svcPort)

	// A stream of connections while b2's server is killed with SIGKILL
	// (its address stays, so its kernel answers SYNs with RST) and b3 is
	// removed: no connection fails.
	done := make(chan connReport, 1)
	go func() {
		out, err := h1.h.Exec("client", suite.self, helperArg, "conns", target, "0", "4", "6s")
		var r connReport
		if err == nil {
			err = json.Unmarshal([]byte(out), &r)
		}
		if err != nil {
			r.Errors, r.FirstErr = -1, err.Error()
		}
		done <- r
	}()
	time.Sleep(1500 * time.Millisecond) // churn in the middle of the stream, not as synchronisation
	c, ok := h2.container("b2")
	if !ok || len(c.PIDs) == 0 {
		t.Fatalf("container b2 on h2: %+v", c)
	}
	for _, pid := range c.PIDs {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 b2 (pid %d): %v", pid, err)
		}
	}
	h3.cli("rm", "b3")
	r := <-done
	if r.Errors != 0 {
		t.Errorf("connections during kill -9 of b2 and rm of b3: %d failed to connect (first: %s); counts %v", r.Errors, r.FirstErr, r.Counts)
		// What the client's host counted: retries, rejects by reason.
		t.Logf("stats on h1:\n%s\nservice inspect api on h1:\n%s", h1.cli("stats"), h1.cli("service", "inspect", "api"))
	}
	// The kill resets what b2's kernel had already accepted for it: at
	// most one connection per client thread.
	if r.Resets > 4 {
		t.Errorf("connections during churn: %d reset after connecting (first: %s), want at most the 4 in flight at the kill", r.Resets, r.ResetErr)
	}
	if r.Counts["b1"] == 0 || r.Counts["b4"] == 0 {
		t.Errorf("connections during churn: %v, want b1 and b4 to keep serving", r.Counts)
	}
	t.Logf("connections during churn: %v, %d reset", r.Counts, r.Resets)
	// b3 left the service everywhere once its grace period ended, and b2
	// once its main process exited (a stopped container is withdrawn, as
	// in Docker).
	for _, e := range es {
		e.waitBackends("api", "b1", "b4")
	}
	// New connections after the churn avoid both.
	r = h1.conns("client", target, 40, 4, 0)
	if r.Errors+r.Resets != 0 || r.Counts["b2"] != 0 || r.Counts["b3"] != 0 {
		t.Errorf("40 connections after churn: %+v, want none to b2 or b3, no errors", r)
	}

	// UDP: a flow whose backend leaves moves to another within a second.
	// The flow runs long enough for a slow rm (it waits for the flow's
	// grace) and is stopped once ten answers after the rm are in.
	udp := startBackground(t, h1.h.Command(context.Background(), "exec", "client", "--", suite.self, helperArg, "udp", target, "60s", "100ms"))
	answers := func() []string {
		var out []string
		for _, l := range strings.Split(udp.out.String(), "\n") {
			if f := strings.Fields(l); len(f) == 3 {
				out = append(out, f[1])
			}
		}
		return out
	}
	var served string
	eventually(t, 3*time.Second, func() error {
		if a := answers(); len(a) > 0 {
			served = a[0]
			return nil
		}
		return fmt.Errorf("no answer yet: %q", udp.out.String())
	}, "UDP answers through the VIP")
	owner := map[string]*env{"b1": h1, "b2": h2, "b4": h3}[served]
	if owner == nil {
		t.Fatalf("UDP flow answered by %q, not a live backend", served)
	}
	owner.cli("rm", served)
	k := len(answers())
	eventually(t, 10*time.Second, func() error {
		if n := len(answers()) - k; n < 11 {
			return fmt.Errorf("%d answers since the rm: %q", n, udp.out.String())
		}
		return nil
	}, "eleven UDP answers after the rm of "+served)
	after := answers()[k:]
	// 100 ms apart: the first ten answers after rm span a second.
	moved := slices.IndexFunc(after, func(b string) bool { return b != served })
	if moved < 0 || moved > 10 {
		t.Errorf("UDP flow on %s: answers after its rm %v, want another backend within 10 answers", served, after)
	}
}

// `rm` of a backend that serves no connection returns about a second
// after it starts draining, not at the end of its stop grace period; one
// that serves a connection (from a client on another host: that host's
// balancer tracks it, the backend's does not) stays until it closes.
func TestServiceRmOfABackendWaitsOnlyForItsConnections(t *testing.T) {
	es := newCluster(t, 2)
	h1, h2 := es[0], es[1]
	h1.network("web", "10.84.0.0/24")
	h2.waitNetwork("web")
	const grace = 10 * time.Second // the default
	h1.cli("service", "create", "api", "--network", "web", "--stop-grace-period", grace.String())
	h2.waitService("api")
	h2.runBackend("idle", "web", "--service", "api")
	h2.runBackend("busy", "web", "--service", "api")
	h1.run("client", "web")
	for _, e := range es {
		e.waitBackends("api", "idle", "busy")
	}
	start := time.Now()
	h2.cli("rm", "idle")
	idle := time.Since(start)
	if idle > grace/2 {
		t.Errorf("rm of a backend with no connection took %v (stop grace period %v)", idle, grace)
	}
	h1.waitBackends("api", "busy")

	// One connection from h1's client through the VIP, to busy on h2.
	target := h1.vip("api", "web") + ":" + strconv.Itoa(svcPort)
	hold := startHold(t, exec.Command("nsenter", "--net="+h1.h.ContainerNetnsPath("client"), "--", suite.self, helperArg, "hold", target, "1", "1"))
	if hold.line != "held 1" {
		t.Fatalf("hold helper: %q", hold.line)
	}
	start = time.Now()
	rm := startBackground(t, h2.h.Command(context.Background(), "rm", "busy"))
	if exited, err := rm.wait(3 * time.Second); exited {
		t.Fatalf("rm of a backend serving a connection returned after %v (%v): %s", time.Since(start), err, rm.out.String())
	}
	r := hold.release()
	if r.Counts["busy"] != 1 || r.Errors+r.Resets != 0 {
		t.Errorf("held connection: %+v, want one answered by busy", r)
	}
	closed := time.Since(start)
	if exited, err := rm.wait(grace - closed - time.Second); !exited || err != nil {
		t.Fatalf("rm of a backend whose connection closed after %v: exited %v (%v) %v after it began, grace %v", closed, exited, err, time.Since(start), grace)
	}
	t.Logf("rm of the idle backend: %v; of the busy one, whose connection closed after %v: %v (grace %v)", idle.Round(time.Millisecond), closed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), grace)
}

func TestServiceSchedulersAndModesOnAnEncryptedNetwork(t *testing.T) {
	needDig(t)
	es := newCluster(t, 2)
	h1, h2 := es[0], es[1]
	h1.network("sec", "10.83.0.0/24", "--encrypted")
	h2.waitNetwork("sec")
	h1.cli("service", "create", "wrr", "--network", "sec", "--scheduler", "wrr")
	h1.cli("service", "create", "sticky", "--network", "sec", "--affinity", "client-ip:1m")
	h1.cli("service", "create", "mg", "--network", "sec", "--scheduler", "maglev")
	h1.cli("service", "create", "rr", "--network", "sec", "--endpoint-mode", "dnsrr")
	h1.cli("service", "create", "ported", "--network", "sec", "--port", "8080/tcp")
	svcs := []string{"wrr", "sticky", "mg", "rr", "ported"}
	for _, s := range svcs {
		h2.waitService(s)
	}
	join := func(weight string) []string {
		var out []string
		for _, s := range svcs {
			if s == "wrr" {
				s += ":" + weight
			}
			out = append(out, "--service", s)
		}
		return out
	}
	bs := []backend{
		h1.runBackend("b1", "sec", join("3")...),
		h2.runBackend("b2", "sec", join("1")...),
		h2.runBackend("b3", "sec", join("1")...),
	}
	// One client per service: the balancer never gives one client port two
	// connections to the same backend address and port, so clients of
	// several VIPs that share backends may see their choices moved.
	for _, c := range []string{"client", "c-sticky", "c-mg", "c-ported"} {
		h1.run(c, "sec")
	}
	for _, s := range []string{"wrr", "sticky", "mg", "ported"} {
		for _, e := range es {
			e.waitBackends(s, "b1", "b2", "b3")
		}
	}
	port := ":" + strconv.Itoa(svcPort)

	// Weighted round robin: weights 3, 1, 1 split 500 connections
	// exactly 300, 100, 100, across hosts and encrypted.
	r := h1.conns("client", h1.vip("wrr", "sec")+port, 500, 4, 0)
	if r.Errors+r.Resets != 0 || r.Counts["b1"] != 300 || r.Counts["b2"] != 100 || r.Counts["b3"] != 100 {
		t.Errorf("wrr 3:1:1 over 500 connections: %+v, want 300/100/100", r)
	}
	if !slices.Equal(r.Peers, []string{h1.ip("client")}) {
		t.Errorf("wrr: backends saw %v, want the client's address", r.Peers)
	}

	// Affinity: every connection of one client goes to one backend.
	r = h1.conns("c-sticky", h1.vip("sticky", "sec")+port, 50, 4, 0)
	if r.Errors+r.Resets != 0 || len(r.Counts) != 1 {
		t.Errorf("client-ip affinity over 50 connections: %+v, want one backend", r)
	}

	// dnsrr: no VIP; the name answers the backends, and connecting by
	// name works.
	if got, want := h1.digShort("client", "rr"), ipsOf(bs...); !slices.Equal(got, want) {
		t.Errorf("dig rr (dnsrr): %v, want the backends %v", got, want)
	}
	for _, v := range h1.service("rr").VIPs {
		if v.VIP != "" {
			t.Errorf("dnsrr service has a VIP: %+v", v)
		}
	}
	r = h1.conns("client", "rr"+port, 10, 1, 0)
	if r.Errors+r.Resets != 0 || len(r.Counts) == 0 {
		t.Errorf("connections to rr by name: %+v", r)
	}

	// --port: the listed port is balanced; another is refused at once by
	// the switch (RST), never a black hole.
	pv := h1.vip("ported", "sec")
	r = h1.conns("c-ported", pv+port, 30, 3, 0)
	if r.Errors+r.Resets != 0 || len(r.Counts) != 3 {
		t.Errorf("ported: 30 connections to the listed port: %+v", r)
	}
	start := time.Now()
	r = h1.conns("c-ported", pv+":9090", 1, 1, 0)
	if r.Errors != 1 || !strings.Contains(r.FirstErr, "refused") || time.Since(start) > 3*time.Second {
		t.Errorf("ported: connection to an unlisted port: %+v after %v, want refused at once", r, time.Since(start))
	}

	// Maglev: the choice does not depend on the host's state. A
	// connection made before h1's daemon restarts (its conntrack is
	// gone) carries on afterwards, to the same backend.
	idle := startBackground(t, h1.h.Command(context.Background(), "exec", "c-mg", "--", suite.self, helperArg, "idle", h1.vip("mg", "sec")+port, "6s"))
	eventually(t, 5*time.Second, func() error {
		if st := h1.service("mg").Stats; len(st) == 0 || st[0].Active == 0 {
			return fmt.Errorf("no active connection yet: %+v", st)
		}
		return nil
	}, "the maglev connection is tracked on h1")
	if err := h1.h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := h1.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	if exited, err := idle.wait(40 * time.Second); !exited || err != nil {
		t.Fatalf("idle helper: exited %v, %v: %s", exited, err, idle.out.String())
	}
	var ir idleReport
	if err := json.Unmarshal([]byte(idle.out.String()), &ir); err != nil || ir.Err != "" || ir.After != ir.First {
		t.Errorf("maglev connection across a daemon restart: %s (%v), want the same backend before and after", idle.out.String(), err)
	}
}
