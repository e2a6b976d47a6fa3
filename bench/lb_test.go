package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

// The wrk samples are wrk 4.1.0 (Debian) reports, --latency, captured
// against busybox httpd: with Connection: close, on keep-alive
// connections, for a missing page (404s, and busybox closing every
// connection: read errors), and against a socket that never answers.
func TestParseWrkConnectionClose(t *testing.T) {
	r, err := ParseWrk(readSample(t, "wrk-close.txt"))
	if err != nil {
		t.Fatal(err)
	}
	checkWrk(t, r, WrkResult{
		Requests: 2669, Elapsed: 1030 * time.Millisecond, RequestsPerSec: 2580.01,
		LatencyAvg: 3170 * time.Microsecond, LatencyMax: 22040 * time.Microsecond,
		P50: 2770 * time.Microsecond, P90: 5420 * time.Microsecond, P99: 16350 * time.Microsecond,
	})
}

func TestParseWrkKeepAlive(t *testing.T) {
	r, err := ParseWrk(readSample(t, "wrk-keepalive.txt"))
	if err != nil {
		t.Fatal(err)
	}
	checkWrk(t, r, WrkResult{
		Requests: 2475, Elapsed: 1030 * time.Millisecond, RequestsPerSec: 2393.47,
		LatencyAvg: 4140 * time.Microsecond, LatencyMax: 52320 * time.Microsecond,
		P50: 2830 * time.Microsecond, P90: 7 * time.Millisecond, P99: 35470 * time.Microsecond,
	})
}

func TestParseWrkCountsErrors(t *testing.T) {
	r, err := ParseWrk(readSample(t, "wrk-errors.txt"))
	if err != nil {
		t.Fatal(err)
	}
	checkWrk(t, r, WrkResult{
		Requests: 1490, Elapsed: 1020 * time.Millisecond, RequestsPerSec: 1455.73,
		LatencyAvg: 3420 * time.Microsecond, LatencyMax: 23500 * time.Microsecond,
		P50: 2840 * time.Microsecond, P90: 6120 * time.Microsecond, P99: 15150 * time.Microsecond,
		ReadErrors: 1490, Non2xx3xx: 1490,
	})
	if r.Errors() != 2980 {
		t.Errorf("Errors() = %d, want 2980", r.Errors())
	}
	s := strings.Replace(readSample(t, "wrk-errors.txt"), "connect 0, read 1490, write 0, timeout 0", "connect 3, read 4, write 5, timeout 6", 1)
	r, err = ParseWrk(s)
	if err != nil || r.ConnectErrors != 3 || r.ReadErrors != 4 || r.WriteErrors != 5 || r.Timeouts != 6 {
		t.Errorf("socket errors %+v, %v", r, err)
	}
}

func TestParseWrkNothingCompleted(t *testing.T) {
	r, err := ParseWrk(readSample(t, "wrk-nothing.txt"))
	if err != nil {
		t.Fatal(err)
	}
	checkWrk(t, r, WrkResult{Elapsed: time.Second})
}

func TestParseWrkRejectsOutputWithoutResults(t *testing.T) {
	for _, s := range []string{
		"",
		"unable to connect to 127.0.0.1:18099 Connection refused\n",
		strings.Split(readSample(t, "wrk-close.txt"), "Requests/sec")[0],
		strings.Replace(readSample(t, "wrk-close.txt"), "2580.01", "-nan", 1),
		strings.Replace(readSample(t, "wrk-close.txt"), "in 1.03s", "in 1.03", 1),
	} {
		if r, err := ParseWrk(s); err == nil {
			t.Errorf("ParseWrk(%q) = %+v, want error", tail(s, 80), r)
		}
	}
}

func TestParseWrkDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"812.00us": 812 * time.Microsecond, "1.70ms": 1700 * time.Microsecond, "1.10s": 1100 * time.Millisecond,
		"2.00m": 2 * time.Minute, "1.00h": time.Hour, "0.00us": 0,
	} {
		if got, err := parseWrkDuration(in); err != nil || got != want {
			t.Errorf("parseWrkDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "us", "1.5", "-1.00ms", "NaNms", "+Infs", "1e300h", " 1ms", "1.0xs"} {
		if got, err := parseWrkDuration(in); err == nil {
			t.Errorf("parseWrkDuration(%q) = %v, want error", in, got)
		}
	}
}

func checkWrk(t *testing.T, got, want WrkResult) {
	t.Helper()
	near := func(a, b time.Duration) bool { d := a - b; return d > -time.Microsecond && d < time.Microsecond }
	if got.Requests != want.Requests || got.RequestsPerSec != want.RequestsPerSec || !near(got.Elapsed, want.Elapsed) ||
		!near(got.LatencyAvg, want.LatencyAvg) || !near(got.LatencyMax, want.LatencyMax) ||
		!near(got.P50, want.P50) || !near(got.P90, want.P90) || !near(got.P99, want.P99) ||
		got.ConnectErrors != want.ConnectErrors || got.ReadErrors != want.ReadErrors || got.WriteErrors != want.WriteErrors ||
		got.Timeouts != want.Timeouts || got.Non2xx3xx != want.Non2xx3xx {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

// The sample is `go test -bench ... -count 3 ./lb` of lb's scale
// benchmarks on the development machine.
func TestParseGoBench(t *testing.T) {
	res := ParseGoBench(readSample(t, "gobench-lb.txt"))
	if len(res) != 45 {
		t.Fatalf("%d results, want 45: %+v", len(res), res)
	}
	if want := (GoBench{Name: "BenchmarkLookupServices/1", Iterations: 200000, NsPerOp: 1351}); res[0] != want {
		t.Errorf("first: %+v, want %+v", res[0], want)
	}
	if want := (GoBench{Name: "BenchmarkAddBackend/10000", Iterations: 200000, NsPerOp: 19742, BytesPerOp: 6440, AllocsPerOp: 26}); res[44] != want {
		t.Errorf("last: %+v, want %+v", res[44], want)
	}
	got := ParseGoBench("BenchmarkTranslateHit-16   \t 8000000\t       151.2 ns/op\t9259.31 MB/s\t       0 B/op\t       0 allocs/op\n" +
		"BenchmarkX\t10\t3.5 ns/op\n--- FAIL: BenchmarkY\nBenchmarkZ-2 nonsense\n")
	want := []GoBench{{Name: "BenchmarkTranslateHit", Iterations: 8000000, NsPerOp: 151.2}, {Name: "BenchmarkX", Iterations: 10, NsPerOp: 3.5}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestSummarizeScaleTakesMediansAndGrowth(t *testing.T) {
	rows := summarizeScale(ParseGoBench(readSample(t, "gobench-lb.txt")))
	if len(rows) != 15 {
		t.Fatalf("%d rows, want 15: %+v", len(rows), rows)
	}
	first, last := rows[0], rows[4]
	if first.Benchmark != "BenchmarkLookupServices" || first.Services != 1 || first.NsPerOp != 1333 || first.Runs != 3 ||
		first.MinNsPerOp != 1273 || first.MaxNsPerOp != 1351 || first.Growth != 1 || first.MinGrowth != 1 {
		t.Errorf("1 service: %+v", first)
	}
	if last.Services != 10000 || last.NsPerOp != 2235 || math.Abs(last.Growth-2235.0/1333) > 1e-9 || math.Abs(last.MinGrowth-1964.0/1273) > 1e-9 {
		t.Errorf("10000 services: %+v", last)
	}
	if r := rows[14]; r.Benchmark != "BenchmarkAddBackend" || r.Services != 10000 || r.AllocsPerOp != 26 {
		t.Errorf("last row %+v", r)
	}
	// An even number of runs: the mean of the middle two.
	even := summarizeScale([]GoBench{{Name: "BenchmarkAddBackend/1", NsPerOp: 10}, {Name: "BenchmarkAddBackend/1", NsPerOp: 30},
		{Name: "BenchmarkAddBackend/1", NsPerOp: 20}, {Name: "BenchmarkAddBackend/1", NsPerOp: 100}, {Name: "BenchmarkOther/1", NsPerOp: 1}})
	if len(even) != 1 || even[0].NsPerOp != 25 {
		t.Errorf("even: %+v", even)
	}
}

func TestPrintScaleJudgesPerConnectionGrowth(t *testing.T) {
	var out bytes.Buffer
	printScale(&out, summarizeScale(ParseGoBench(readSample(t, "gobench-lb.txt"))))
	s := out.String()
	for _, want := range []string{"LookupServices: ", "1 -> 10000 services: x1.68 median, x1.54 fastest (goal <= 1.05, judged on the fastest runs: NOT met)",
		"1 -> 10000 services: x0.74 median, x0.70 fastest (goal <= 1.05, judged on the fastest runs: met)",
		"AddBackend: ", "x2.75 median, x2.64 fastest\n", "3 runs"} {
		if !strings.Contains(s, want) {
			t.Errorf("lacks %q:\n%s", want, s)
		}
	}
}

func TestScaleArgsRunOnlyTheScaleBenchmarks(t *testing.T) {
	got := strings.Join(scaleArgs("1s"), " ")
	want := "test -run ^$ -bench ^(BenchmarkLookupServices|BenchmarkLookupServicesHot|BenchmarkLookupServicesEstablished|BenchmarkAddBackend)$ -benchtime 1s -count 1 github.com/vxmesh/vxmesh/lb"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func lbTestRows() []LBRow {
	return []LBRow{
		{Name: rowDirect, Desc: "d", ThroughputBps: 10e9, Close: WrkResult{RequestsPerSec: 8000, P99: 3 * time.Millisecond}, KeepAlive: WrkResult{RequestsPerSec: 40000, ReadErrors: 2}},
		{Name: rowVIP, Desc: "v", ThroughputBps: 9.6e9, Close: WrkResult{RequestsPerSec: 6000}, KeepAlive: WrkResult{RequestsPerSec: 30000}},
		{Name: rowHAProxy, Desc: "h", ThroughputBps: 4e9, Close: WrkResult{RequestsPerSec: 6000}, KeepAlive: WrkResult{RequestsPerSec: 20000}},
		{Name: rowKernelDirect, Desc: "kd", Skipped: "no reason"},
		{Name: rowKernelDNAT, Desc: "kn", Error: "boom", ThroughputBps: 1},
	}
}

func TestLBRatiosJudgeTheGoals(t *testing.T) {
	rs := lbRatios(lbTestRows())
	by := map[string]LBRatio{}
	for _, r := range rs {
		by[r.Name] = r
	}
	tp := by["throughput vip / direct"]
	if math.Abs(tp.Value-0.96) > 1e-9 || tp.Met == nil || !*tp.Met {
		t.Errorf("VIP/direct throughput %+v, want 0.96 met", tp)
	}
	// Equal to HAProxy is not above it.
	nc := by["new conn/s vip / haproxy"]
	if nc.Value != 1 || nc.Met == nil || *nc.Met {
		t.Errorf("VIP/HAProxy conn/s %+v, want 1.00 not met", nc)
	}
	if c := by["keep-alive req/s vip / direct"]; c.Value != 0.75 || c.Met != nil {
		t.Errorf("context ratio %+v", c)
	}
	for _, r := range rs {
		if strings.Contains(r.Name, "kernel") {
			t.Errorf("ratio with a skipped or failed row: %+v", r)
		}
	}
}

func TestLBTableShowsRowsRatiosAndSkips(t *testing.T) {
	rows := lbTestRows()
	rep := LBReport{Duration: "10s", MTU: 1450, WrkThreads: 1, WrkConns: 32, Rows: rows, Ratios: lbRatios(rows)}
	var out bytes.Buffer
	printLB(&out, rep)
	s := out.String()
	for _, want := range []string{"10.00", "9.60", "8000", "3.000 ms", "40000", "kernel-direct skipped: no reason", "kernel-dnat failed: boom",
		">= 0.95: met", "> 1: NOT met", "0.96", "wrk -t1 -c32 10s", "MTU 1450", "4 backends"} {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
	// Errors summed over both wrk runs.
	if !strings.Contains(s, "  2  ") {
		t.Errorf("direct row shows no wrk errors:\n%s", s)
	}
}

func TestLBJSONReport(t *testing.T) {
	rows := lbTestRows()
	rep := LBReport{Duration: "10s", Rows: rows, Ratios: lbRatios(rows), Scale: summarizeScale(ParseGoBench(readSample(t, "gobench-lb.txt")))}
	path := filepath.Join(t.TempDir(), "r.json")
	if err := writeLBJSON(path, rep); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var back LBReport
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Rows) != 5 || back.Rows[0].ThroughputBps != 10e9 || back.Rows[3].Skipped != "no reason" ||
		back.Rows[0].Close.P99 != 3*time.Millisecond || len(back.Scale) != 15 || len(back.Ratios) != len(rep.Ratios) {
		t.Errorf("round trip: %s", b)
	}
	if err := writeLBJSON(filepath.Join(t.TempDir(), "no", "such", "dir.json"), rep); err == nil || !strings.Contains(err.Error(), "-json") {
		t.Errorf("unwritable path: %v", err)
	}
}

func TestFindVIPInServiceInspect(t *testing.T) {
	subnet := netip.MustParsePrefix("10.88.3.0/24")
	for doc, want := range map[string]string{
		`{"name":"web","vip":"10.88.3.250"}`: "10.88.3.250",
		`[{"Name":"web","VIPs":[{"network":"other","vip":"10.9.0.2"},{"network":"lbb","vip":"10.88.3.7/24"}]}]`: "10.88.3.7",
		`{"networks":{"lbb":{"VirtualIP":"10.88.3.9"}},"backends":[{"ip":"10.88.3.2"}]}`:                        "10.88.3.9",
		`{"backends":[{"ip":"10.88.3.2"}],"vip":""}`:                                                            "",
		`{"vip":"10.88.4.1"}`: "",
	} {
		var v any
		if err := json.Unmarshal([]byte(doc), &v); err != nil {
			t.Fatal(err)
		}
		got, ok := findVIP(v, false, subnet)
		if (want == "") == ok || (ok && got.String() != want) {
			t.Errorf("findVIP(%s) = %v, %v; want %q", doc, got, ok, want)
		}
	}
}

func TestBalancerConfigs(t *testing.T) {
	bs := []lbServer{{name: "b1", ip: "10.0.0.2"}, {name: "b2", ip: "10.0.0.3"}}
	h := haproxyConfig(bs)
	for _, want := range []string{"mode tcp", "bind :80\n", "bind :5201\n", "balance roundrobin", "balance source",
		"server b1 10.0.0.2:80\n", "server b2 10.0.0.3:80\n", "server b1 10.0.0.2:5201\n", "server b2 10.0.0.3:5201\n"} {
		if !strings.Contains(h, want) {
			t.Errorf("haproxy config lacks %q:\n%s", want, h)
		}
	}
	n := nftRuleset(bs)
	for _, want := range []string{"type nat hook prerouting priority dstnat",
		"ip daddr 10.89.5.10 tcp dport 80 dnat to numgen inc mod 2 map { 0 : 10.0.0.2, 1 : 10.0.0.3 }",
		"ip daddr 10.89.5.10 tcp dport 5201 dnat to jhash ip saddr mod 2 map { 0 : 10.0.0.2, 1 : 10.0.0.3 }"} {
		if !strings.Contains(n, want) {
			t.Errorf("nft ruleset lacks %q:\n%s", want, n)
		}
	}
}

func TestWrkArgs(t *testing.T) {
	cfg := config{duration: 2500 * time.Millisecond, lb: lbConfig{threads: 2, conns: 16}}
	if got := strings.Join(wrkArgs(cfg, "10.0.0.2", false), " "); got != "-t 2 -c 16 -d 2s --latency -H Connection: close http://10.0.0.2:80/" {
		t.Errorf("close: %s", got)
	}
	if got := strings.Join(wrkArgs(cfg, "10.0.0.2", true), " "); got != "-t 2 -c 16 -d 2s --latency http://10.0.0.2:80/" {
		t.Errorf("keep-alive: %s", got)
	}
}

func TestLBRefusesBadKnobs(t *testing.T) {
	for _, l := range []lbConfig{{threads: 0, conns: 1, count: 1}, {threads: 2, conns: 1, count: 1}, {threads: 1, conns: 1, count: 0}} {
		if _, err := runLB(context.Background(), config{duration: time.Second, lb: l}, &bytes.Buffer{}); err == nil {
			t.Errorf("%+v accepted", l)
		}
	}
	if _, err := runLB(context.Background(), config{duration: 500 * time.Millisecond, lb: lbConfig{threads: 1, conns: 1, count: 1}}, &bytes.Buffer{}); err == nil {
		t.Error("-duration 500ms accepted")
	}
}

// TestInNetnsLeavesStartedProcessesAlive: a server started with Pdeathsig
// (killed when the thread that forked it exits) must survive the probes
// that enter namespaces; they used to end their thread, which could be
// the one that forked the server (root needed).
func TestInNetnsLeavesStartedProcessesAlive(t *testing.T) {
	if err := testbed.CheckPrereqs(); err != nil {
		testenv.Missing(t, "%v", err)
	}
	tb, err := testbed.New(testbed.Options{Hosts: 1, Prefix: "vxbn" + testbed.RandomID(2) + "-"})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	ns, err := tb.AddNetns("srv")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := startHTTP(ns, 18573)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var ps procs
	defer ps.stop()
	for i := range 5 {
		done, err := ps.start(ns, filepath.Join(tb.Dir, "sleep.log"), "sleep", "60")
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			if st, err := httpGet(ns, "127.0.0.1:18573"); err != nil || !strings.Contains(st, " 200 ") {
				t.Fatalf("GET in the namespace: %q, %v", st, err)
			}
		}
		select {
		case <-done:
			t.Fatalf("process %d died while the bench entered the namespace", i)
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The server is in the namespace, not in the bench's own.
	if st, err := httpGet("/proc/self/ns/net", "127.0.0.1:18573"); err == nil {
		t.Errorf("the namespace's server answers in the bench's own namespace: %q", st)
	}
}

// TestLBModeMeasuresAndCleansUp runs the -lb mode's topologies briefly
// (root, iperf3, wrk, haproxy, nft and a buildable vxmesh needed).
func TestLBModeMeasuresAndCleansUp(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	if err := checkLBTools(); err != nil {
		testenv.Missing(t, "%v", err)
	}
	before, _ := testbed.ListNetns("vxl")
	var out, log bytes.Buffer
	jsonPath := filepath.Join(t.TempDir(), "lb.json")
	cfg := config{duration: time.Second, binary: "/nonexistent", mtu: 1450, lb: lbConfig{threads: 1, conns: 4, count: 1, topo: true, jsonPath: jsonPath}}
	if err := runLBMode(context.Background(), cfg, &out, &log); err != nil {
		t.Fatalf("%v\n%s\n%s", err, log.String(), out.String())
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep LBReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 5 || rep.LoadBefore == "" || rep.LoadAfter == "" {
		t.Fatalf("rows and load: %s", b)
	}
	for _, r := range rep.Rows {
		// The vip row may only be skipped for want of the service CLI.
		if r.Name == rowVIP && r.Skipped == errNoServiceCmd.Error() {
			continue
		}
		if !r.ok() || r.ThroughputBps <= 0 || r.Close.Requests == 0 || r.KeepAlive.Requests == 0 || r.Close.P99 <= 0 {
			t.Errorf("row %s not measured: %+v", r.Name, r)
		}
	}
	if after, _ := testbed.ListNetns("vxl"); len(after) != len(before) {
		t.Errorf("left behind: %v (before: %v)", after, before)
	}
}

// FuzzParseWrk: any output either fails with an error or gives counts,
// rates and times that are not negative.
func FuzzParseWrk(f *testing.F) {
	for _, s := range []string{"wrk-close.txt", "wrk-keepalive.txt", "wrk-errors.txt", "wrk-nothing.txt"} {
		b, err := os.ReadFile(filepath.Join("testdata", s))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("  1 requests in 1.00h, 0B read\nRequests/sec: 1e308\n    Latency 9e99us 1 NaNs\n     99%  -3ms\n")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseWrk(s)
		if err != nil {
			return
		}
		if r.Requests < 0 || !(r.RequestsPerSec >= 0) || math.IsInf(r.RequestsPerSec, 0) || r.Elapsed < 0 || r.LatencyAvg < 0 || r.LatencyMax < 0 ||
			r.P50 < 0 || r.P90 < 0 || r.P99 < 0 || r.ConnectErrors < 0 || r.ReadErrors < 0 || r.WriteErrors < 0 || r.Timeouts < 0 || r.Non2xx3xx < 0 {
			t.Errorf("ParseWrk(%q) = %+v", s, r)
		}
	})
}

// FuzzParseGoBench: every result has a benchmark name, finite non-negative
// numbers, and summarising them never panics.
func FuzzParseGoBench(f *testing.F) {
	b, err := os.ReadFile(filepath.Join("testdata", "gobench-lb.txt"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(b))
	f.Add("BenchmarkAddBackend/0-2 1 1 ns/op\nBenchmarkAddBackend/x 1 1 ns/op 3 B/op 1e999 allocs/op\n")
	f.Fuzz(func(t *testing.T, s string) {
		res := ParseGoBench(s)
		for _, r := range res {
			if !strings.HasPrefix(r.Name, "Benchmark") || r.Iterations < 0 || !(r.NsPerOp >= 0) || math.IsInf(r.NsPerOp, 0) {
				t.Errorf("ParseGoBench(%q): %+v", s, r)
			}
		}
		var out bytes.Buffer
		printScale(&out, summarizeScale(res))
	})
}

// TestRunScaleSummarisesLB runs lb's scale benchmarks briefly through the
// go command, as `make bench-lb` does.
func TestRunScaleSummarisesLB(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	var log bytes.Buffer
	rows, err := runScale(context.Background(), "100x", 2, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if len(rows) != 5*len(scaleBenches) {
		t.Fatalf("%d rows, want %d benchmarks x 5 sizes: %+v", len(rows), len(scaleBenches), rows)
	}
	for i, r := range rows {
		want := []int{1, 10, 100, 1000, 10000}[i%5]
		if r.Benchmark != scaleBenches[i/5].name || r.Services != want || r.Runs != 2 || r.NsPerOp <= 0 || r.MinGrowth <= 0 {
			t.Errorf("row %d: %+v", i, r)
		}
	}
	if n := strings.Count(log.String(), "round "); n != 2 {
		t.Errorf("%d rounds logged, want 2:\n%s", n, log.String())
	}
}
