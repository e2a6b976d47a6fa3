package main

// The scale part of the load-balancer benchmark: lb's Go benchmarks whose
// sub-benchmarks are service counts (1 to 10,000), run with `go test
// -bench` and summarised as the cost at each count relative to 1 service.

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
)

// scaleBench is one of lb's benchmarks with service-count sub-benchmarks.
type scaleBench struct {
	name, desc string
	// perConn marks the per-connection cost, whose goal is to stay flat
	// within flatGoal.
	perConn bool
}

var scaleBenches = []scaleBench{
	{"BenchmarkLookupServices", "new connection (lookup, schedule, insert, translate) + its next packet; connections spread over all services", true},
	{"BenchmarkLookupServicesHot", "the same with every connection to one service: the VIP lookup structure alone", true},
	{"BenchmarkLookupServicesEstablished", "a packet of an established connection (65536 connections spread over all services, conntrack cold at every count)", true},
	{"BenchmarkAddBackend", "add a backend to one service: Snapshot.With + Table.Swap", false},
}

// flatGoal is the largest growth of the per-connection cost from 1 to
// 10,000 services that still counts as flat (the 5%).
const flatGoal = 1.05

// ScaleRow is the median cost of one benchmark at one service count.
type ScaleRow struct {
	Benchmark   string  `json:"benchmark"`
	Services    int     `json:"services"`
	Runs        int     `json:"runs"`
	NsPerOp     float64 `json:"ns_per_op"` // median over Runs
	MinNsPerOp  float64 `json:"min_ns_per_op"`
	MaxNsPerOp  float64 `json:"max_ns_per_op"`
	AllocsPerOp float64 `json:"allocs_per_op"`
	// Growth is NsPerOp divided by the same benchmark's at the smallest
	// service count; MinGrowth the same of MinNsPerOp (noise only adds
	// time, so the fastest run is the closest to the code's own cost).
	Growth    float64 `json:"growth"`
	MinGrowth float64 `json:"min_growth"`
}

// scaleArgs returns the `go test` arguments of one round of scaleBenches.
func scaleArgs(benchtime string) []string {
	names := make([]string, len(scaleBenches))
	for i, b := range scaleBenches {
		names[i] = b.name
	}
	return []string{"test", "-run", "^$", "-bench", "^(" + strings.Join(names, "|") + ")$",
		"-benchtime", benchtime, "-count", "1", "github.com/vxmesh/vxmesh/lb"}
}

// runScale runs lb's scale benchmarks with the go command (the bench runs
// from the module, as `make bench-lb` does) in count rounds, each over
// every service count (so that a burst of load from elsewhere on the
// machine does not land on the runs of one count only), and summarises
// them.
func runScale(ctx context.Context, benchtime string, count int, log io.Writer) ([]ScaleRow, error) {
	args := scaleArgs(benchtime)
	var all []GoBench
	for round := 1; round <= count; round++ {
		fmt.Fprintf(log, "lb scale: round %d/%d: go %s\n", round, count, strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		b, err := cmd.CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("go test -bench ./lb: %v: %s", err, tail(string(b), 1000))
		}
		res := ParseGoBench(string(b))
		if len(res) == 0 {
			return nil, fmt.Errorf("go test -bench ./lb printed no results: %s", tail(string(b), 1000))
		}
		all = append(all, res...)
	}
	return summarizeScale(all), nil
}

// summarizeScale groups the results of scaleBenches by benchmark and
// service count (the sub-benchmark name), in scaleBenches order and
// increasing count, with the median of repeated runs.
func summarizeScale(lines []GoBench) []ScaleRow {
	var rows []ScaleRow
	for _, sb := range scaleBenches {
		byN := map[int][]GoBench{}
		for _, l := range lines {
			base, sub, ok := strings.Cut(l.Name, "/")
			n, err := strconv.Atoi(sub)
			if !ok || base != sb.name || err != nil || n < 1 {
				continue
			}
			byN[n] = append(byN[n], l)
		}
		counts := make([]int, 0, len(byN))
		for n := range byN {
			counts = append(counts, n)
		}
		slices.Sort(counts)
		var first, firstMin float64
		for i, n := range counts {
			ls := byN[n]
			ns := make([]float64, len(ls))
			for j, l := range ls {
				ns[j] = l.NsPerOp
			}
			slices.Sort(ns)
			r := ScaleRow{Benchmark: sb.name, Services: n, Runs: len(ns), NsPerOp: median(ns),
				MinNsPerOp: ns[0], MaxNsPerOp: ns[len(ns)-1], AllocsPerOp: ls[0].AllocsPerOp}
			if i == 0 {
				first, firstMin = r.NsPerOp, r.MinNsPerOp
			}
			if first > 0 {
				r.Growth = r.NsPerOp / first
			}
			if firstMin > 0 {
				r.MinGrowth = r.MinNsPerOp / firstMin
			}
			rows = append(rows, r)
		}
	}
	return rows
}

// median of sorted, non-empty xs.
func median(xs []float64) float64 {
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// printScale prints the cost at each service count and, per benchmark,
// the growth from the smallest to the largest count against the goal.
func printScale(out io.Writer, rows []ScaleRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(out, "\nlb cost as the network's services grow (go test -bench ./lb, %d runs, ns/op; growth = cost / cost at the fewest services, of the median and of the fastest run)\n\n", rows[0].Runs)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "benchmark\tservices\tmedian\tmin..max\tallocs/op\tgrowth median\tgrowth min\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f..%.0f\t%.0f\t%.2f\t%.2f\t\n", strings.TrimPrefix(r.Benchmark, "Benchmark"), r.Services, r.NsPerOp,
			r.MinNsPerOp, r.MaxNsPerOp, r.AllocsPerOp, r.Growth, r.MinGrowth)
	}
	tw.Flush()
	fmt.Fprintln(out)
	for _, sb := range scaleBenches {
		var first, last *ScaleRow
		for i := range rows {
			if rows[i].Benchmark == sb.name {
				if first == nil {
					first = &rows[i]
				}
				last = &rows[i]
			}
		}
		if last == nil {
			continue
		}
		verdict := ""
		if sb.perConn {
			verdict = fmt.Sprintf(" (goal <= %.2f, judged on the fastest runs: %s)", flatGoal, metOrNot(last.MinGrowth <= flatGoal))
		}
		fmt.Fprintf(out, "%s: %s\n  %d -> %d services: x%.2f median, x%.2f fastest%s\n", strings.TrimPrefix(sb.name, "Benchmark"), sb.desc,
			first.Services, last.Services, last.Growth, last.MinGrowth, verdict)
	}
}

func metOrNot(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
