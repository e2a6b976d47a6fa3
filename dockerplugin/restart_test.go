package dockerplugin

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

const epID2 = "4a1f0c2b9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"

// restartPlugin replaces tp's plugin by a new one on the same backend,
// engine and state file: a daemon restart as the plugin sees it (the
// backend keeps its endpoints, which the daemon saves, and forgets its
// IPAM holds, which it does not).
func (tp *testPlugin) restartPlugin(stateFile string) {
	tp.t.Helper()
	tp.srv.Close()
	tp.p.Close()
	tp.b.forgetHolds()
	tp.p = New(Config{Backend: tp.b, Engine: tp.e, Driver: "vxmesh", StateFile: stateFile, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	tp.srv = httptest.NewServer(tp.p.Handler())
	tp.t.Cleanup(func() {
		tp.srv.Close()
		tp.p.Close()
	})
}

// TestEndpointRecordsSurviveRestart: the endpoints Docker created are
// known to a restarted plugin: one created but not joined yet joins on
// the address it was given (held again meanwhile, so that no one else
// takes it), a joined one leaves and is deleted, and the state file
// forgets both.
func TestEndpointRecordsSurviveRestart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "docker-plugin.json")
	b := newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"})
	tp := newTestPlugin(t, b, &fakeEngine{})
	tp.restartPlugin(state)
	tp.createWeb()
	tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID, "Interface": map[string]string{"Address": "10.1.0.5/24"}})
	tp.ok("NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID, "SandboxKey": "/var/run/docker/netns/1"})
	// Docker's default IPAM gave no address: the plugin holds one.
	ep := tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID2})
	held := strings.TrimSuffix(ep["Interface"].(map[string]any)["Address"].(string), "/24")

	tp.restartPlugin(state)
	if _, err := tp.b.ReserveAddress("web", mustAddr(held)); err == nil {
		t.Fatalf("address %s of the endpoint not joined yet is free after the restart", held)
	}
	tp.ok("NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID2, "SandboxKey": "/var/run/docker/netns/2"})
	if eps := tp.b.Endpoints(); len(eps) != 2 || eps[1].IP != held {
		t.Fatalf("endpoints after a Join across the restart: %+v (want the second on %s)", eps, held)
	}
	tp.ok("NetworkDriver.Leave", map[string]any{"NetworkID": netID, "EndpointID": epID})
	tp.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID})
	tp.restartPlugin(state)
	tp.ok("NetworkDriver.Leave", map[string]any{"NetworkID": netID, "EndpointID": epID2})
	tp.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID2})
	if eps := tp.b.Endpoints(); len(eps) != 0 || len(tp.b.held) != 0 {
		t.Fatalf("after Leave and DeleteEndpoint: endpoints %+v, held %v", eps, tp.b.held)
	}
	raw, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	var s savedState
	if err := json.Unmarshal(raw, &s); err != nil || len(s.Endpoints) != 0 {
		t.Fatalf("state file after every endpoint was deleted: %s (%v)", raw, err)
	}
}

// TestBadStateFileIgnored: a state file that does not parse is logged,
// set aside whole (STATE.bad) and otherwise ignored; the plugin starts
// without records and writes a new one.
func TestBadStateFileIgnored(t *testing.T) {
	state := filepath.Join(t.TempDir(), "docker-plugin.json")
	for _, bad := range []string{"{", `{"endpoints":{"zz":{"network":"web","ip":"10.1.0.5"}}}`, `{"endpoints":{"` + epID + `":{"network":"web","ip":"fd00::5"}}}`} {
		if _, err := parseState([]byte(bad)); err == nil {
			t.Errorf("state %s parsed", bad)
		}
	}
	os.WriteFile(state, []byte("{"), 0o600)
	tp := newTestPlugin(t, newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"}), &fakeEngine{})
	tp.restartPlugin(state)
	tp.createWeb()
	tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID, "Interface": map[string]string{"Address": "10.1.0.5/24"}})
	eps, err := loadState(state)
	if err != nil || eps[epID].ip.String() != "10.1.0.5" || eps[epID].network != "web" {
		t.Fatalf("state after CreateEndpoint: %+v, %v", eps, err)
	}
	if b, err := os.ReadFile(state + ".bad"); err != nil || string(b) != "{" {
		t.Fatalf("the bad state file set aside: %q, %v; want it whole", b, err)
	}
}

// TestPublishedPorts: `docker run -p` publishes the joined endpoint's
// ports like `vxmesh run -p`, a busy one is refused with the backend's
// message, what vxmesh cannot honour is refused naming the port, and
// RevokeExternalConnectivity closes them.
func TestPublishedPorts(t *testing.T) {
	tp := newTestPlugin(t, newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"}), &fakeEngine{})
	tp.createWeb()
	for _, id := range []string{epID, epID2} {
		tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": id})
		tp.ok("NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": id, "SandboxKey": "/var/run/docker/netns/" + id[:4]})
	}
	// What Docker 20.10 sends for -p 18080:80 -p 127.0.0.1:5353:53/udp.
	pm := `[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":18080,"HostPortEnd":18080},{"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":5353,"HostPortEnd":5353}]`
	var v any
	json.Unmarshal([]byte(pm), &v)
	tp.ok("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": netID, "EndpointID": epID, "Options": map[string]any{portMapOption: v}})
	ports := func(name string) string {
		var out []string
		for _, e := range tp.b.Endpoints() {
			if e.Name == name {
				for _, p := range e.Published {
					out = append(out, p.Spec)
				}
			}
		}
		return strings.Join(out, ",")
	}
	if got := ports("docker-" + epID[:12]); got != "18080:80/tcp,127.0.0.1:5353:53/udp" {
		t.Fatalf("published ports = %q", got)
	}
	tp.refused("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": netID, "EndpointID": epID2, "Options": map[string]any{portMapOption: v}}, "18080:80/tcp: host port is already in use")
	tp.ok("NetworkDriver.RevokeExternalConnectivity", map[string]any{"NetworkID": netID, "EndpointID": epID})
	if got := ports("docker-" + epID[:12]); got != "" {
		t.Fatalf("ports after revoke = %q", got)
	}
	tp.ok("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": netID, "EndpointID": epID2, "Options": map[string]any{portMapOption: v}})
	// Without -p Docker sends an empty map: nothing to publish.
	tp.ok("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": netID, "EndpointID": epID, "Options": map[string]any{portMapOption: []any{}}})
}

