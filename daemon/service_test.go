package daemon

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

// serviceDaemon is a daemon with network web (10.9.0.0/24) and db
// (10.9.1.0/24).
func serviceDaemon(t *testing.T) *Daemon {
	t.Helper()
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	t.Cleanup(d.Close)
	for _, n := range []api.NetworkCreateRequest{{Name: "web", Subnet: "10.9.0.0/24"}, {Name: "db", Subnet: "10.9.1.0/24"}} {
		if _, err := d.CreateNetwork(n); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func mustCreateService(t *testing.T, d *Daemon, req api.ServiceCreateRequest) api.Service {
	t.Helper()
	s, err := d.CreateService(req)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// desiredServices returns the balancer services of network in d's
// desired data plane.
func desiredServices(d *Daemon, network string) []lb.Service {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, nc := range d.desiredDataplane().Networks {
		if nc.Name == network {
			return nc.Services
		}
	}
	return nil
}

func TestServiceCreateListInspectRemove(t *testing.T) {
	d := serviceDaemon(t)
	s := mustCreateService(t, d, api.ServiceCreateRequest{
		Name: "api", Networks: []string{"web", "db"}, VIPs: []string{"web=10.9.0.200"},
		Scheduler: "maglev", Affinity: "client-ip:30s", Ports: []string{"8080:80/tcp", "53/udp", "443"},
		HealthHTTP: ":80/healthz",
	})
	if s.EndpointMode != "vip" || s.Scheduler != "maglev" || s.Affinity != "client-ip:30s" || s.StopGracePeriod != "10s" || s.DNSTTL != "10s" {
		t.Fatalf("created %+v", s)
	}
	if !slices.Equal(s.Ports, []string{"443/tcp", "8080:80/tcp", "53/udp"}) || s.HealthCheck != "http::80/healthz" || s.CreatedBy != "h1" {
		t.Fatalf("ports %v, health %q, created by %q", s.Ports, s.HealthCheck, s.CreatedBy)
	}
	vips := map[string]string{}
	for _, v := range s.VIPs {
		vips[v.Network] = v.VIP
	}
	if vips["web"] != "10.9.0.200" || !netip.MustParsePrefix("10.9.1.0/24").Contains(netip.MustParseAddr(vips["db"])) || vips["db"] == "10.9.1.1" {
		t.Fatalf("vips %v: want 10.9.0.200 on web and a free address of db", vips)
	}
	ls := d.Services()
	if len(ls) != 1 || ls[0].Name != "api" {
		t.Fatalf("ls: %+v", ls)
	}
	got, err := d.Service("api")
	if err != nil || got.ID != s.ID || len(got.Backends) != 0 {
		t.Fatalf("inspect: %+v, %v", got, err)
	}
	svcs := desiredServices(d, "web")
	if len(svcs) != 1 || svcs[0].VIP != netip.MustParseAddr("10.9.0.200") || svcs[0].Scheduler != lb.Maglev || svcs[0].Affinity.Seconds() != 30 || len(svcs[0].Ports) != 3 {
		t.Fatalf("desired services of web: %+v", svcs)
	}
	// A container never gets a VIP.
	ep := mustAttach(t, d, api.AttachRequest{Network: "db", Name: "c1", Create: true})
	if ep.IP == vips["db"] {
		t.Fatalf("container got the VIP %s", ep.IP)
	}
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "c2", Create: true, IP: "10.9.0.200"}); err == nil || !strings.Contains(err.Error(), `VIP of service "api"`) {
		t.Fatalf("attach with the VIP's address: %v", err)
	}
	if err := d.RemoveNetwork("web"); err == nil || !strings.Contains(err.Error(), "used by service(s) api") {
		t.Fatalf("network rm under a service: %v", err)
	}
	if err := d.RemoveService("api"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Service("api"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("inspect after rm: %v", err)
	}
	if len(desiredServices(d, "web")) != 0 {
		t.Fatal("the removed service is still in the data plane")
	}
	if err := d.RemoveService("api"); err == nil {
		t.Fatal("removed a service twice")
	}
}

func TestServiceCreateBadInputChangesNothing(t *testing.T) {
	d := serviceDaemon(t)
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true, IP: "10.9.0.5"})
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "taken", Networks: []string{"web"}, VIPs: []string{"10.9.0.100"}})
	for _, tc := range []struct {
		req  api.ServiceCreateRequest
		want string
	}{
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"nope"}}, `network "nope": not found`},
		{api.ServiceCreateRequest{Name: "x"}, "want at least one --network"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, VIPs: []string{"10.9.1.10"}}, "not a host address of network"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, VIPs: []string{"10.9.0.1"}}, "is the gateway"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, VIPs: []string{"10.9.0.5"}}, "already in use"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, VIPs: []string{"10.9.0.100"}}, `VIP of service "taken"`},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, VIPs: []string{"banana"}}, "not an IPv4 address"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web", "db"}, VIPs: []string{"10.9.0.9"}}, "write NETWORK=IP"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, EndpointMode: "dnsrr", VIPs: []string{"10.9.0.9"}}, "dnsrr service has no VIP"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, EndpointMode: "nat"}, "want vip or dnsrr"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, Scheduler: "random"}, `scheduler "random"`},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, Affinity: "cookie"}, "want client-ip"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, Affinity: "client-ip:forever"}, "timeout"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, Ports: []string{"80/sctp"}}, "want tcp or udp"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, Ports: []string{"0/tcp"}}, "want a port 1-65535"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, Ports: []string{"80", "80/tcp"}}, "listed twice"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, HealthTCP: 70000}, "want 1-65535"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, HealthHTTP: ":80/a#b"}, "not allowed"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, HealthTCP: 80, HealthHTTP: ":80/h"}, "choose one"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, StopGracePeriod: "-1s"}, "stop grace period"},
		{api.ServiceCreateRequest{Name: "x", Networks: []string{"web"}, DNSTTL: "1.5s"}, "whole seconds"},
		{api.ServiceCreateRequest{Name: "a.b", Networks: []string{"web"}}, "invalid name"},
		{api.ServiceCreateRequest{Name: "tasks", Networks: []string{"web"}}, "reserved name"},
		{api.ServiceCreateRequest{Name: "TAKEN", Networks: []string{"web"}}, "already exists"},
		{api.ServiceCreateRequest{Name: "c1", Networks: []string{"web"}}, "a container on node h1 is called"},
	} {
		_, err := d.CreateService(tc.req)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("create %+v: got %v, want one line with %q", tc.req, err, tc.want)
		}
	}
	if ls := d.Services(); len(ls) != 1 {
		t.Fatalf("bad creates left services: %+v", ls)
	}
	d.mu.Lock()
	reserved := 0
	for _, ips := range d.reservedIPs {
		reserved += len(ips)
	}
	d.mu.Unlock()
	if reserved != 0 {
		t.Fatalf("bad creates left %d reserved addresses", reserved)
	}
}

