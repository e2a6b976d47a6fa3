package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// TestAPIStatusCodes: invalid requests are 400, unknown objects 404,
// conflicts with the current state 409, a failure of the daemon itself 500;
// the body carries the same one-line error as the daemon's method.
func TestAPIStatusCodes(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	d := newTestDaemon(t, sb, dir)
	defer d.Close()
	h := d.Handler()
	do := func(method, path, body string) (int, string) {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		var e api.Error
		json.Unmarshal(w.Body.Bytes(), &e)
		return w.Code, e.Error
	}
	steps := []struct {
		method, path, body string
		code               int
		msg                string
	}{
		{"POST", "/v1/networks", `{"name":"bad name"}`, 400, `network "bad name": invalid name`},
		{"POST", "/v1/networks", `{"name":"x","subnet":"banana"}`, 400, `not an IPv4 CIDR`},
		{"POST", "/v1/networks", `{"name":"x","mtu":50}`, 400, `out of range`},
		{"POST", "/v1/networks", `{"name":"x","subnet":"10.8.0.0/24","mtu":100}`, 400, `network "x": mtu 100: out of range 576-`},
		{"POST", "/v1/networks", `{"name":"x","subnet":"10.8.0.0/24","mtu":1451}`, 400, `network "x": mtu 1451: more than the underlay carries between hosts (1450: this host's underlay MTU 1500 less 50 of VXLAN); give at most 1450`},
		{"POST", "/v1/networks", `{"name":"x","subnet":"10.8.0.0/24","mtu":1406,"encrypted":true}`, 400, `(1405: this host's underlay MTU 1500 less 95 of VXLAN and ESP)`},
		{"POST", "/v1/networks", `{"name":"web","subnet":"10.9.0.0/24"}`, 200, ``},
		{"POST", "/v1/networks", `{"name":"web"}`, 409, `network "web": already exists`},
		{"POST", "/v1/networks", `{"name":"x","subnet":"10.9.0.0/25"}`, 409, `overlaps network "web"`},
		{"GET", "/v1/networks/nosuch", ``, 404, `network "nosuch": not found`},
		{"POST", "/v1/endpoints", `{"network":"web","name":"c1","create":true}`, 200, ``},
		{"POST", "/v1/endpoints", `{"network":"web","name":"c1","create":true}`, 409, `container "c1": already exists`},
		{"POST", "/v1/endpoints", `{"network":"web","name":"c2","create":true,"ip":"10.8.0.5"}`, 400, `not a host address`},
		{"POST", "/v1/endpoints", `{"network":"web","name":"c2","create":true,"ip":"10.9.0.2"}`, 409, `already in use`},
		{"POST", "/v1/endpoints", `{"network":"web","name":"c2","netns":"/nonexistent"}`, 400, `netns /nonexistent`},
		{"POST", "/v1/endpoints", `{"network":"nosuch","name":"c2","create":true}`, 404, `network "nosuch": not found`},
		{"DELETE", "/v1/networks/web", ``, 409, `still has 1 endpoint(s) attached (c1)`},
		{"DELETE", "/v1/containers/nosuch", ``, 404, `container "nosuch": not found`},
		{"POST", "/v1/networks", `{"name":"x","bogus":1}`, 400, `unknown field`},
		{"GET", "/v1/nosuch", ``, 404, `GET /v1/nosuch: no such API path`},
		{"PUT", "/v1/networks", ``, 405, `PUT /v1/networks: method not allowed (allowed: GET, HEAD, POST)`},
	}
	for _, s := range steps {
		code, msg := do(s.method, s.path, s.body)
		if code != s.code || !strings.Contains(msg, s.msg) || strings.Contains(msg, "\n") {
			t.Errorf("%s %s %s: %d %q, want %d with %q", s.method, s.path, s.body, code, msg, s.code, s.msg)
		}
	}
	unblock := blockSave(t, dir)
	if code, msg := do("DELETE", "/v1/containers/c1", ""); code != 500 || !strings.Contains(msg, "saving state") {
		t.Errorf("rm with a failing save: %d %q, want 500", code, msg)
	}
	unblock()
}

// TestAttachDaemonOwnNetnsRefused: the daemon's own namespace, by path or
// by a process in it, is never wired in as a container.
func TestAttachDaemonOwnNetnsRefused(t *testing.T) {
	sb := newFakeSandbox()
	sb.addNetns("/proc/self/ns/net")
	sb.ns["/proc/77/ns/net"] = sb.ns["/proc/self/ns/net"]
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	for _, req := range []api.AttachRequest{
		{Network: "web", Name: "c1", Netns: "/proc/self/ns/net"},
		{Network: "web", Name: "c1", PID: 77},
	} {
		_, err := d.Attach(req)
		if err == nil || !strings.Contains(err.Error(), "the daemon's own network namespace") {
			t.Errorf("attach %+v: %v, want a refusal", req, err)
		}
	}
	if len(d.Containers()) != 0 || sb.iface("/proc/self/ns/net", "eth0") != nil {
		t.Fatal("a refused attach left a container or an interface")
	}
}