// TestParsePortMap: each binding Docker may send becomes a `run -p` spec
// or a refusal naming the port and what to do.
func TestParsePortMap(t *testing.T) {
	for _, tc := range []struct {
		pm   string
		want string // specs joined by ",", or the refusal
	}{
		{`null`, ""},
		{`[]`, ""},
		{`[{"Proto":6,"Port":80,"HostPort":8080}]`, "8080:80/tcp"},
		{`[{"Proto":6,"Port":80,"HostIP":"0.0.0.0","HostPort":8080,"HostPortEnd":8080},{"Proto":6,"Port":80,"HostIP":"::","HostPort":8080,"HostPortEnd":8080}]`, "8080:80/tcp"},
		{`[{"Proto":17,"Port":53,"HostIP":"10.0.0.1","HostPort":53}]`, "10.0.0.1:53:53/udp"},
		{`[{"Proto":6,"Port":80,"HostPort":0}]`, "published port 80/tcp: no host port (docker run -p 80 or -P)"},
		{`[{"Proto":6,"Port":80,"HostPort":8000,"HostPortEnd":8010}]`, "host port range 8000-8010"},
		{`[{"Proto":132,"Port":80,"HostPort":8000}]`, "80/sctp: SCTP is not supported"},
		{`[{"Proto":1,"Port":80,"HostPort":8000}]`, "protocol 1"},
		{`[{"Proto":6,"Port":0,"HostPort":8000}]`, "container port out of range"},
		{`[{"Proto":6,"Port":80,"HostPort":70000}]`, "host port 70000 out of range"},
		{`[{"Proto":6,"Port":80,"HostIP":"fd00::1","HostPort":8000}]`, "IPv4 addresses only"},
		{`[{"Proto":6,"Port":80,"HostIP":"banana","HostPort":8000}]`, `host address "banana"`},
		{`{"Proto":6}`, "want a list of port bindings"},
		{`[{"Proto":"tcp"}]`, "want a list of port bindings"},
	} {
		var v any
		if err := json.Unmarshal([]byte(tc.pm), &v); err != nil {
			t.Fatal(err)
		}
		specs, err := parsePortMap(v)
		got := strings.Join(specs, ",")
		if err != nil {
			got = err.Error()
		}
		if !strings.Contains(got, tc.want) || (tc.want == "" && got != "") {
			t.Errorf("%s: %q, want %q", tc.pm, got, tc.want)
		}
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestStoppedWhileDownRemoved: after a restart, the endpoint of a
// container that stopped while the daemon was down (restored down, and
// the Engine runs no container with it) is removed with its record; a
// down endpoint whose container runs is left for the operator to see.
func TestStoppedWhileDownRemoved(t *testing.T) {
	state := filepath.Join(t.TempDir(), "docker-plugin.json")
	b := newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"})
	tp := newTestPlugin(t, b, &fakeEngine{})
	tp.restartPlugin(state)
	tp.createWeb()
	for i, id := range []string{epID, epID2} {
		tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": id})
		tp.ok("NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": id, "SandboxKey": "/var/run/docker/netns/" + id[:4]})
		tp.e.addContainer(id, []string{"d1", "d2"}[i])
	}
	// The daemon restarts with both endpoints down; d1 stopped meanwhile.
	b.mu.Lock()
	for i := range b.eps {
		b.eps[i].State = "down: netns gone"
	}
	b.mu.Unlock()
	tp.e.mu.Lock()
	delete(tp.e.ctrs, epID)
	tp.e.mu.Unlock()
	tp.restartPlugin(state)
	deadline := time.Now().Add(10 * time.Second)
	for {
		eps := b.Endpoints()
		recs, _ := loadState(state)
		if len(eps) == 1 && eps[0].Name == "docker-"+epID2[:12] && len(recs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoints %+v, records %v; want only d2's", eps, recs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUnnamedEndpointNamedAfterRestart: a daemon stopped after Join but
// before the Engine listed the started container (so before the endpoint
// got the container's name) names it once it is back, so that other
// hosts resolve the container.
func TestUnnamedEndpointNamedAfterRestart(t *testing.T) {
	state := filepath.Join(t.TempDir(), "docker-plugin.json")
	tp := newTestPlugin(t, newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"}), &fakeEngine{})
	tp.restartPlugin(state)
	tp.createWeb()
	tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID})
	tp.ok("NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID, "SandboxKey": "/var/run/docker/netns/1"})
	tp.restartPlugin(state) // before the Engine lists the container
	if eps := tp.b.Endpoints(); len(eps) != 1 || len(eps[0].Aliases) != 0 {
		t.Fatalf("endpoints before the container is listed: %+v", eps)
	}
	tp.e.addContainer(epID, "d1")
	tp.restartPlugin(state)
	tp.waitAlias("d1")
}
