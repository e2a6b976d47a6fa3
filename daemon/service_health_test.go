package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/lb/health"
	"github.com/vxmesh/vxmesh/tunnel"
)

// healthSandbox is a fake sandbox whose health checks all reach one
// loopback HTTP server, which tells the backends apart by the Host header
// (the backend's IP:port) and answers 503 for those marked unhealthy.
type healthSandbox struct {
	*fakeSandbox
	srv *httptest.Server

	mu        sync.Mutex
	unhealthy map[string]bool // backend IP
}

func newHealthSandbox(t *testing.T) *healthSandbox {
	sb := &healthSandbox{fakeSandbox: newFakeSandbox(), unhealthy: map[string]bool{}}
	sb.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.Host)
		sb.mu.Lock()
		bad := sb.unhealthy[host]
		sb.mu.Unlock()
		if bad || r.URL.Path != "/health" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(sb.srv.Close)
	return sb
}

func (sb *healthSandbox) set(ip string, unhealthy bool) {
	sb.mu.Lock()
	sb.unhealthy[ip] = unhealthy
	sb.mu.Unlock()
}

// HealthDialer dials the test server whatever the address.
func (sb *healthSandbox) HealthDialer(string) health.DialFunc {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, sb.srv.Listener.Addr().String())
	}
}

// backendView is what a user sees of one backend: its health in service
// ps, its state in the balancer and whether DNS answers it in tasks.NAME.
func backendView(t *testing.T, d *Daemon, service, network, container string) (ps api.ServiceBackend, st lb.BackendState, inDNS bool) {
	t.Helper()
	s, err := d.Service(service)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range s.Backends {
		if b.Container == container && b.Network == network {
			ps = b
		}
	}
	if ps.IP == "" {
		return ps, 0, false
	}
	ip := netip.MustParseAddr(ps.IP)
	st = lb.BackendState(255)
	for _, svc := range desiredServices(d, network) {
		for _, b := range svc.Backends {
			if svc.Name == s.Name && b.IP == ip {
				st = b.State
			}
		}
	}
	d.mu.Lock()
	dss := d.serviceSet(d.endpointSet().accepted).dnsServices()
	d.mu.Unlock()
	for _, ds := range dss {
		if ds.Name == service && ds.Network == network {
			inDNS = slices.Contains(ds.Tasks, ip)
		}
	}
	return ps, st, inDNS
}

// waitHealth waits until container's backend shows health in service ps,
// is in state in d's balancer and in DNS exactly when healthy.
func waitHealth(t *testing.T, d *Daemon, service, container, h string, state lb.BackendState) api.ServiceBackend {
	t.Helper()
	var ps api.ServiceBackend
	waitFor(t, container+" "+h, func() bool {
		var st lb.BackendState
		var inDNS bool
		ps, st, inDNS = backendView(t, d, service, "web", container)
		return ps.Health == h && st == state && inDNS == (h == backendHealthy)
	})
	return ps
}

// TestHealthCheckEjectsAndRestores: a backend whose check fails is
// ejected and leaves DNS, comes back when it passes again; a new backend
// is starting (not ready) until its first check passes; removing the
// check (--no-health) brings an unhealthy backend back.
func TestHealthCheckEjectsAndRestores(t *testing.T) {
	sb := newHealthSandbox(t)
	d := startNode(t, nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, t.TempDir()))
	t.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.9.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}, HealthHTTP: ":80/health interval=50ms timeout=50ms healthy=1 unhealthy=2"})
	// A check that has not run yet (the first runs within a tenth of an
	// hour): the new backend is starting, not ready.
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "slow", Networks: []string{"web"}, HealthHTTP: ":80/health interval=1h"})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "b1", Create: true, Services: []api.ServiceMember{{Name: "api"}, {Name: "slow"}}})
	b2 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "b2", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	if ps, st, inDNS := backendView(t, d, "slow", "web", "b1"); ps.Health != backendStarting || st != lb.Ejected || inDNS {
		t.Fatalf("new backend of a service with a check: %+v, balancer %v, in dns %v; want starting, ejected, out of dns", ps, st, inDNS)
	}
	waitHealth(t, d, "api", "b1", backendHealthy, lb.Active)
	waitHealth(t, d, "api", "b2", backendHealthy, lb.Active)
	// The checks' durations are in stats, by service and network.
	checked := false
	for _, h := range d.Stats().HealthChecks {
		var n uint64
		for _, b := range h.Latency.Buckets {
			n += b.Count
		}
		if h.Service == "api" && h.Network == "web" && h.Latency.Count >= 2 && n == h.Latency.Count && h.Latency.AvgMs > 0 {
			checked = true
		}
	}
	if !checked {
		t.Errorf("stats health checks %+v, want api on web with its checks' durations", d.Stats().HealthChecks)
	}

	sb.set(b2.IP, true)
	ps := waitHealth(t, d, "api", "b2", backendUnhealthy, lb.Ejected)
	if ps.HealthReason != "http 503" || ps.HealthSince.IsZero() {
		t.Errorf("service ps of the unhealthy local backend: reason %q since %v, want http 503 and a time", ps.HealthReason, ps.HealthSince)
	}
	if _, st, inDNS := backendView(t, d, "api", "web", "b1"); st != lb.Active || !inDNS {
		t.Fatalf("the healthy backend: %v, in dns %v", st, inDNS)
	}
	sb.set(b2.IP, false)
	waitHealth(t, d, "api", "b2", backendHealthy, lb.Active)

	// --no-health: an unhealthy backend is healthy again, at once.
	sb.set(b2.IP, true)
	waitHealth(t, d, "api", "b2", backendUnhealthy, lb.Ejected)
	if _, err := d.UpdateService("api", api.ServiceUpdateRequest{NoHealth: true}); err != nil {
		t.Fatal(err)
	}
	ps = waitHealth(t, d, "api", "b2", backendHealthy, lb.Active)
	if ps.HealthReason != "" {
		t.Errorf("a backend of a service without a check shows a check's reason %q", ps.HealthReason)
	}
	if _, err := d.UpdateService("slow", api.ServiceUpdateRequest{NoHealth: true}); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, d, "slow", "b1", backendHealthy, lb.Active)
}

