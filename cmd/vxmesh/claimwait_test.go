package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// A create held up by a member declared dead says so on stderr, once per
// member, with how long ago it was declared dead and how much longer the
// wait lasts at most, and then prints its result as usual. The fake
// daemon answers the create only once the CLI asked three times what it
// waits for.
func TestCreateSaysWhichDeadMemberItWaitsFor(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		path   string
		answer any
	}{
		{[]string{"network", "create", "web"}, "/v1/networks", api.Network{Name: "web"}},
		{[]string{"service", "create", "api", "--network", "web"}, "/v1/services", api.Service{Name: "api"}},
	} {
		t.Run(tc.args[0], func(t *testing.T) {
			var asked atomic.Int64
			third := make(chan struct{})
			mux := http.NewServeMux()
			mux.HandleFunc("GET /v1/claim-waits", func(w http.ResponseWriter, r *http.Request) {
				if asked.Add(1) == 3 {
					close(third)
				}
				json.NewEncoder(w).Encode([]api.ClaimWait{{Node: "h3", DeadSeconds: 4.2, LeftSeconds: 25.8}})
			})
			mux.HandleFunc("POST "+tc.path, func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-third:
				case <-time.After(10 * time.Second):
				}
				json.NewEncoder(w).Encode(tc.answer)
			})
			sock := serveAPI(t, mux)
			var out, errb bytes.Buffer
			code := runCLI(&cliEnv{stdout: &out, stderr: &errb, claimPoll: 10 * time.Millisecond}, append(tc.args, "--socket", sock))
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			if asked.Load() < 3 {
				t.Fatalf("the CLI asked %d times what the create waits for", asked.Load())
			}
			want := "waiting for h3 (declared dead 4s ago) to be released from the cluster, at most 26s more\n"
			if errb.String() != want {
				t.Fatalf("stderr %q, want %q (once)", errb.String(), want)
			}
			if name := tc.args[2]; strings.TrimSpace(out.String()) != name {
				t.Fatalf("stdout %q, want %q", out.String(), name)
			}
		})
	}
}

// serveAPI serves h on a unix socket for the test's duration, as a fake
// daemon, and returns the socket's path.
func serveAPI(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return sock
}
