package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

func TestTraceUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"trace", "--from", "c1", "--to", "10.0.1.3"}, "vxmesh trace: --network NET is required"},
		{[]string{"trace", "--network", "web", "--to", "10.0.1.3"}, "vxmesh trace: --from CONTAINER|IP is required"},
		{[]string{"trace", "--network", "web", "--from", "c1"}, "vxmesh trace: --to IP[:PORT/PROTO] is required"},
		{[]string{"trace", "--network", "web", "--from", "c1", "--to", "db:80"}, `vxmesh trace: --to: target "db:80": "db" is not an IPv4 address`},
		{[]string{"trace", "--network", "web", "--from", "c1", "--to", "10.0.1.3:80/sctp"}, `vxmesh trace: --to: target "10.0.1.3:80/sctp": protocol "sctp"`},
		{[]string{"trace", "--network", "web", "--from", "c1", "--to", "10.0.1.3", "--size", "70000"}, "vxmesh trace: --size 70000: want 0-65535"},
		{[]string{"trace", "c1"}, "vxmesh trace: want no arguments"},
	} {
		code, out, errs := cli(tc.args...)
		if code != exitUsage || out != "" || !strings.HasPrefix(errs, tc.want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("vxmesh %s: exit %d, stdout %q, stderr %q; want exit 2 and one line starting %q", strings.Join(tc.args, " "), code, out, errs, tc.want)
		}
	}
}

// trace sends the request the flags describe and prints the daemon's
// steps, numbered, or the trace as JSON.
func TestTracePrintsSteps(t *testing.T) {
	answer := api.Trace{Network: "web", Container: "c1", Port: "c1/eth0", SrcMAC: "02:42:0a:00:01:02", Src: "10.0.1.2",
		Dst: "10.0.1.100", Proto: "tcp", DstPort: 80, NextHop: "10.0.1.100", DstMAC: "02:42:0a:00:01:64",
		Steps: []api.TraceStep{{Stage: "balancer", Result: `service "api" (VIP 10.0.1.100): new connection, scheduler rr picks backend 10.0.1.7`},
			{Stage: "tunnel", Result: "sealed with ESP aes128-gcm, SA SPI 0x00001234"}},
		Service: &api.TraceService{Name: "api", Backend: "10.0.1.7"}, Verdict: "tunnel"}
	var got api.TraceRequest
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/trace" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		json.NewDecoder(r.Body).Decode(&got)
		json.NewEncoder(w).Encode(answer)
	}))
	srv.Listener = l
	srv.Start()
	defer srv.Close()

	code, out, errs := cli("trace", "--socket", sock, "--network", "web", "--from", "c1", "--to", "10.0.1.100:80", "--size", "1400")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if got != (api.TraceRequest{Network: "web", From: "c1", To: "10.0.1.100:80", Size: 1400}) {
		t.Fatalf("request %+v", got)
	}
	for _, want := range []string{"Flow: tcp 10.0.1.2 (c1, 02:42:0a:00:01:02) -> 10.0.1.100:80 (02:42:0a:00:01:64) on network web, port c1/eth0\n",
		" 1. balancer:     service \"api\"", " 2. tunnel:       sealed with ESP aes128-gcm, SA SPI 0x00001234\n"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = cli("trace", "--socket", sock, "--network", "web", "--from", "c1", "--to", "10.0.1.100:80", "--format", "json")
	var back api.Trace
	if code != 0 || json.Unmarshal([]byte(out), &back) != nil || back.Service == nil || back.Service.Backend != "10.0.1.7" || back.Flood == nil {
		t.Fatalf("--format json: exit %d\n%s", code, out)
	}
}