func TestAttachJoinsServices(t *testing.T) {
	d := serviceDaemon(t)
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}, Scheduler: "wrr"})
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "dbs", Networks: []string{"db"}})
	for _, tc := range []struct {
		req  api.AttachRequest
		want string
	}{
		{api.AttachRequest{Network: "web", Name: "b1", Create: true, Services: []api.ServiceMember{{Name: "nope"}}}, "service not found"},
		{api.AttachRequest{Network: "web", Name: "b1", Create: true, Services: []api.ServiceMember{{Name: "dbs"}}}, `not on network "web"`},
		{api.AttachRequest{Network: "web", Name: "b1", Create: true, Services: []api.ServiceMember{{Name: "api", Weight: 1001}}}, "weight out of range"},
		{api.AttachRequest{Network: "web", Name: "b1", Create: true, Services: []api.ServiceMember{{Name: "api"}, {Name: "api"}}}, "given twice"},
		{api.AttachRequest{Network: "web", Name: "api", Create: true}, `the name of service "api"`},
		{api.AttachRequest{Network: "web", Name: "b1", Create: true, Aliases: []string{"dbs"}}, `the name of service "dbs"`},
	} {
		_, err := d.Attach(tc.req)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("attach %+v: got %v, want %q", tc.req, err, tc.want)
		}
	}
	if cs := d.Containers(); len(cs) != 0 {
		t.Fatalf("refused attaches left containers: %+v", cs)
	}
	b1 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "b1", Create: true, Services: []api.ServiceMember{{Name: "api", Weight: 3}}})
	svcs := desiredServices(d, "web")
	want := lb.Backend{IP: netip.MustParseAddr(b1.IP), MAC: packet.MAC(macForIP(netip.MustParseAddr(b1.IP))), Weight: 3, State: lb.Active}
	if len(svcs) != 1 || len(svcs[0].Backends) != 1 || svcs[0].Backends[0] != want {
		t.Fatalf("desired services of web: %+v; want backend %+v", svcs, want)
	}
	s, _ := d.Service("api")
	if len(s.Backends) != 1 || s.Backends[0].Container != "b1" || s.Backends[0].Weight != 3 || s.Backends[0].State != "active" || s.Backends[0].Health != "healthy" || s.Backends[0].Node != "h1" {
		t.Fatalf("backends: %+v", s.Backends)
	}
}

