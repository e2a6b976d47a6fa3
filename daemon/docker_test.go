package daemon

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
)

// TestDockerLookupUsesConfiguredSocket: attach --docker asks the Docker
// Engine at Config.DockerSocket (--docker-host), not a fixed path.
func TestDockerLookupUsesConfiguredSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/containers/web/json" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, `{"State":{"Status":"running","Running":true,"Pid":4242}}`)
	}))
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	pid, err := linuxSandbox{dockerSocket: sock}.DockerPID("web")
	if err != nil || pid != 4242 {
		t.Fatalf("DockerPID via %s = %d, %v; want 4242", sock, pid, err)
	}
	if _, err := (linuxSandbox{dockerSocket: filepath.Join(t.TempDir(), "none.sock")}).DockerPID("web"); err == nil {
		t.Fatal("DockerPID through a missing socket succeeded")
	}
}
