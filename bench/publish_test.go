package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// TestPublishRatiosCoverTheMeshRows: run -p and mesh-local have their
// goal against h1's HAProxy, mesh-remote against h2's (haproxy-remote),
// with h1's HAProxy as context; every other ratio is context.
func TestPublishRatiosCoverTheMeshRows(t *testing.T) {
	row := func(name string, in, out, conns, ka float64) PublishRow {
		return PublishRow{Name: name, InBps: in, OutBps: out, Close: WrkResult{RequestsPerSec: conns}, KeepAlive: WrkResult{RequestsPerSec: ka}}
	}
	by := map[string]PublishRow{}
	for _, r := range []PublishRow{
		row(rowPubHAProxy, 4e9, 2e9, 1000, 8000),
		row(rowPubDNAT, 8e9, 8e9, 4000, 16000),
		row(rowPubHAProxyRemote, 2e9, 4e9, 400, 2000),
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
		{"new conn/s mesh-remote / haproxy-remote", 1.25, "> 1: met"},
		{"new conn/s mesh-remote / haproxy", 0.5, "(context)"},
		{"new conn/s mesh-remote / nft-dnat", 0.125, "(context)"},
		{"throughput in mesh-local / haproxy", 0.5, "(context)"},
		{"throughput out mesh-local / nft-dnat", 0.125, "(context)"},
		{"throughput in mesh-remote / nft-dnat", 0.125, "(context)"},
		{"throughput out mesh-remote / haproxy-remote", 0.25, "(context)"},
		{"keep-alive req/s mesh-local / haproxy", 1, "(context)"},
		{"keep-alive req/s mesh-remote / nft-dnat", 0.25, "(context)"},
		{"keep-alive req/s mesh-remote / haproxy-remote", 2, "(context)"},
		{"new conn/s vxmesh / haproxy", 1.5, "> 1: met"},
	} {
		if got[w.name] != w {
			t.Errorf("ratio %q: %+v, want %+v", w.name, got[w.name], w)
		}
	}
	if len(got) != 8+8+12 {
		t.Errorf("%d ratios, want 8 for run -p and mesh-local, 12 for mesh-remote: %v", len(got), got)
	}
	for name := range got {
		if strings.Contains(name, rowPubHAProxyRemote) && !strings.Contains(name, rowPubMeshRemote) {
			t.Errorf("ratio %q: only mesh-remote is compared with h2's HAProxy", name)
		}
	}
	// Without h2's HAProxy, mesh-remote has no goal ratio; h1's stays context.
	delete(by, rowPubHAProxyRemote)
	for _, q := range publishRatios(by) {
		if strings.Contains(q.name, rowPubMeshRemote) && q.goal != "(context)" {
			t.Errorf("mesh-remote's goal against another anchor: %+v", q)
		}
	}
	// A failed mesh row (absent from by) has no ratios, not zeros.
	delete(by, rowPubMeshRemote)
	for _, q := range publishRatios(by) {
		if strings.Contains(q.name, rowPubMeshRemote) {
			t.Errorf("ratio of a failed row: %+v", q)
		}
	}
}

// TestPublishRowsHaveHAProxyOnTheIngressHost: the section measures
// HAProxy on h2 (the mesh-remote client's entry host) with its own
// process's CPU, and every row both daemons' CPU.
func TestPublishRowsHaveHAProxyOnTheIngressHost(t *testing.T) {
	a := publishAddrs{h1: "10.0.0.1", h2: "10.0.0.2", hap: "10.0.0.240", dnat: "10.0.0.241", hap2: "10.0.0.242", hapPID: 41, hap2PID: 42}
	rows := publishRows(a, []int{11, 12}, "/run/netns/out")
	by := map[string]PublishRow{}
	for _, r := range rows {
		by[r.Name] = r
		if len(r.daemonPIDs) != 2 || r.daemonPIDs[0] != 11 || r.daemonPIDs[1] != 12 {
			t.Errorf("%s: daemons %v, want h1's and h2's [11 12]", r.Name, r.daemonPIDs)
		}
		if r.client == "" || r.HTTPPort == 0 || r.IperfPort == 0 {
			t.Errorf("%s: client %q, ports %d %d", r.Name, r.client, r.HTTPPort, r.IperfPort)
		}
	}
	for name, want := range map[string]struct {
		addr  string
		proxy []int
	}{
		rowPubHAProxy:       {"10.0.0.240", []int{41}},
		rowPubHAProxyRemote: {"10.0.0.242", []int{42}},
		rowPubMeshRemote:    {"10.0.0.2", nil},
		rowPubMeshLocal:     {"10.0.0.1", nil},
		rowPubVxmesh:        {"10.0.0.1", nil},
		rowPubDNAT:          {"10.0.0.241", nil},
	} {
		r, ok := by[name]
		if !ok {
			t.Errorf("no row %s in %v", name, rows)
			continue
		}
		if r.Addr != want.addr || fmt.Sprint(r.proxyPIDs) != fmt.Sprint(want.proxy) {
			t.Errorf("%s: addr %s, proxy %v; want %s, %v", name, r.Addr, r.proxyPIDs, want.addr, want.proxy)
		}
	}
}