func TestServiceBackendsOnEveryHost(t *testing.T) {
	ds, _ := threeNodes(t)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.3.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "the network on every node", func() bool { _, err := d.Network("web"); return err == nil })
	}
	s := mustCreateService(t, ds[1], api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}})
	for _, d := range ds {
		waitFor(t, "the service on every node", func() bool { _, err := d.Service("api"); return err == nil })
	}
	a := mustAttach(t, ds[0], api.AttachRequest{Network: "web", Name: "a", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	b := mustAttach(t, ds[2], api.AttachRequest{Network: "web", Name: "b", Create: true, Services: []api.ServiceMember{{Name: "api", Weight: 2}}})
	vip := netip.MustParseAddr(s.VIPs[0].VIP)
	for _, ip := range []string{a.IP, b.IP} {
		if ip == s.VIPs[0].VIP {
			t.Fatalf("container got the VIP %s", ip)
		}
	}
	want := []lb.Backend{
		{IP: netip.MustParseAddr(a.IP), MAC: packet.MAC(macForIP(netip.MustParseAddr(a.IP))), Weight: 1},
		{IP: netip.MustParseAddr(b.IP), MAC: packet.MAC(macForIP(netip.MustParseAddr(b.IP))), Weight: 2},
	}
	for i, d := range ds {
		waitFor(t, "both backends in every node's desired data plane", func() bool {
			svcs := desiredServices(d, "web")
			return len(svcs) == 1 && svcs[0].VIP == vip && slices.Equal(svcs[0].Backends, want)
		})
		ps, _ := d.Service("api")
		if len(ps.Backends) != 2 || ps.Backends[0].Node != "h1" || ps.Backends[1].Node != "h3" {
			t.Fatalf("service ps on h%d: %+v", i+1, ps.Backends)
		}
	}
	// Another node cannot take the VIP for a container.
	if _, err := ds[2].Attach(api.AttachRequest{Network: "web", Name: "c", Create: true, IP: vip.String()}); err == nil {
		t.Fatal("h3 gave the VIP to a container")
	}
	// Removed on h1: gone everywhere, and the backends are no longer
	// backends.
	if err := ds[0].RemoveService("api"); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "the service gone everywhere", func() bool { return len(desiredServices(d, "web")) == 0 && len(d.Services()) == 0 })
	}
}

func TestServiceNameRaceAcrossNodes(t *testing.T) {
	ds, _ := threeNodesOn(t, tunnel.NewMemNetwork(), claimSafeGrace)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.4.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "the network on every node", func() bool { _, err := d.Network("web"); return err == nil })
	}
	for round := range 5 {
		name := "svc" + string(rune('a'+round))
		errs := make(chan error, 2)
		for _, d := range ds[:2] {
			go func() {
				_, err := d.CreateService(api.ServiceCreateRequest{Name: name, Networks: []string{"web"}})
				errs <- err
			}()
		}
		e1, e2 := <-errs, <-errs
		if (e1 == nil) == (e2 == nil) {
			t.Fatalf("round %d: two creates of %s on two nodes: %v and %v; want exactly one to succeed", round, name, e1, e2)
		}
		lost := e1
		if lost == nil {
			lost = e2
		}
		if !strings.Contains(lost.Error(), "concurrently") && !strings.Contains(lost.Error(), "already") {
			t.Fatalf("round %d: the loser's error: %v", round, lost)
		}
		for _, d := range ds {
			waitFor(t, "one service everywhere", func() bool { _, err := d.Service(name); return err == nil })
		}
	}
	// Every VIP differs.
	seen := map[string]bool{}
	for _, s := range ds[2].Services() {
		if seen[s.VIPs[0].VIP] {
			t.Fatalf("VIP %s given twice", s.VIPs[0].VIP)
		}
		seen[s.VIPs[0].VIP] = true
	}
}

