package debugserver

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, path string) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
	return w
}

func TestHandlerServesProfilesAndMemStats(t *testing.T) {
	h := Handler()
	if w := get(t, h, "/debug/pprof/heap?gc=1"); w.Code != http.StatusOK || w.Body.Len() == 0 || w.Body.Bytes()[0] != 0x1f {
		t.Errorf("heap profile: status %d, %d bytes; want 200 and gzipped pprof", w.Code, w.Body.Len())
	}
	if w := get(t, h, "/debug/pprof/goroutine?debug=1"); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "goroutine profile:") {
		t.Errorf("goroutine profile: status %d, body %.80q", w.Code, w.Body.String())
	}
	if w := get(t, h, "/debug/pprof/nosuch"); w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), `"nosuch"`) {
		t.Errorf("unknown profile: status %d, body %q; want 404 naming it", w.Code, w.Body.String())
	}
	if w := get(t, h, "/debug/pprof/profile?seconds=0"); w.Code != http.StatusBadRequest {
		t.Errorf("cpu profile of 0 s: status %d, want 400", w.Code)
	}
	w := get(t, h, "/debug/memstats")
	var m MemStats
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("memstats: %v: %.80q", err, w.Body.String())
	}
	if m.HeapAlloc == 0 || m.Goroutines == 0 || m.VmRSS == 0 {
		t.Errorf("memstats: HeapAlloc %d, Goroutines %d, VmRSS %d; want all set", m.HeapAlloc, m.Goroutines, m.VmRSS)
	}
}

// TestNothingOnDefaultServeMux: the package must not register handlers
// globally (as net/http/pprof does at init), so a daemon without
// --debug-addr serves no profiles on any other listener.
func TestNothingOnDefaultServeMux(t *testing.T) {
	_ = Handler()
	if _, pattern := http.DefaultServeMux.Handler(httptest.NewRequest("GET", "/debug/pprof/heap", nil)); pattern != "" {
		t.Errorf("http.DefaultServeMux serves /debug/pprof/heap (pattern %q)", pattern)
	}
}
