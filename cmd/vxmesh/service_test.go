package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

// recorder is a daemon that records the bodies of mutating requests and
// answers GET /v1/services/NAME for the services it knows.
type recorder struct {
	mu       sync.Mutex
	requests []string // METHOD PATH BODY
	services map[string]api.Service
}

func recordingDaemon(t *testing.T, services ...api.Service) (*recorder, string) {
	t.Helper()
	rec := &recorder{services: map[string]api.Service{}}
	for _, s := range services {
		rec.services[s.Name] = s
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			s, ok := rec.services[strings.TrimPrefix(r.URL.Path, "/v1/services/")]
			if !ok {
				w.WriteHeader(http.StatusNotFound)
				json.NewEncoder(w).Encode(api.Error{Error: "service not found"})
				return
			}
			json.NewEncoder(w).Encode(s)
			return
		}
		b, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.requests = append(rec.requests, r.Method+" "+r.URL.Path+" "+strings.TrimSpace(string(b)))
		rec.mu.Unlock()
		w.Write([]byte(`{"name":"x","netns":"/run/netns/x"}`))
	}))
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return rec, sock
}

func (r *recorder) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.requests...)
}

// body decodes the JSON body of a recorded request into v.
func body(t *testing.T, req string, v any) {
	t.Helper()
	_, js, _ := strings.Cut(req[strings.Index(req, " ")+1:], " ")
	if err := json.Unmarshal([]byte(js), v); err != nil {
		t.Fatalf("request %q: %v", req, err)
	}
}

func TestServiceCreateSendsEveryFlag(t *testing.T) {
	rec, sock := recordingDaemon(t)
	code, _, errs := cli("service", "create", "api", "--socket", sock, "--network", "web", "--network", "db", "--vip", "web=10.0.1.200",
		"--endpoint-mode", "vip", "--scheduler", "wrr", "--affinity", "client-ip:30m", "--port", "80/tcp", "--port", "8080:80/tcp",
		"--health-http", ":80/healthz", "--stop-grace-period", "20s", "--dns-ttl", "5s")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	reqs := rec.got()
	if len(reqs) != 1 || !strings.HasPrefix(reqs[0], "POST /v1/services ") {
		t.Fatalf("requests %q", reqs)
	}
	var got api.ServiceCreateRequest
	body(t, reqs[0], &got)
	want := api.ServiceCreateRequest{Name: "api", Networks: []string{"web", "db"}, VIPs: []string{"web=10.0.1.200"}, EndpointMode: "vip",
		Scheduler: "wrr", Affinity: "client-ip:30m", Ports: []string{"80/tcp", "8080:80/tcp"}, HealthHTTP: ":80/healthz",
		StopGracePeriod: "20s", DNSTTL: "5s"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("sent %+v\nwant %+v", got, want)
	}
}

func TestServiceUpdateSendsOnlyTheFlagsGiven(t *testing.T) {
	rec, sock := recordingDaemon(t)
	if code, _, errs := cli("service", "update", "api", "--socket", sock, "--network-add", "db", "--scheduler", "lc", "--no-ports", "--health-tcp", "80"); code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	reqs := rec.got()
	if len(reqs) != 1 || !strings.HasPrefix(reqs[0], "PATCH /v1/services/api ") {
		t.Fatalf("requests %q", reqs)
	}
	var got map[string]any
	body(t, reqs[0], &got)
	want := map[string]any{"add_networks": []any{"db"}, "scheduler": "lc", "ports": []any{}, "health_tcp": float64(80)}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("sent %v, want %v", got, want)
	}
}

func TestRunJoinsServicesOnTheirNetworks(t *testing.T) {
	rec, sock := recordingDaemon(t,
		api.Service{Name: "api", VIPs: []api.ServiceVIP{{Network: "web", VIP: "10.0.1.200"}}},
		api.Service{Name: "both", VIPs: []api.ServiceVIP{{Network: "web", VIP: "10.0.1.201"}, {Network: "db", VIP: "10.0.2.201"}}},
		api.Service{Name: "other", VIPs: []api.ServiceVIP{{Network: "elsewhere"}}})
	// What run does before it starts the command (which needs a real
	// namespace).
	members, err := parseServiceFlags([]string{"api:5", "both"})
	if err != nil {
		t.Fatal(err)
	}
	c := api.NewClient(sock)
	svcs, err := splitServices(c, []string{"web", "db"}, members)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attachAll(&cliEnv{stdout: io.Discard, stderr: io.Discard}, c, attachSpec{name: "c1", netws: []string{"web", "db"}}, svcs); err != nil {
		t.Fatal(err)
	}
	reqs := rec.got()
	if len(reqs) < 2 {
		t.Fatalf("requests %q", reqs)
	}
	var first, second api.AttachRequest
	body(t, reqs[0], &first)
	body(t, reqs[1], &second)
	if first.Network != "web" || !reflect.DeepEqual(first.Services, []api.ServiceMember{{Name: "api", Weight: 5}, {Name: "both"}}) {
		t.Fatalf("first attach %+v", first)
	}
	if second.Network != "db" || !reflect.DeepEqual(second.Services, []api.ServiceMember{{Name: "both"}}) {
		t.Fatalf("second attach %+v", second)
	}
	// A service on none of the container's networks, or unknown: refused
	// before anything is created.
	rec2, sock2 := recordingDaemon(t, api.Service{Name: "other", VIPs: []api.ServiceVIP{{Network: "elsewhere"}}})
	for _, tc := range []struct{ svc, want string }{
		{"other", `vxmesh run: service "other": not on the container's network(s) web (its networks: elsewhere)`},
		{"nope", "vxmesh run: service not found"},
	} {
		code, _, errs := cli("run", "--socket", sock2, "-d", "--network", "web", "--name", "c2", "--service", tc.svc, "--", "true")
		if code != exitFailure || !strings.HasPrefix(errs, tc.want) {
			t.Errorf("--service %s: exit %d, %q; want 1 and %q", tc.svc, code, errs, tc.want)
		}
	}
	if reqs := rec2.got(); len(reqs) != 0 {
		t.Fatalf("a refused run sent %q", reqs)
	}
}

func TestServiceUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"service", "create", "api"}, `vxmesh service create: service "api": want --network NET`},
		{[]string{"service", "create"}, "vxmesh service create: want a service name, got 0 argument(s)"},
		{[]string{"service", "create", "api", "--network", "web", "--health-tcp", "x"}, "vxmesh service create: invalid value \"x\" for flag -health-tcp"},
		{[]string{"service", "update", "api"}, `vxmesh service update: service "api": nothing to update`},
		{[]string{"service", "update", "api", "--no-ports", "--port", "80"}, `vxmesh service update: service "api": --no-ports and --port: choose one`},
		{[]string{"service", "ps"}, "vxmesh service ps: want a service name"},
		{[]string{"service", "rm"}, "vxmesh service rm: want one or more service names"},
		{[]string{"service", "lss"}, `vxmesh service: unknown subcommand "lss": did you mean "ls"?`},
		{[]string{"servce", "ls"}, `vxmesh: unknown command "servce": did you mean "service"?`},
		{[]string{"attach", "--network", "web", "--name", "x", "--netns", "/x", "--service", "api:heavy"}, `vxmesh attach: --service "api:heavy": weight "heavy": want a positive integer`},
		{[]string{"run", "--network", "web", "--name", "x", "--service", ":3", "--", "true"}, `vxmesh run: --service ":3": want NAME or NAME:WEIGHT`},
		{[]string{"daemon", "--conntrack-max", "0"}, "vxmesh daemon: --conntrack-max 0: want a positive number"},
		{[]string{"daemon", "--conntrack-timeouts", "tcp=1h"}, `vxmesh daemon: --conntrack-timeouts: "tcp=1h": want NAME=DURATION with NAME one of eject, icmp,`},
		{[]string{"daemon", "--conntrack-timeouts", "udp=soon"}, "vxmesh daemon: --conntrack-timeouts: udp=soon: want a positive duration"},
	} {
		code, out, errs := cli(tc.args...)
		if code != exitUsage || out != "" || !strings.HasPrefix(errs, tc.want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("vxmesh %s: exit %d, stdout %q, stderr %q; want exit 2 and one line starting %q", strings.Join(tc.args, " "), code, out, errs, tc.want)
		}
	}
}

func TestParseConntrackTimeouts(t *testing.T) {
	got, err := parseConntrackTimeouts("tcp-established=2s, udp=1s,syn-retry=300ms")
	if err != nil || got.TCPEstablished.Seconds() != 2 || got.UDP.Seconds() != 1 || got.SynRetry.Milliseconds() != 300 || got.TCPSyn != 0 {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestServiceInspectAndPsShowBackends(t *testing.T) {
	sock := fakeDaemon(t)
	code, out, errs := cli("service", "inspect", "api", "--socket", sock)
	if code != 0 || !strings.Contains(out, "Networks:      web=10.0.1.200\n") || !strings.Contains(out, "Scheduler:     maglev\n") ||
		!strings.Contains(out, "On web (this node): 9 new connections, 2 active") || !strings.Contains(out, "Backends: 1\n") {
		t.Fatalf("exit %d, %s\n%s", code, errs, out)
	}
	code, out, _ = cli("service", "ps", "api", "--socket", sock, "--format", "{{.Node}} {{.Container}} {{.IP}} {{.State}} {{.ActiveConns}}")
	if code != 0 || out != "h1 c1 10.0.1.2 active 2\n" {
		t.Fatalf("service ps: exit %d, %q", code, out)
	}
	code, out, _ = cli("service", "ls", "--socket", sock)
	if code != 0 || !strings.Contains(out, "rr    ffeeddccbbaa  dnsrr") || !strings.Contains(out, "web=10.0.1.200") {
		t.Fatalf("service ls: exit %d\n%s", code, out)
	}
}