func TestRemovedBackendDrainsFirst(t *testing.T) {
	d := serviceDaemon(t)
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}, StopGracePeriod: "400ms"})
	b1 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "b1", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	b2 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "b2", Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	for _, op := range []struct {
		name string
		ip   string
		run  func() error
	}{
		{"rm", b1.IP, func() error { return d.RemoveContainer("b1") }},
		{"detach", b2.IP, func() error { return d.Detach("b2", "") }},
	} {
		gone := netip.MustParseAddr(op.ip)
		start := time.Now()
		done := make(chan error, 1)
		go func() { done <- op.run() }()
		waitFor(t, op.name+": the backend draining", func() bool {
			for _, b := range desiredServices(d, "web")[0].Backends {
				if b.IP == gone {
					return b.State == lb.Draining
				}
			}
			return false
		})
		d.mu.Lock()
		tasks := d.serviceSet(d.endpointSet().accepted).dnsServices()[0].Tasks
		d.mu.Unlock()
		if slices.Contains(tasks, gone) {
			t.Fatalf("%s: a draining backend is still in DNS: %v", op.name, tasks)
		}
		// Meanwhile the container cannot be attached or removed again.
		if err := d.RemoveContainer("b1"); op.name == "rm" && (err == nil || !strings.Contains(err.Error(), "draining")) {
			t.Fatalf("rm during the drain: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el < 400*time.Millisecond {
			t.Fatalf("%s: took %v, less than the stop grace period", op.name, el)
		}
		for _, b := range desiredServices(d, "web")[0].Backends {
			if b.IP == gone {
				t.Fatalf("%s: the backend is still there after its grace period", op.name)
			}
		}
	}
	// A container that is no backend goes at once.
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "plain", Create: true})
	start := time.Now()
	if err := d.RemoveContainer("plain"); err != nil || time.Since(start) > 300*time.Millisecond {
		t.Fatalf("rm of a plain container: %v after %v", err, time.Since(start))
	}
}

// A leaving backend that serves no connection goes well before its stop
// grace period ends; one that serves a connection (from a client on any
// host: counted in the backend's own namespace) stays until it closes, or
// until the grace period ends.
func TestDrainEndsOnceTheBackendServesNoConnection(t *testing.T) {
	d := serviceDaemon(t)
	sb := d.sb.(*fakeSandbox)
	const grace = 4 * time.Second
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}, StopGracePeriod: grace.String()})
	for _, b := range []string{"idle", "busy", "stuck"} {
		mustAttach(t, d, api.AttachRequest{Network: "web", Name: b, Create: true, Services: []api.ServiceMember{{Name: "api"}}})
	}
	netnsOf := func(name string) string {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.containers[name].netns
	}
	rm := func(name string) (time.Time, chan error) {
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- d.RemoveContainer(name) }()
		return start, done
	}

	start, done := rm("idle")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > grace/2 {
		t.Fatalf("rm of a backend with no connection took %v (grace %v)", el, grace)
	}

	sb.setConns(netnsOf("busy"), 1)
	start, done = rm("busy")
	select {
	case err := <-done:
		t.Fatalf("rm of a backend serving a connection returned after %v (%v)", time.Since(start), err)
	case <-time.After(1500 * time.Millisecond):
	}
	sb.setConns(netnsOf("busy"), 0) // the connection closed
	closed := time.Now()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el >= grace-500*time.Millisecond {
		t.Fatalf("rm of a backend whose last connection closed after %v took %v (grace %v)", closed.Sub(start), el, grace)
	}

	sb.setConns(netnsOf("stuck"), 2)
	start, done = rm("stuck")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < grace {
		t.Fatalf("rm of a backend serving connections took %v, less than its grace period %v", el, grace)
	}
	if _, err := d.Container("stuck"); err == nil {
		t.Fatal("the backend is still there after its grace period")
	}
}

