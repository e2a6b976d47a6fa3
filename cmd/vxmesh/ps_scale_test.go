package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

// writeCounter is a stdout that counts the writes it gets, each one a
// system call on a real terminal or pipe.
type writeCounter struct {
	bytes.Buffer
	writes int
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

// manyContainers serves GET /v1/containers with n containers, one
// endpoint each, on a unix socket and returns its path.
func manyContainers(t *testing.T, n int) string {
	t.Helper()
	cs := make([]api.Container, n)
	for i := range cs {
		name := fmt.Sprintf("c%04d", i)
		cs[i] = api.Container{Name: name, Netns: "/run/netns/" + name, Managed: true, PIDs: []int{1000 + i}, State: "up", Status: "running",
			Endpoints: []api.Endpoint{{Name: name, Network: "web", IP: fmt.Sprintf("10.0.%d.%d", i/250, 2+i%250), State: "up"}}}
	}
	body, err := json.Marshal(cs)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/containers" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		w.Write(body)
	}))
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return sock
}

// TestPsWritesInFewSystemCalls lists 1,000 containers as a table and as a
// template: the output goes to stdout in a few large writes, not one per
// table cell (13,000 write system calls per ps before).
func TestPsWritesInFewSystemCalls(t *testing.T) {
	const n = 1000
	sock := manyContainers(t, n)
	for _, args := range [][]string{{"ps"}, {"ps", "--format", "table {{.Name}}\t{{.Status}}"}, {"ps", "--format", "{{.Name}} {{.Status}}"}} {
		out := &writeCounter{}
		var errb bytes.Buffer
		if code := runCLI(&cliEnv{stdout: out, stderr: &errb}, append(args, "--socket", sock)); code != 0 {
			t.Fatalf("vxmesh %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
		}
		lines := strings.Count(out.String(), "\n")
		if lines < n || !strings.Contains(out.String(), "c0999") {
			t.Fatalf("vxmesh %s: %d lines, want %d containers:\n%.300s", strings.Join(args, " "), lines, n, out.String())
		}
		// One write per 4 KiB of output at most, plus a few.
		if max := out.Len()/4096 + 4; out.writes > max {
			t.Errorf("vxmesh %s: %d bytes in %d writes, want at most %d", strings.Join(args, " "), out.Len(), out.writes, max)
		}
	}
}
