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
	// holds replaces hold for the hosts it names.
	holds map[string]time.Duration

	mu        sync.Mutex
	now, peak int
	runs, rms int
}

func (f *fakeDaemon) serve(host string, w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.now++
	f.peak = max(f.peak, f.now)
	hold, ok := f.holds[host]
	if !ok {
		hold = f.hold
	}
	f.mu.Unlock()
	time.Sleep(hold) // the work of a run or removal
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
		name := fmt.Sprintf("h%d", i+1)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { f.serve(name, w, r) })}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		hs = append(hs, &scaleHost{Host: &testbed.Host{Name: name}, c: api.NewClient(sock)})
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
	if lg.done < 8 || lg.behind == 0 || lg.failed != 0 {
		t.Fatalf("%d changes made, %d behind, %d failed: want some made, the rest behind", lg.done, lg.behind, lg.failed)
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

// A host whose changes are slow does not cost the load the changes that
// fall due while its slots are busy: they go to the next free slots, on
// the other hosts.
func TestLoadGivesDueChangesToFreeSlots(t *testing.T) {
	f := &fakeDaemon{hold: 5 * time.Millisecond, holds: map[string]time.Duration{"h1": time.Second}}
	hs := fakeHosts(t, f, 4)
	lg := newLoadGen(hs, changeRun, 8) // two slots per host
	lg.run(context.Background(), 100, time.Second)
	// 100 fell due; h1's two slots were busy for the whole second, so a
	// generator that skips a busy slot's turn makes about 75.
	if lg.done < 95 || lg.failed != 0 {
		t.Fatalf("%d changes made (%d failed, %d behind) of 100 due, want at least 95", lg.done, lg.failed, lg.behind)
	}
}

// In attach mode, the load's containers are made before the window and
// each change attaches or detaches an endpoint: no container is run or
// removed in the window.
func TestLoadAttachModeOnlyAttachesAndDetaches(t *testing.T) {
	f := &fakeDaemon{hold: time.Millisecond}
	hs := fakeHosts(t, f, 3)
	lg := newLoadGen(hs, changeAttach, 6)
	if err := lg.prepare(); err != nil {
		t.Fatal(err)
	}
	if f.runs != 6 || f.rms != 6 || len(lg.netns) != 6 {
		t.Fatalf("prepare: %d runs, %d detaches, %d containers; want 6 of each", f.runs, f.rms, len(lg.netns))
	}
	lg.run(context.Background(), 100, 500*time.Millisecond)
	if lg.done < 40 || lg.failed != 0 {
		t.Fatalf("%d changes made, %d failed; want about 50", lg.done, lg.failed)
	}
	lg.removeAll()
	if err := lg.cleanup(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(lg.running) != 0 || f.runs != f.rms-6 {
		t.Fatalf("after cleanup: %d attached, %d attaches, %d detaches and removals (want 6 more than attaches)", len(lg.running), f.runs, f.rms)
	}
}