// FuzzDecodeService runs arbitrary services-table values through the
// decoder: it never panics, and what it accepts is canonical (encoding
// the record again and decoding it gives the same record) and makes
// balancer services that lb accepts.
func FuzzDecodeService(f *testing.F) {
	f.Add([]byte(`{"name":"api","id":"abababababababababababababababab","endpoint_mode":"vip","vips":[{"network":"web","vip":"10.0.0.200"}],"scheduler":"rr","stop_grace_period":"10s","dns_ttl":"10s","created":"2026-01-01T00:00:00Z","created_by":"h1"}`))
	f.Add([]byte(`{"name":"api","id":"abababababababababababababababab","endpoint_mode":"vip","vips":[{"network":"a","vip":"10.0.0.2"},{"network":"b","vip":"10.0.1.2"}],"scheduler":"maglev","affinity":"client-ip:5m0s","ports":["80/tcp","8080:80/tcp","53/udp"],"health":"http::80/healthz","stop_grace_period":"1m30s","dns_ttl":"0s","created":"2026-01-01T00:00:00Z","created_by":"h1"}`))
	f.Add([]byte(`{"name":"rr","id":"abababababababababababababababab","endpoint_mode":"dnsrr","vips":[{"network":"web"}],"scheduler":"wrr","health":"tcp:80","stop_grace_period":"0s","dns_ttl":"600s","created":"2026-01-01T00:00:00Z","created_by":"h1"}`))
	f.Add([]byte(`{"name":"x","vips":[{"network":"web","vip":"::1"}]}`))
	f.Fuzz(func(t *testing.T, value []byte) {
		var probe svcRecord
		if json.Unmarshal(value, &probe) != nil {
			probe.Name = "x"
		}
		s, err := decodeService(cluster.Entry{Key: probe.Name, Value: value})
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error on several lines: %q", err)
			}
			return
		}
		b, _ := json.Marshal(s.rec)
		again, err := decodeService(cluster.Entry{Key: probe.Name, Value: b})
		if err != nil || !reflect.DeepEqual(again.rec, s.rec) {
			t.Fatalf("accepted %s, but not its re-encoding %s: %v", value, b, err)
		}
		for _, vip := range s.vips {
			if !vip.IsValid() {
				continue
			}
			svc := lb.Service{Name: s.rec.Name, VIP: vip, Ports: s.ports, Scheduler: s.sched, Affinity: s.affinity}
			if err := svc.Validate(); err != nil {
				t.Fatalf("accepted %s, which lb refuses: %v", value, err)
			}
		}
	})
}

