// Package debugserver serves the daemon's opt-in debug endpoints: the
// runtime's profiles in pprof format and its memory statistics. It uses
// runtime/pprof directly, on its own mux, so importing it registers
// nothing on http.DefaultServeMux (net/http/pprof would, at init).
package debugserver

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

// maxCPUSeconds bounds a CPU profile request.
const maxCPUSeconds = 120

// Handler returns the debug mux:
//
//	/debug/pprof/NAME     a runtime profile (heap, allocs, goroutine,
//	                      threadcreate, block, mutex); ?debug=N as in pprof
//	/debug/pprof/profile  a CPU profile of ?seconds=N (default 10)
//	/debug/memstats       runtime.MemStats with the process's VmRSS, as JSON
func Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/profile", cpuProfile)
	mux.HandleFunc("GET /debug/pprof/{name}", namedProfile)
	mux.HandleFunc("GET /debug/memstats", memStats)
	return mux
}

func namedProfile(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p := pprof.Lookup(name)
	if p == nil {
		http.Error(w, fmt.Sprintf("profile %q: no such profile", name), http.StatusNotFound)
		return
	}
	debug, _ := strconv.Atoi(r.URL.Query().Get("debug"))
	if r.URL.Query().Get("gc") != "" {
		runtime.GC()
	}
	if debug == 0 {
		w.Header().Set("Content-Type", "application/octet-stream")
	} else {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	if err := p.WriteTo(w, debug); err != nil {
		http.Error(w, fmt.Sprintf("profile %q: %v", name, err), http.StatusInternalServerError)
	}
}

func cpuProfile(w http.ResponseWriter, r *http.Request) {
	secs := 10
	if s := r.URL.Query().Get("seconds"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxCPUSeconds {
			http.Error(w, fmt.Sprintf("seconds %q: want 1-%d", s, maxCPUSeconds), http.StatusBadRequest)
			return
		}
		secs = n
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := pprof.StartCPUProfile(w); err != nil {
		http.Error(w, fmt.Sprintf("cpu profile: %v", err), http.StatusConflict)
		return
	}
	select {
	case <-time.After(time.Duration(secs) * time.Second):
	case <-r.Context().Done():
	}
	pprof.StopCPUProfile()
}

// MemStats is what /debug/memstats answers.
type MemStats struct {
	VmRSS      int64 // bytes resident (from /proc/self/status; 0 elsewhere)
	Goroutines int
	runtime.MemStats
}

func memStats(w http.ResponseWriter, r *http.Request) {
	var m MemStats
	runtime.ReadMemStats(&m.MemStats)
	m.Goroutines = runtime.NumGoroutine()
	m.VmRSS = vmRSS()
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(&m)
}

func vmRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
