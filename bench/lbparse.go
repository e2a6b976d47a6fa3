package main

// Parsers of the load-balancer benchmark's tools: wrk's report and the
// result lines of `go test -bench`.

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// WrkResult is what the load-balancer table needs of wrk's report
// (wrk 4.x, run with --latency).
type WrkResult struct {
	// Requests is the number of completed requests, in Elapsed.
	Requests int64         `json:"requests"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	// RequestsPerSec is wrk's "Requests/sec" line.
	RequestsPerSec float64 `json:"requests_per_sec"`
	// LatencyAvg and LatencyMax are the thread statistics' latency;
	// zero when wrk printed none (nothing completed).
	LatencyAvg time.Duration `json:"latency_avg_ns"`
	LatencyMax time.Duration `json:"latency_max_ns"`
	// P50, P90 and P99 come from "Latency Distribution" (--latency);
	// zero when absent.
	P50 time.Duration `json:"p50_ns"`
	P90 time.Duration `json:"p90_ns"`
	P99 time.Duration `json:"p99_ns"`
	// Socket errors by kind, and responses that were not 2xx or 3xx.
	ConnectErrors int64 `json:"connect_errors"`
	ReadErrors    int64 `json:"read_errors"`
	WriteErrors   int64 `json:"write_errors"`
	Timeouts      int64 `json:"timeouts"`
	Non2xx3xx     int64 `json:"non_2xx_3xx"`
}

// Errors returns every failed request or socket error wrk counted.
func (r WrkResult) Errors() int64 {
	return r.ConnectErrors + r.ReadErrors + r.WriteErrors + r.Timeouts + r.Non2xx3xx
}

var (
	wrkRequestsRE = regexp.MustCompile(`(?m)^\s*(\d+) requests in (\S+),`)
	wrkRateRE     = regexp.MustCompile(`(?m)^Requests/sec:\s+(\S+)`)
	wrkLatencyRE  = regexp.MustCompile(`(?m)^\s*Latency\s+(\S+)\s+\S+\s+(\S+)`)
	wrkPctRE      = regexp.MustCompile(`(?m)^\s*(50|90|99)(?:\.0+)?%\s+(\S+)\s*$`)
	wrkSocketRE   = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xxRE   = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses: (\d+)`)
)

// ParseWrk parses wrk's report (its stdout). The request count, the run
// time and the rate are required; latencies and errors are read when
// present.
func ParseWrk(out string) (WrkResult, error) {
	var r WrkResult
	m := wrkRequestsRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk: no \"N requests in T\" line in output %q", tail(out, 300))
	}
	var err error
	if r.Requests, err = strconv.ParseInt(m[1], 10, 64); err != nil {
		return r, fmt.Errorf("wrk: request count %q: %v", m[1], err)
	}
	if r.Elapsed, err = parseWrkDuration(m[2]); err != nil {
		return r, fmt.Errorf("wrk: run time: %v", err)
	}
	m = wrkRateRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk: no \"Requests/sec\" line in output %q", tail(out, 300))
	}
	if r.RequestsPerSec, err = strconv.ParseFloat(m[1], 64); err != nil || !(r.RequestsPerSec >= 0) || math.IsInf(r.RequestsPerSec, 0) {
		return r, fmt.Errorf("wrk: bad Requests/sec %q", m[1])
	}
	// Latency fields that do not parse (wrk prints "-nan" and "0.00us"
	// when nothing completed) stay zero.
	if m := wrkLatencyRE.FindStringSubmatch(out); m != nil {
		r.LatencyAvg, _ = parseWrkDuration(m[1])
		r.LatencyMax, _ = parseWrkDuration(m[2])
	}
	for _, m := range wrkPctRE.FindAllStringSubmatch(out, -1) {
		d, _ := parseWrkDuration(m[2])
		switch m[1] {
		case "50":
			r.P50 = d
		case "90":
			r.P90 = d
		case "99":
			r.P99 = d
		}
	}
	if m := wrkSocketRE.FindStringSubmatch(out); m != nil {
		for i, p := range []*int64{&r.ConnectErrors, &r.ReadErrors, &r.WriteErrors, &r.Timeouts} {
			*p, _ = strconv.ParseInt(m[i+1], 10, 64)
		}
	}
	if m := wrkNon2xxRE.FindStringSubmatch(out); m != nil {
		r.Non2xx3xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}

// wrkUnits are the suffixes of wrk's format_time, longest first.
var wrkUnits = []struct {
	suffix string
	unit   time.Duration
}{{"us", time.Microsecond}, {"ms", time.Millisecond}, {"s", time.Second}, {"m", time.Minute}, {"h", time.Hour}}

// parseWrkDuration parses a time as wrk prints it: "812.00us", "1.70ms",
// "1.10s", "2.00m", "1.00h".
func parseWrkDuration(s string) (time.Duration, error) {
	for _, u := range wrkUnits {
		num, ok := strings.CutSuffix(s, u.suffix)
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(num, 64)
		if err != nil || !(f >= 0 && f <= float64(1<<62)/float64(u.unit)) || num != strings.TrimSpace(num) {
			return 0, fmt.Errorf("bad time %q", s)
		}
		return time.Duration(f * float64(u.unit)), nil
	}
	return 0, fmt.Errorf("bad time %q (no unit)", s)
}

// GoBench is one result line of `go test -bench`.
type GoBench struct {
	// Name is the benchmark's name without the -GOMAXPROCS suffix, e.g.
	// "BenchmarkLookupServices/1000".
	Name        string  `json:"name"`
	Iterations  int64   `json:"iterations"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  float64 `json:"bytes_per_op"`
	AllocsPerOp float64 `json:"allocs_per_op"`
}

var goBenchRE = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+([\d.]+) ns/op(.*)$`)

// ParseGoBench returns the result lines of `go test -bench` output, in
// order; other lines (goos, PASS, logs) are skipped. B/op and allocs/op
// are read when present (-benchmem or b.ReportAllocs).
func ParseGoBench(out string) []GoBench {
	var res []GoBench
	for _, line := range strings.Split(out, "\n") {
		m := goBenchRE.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		b := GoBench{Name: m[1]}
		var err error
		if b.Iterations, err = strconv.ParseInt(m[2], 10, 64); err != nil {
			continue
		}
		if b.NsPerOp, err = strconv.ParseFloat(m[3], 64); err != nil || math.IsInf(b.NsPerOp, 0) {
			continue
		}
		f := strings.Fields(m[4])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil || !(v >= 0) || math.IsInf(v, 0) {
				continue
			}
			switch f[i+1] {
			case "B/op":
				b.BytesPerOp = v
			case "allocs/op":
				b.AllocsPerOp = v
			}
		}
		res = append(res, b)
	}
	return res
}
