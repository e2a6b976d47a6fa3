//go:build linux

package sandbox

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

// fakeEngine serves a minimal Docker Engine API on a unix socket.
func fakeEngine(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containers/{name}/json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.PathValue("name") {
		case "web", "3f2a9c":
			fmt.Fprint(w, `{"Id":"3f2a9c","Name":"/web","State":{"Status":"running","Running":true,"Paused":false,"Pid":4242}}`)
		case "stopped":
			fmt.Fprint(w, `{"Id":"77","Name":"/stopped","State":{"Status":"exited","Running":false,"Pid":0}}`)
		case "broken":
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, `{"message":"engine on fire"}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"message":"No such container: %s"}`, r.PathValue("name"))
		}
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return sock
}

func TestDockerPID(t *testing.T) {
	sock := fakeEngine(t)
	for _, name := range []string{"web", "3f2a9c"} {
		if pid, err := DockerPID(sock, name); err != nil || pid != 4242 {
			t.Errorf("DockerPID(%q) = %d, %v; want 4242", name, pid, err)
		}
	}
	for _, c := range []struct{ name, want string }{
		{"nope", `docker: container "nope" not found`},
		{"stopped", `docker: container "stopped" is not running (exited)`},
		{"broken", `docker: container "broken": engine answered 500 Internal Server Error: engine on fire`},
		{"a/b", `docker: invalid container name "a/b"`},
	} {
		if _, err := DockerPID(sock, c.name); err == nil || err.Error() != c.want {
			t.Errorf("DockerPID(%q): %v, want %s", c.name, err, c.want)
		}
	}
	missing := filepath.Join(t.TempDir(), "docker.sock")
	_, err := DockerPID(missing, "web")
	if want := "docker: cannot reach the Docker Engine at " + missing + ": "; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("no engine: %v, want prefix %q", err, want)
	}
}