// TestSecondDaemonOnBusySocketRefusedEarly: a daemon whose socket another
// daemon answers on fails before it takes the gossip port.
func TestSecondDaemonOnBusySocketRefusedEarly(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vxmesh.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := netip.MustParseAddr("127.0.0.1")
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h2", addr, newFakeSandbox(), t.TempDir())
	cfg.Socket = sock
	d, err := New(cfg)
	if err == nil {
		d.Close()
		t.Fatal("a second daemon on a busy socket started")
	}
	if !strings.Contains(err.Error(), "socket "+sock+": another daemon is listening on it") {
		t.Fatalf("error %q does not name the busy socket", err)
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(addr, uint16(cfg.GossipPort)).String())
	if err != nil {
		t.Fatalf("the refused daemon left its gossip port taken: %v", err)
	}
	l.Close()
}

// TestAPITimeouts: a client that stalls in the middle of its request is
// cut off, while a request whose work takes longer than the timeouts (rm
// waiting for processes) is answered.
func TestAPITimeouts(t *testing.T) {
	sb := newFakeSandbox()
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, t.TempDir())
	cfg.Socket = filepath.Join(t.TempDir(), "vxmesh.sock")
	cfg.apiTimeouts = &apiTimeouts{header: 200 * time.Millisecond, request: 300 * time.Millisecond, idle: 300 * time.Millisecond}
	d := startNode(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx) }()
	defer func() { cancel(); <-served }()
	c := api.NewClient(cfg.Socket)
	waitFor(t, "the API answers", func() bool { _, err := c.Networks(); return err == nil })

	conn, err := net.Dial("unix", cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"name":`
	req := "POST /v1/networks HTTP/1.1\r\nHost: vxmesh\r\nContent-Type: application/json\r\nContent-Length: " +
		strconv.Itoa(len(body)+100) + "\r\n\r\n" + body
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("a stalled request was not cut off: %v", err)
	}

	if _, err := c.CreateNetwork(api.NetworkCreateRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Attach(api.AttachRequest{Network: "web", Name: "c1", Create: true}); err != nil {
		t.Fatal(err)
	}
	sb.killWait = time.Second
	if err := c.RemoveContainer("c1"); err != nil {
		t.Fatalf("rm taking longer than the timeouts: %v", err)
	}
}

// TestClientLetsIdleConnectionsGoBeforeTheDaemon: api.Client drops an
// idle connection before the daemon would close it, so that a long-lived
// client does not send a request on a connection being closed.
func TestClientLetsIdleConnectionsGoBeforeTheDaemon(t *testing.T) {
	if api.ClientIdleTimeout >= apiIdleTimeout {
		t.Fatalf("the client keeps idle connections %v, the daemon %v", api.ClientIdleTimeout, apiIdleTimeout)
	}
}

// An attach whose namespace cannot be opened says why once: a --pid of no
// process says "no such process", a path is named once.
func TestAttachMissingNamespaceSaysWhy(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	for _, tc := range []struct {
		req  api.AttachRequest
		want string
	}{
		{api.AttachRequest{Network: "web", Name: "c1", PID: 999999}, `container "c1": --pid 999999: no such process`},
		{api.AttachRequest{Network: "web", Name: "c1", Netns: "/run/netns/gone"}, `container "c1": netns /run/netns/gone: file does not exist`},
	} {
		_, err := d.Attach(tc.req)
		if err == nil || err.Error() != tc.want {
			t.Errorf("attach %+v: %v, want %q", tc.req, err, tc.want)
		}
	}
}

// TestAttachRefusesNamesThatCannotResolve: the name of a container run
// makes, or an alias, with a part longer than a DNS label (63) or an
// empty part is refused (no one could reach it by that name); 63 passes,
// and an attached namespace's name is not held to it.
func TestAttachRefusesNamesThatCannotResolve(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("a", 64)
	for _, req := range []api.AttachRequest{
		{Network: "web", Name: long, Create: true},
		{Network: "web", Name: "c1", Create: true, Aliases: []string{long}},
		{Network: "web", Name: "a..b", Create: true},
		{Network: "web", Name: "c1.", Create: true},
	} {
		if _, err := d.Attach(req); err == nil || !strings.Contains(err.Error(), "could never resolve") {
			t.Errorf("attach %s aliases %v: %v, want refused", req.Name, req.Aliases, err)
		}
	}
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: long[:63], Create: true, Aliases: []string{"x." + long[:60]}})
	// An attached namespace's name may be an internal one (the CNI
	// plugin's are 64 characters).
	d.sb.(*fakeSandbox).addNetns("/run/netns/pod")
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: long, Netns: "/run/netns/pod"})
}

// TestAPIRefusesAnOversizedBody: a request body over maxRequestBody is
// refused with 413 and an api.Error saying why, before any handler runs.
func TestAPIRefusesAnOversizedBody(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	defer d.Close()
	body := `{"name":"` + strings.Repeat("x", maxRequestBody) + `"}`
	r := httptest.NewRequest("POST", "/v1/networks", strings.NewReader(body))
	w := httptest.NewRecorder()
	readRequestFirst(d.Handler()).ServeHTTP(w, r)
	var e api.Error
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || w.Code != 413 || !strings.Contains(e.Error, "larger than") {
		t.Fatalf("oversized body: %d %q (%v), want 413 and why", w.Code, w.Body.String(), err)
	}
	if len(d.Networks()) != 0 {
		t.Fatalf("networks after a refused create: %v", d.Networks())
	}
}