func TestInvalidServiceRecordsAreRefusedAndCounted(t *testing.T) {
	d := serviceDaemon(t)
	peer := fuzzPeer(t, d)
	put := func(table, key, value string) {
		t.Helper()
		if err := peer.Put(table, key, []byte(value)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the record on the daemon", func() bool { _, ok := d.cl.Get(table, key); return ok })
	}
	good := `{"name":"api","id":"abababababababababababababababab","endpoint_mode":"vip","vips":[{"network":"web","vip":"10.9.0.200"}],"scheduler":"rr","stop_grace_period":"10s","dns_ttl":"10s","created":"2026-01-01T00:00:00Z","created_by":"peer"}`
	put(tblServices, "api", good)
	put(tblServices, "bad", strings.ReplaceAll(strings.ReplaceAll(good, `"api"`, `"bad"`), `"rr"`, `"random"`))
	put(tblServices, "outside", strings.ReplaceAll(strings.ReplaceAll(good, `"api"`, `"outside"`), "10.9.0.200", "192.168.0.1"))
	waitFor(t, "the refusal counted", func() bool { return d.Stats().RefusedRecords[tblServices] == 1 })
	if _, err := d.Service("bad"); err == nil {
		t.Fatal("an invalid service record is shown")
	}
	// A VIP outside its network's subnet is not balanced nor answered.
	svcs := desiredServices(d, "web")
	if len(svcs) != 1 || svcs[0].Name != "api" {
		t.Fatalf("desired services: %+v", svcs)
	}
	if d.Stats().RefusedRecords["service-conflict"] == 0 {
		t.Fatal("the VIP outside the subnet was not counted")
	}
	// An endpoint record with a bad membership is refused whole.
	put(tblEndpoints, "peer/web/e", `{"name":"e","network":"web","ip":"10.9.0.50","mac":"02:42:0a:09:00:32","node":"peer","services":[{"name":"api","id":"abababababababababababababababab","weight":0,"state":"active","health":"healthy"}]}`)
	waitFor(t, "the endpoint refused", func() bool { return d.Stats().RefusedRecords[tblEndpoints] == 1 })
}

func TestServiceUpdate(t *testing.T) {
	d := serviceDaemon(t)
	s := mustCreateService(t, d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}, Ports: []string{"80"}})
	str := func(v string) *string { return &v }
	port := 8080
	up, err := d.UpdateService("api", api.ServiceUpdateRequest{
		AddNetworks: []string{"db"}, VIPs: []string{"db=10.9.1.77"}, Scheduler: str("p2c"), Affinity: str("client-ip"),
		Ports: &[]string{}, HealthTCP: &port, StopGracePeriod: str("1m"), DNSTTL: str("30s"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmtVIPList(up.VIPs) != "db=10.9.1.77,web="+s.VIPs[0].VIP || up.Scheduler != "p2c" || up.Affinity != "client-ip:5m0s" ||
		len(up.Ports) != 0 || up.HealthCheck != "tcp:8080" || up.StopGracePeriod != "1m0s" || up.DNSTTL != "30s" || up.ID != s.ID {
		t.Fatalf("updated: %+v", up)
	}
	if svcs := desiredServices(d, "db"); len(svcs) != 1 || svcs[0].VIP != netip.MustParseAddr("10.9.1.77") || svcs[0].Scheduler != lb.PowerOfTwo {
		t.Fatalf("desired services of db: %+v", svcs)
	}
	// Bad updates change nothing.
	for _, tc := range []struct {
		req  api.ServiceUpdateRequest
		want string
	}{
		{api.ServiceUpdateRequest{AddNetworks: []string{"nope"}}, `network "nope": not found`},
		{api.ServiceUpdateRequest{AddNetworks: []string{"web"}}, "already one of its networks"},
		{api.ServiceUpdateRequest{RemoveNetworks: []string{"web", "db"}}, "no network left"},
		{api.ServiceUpdateRequest{VIPs: []string{"web=10.9.1.5"}}, "not a host address"},
		{api.ServiceUpdateRequest{Scheduler: str("fastest")}, `scheduler "fastest"`},
		{api.ServiceUpdateRequest{DNSTTL: str("1ms")}, "whole seconds"},
		{api.ServiceUpdateRequest{EndpointMode: str("dnsrr"), VIPs: []string{"web=10.9.0.9"}}, "dnsrr service has no VIP"},
	} {
		if _, err := d.UpdateService("api", tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("update %+v: got %v, want %q", tc.req, err, tc.want)
		}
	}
	if _, err := d.UpdateService("nope", api.ServiceUpdateRequest{}); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("update of a missing service: %v", err)
	}
	if again, _ := d.Service("api"); fmtVIPList(again.VIPs) != fmtVIPList(up.VIPs) || again.Scheduler != "p2c" {
		t.Fatalf("a refused update changed the service: %+v", again)
	}
	// Moving the VIP and dropping a network; then dnsrr drops every VIP.
	up, err = d.UpdateService("api", api.ServiceUpdateRequest{RemoveNetworks: []string{"db"}, VIPs: []string{"web=10.9.0.99"}, Affinity: str("none")})
	if err != nil || fmtVIPList(up.VIPs) != "web=10.9.0.99" || up.Affinity != "" {
		t.Fatalf("update: %+v, %v", up, err)
	}
	if len(desiredServices(d, "db")) != 0 {
		t.Fatal("the removed network still has the service")
	}
	up, err = d.UpdateService("api", api.ServiceUpdateRequest{EndpointMode: str("dnsrr")})
	if err != nil || fmtVIPList(up.VIPs) != "web" || len(desiredServices(d, "web")) != 0 {
		t.Fatalf("to dnsrr: %+v, %v", up, err)
	}
	// The old VIP is free again.
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c", Create: true, IP: "10.9.0.99"})
}

func fmtVIPList(vs []api.ServiceVIP) string {
	var out []string
	for _, v := range vs {
		s := v.Network
		if v.VIP != "" {
			s += "=" + v.VIP
		}
		out = append(out, s)
	}
	return strings.Join(out, ",")
}

func TestServicesInDNS(t *testing.T) {
	d := serviceDaemon(t)
	s := mustCreateService(t, d, api.ServiceCreateRequest{Name: "API", Networks: []string{"web"}, Ports: []string{"80"}, DNSTTL: "7s"})
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "rr", Networks: []string{"web"}, EndpointMode: "dnsrr"})
	b := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "b", Create: true, Services: []api.ServiceMember{{Name: "API"}, {Name: "rr"}}})
	d.mu.Lock()
	got := d.serviceSet(d.endpointSet().accepted).dnsServices()
	d.mu.Unlock()
	bip := netip.MustParseAddr(b.IP)
	if len(got) != 2 || got[0].Name != "api" || got[0].Network != "web" || got[0].VIP != netip.MustParseAddr(s.VIPs[0].VIP) ||
		got[0].TTL != 7*time.Second || len(got[0].Ports) != 1 || !slices.Equal(got[0].Tasks, []netip.Addr{bip}) {
		t.Fatalf("dns services: %+v", got)
	}
	if got[1].Name != "rr" || got[1].VIP.IsValid() || !slices.Equal(got[1].Tasks, []netip.Addr{bip}) {
		t.Fatalf("dnsrr service: %+v", got[1])
	}
	// Unhealthy backends: see TestHealthCheck*.
}
