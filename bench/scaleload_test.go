package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// fakeDaemon answers container runs and removals on a Unix socket, each
// after hold, and records how many were under way at once, over every fake
// daemon of a test.
type fakeDaemon struct {
	hold time.Duration

	mu        sync.Mutex
	now, peak int
	runs, rms int
}

func (f *fakeDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.now++
	f.peak = max(f.peak, f.now)
	f.mu.Unlock()
	time.Sleep(f.hold) // the work of a run or removal
	f.mu.Lock()
	f.now--
	if r.Method == http.MethodPost {
		f.runs++
	} else {
		f.rms++
	}
	n := f.runs
	f.mu.Unlock()
	if r.Method == http.MethodPost {
		json.NewEncoder(w).Encode(api.Endpoint{Name: "x", MAC: fmt.Sprintf("02:00:00:00:%02x:%02x", n>>8&0xff, n&0xff)})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// fakeHosts serves f on one socket per host.
func fakeHosts(t *testing.T, f *fakeDaemon, n int) []*scaleHost {
	t.Helper()
	var hs []*scaleHost
	for i := range n {
		sock := filepath.Join(t.TempDir(), "api.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: f}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		hs = append(hs, &scaleHost{Host: &testbed.Host{Name: fmt.Sprintf("h%d", i+1)}, c: api.NewClient(sock)})
	}
	return hs
}

func TestLoadKeepsAtMostInflightChangesOverAllHosts(t *testing.T) {
	f := &fakeDaemon{hold: 100 * time.Millisecond}
	hs := fakeHosts(t, f, 10)
	// 1,000 changes/s asked, each taking 100 ms: without a bound, about
	// 100 would be under way at once.
	lg := runLoad(context.Background(), hs, 1000, 4, time.Second)
	if f.peak > 4 {
		t.Fatalf("%d changes under way at once, want at most 4", f.peak)
	}
	if lg.done < 8 || lg.skipped == 0 || lg.failed != 0 {
		t.Fatalf("%d changes made, %d skipped, %d failed: want some made, the rest skipped", lg.done, lg.skipped, lg.failed)
	}
	if len(lg.took) != lg.done {
		t.Fatalf("%d change times for %d changes", len(lg.took), lg.done)
	}
	// Every slot runs a container, then removes it.
	if f.runs < f.rms || f.runs-f.rms > len(lg.running) {
		t.Fatalf("%d runs, %d removals, %d still running", f.runs, f.rms, len(lg.running))
	}
	lg.removeAll()
	if len(lg.running) != 0 || f.runs != f.rms {
		t.Fatalf("after removeAll: %d running, %d runs, %d removals", len(lg.running), f.runs, f.rms)
	}
}
