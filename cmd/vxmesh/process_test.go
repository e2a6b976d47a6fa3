package main

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/daemon"
)

// TestStartMainNamesAMissingWorkingDirectory: a container started again
// from a working directory removed since run says so, instead of exec's
// "fork/exec /proc/self/exe: no such file or directory".
func TestStartMainNamesAMissingWorkingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gone")
	err := startMain(daemon.MainStart{Socket: filepath.Join(t.TempDir(), "d.sock"), Container: "c1",
		Command: api.Command{Argv: []string{"true"}, Dir: dir}})
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("start from a missing directory: %v, want an error naming %s", err, dir)
	}
}

// TestMonitorReportWaitsForTheDaemon: a monitor whose daemon does not
// answer yet (restarting) asks again until it does, and the report
// arrives once; a daemon that refuses it is not asked again.
func TestMonitorReportWaitsForTheDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "d.sock")
	var mu sync.Mutex
	var got []api.MainProcess
	refuse := false
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p api.MainProcess
		json.NewDecoder(r.Body).Decode(&p)
		mu.Lock()
		defer mu.Unlock()
		got = append(got, p)
		if refuse {
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"error":"no"}`))
			return
		}
		w.Write([]byte("{}"))
	})}
	t.Cleanup(func() { srv.Close() })
	go func() {
		time.Sleep(300 * time.Millisecond) // the daemon comes back
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Error(err)
			return
		}
		srv.Serve(ln)
	}()
	code := 3
	start := time.Now()
	reportMain(api.NewClient(sock), "c1", api.MainProcess{PID: 42, ExitStatus: &code}, time.Minute)
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("reported after %v, before the daemon listened", took)
	}
	mu.Lock()
	if len(got) != 1 || got[0].PID != 42 || got[0].ExitStatus == nil || *got[0].ExitStatus != 3 {
		t.Errorf("the daemon got %+v, want one report of 42 exiting 3", got)
	}
	refuse, got = true, nil
	mu.Unlock()
	reportMain(api.NewClient(sock), "c1", api.MainProcess{PID: 42}, time.Minute)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Errorf("a refused report was made %d times, want once", len(got))
	}
}
