package main

import (
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

func TestPublishRatiosCoverTheMeshRows(t *testing.T) {
	row := func(name string, in, out, conns, ka float64) PublishRow {
		return PublishRow{Name: name, InBps: in, OutBps: out, Close: WrkResult{RequestsPerSec: conns}, KeepAlive: WrkResult{RequestsPerSec: ka}}
	}
	by := map[string]PublishRow{}
	for _, r := range []PublishRow{
		row(rowPubHAProxy, 4e9, 2e9, 1000, 8000),
		row(rowPubDNAT, 8e9, 8e9, 4000, 16000),
		row(rowPubVxmesh, 2e9, 2e9, 1500, 4000),
		row(rowPubMeshLocal, 2e9, 1e9, 2000, 8000),
		row(rowPubMeshRemote, 1e9, 1e9, 500, 4000),
	} {
		by[r.Name] = r
	}
	got := map[string]egressRatio{}
	for _, q := range publishRatios(by) {
		got[q.name] = q
	}
	for _, w := range []egressRatio{
		{"new conn/s mesh-local / haproxy", 2, "> 1: met"},
		{"new conn/s mesh-remote / haproxy", 0.5, "> 1: NOT met"},
		{"new conn/s mesh-remote / nft-dnat", 0.125, "(context)"},
		{"throughput in mesh-local / haproxy", 0.5, "(context)"},
		{"throughput out mesh-local / nft-dnat", 0.125, "(context)"},
		{"throughput in mesh-remote / nft-dnat", 0.125, "(context)"},
		{"keep-alive req/s mesh-local / haproxy", 1, "(context)"},
		{"keep-alive req/s mesh-remote / nft-dnat", 0.25, "(context)"},
		{"new conn/s vxmesh / haproxy", 1.5, "> 1: met"},
	} {
		if got[w.name] != w {
			t.Errorf("ratio %q: %+v, want %+v", w.name, got[w.name], w)
		}
	}
	if len(got) != 3*8 {
		t.Errorf("%d ratios, want 8 for each of the 3 vxmesh rows: %v", len(got), got)
	}
	// A failed mesh row (absent from by) has no ratios, not zeros.
	delete(by, rowPubMeshRemote)
	for _, q := range publishRatios(by) {
		if strings.Contains(q.name, rowPubMeshRemote) {
			t.Errorf("ratio of a failed row: %+v", q)
		}
	}
}

func TestMeshPublishedOnWaitsForEveryPortUpOnTheNode(t *testing.T) {
	pub := []string{"published=8080,target=80", "published=15201,target=5201"}
	s := api.Service{Published: pub, Backends: []api.ServiceBackend{{Node: "h1", Container: "b1"}}, PublishState: []api.ServicePublishState{
		{Node: "h1", Published: pub[0], State: "up"}, {Node: "h1", Published: pub[1], State: "up"},
		{Node: "h2", Published: pub[0], State: "up"}, {Node: "h2", Published: pub[1], State: "down: address already in use"},
	}}
	if err := meshPublishedOn(s, "h1"); err != nil {
		t.Errorf("h1 with both ports up: %v", err)
	}
	if err := meshPublishedOn(s, "h2"); err == nil || !strings.Contains(err.Error(), "down: address already in use") {
		t.Errorf("h2 with a port down: %v, want its state named", err)
	}
	if err := meshPublishedOn(s, "h3"); err == nil || !strings.Contains(err.Error(), "not reported") {
		t.Errorf("h3 reporting nothing: %v", err)
	}
	s.Backends = nil
	if err := meshPublishedOn(s, "h1"); err == nil {
		t.Error("no backend known: nil error")
	}
}

// TestParseStatCPU: utime + stime of a /proc/PID/stat line, a command
// name with spaces and parentheses included; a short or bad line is an
// error.
func TestParseStatCPU(t *testing.T) {
	line := "4242 (vx (mesh) d) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 37 0 0 20 0 12 0 100 0 0"
	if got, err := parseStatCPU(line); err != nil || got != 1870*time.Millisecond {
		t.Errorf("parseStatCPU: %v, %v; want 1.87s", got, err)
	}
	for _, bad := range []string{"", "4242 (x) S 1 2", "4242 (x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 x 37"} {
		if _, err := parseStatCPU(bad); err == nil {
			t.Errorf("parseStatCPU(%q): no error", bad)
		}
	}
}

func FuzzParseStatCPU(f *testing.F) {
	f.Add("4242 (vxmesh) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 37 0 0 20 0 12 0 100 0 0")
	f.Add("1 ()) R")
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := parseStatCPU(s); err == nil && d < 0 {
			t.Fatalf("negative CPU time %v", d)
		}
	})
}