// TestHealthSurvivesRestart: a restarted daemon publishes the health its
// backends last had (an unhealthy one stays out, a healthy one stays in)
// instead of ejecting or admitting every checked backend until its checks
// decide.
func TestHealthSurvivesRestart(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	sb := newHealthSandbox(t)
	dir1, dir2 := t.TempDir(), t.TempDir()
	h1 := newNode(t, mem, "h1", netip.MustParseAddr("127.0.0.1"), newFakeSandbox(), dir1)
	t.Cleanup(h1.Close)
	key, _ := readFile(dir1 + "/cluster.key")
	writeFile(t, dir2+"/cluster.key", key)
	join := h1.cfg.Advertise.String() + ":" + fmt.Sprint(h1.cfg.GossipPort)
	h2 := startNode(t, nodeConfig(t, mem, "h2", netip.MustParseAddr("127.0.0.2"), sb, dir2, join))
	if _, err := h1.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.9.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	// Checks an hour apart: after the restart at most one runs, too few
	// to change a state.
	mustCreateService(t, h1, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}, HealthHTTP: ":80/health interval=1h"})
	// The network and the service are separate entries: either can reach
	// h2 first, and the attach needs the network.
	waitFor(t, "the network and the service on h2", func() bool {
		_, errNet := h2.Network("web")
		_, errSvc := h2.Service("api")
		return errNet == nil && errSvc == nil
	})
	mustAttach(t, h2, api.AttachRequest{Network: "web", Name: "b1", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	b2 := mustAttach(t, h2, api.AttachRequest{Network: "web", Name: "b2", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	sb.set(b2.IP, true)
	// What the checks would have found.
	h2.setBackendHealth("b1", "web", "api", backendHealthy)
	h2.setBackendHealth("b2", "web", "api", backendUnhealthy)
	waitHealth(t, h1, "api", "b1", backendHealthy, lb.Active)
	waitHealth(t, h1, "api", "b2", backendUnhealthy, lb.Ejected)
	h2.Close()

	h2 = startNode(t, nodeConfig(t, mem, "h2", netip.MustParseAddr("127.0.0.2"), sb, dir2, join))
	t.Cleanup(h2.Close)
	waitFor(t, "the service on the restarted h2", func() bool { _, err := h2.Service("api"); return err == nil })
	for _, d := range []*Daemon{h1, h2} {
		waitHealth(t, d, "api", "b1", backendHealthy, lb.Active)
		waitHealth(t, d, "api", "b2", backendUnhealthy, lb.Ejected)
	}
}

// TestHealthRecordsUseOneParser: the API's flags and the records read
// from the cluster go through lb/health's parser, and a record's check
// must be in the canonical form the API writes.
func TestHealthRecordsUseOneParser(t *testing.T) {
	for _, tc := range []struct {
		tcp        int
		http, want string
	}{
		{8080, "", "tcp:8080"},
		{0, ":8080/healthz", "http::8080/healthz"},
		{0, "8080/healthz", "http::8080/healthz"},
		{0, ":8080", "http::8080/"},
		{0, ":8080/h interval=5s healthy=1", "http::8080/h interval=5s healthy=1"},
		{0, "", ""},
	} {
		got, err := parseHealth(tc.tcp, tc.http)
		if err != nil || got != tc.want {
			t.Errorf("parseHealth(%d, %q) = %q, %v; want %q", tc.tcp, tc.http, got, err, tc.want)
			continue
		}
		if _, err := checkHealth(got); err != nil {
			t.Errorf("the record of parseHealth(%d, %q), %q, is refused: %v", tc.tcp, tc.http, got, err)
		}
	}
	for _, h := range []string{"tcp:08080", "http::8080/a#b", "http::8080/h interval=2s", "http:8080/h", "udp:53", "tcp:8080 timeout=5s"} {
		if _, err := checkHealth(h); err == nil {
			t.Errorf("checkHealth(%q) accepted", h)
		}
		rec := svcRecord{Name: "api", ID: "abababababababababababababababab", Mode: modeVIP, VIPs: []svcVIP{{Network: "web", VIP: "10.9.0.2"}},
			Scheduler: "rr", Health: h, StopGrace: "10s", DNSTTL: "10s", CreatedBy: "h1"}
		if _, err := validateService(&rec); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("a record with health %q: %v, want a one-line error", h, err)
		}
	}
}