// TestPrintPublishShowsBothDaemons: the table's daemon CPU column is the
// sum of h1's and h2's, named so, with the split beside it; the goal
// ratio of mesh-remote names haproxy-remote.
func TestPrintPublishShowsBothDaemons(t *testing.T) {
	rows := []PublishRow{
		{Name: rowPubHAProxyRemote, Close: WrkResult{RequestsPerSec: 800}, DaemonCPU: 300 * time.Microsecond,
			DaemonCPUs: []time.Duration{100 * time.Microsecond, 200 * time.Microsecond}, ProxyCPU: 50 * time.Microsecond},
		{Name: rowPubMeshRemote, Close: WrkResult{RequestsPerSec: 400}, DaemonCPU: 500 * time.Microsecond,
			DaemonCPUs: []time.Duration{150 * time.Microsecond, 350 * time.Microsecond}},
	}
	var b strings.Builder
	cfg := config{duration: time.Second}
	cfg.lb.threads, cfg.lb.conns = 1, 32
	printPublish(&b, cfg, publishReport{mtu: 1450, rows: rows, loadBefore: "1.0", loadAfter: "1.0"})
	out := b.String()
	for _, want := range []string{"CPU/conn daemons h1+h2", "h1 / h2", "0.300 ms", "0.100 / 0.200", "0.500 ms", "0.150 / 0.350",
		"new conn/s mesh-remote / haproxy-remote  0.50"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
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

// TestPrintPublishRounds: the interleaved rounds print each pair's median
// ratio of the rounds (not the ratio of the medians), its range, the
// rounds above 1 and the goal judged on the median; the single-run goal
// ratio of a pair measured in rounds becomes context, that of a pair
// whose rounds failed keeps its goal.
func TestPrintPublishRounds(t *testing.T) {
	rows := []PublishRow{
		{Name: rowPubVxmesh, Close: WrkResult{RequestsPerSec: 900}},
		{Name: rowPubHAProxy, Close: WrkResult{RequestsPerSec: 1000}},
		{Name: rowPubMeshRemote, Close: WrkResult{RequestsPerSec: 500}},
		{Name: rowPubHAProxyRemote, Close: WrkResult{RequestsPerSec: 400}},
	}
	ms := time.Millisecond / 10
	rounds := []PubRounds{
		// Ratios 1.5, 0.8, 1.3, 2.0, 0.9: median 1.3, 3 of 5 above 1
		// (the medians' ratio would be 1600 / 1000).
		{A: rowPubVxmesh, B: rowPubHAProxy, ConnsA: []float64{3000, 1600, 1300, 2000, 900}, ConnsB: []float64{2000, 2000, 1000, 1000, 1000},
			CPUA: []time.Duration{2 * ms, 2 * ms, 3 * ms, 1 * ms, 2 * ms}, CPUB: []time.Duration{3 * ms, 3 * ms, 3 * ms, 3 * ms, 3 * ms}},
		{A: rowPubMeshRemote, B: rowPubHAProxyRemote, ConnsA: []float64{100}, ConnsB: []float64{200}, Err: fmt.Errorf("round 2, mesh-remote: wrk died")},
	}
	if got := rounds[0].Ratios(); fmt.Sprintf("%.1f", got) != "[0.8 0.9 1.3 1.5 2.0]" {
		t.Errorf("Ratios: %.2f", got)
	}
	var b strings.Builder
	cfg := config{duration: time.Second, publishRounds: 5, publishRound: 2 * time.Second}
	cfg.lb.threads, cfg.lb.conns = 1, 32
	printPublish(&b, cfg, publishReport{mtu: 1450, rows: rows, rounds: rounds, loadBefore: "1.0", loadAfter: "1.0"})
	// Compared with runs of spaces collapsed (the tables' alignment).
	out := strings.Join(strings.Fields(b.String()), " ")
	for _, want := range []string{
		"5 rounds of wrk -d 2s per row",
		// median ratio, range, rounds above 1, median conn/s of a
		// and b, median CPU/conn of a and b, goal on the median.
		"vxmesh / haproxy 1.30 0.80 - 2.00 3 of 5 1600 1000 0.200 ms 0.300 ms > 1: met",
		"new conn/s vxmesh / haproxy 0.90 (one run each: see the interleaved rounds)",
		"mesh-remote / haproxy-remote failed (below)",
		"mesh-remote / haproxy-remote: rounds failed: round 2, mesh-remote: wrk died",
		"new conn/s mesh-remote / haproxy-remote 1.25 > 1: met",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
