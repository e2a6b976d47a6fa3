package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// meshCounters are one host's counters that a routing-mesh connection
// moves: flows on the published-port fast path, the service's new and
// active connections, and each backend's new and active connections.
type meshCounters struct {
	fast, fallback uint64
	newConns       uint64
	active         int64
	beNew          map[string]uint64
	beActive       map[string]int64
}

// meshCountersOf reads e's counters of service on network.
func (e *env) meshCountersOf(service, network string) meshCounters {
	e.t.Helper()
	var st api.Stats
	e.json(&st, "stats")
	m := meshCounters{fast: st.Egress.IngressFast, fallback: st.Egress.IngressFastFallback,
		beNew: map[string]uint64{}, beActive: map[string]int64{}}
	for _, s := range st.Services {
		if s.Service == service && s.Network == network {
			m.newConns, m.active = s.NewConns, s.Active
		}
	}
	var bs []api.ServiceBackend
	e.json(&bs, "service", "ps", service)
	for _, b := range bs {
		m.beNew[b.Container], m.beActive[b.Container] = b.NewConns, b.ActiveConns
	}
	return m
}

// TestRoutingMeshLocalBackendFastPath: a mode=ingress published port on
// a host with one of the service's backends (b1 on h1; b2 on h2), round
// robin. Connections to h1 split evenly between the two, every backend
// seeing the outside client's own address; b1's half takes the
// published-port fast path, and h1's `stats` and `service ps` count all
// of them, for the service and for each backend, as they counted them
// through the gateway. Held connections are active connections there.
// An unhealthy b1 gets none. `rm b1` waits for its held fast-path
// connection, which lives on, and ends soon after it closes.
func TestRoutingMeshLocalBackendFastPath(t *testing.T) {
	// Per-packet NAT off: with it the outside client's connections are
	// translated instead (TestRoutingMeshNAT); this is the path of
	// daemons without it and of clients it does not steer.
	es := newCluster(t, 2, "--mesh-nat=false")
	h1, h2 := es[0], es[1]
	peer, err := h1.tb.AddUnderlayPeer("client")
	if err != nil {
		t.Fatal(err)
	}
	h1.network("web", "10.97.0.0/24")
	h2.waitNetwork("web")
	const grace = 10 * time.Second
	h1.cli("service", "create", "api", "--network", "web", "--port", strconv.Itoa(svcPort),
		"--publish", "published=9080,target="+strconv.Itoa(svcPort),
		"--health-http", ":"+strconv.Itoa(svcPort+1)+"/health interval=500ms", "--stop-grace-period", grace.String())
	h2.waitService("api")
	dir := t.TempDir()
	_, sick := h1.runCheckedBackend("b1", "web", dir, "--service", "api")
	h2.runCheckedBackend("b2", "web", dir, "--service", "api")
	for _, e := range es {
		e.waitHealth("api", "b1", "healthy")
		e.waitHealth("api", "b2", "healthy")
	}
	h1.waitPublishState("api", h1.h.Name, "published=9080,", "up")
	addr := h1.h.Addr + ":9080"
	c, _, _ := publishedLine(t, peer, addr) // answers at all (retried)
	c.Close()

	// Round robin across the local and the remote backend, counted.
	const n = 40
	before := h1.meshCountersOf("api", "web")
	r := peerConns(t, peer, addr, n, 4)
	if r.Errors+r.Resets != 0 || r.Counts["b1"] != n/2 || r.Counts["b2"] != n/2 {
		t.Errorf("%d connections through h1: %+v; want %d to each backend", n, r, n/2)
	}
	if !slices.Equal(r.Peers, []string{peer.Addr}) {
		t.Errorf("the backends saw %v, want only the outside client's own address %s", r.Peers, peer.Addr)
	}
	after := h1.meshCountersOf("api", "web")
	if got := after.fast - before.fast; got != n/2 || after.fallback != before.fallback {
		t.Errorf("h1: %d flows on the fast path, %d fell back; want %d (b1's) and 0", got, after.fallback-before.fallback, n/2)
	}
	if got := after.newConns - before.newConns; got != n {
		t.Errorf("h1 stats: api's new connections went up by %d, want %d", got, n)
	}
	for _, b := range []string{"b1", "b2"} {
		if got := after.beNew[b] - before.beNew[b]; got != n/2 {
			t.Errorf("h1 service ps: %s's new connections went up by %d, want %d", b, got, n/2)
		}
	}
	eventually(t, 10*time.Second, func() error {
		if m := h1.meshCountersOf("api", "web"); m.active != 0 {
			return fmt.Errorf("api has %d active connections on h1 (%v)", m.active, m.beActive)
		}
		return nil
	}, "the closed connections leave h1's active count")

	// An unhealthy local backend gets none.
	if err := os.WriteFile(sick, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h1.waitHealth("api", "b1", "unhealthy")
	if r := peerConns(t, peer, addr, 10, 2); r.Errors+r.Resets != 0 || r.Counts["b2"] != 10 {
		t.Errorf("10 connections through h1 with b1 unhealthy: %+v; want all to b2", r)
	}
	if err := os.Remove(sick); err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		e.waitHealth("api", "b1", "healthy")
	}

	// Two held connections, one to each backend (round robin): active.
	hold := startHold(t, exec.Command("ip", "netns", "exec", peer.Netns, suite.self, helperArg, "hold", addr, "2", "1"))
	if hold.line != "held 2" {
		t.Fatalf("hold helper: %q", hold.line)
	}
	if m := h1.meshCountersOf("api", "web"); m.active != 2 || m.beActive["b1"] != 1 || m.beActive["b2"] != 1 {
		t.Errorf("h1 with one connection held to each backend: api %d active, backends %v; want 2, one each", m.active, m.beActive)
	}

	// rm of the local backend drains its fast-path connection.
	start := time.Now()
	rm := startBackground(t, h1.h.Command(context.Background(), "rm", "b1"))
	if exited, err := rm.wait(3 * time.Second); exited {
		t.Fatalf("rm of a backend serving a fast-path connection returned after %v (%v): %s", time.Since(start), err, rm.out.String())
	}
	rep := hold.release()
	if rep.Counts["b1"] != 1 || rep.Counts["b2"] != 1 || rep.Errors+rep.Resets != 0 {
		t.Errorf("held connections: %+v, want one answered by each backend", rep)
	}
	closed := time.Since(start)
	if exited, err := rm.wait(grace - closed - time.Second); !exited || err != nil {
		t.Fatalf("rm of a backend whose connection closed after %v: exited %v (%v) %v after it began, grace %v", closed, exited, err, time.Since(start), grace)
	}
	h1.waitBackends("api", "b2")
	if r := peerConns(t, peer, addr, 6, 2); r.Errors+r.Resets != 0 || r.Counts["b2"] != 6 {
		t.Errorf("6 connections through h1 after rm b1: %+v; want all to b2", r)
	}
}

// heldConns is the hold helper at work: connections held open until
// release.
type heldConns struct {
	t      *testing.T
	stdin  io.WriteCloser
	out    *bufio.Reader
	stderr strings.Builder
	// line is the helper's first line: "held N".
	line string
}

// startHold starts cmd, the hold helper (in the client's namespace), and
// waits until it holds its connections; the test's end kills it.
func startHold(t *testing.T, cmd *exec.Cmd) *heldConns {
	t.Helper()
	h := &heldConns{t: t}
	var err error
	if h.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &h.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	h.out = bufio.NewReader(stdout)
	line, err := h.out.ReadString('\n')
	if err != nil {
		t.Fatalf("hold helper: %q, %v; stderr: %s", line, err, h.stderr.String())
	}
	h.line = strings.TrimSpace(line)
	return h
}

// release closes the held connections and returns the helper's report.
func (h *heldConns) release() connReport {
	h.t.Helper()
	h.stdin.Close()
	var r connReport
	if err := json.NewDecoder(h.out).Decode(&r); err != nil {
		h.t.Fatalf("hold helper report: %v; stderr: %s", err, h.stderr.String())
	}
	return r
}
