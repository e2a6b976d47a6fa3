package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

func readSample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The samples are dnsperf 2.10.0 reports captured against dnsmasq in a
// namespace: unthrottled (with timeouts at the end), at -Q 10000, and
// against an address where nothing listens.
func TestParseDNSPerfMaxThroughput(t *testing.T) {
	r, err := ParseDNSPerf(readSample(t, "dnsperf-max.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := DNSPerfResult{
		Sent: 131015, Completed: 131008, Lost: 7,
		RCodes:      map[string]int64{"NOERROR": 131008},
		RequestSize: 20, ResponseSize: 36,
		RunTime:    2003566 * time.Microsecond,
		QPS:        65387.414240,
		AvgLatency: 2534 * time.Microsecond, MinLatency: 25 * time.Microsecond, MaxLatency: 11168 * time.Microsecond,
		StdDev: 1303 * time.Microsecond, HasStdDev: true,
	}
	checkDNSPerf(t, r, want)
}

func TestParseDNSPerfFixedRate(t *testing.T) {
	r, err := ParseDNSPerf(readSample(t, "dnsperf-rate.txt"))
	if err != nil {
		t.Fatal(err)
	}
	checkDNSPerf(t, r, DNSPerfResult{
		Sent: 20000, Completed: 20000, Lost: 0,
		RCodes:      map[string]int64{"NOERROR": 20000},
		RequestSize: 20, ResponseSize: 36,
		RunTime:    2000312 * time.Microsecond,
		QPS:        9998.440243,
		AvgLatency: 107 * time.Microsecond, MinLatency: 18 * time.Microsecond, MaxLatency: 12312 * time.Microsecond,
		StdDev: 606 * time.Microsecond, HasStdDev: true,
	})
}

func TestParseDNSPerfAllLost(t *testing.T) {
	r, err := ParseDNSPerf(readSample(t, "dnsperf-alllost.txt"))
	if err != nil {
		t.Fatal(err)
	}
	checkDNSPerf(t, r, DNSPerfResult{
		Sent: 200, Completed: 0, Lost: 200,
		RCodes:      map[string]int64{},
		RequestSize: 20, ResponseSize: 0,
		RunTime: 2000257 * time.Microsecond,
	})
}

func TestParseDNSPerfSeveralRCodes(t *testing.T) {
	s := strings.Replace(readSample(t, "dnsperf-rate.txt"), "NOERROR 20000 (100.00%)", "NOERROR 19990 (99.95%), SERVFAIL 7 (0.04%), NXDOMAIN 3 (0.01%)", 1)
	r, err := ParseDNSPerf(s)
	if err != nil {
		t.Fatal(err)
	}
	if r.RCodes["NOERROR"] != 19990 || r.RCodes["SERVFAIL"] != 7 || r.RCodes["NXDOMAIN"] != 3 || len(r.RCodes) != 3 {
		t.Errorf("rcodes %v", r.RCodes)
	}
}

func TestParseDNSPerfRejectsOutputWithoutStatistics(t *testing.T) {
	for _, s := range []string{
		"",
		"DNS Performance Testing Tool\nVersion 2.10.0\n\nError: invalid argument\n",
		// Cut before the rate.
		strings.Split(readSample(t, "dnsperf-max.txt"), "  Response codes")[0],
	} {
		if r, err := ParseDNSPerf(s); err == nil {
			t.Errorf("ParseDNSPerf(%q) = %+v, want error", tail(s, 80), r)
		}
	}
}

func checkDNSPerf(t *testing.T, got, want DNSPerfResult) {
	t.Helper()
	near := func(a, b time.Duration) bool { d := a - b; return d > -time.Microsecond && d < time.Microsecond }
	if got.Sent != want.Sent || got.Completed != want.Completed || got.Lost != want.Lost ||
		got.RequestSize != want.RequestSize || got.ResponseSize != want.ResponseSize ||
		got.QPS != want.QPS || got.HasStdDev != want.HasStdDev ||
		!near(got.RunTime, want.RunTime) || !near(got.AvgLatency, want.AvgLatency) || !near(got.MinLatency, want.MinLatency) ||
		!near(got.MaxLatency, want.MaxLatency) || !near(got.StdDev, want.StdDev) || len(got.RCodes) != len(want.RCodes) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	for k, v := range want.RCodes {
		if got.RCodes[k] != v {
			t.Errorf("rcode %s: got %d, want %d", k, got.RCodes[k], v)
		}
	}
}

func TestDNSTableShowsRatiosToDnsmasq(t *testing.T) {
	var out bytes.Buffer
	cfg := config{duration: 10 * time.Second, dns: dnsConfig{names: 10, clients: 4, threads: 2, outstanding: 200, rate: 10000}}
	printDNSTable(&out, cfg, []dnsRun{
		{mode: "max", server: "vxmesh", res: DNSPerfResult{Sent: 100, Completed: 100, QPS: 30000, AvgLatency: 4 * time.Millisecond, HasStdDev: true}},
		{mode: "max", server: "dnsmasq", res: DNSPerfResult{Sent: 100, Completed: 100, QPS: 60000, AvgLatency: 2 * time.Millisecond, HasStdDev: true}},
		{mode: "rate", server: "vxmesh", res: DNSPerfResult{Sent: 100, Completed: 99, Lost: 1, QPS: 10000, AvgLatency: 300 * time.Microsecond, HasStdDev: true}},
		{mode: "rate", server: "dnsmasq", res: DNSPerfResult{Sent: 100, Completed: 100, QPS: 10000, AvgLatency: 100 * time.Microsecond, HasStdDev: true}},
	})
	s := out.String()
	for _, want := range []string{"30000", "60000", "0.50", "2.00", "3.00", "1.00", "-Q 10000", "1 (1.00%)", "4.000 ms", "0.300 ms", "-c 4 -T 2 -q 200", "10 containers"} {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
}

// TestDNSTableGivesMedianRatiosOverRounds: with -dns-rounds each vxmesh
// run is compared with the dnsmasq run of its own round, and the median of
// those ratios closes the table.
func TestDNSTableGivesMedianRatiosOverRounds(t *testing.T) {
	var out bytes.Buffer
	cfg := config{duration: time.Second, dns: dnsConfig{names: 10, clients: 4, threads: 2, outstanding: 200, rate: 10000, rounds: 3}}
	var runs []dnsRun
	// Rounds whose vxmesh/dnsmasq QPS ratios are 1.0, 3.0 and 1.5; their
	// latency ratios 0.5, 2.0 and 0.8.
	for i, r := range []struct {
		vx, dm   float64
		vxl, dml time.Duration
	}{{50000, 50000, 1000, 2000}, {90000, 30000, 4000, 2000}, {60000, 40000, 800, 1000}} {
		runs = append(runs,
			dnsRun{mode: "max", round: i, server: "vxmesh", res: DNSPerfResult{Sent: 1, Completed: 1, QPS: r.vx, AvgLatency: r.vxl}},
			dnsRun{mode: "max", round: i, server: "dnsmasq", res: DNSPerfResult{Sent: 1, Completed: 1, QPS: r.dm, AvgLatency: r.dml}})
	}
	printDNSTable(&out, cfg, runs)
	s := out.String()
	for _, want := range []string{"max #1", "max #3", "3.00", "max: median of 3 rounds, vxmesh/dnsmasq: QPS 1.50, avg latency 0.80"} {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "rate: median") {
		t.Errorf("a median for the rate runs, which did not run:\n%s", s)
	}
}

func TestDNSperfArgs(t *testing.T) {
	cfg := config{duration: 1500 * time.Millisecond, dns: dnsConfig{clients: 4, threads: 2, outstanding: 200, rate: 10000}}
	got := strings.Join(dnsperfArgs(cfg, "127.0.0.11", "/q", false), " ")
	if got != "-s 127.0.0.11 -d /q -l 1.5 -c 4 -T 2 -q 200" {
		t.Errorf("max: %s", got)
	}
	if got := strings.Join(dnsperfArgs(cfg, "127.0.0.12", "/q", true), " "); !strings.HasSuffix(got, " -Q 10000") {
		t.Errorf("rate: %s", got)
	}
}

// TestDNSModeMeasuresAndCleansUp runs the whole -dns mode briefly (root,
// dnsperf, dnsmasq and a buildable vxmesh needed).
func TestDNSModeMeasuresAndCleansUp(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	if err := checkDNSTools(); err != nil {
		testenv.Missing(t, "%v", err)
	}
	before, _ := testbed.ListNetns("vxdns")
	var out, log bytes.Buffer
	cfg := config{duration: time.Second, binary: "/nonexistent", dns: dnsConfig{names: 3, clients: 1, threads: 1, outstanding: 20, rate: 1000, rounds: 2}}
	if err := runDNS(context.Background(), cfg, &out, &log); err != nil {
		t.Fatalf("%v\n%s\n%s", err, log.String(), out.String())
	}
	if n := strings.Count(out.String(), "vxmesh  "); n < 4 || strings.Contains(out.String(), "failed") {
		t.Errorf("table:\n%s", out.String())
	}
	if after, _ := testbed.ListNetns("vxdns"); len(after) != len(before) {
		t.Errorf("left behind: %v (before: %v)", after, before)
	}
}
