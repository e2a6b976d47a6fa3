package main

// The load-balancer benchmark (-lb, `make bench-lb`, and the "lb" section
// of `make bench`): one client and four backends, measured in one run.
//
// vxmesh (one testbed host, one daemon, network lbb 10.88.3.0/24 at -mtu):
// containers cli, b1..b4 and hap made by `vxmesh run`.
//   - direct: cli -> b1's address, no balancing.
//   - vip: cli -> the VIP of service web (round robin, port 80) or perf
//     (port 5201, client-IP affinity), both with b1..b4 as backends
//     (`vxmesh run --service`). Skipped, with the reason, when the vxmesh
//     binary has no `service` command.
//   - haproxy: cli -> HAProxy (mode tcp; balance roundrobin on 80, source
//     on 5201) in container hap -> b1..b4: two trips through the switch.
//
// kernel (no daemon): a router namespace with a Linux bridge br0
// (10.89.2.1/24) holding b1..b4 on veth pairs, and the client on its own
// veth and subnet (10.89.4.0/24) so that both directions of a flow are
// routed by the router, where nftables DNATs the VIP 10.89.5.10 (the
// stand-in for IPVS, whose module is not available here; without SNAT,
// like vxmesh, so the replies must come back through the router):
//   - kernel-direct: client -> b1 through the router, no DNAT.
//   - kernel-dnat: client -> VIP; port 80 `dnat to numgen inc mod 4`,
//     port 5201 `jhash ip saddr mod 4`.
//
// iperf3 needs its control and data connections on one server, so every
// balancer sends port 5201 by client address (affinity) and port 80 round
// robin. Each backend runs `iperf3 -s` and an HTTP server (in the bench
// process, a socket opened in its namespace) answering GET with 64 bytes.
//
// Per row: iperf3 TCP throughput (-duration), new connections per second
// (wrk -H 'Connection: close'), keep-alive requests per second, and wrk's
// p99 latency of both; then ratios against the goals (VIP >= 0.95x direct
// throughput, VIP conn/s above HAProxy's) and, from lbscale.go, how lb's
// per-connection and add-backend costs grow from 1 to 10,000 services.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

// lbConfig are the load-balancer benchmark's knobs.
type lbConfig struct {
	threads   int    // wrk -t
	conns     int    // wrk -c
	jsonPath  string // write the report as JSON here too ("" = no)
	scale     bool   // run lb's scale benchmarks
	benchtime string // their -benchtime
	count     int    // their -count
	topo      bool   // run the namespace topologies
}

// LBRow is one measured path of the load-balancer benchmark.
type LBRow struct {
	Name   string `json:"name"`
	Desc   string `json:"desc"`
	Target string `json:"target"` // the address the client connects to
	// IperfTarget, if set, is where iperf3 connects instead of Target
	// (the vip row: iperf3's service, which has client-IP affinity, has a
	// VIP of its own).
	IperfTarget string `json:"iperf_target,omitempty"`
	// ThroughputBps is iperf3's received bits per second.
	ThroughputBps float64 `json:"throughput_bps"`
	Retransmits   int64   `json:"retransmits"`
	// Close is wrk with Connection: close (one request per connection);
	// KeepAlive is wrk on persistent connections.
	Close     WrkResult `json:"close"`
	KeepAlive WrkResult `json:"keep_alive"`
	Error     string    `json:"error,omitempty"`
	Skipped   string    `json:"skipped,omitempty"`
}

func (r LBRow) ok() bool { return r.Error == "" && r.Skipped == "" }

// LBRatio is one comparison of two rows.
type LBRatio struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Goal  string  `json:"goal,omitempty"` // "" for context only
	Met   *bool   `json:"met,omitempty"`
}

// LBReport is the whole load-balancer benchmark, as -json writes it.
type LBReport struct {
	Duration   string     `json:"duration"`
	MTU        int        `json:"mtu"`
	WrkThreads int        `json:"wrk_threads"`
	WrkConns   int        `json:"wrk_connections"`
	Rows       []LBRow    `json:"rows"`
	Ratios     []LBRatio  `json:"ratios"`
	Scale      []ScaleRow `json:"scale,omitempty"`
	ScaleError string     `json:"scale_error,omitempty"`
	// LoadBefore and LoadAfter are /proc/loadavg's 1-minute load average
	// before and after the measurements: other work on the machine skews
	// every number.
	LoadBefore string `json:"load_before,omitempty"`
	LoadAfter  string `json:"load_after,omitempty"`
}

// printLoad prints the machine's load average before and after a
// section's measurements: other work on the machine skews every number,
// and request/response latencies on an idle machine include the CPUs'
// wake-ups from idle, which a loaded machine skips.
func printLoad(out io.Writer, before, after string) {
	if before != "" || after != "" {
		fmt.Fprintf(out, "\nmachine load average (1 min) before / after: %s / %s on %d CPUs\n", before, after, runtime.NumCPU())
	}
}

// loadAvg returns the 1-minute load average, or "" if unknown.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// Row names.
const (
	rowDirect       = "direct"
	rowVIP          = "vip"
	rowHAProxy      = "haproxy"
	rowKernelDirect = "kernel-direct"
	rowKernelDNAT   = "kernel-dnat"
)

const (
	lbBackends = 4
	httpPort   = 80
	iperfPort  = 5201
	kernelVIP  = "10.89.5.10"
)

func checkLBTools() error {
	if err := testbed.CheckPrereqs(); err != nil {
		return err
	}
	var missing []string
	for _, c := range []string{"iperf3", "wrk", "haproxy", "nft", "ss"} {
		if _, err := lookTool(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: apt-get install iperf3 wrk haproxy nftables iproute2 (or `make bench-lb`, which installs them)", strings.Join(missing, ", "))
	}
	return nil
}

// runLBMode is the -lb mode: the load-balancer section alone.
func runLBMode(ctx context.Context, cfg config, out, log io.Writer) error {
	rep, err := runLB(ctx, cfg, log)
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	printLB(out, rep)
	if jerr := writeLBJSON(cfg.lb.jsonPath, rep); jerr != nil {
		err = errors.Join(err, jerr)
	} else if cfg.lb.jsonPath != "" {
		fmt.Fprintf(out, "\nJSON report: %s\n", cfg.lb.jsonPath)
	}
	return err
}

// runLB measures every row and the scale benchmarks. The error joins the
// failed rows' (skipped rows are no error).
func runLB(ctx context.Context, cfg config, log io.Writer) (rep LBReport, err error) {
	l := cfg.lb
	rep = LBReport{Duration: cfg.duration.String(), MTU: cfg.mtu, WrkThreads: l.threads, WrkConns: l.conns, LoadBefore: loadAvg()}
	defer func() { rep.LoadAfter = loadAvg() }()
	if l.threads < 1 || l.conns < l.threads || l.count < 1 {
		return rep, fmt.Errorf("-lb-threads must be positive, -lb-conns at least -lb-threads, -lb-count positive")
	}
	if cfg.duration < time.Second {
		return rep, fmt.Errorf("-duration %v: the lb benchmark needs at least 1s (iperf3 and wrk take whole seconds)", cfg.duration)
	}
	var errs []error
	if l.topo {
		if err := checkLBTools(); err != nil {
			return rep, err
		}
		prefix := "vxl" + testbed.RandomID(2) + "-"
		rep.Rows = append(rep.Rows, lbVxmesh(ctx, cfg, prefix+"v", log)...)
		if ctx.Err() == nil {
			rep.Rows = append(rep.Rows, lbKernel(ctx, cfg, prefix+"k", log)...)
		}
		for _, r := range rep.Rows {
			if r.Error != "" {
				errs = append(errs, fmt.Errorf("%s: %s", r.Name, r.Error))
			}
		}
		rep.Ratios = lbRatios(rep.Rows)
	}
	if l.scale && ctx.Err() == nil {
		rep.Scale, err = runScale(ctx, l.benchtime, l.count, log)
		if err != nil {
			rep.ScaleError = err.Error()
			errs = append(errs, err)
		}
	}
	return rep, errors.Join(errs...)
}

func writeLBJSON(path string, rep LBReport) error {
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("-json: %w", err)
	}
	return nil
}

// lbServer is one backend: its namespace and address.
type lbServer struct {
	name, netns, ip string
}

// lbServers starts iperf3 -s and the HTTP server in every backend and
// returns a function that stops them.
func lbServers(ctx context.Context, dir string, backends []lbServer) (func(), error) {
	var ps procs
	var https []*http.Server
	stop := func() {
		ps.stop()
		for _, s := range https {
			_ = s.Close()
		}
	}
	for _, b := range backends {
		logPath := filepath.Join(dir, "iperf3-"+b.name+".log")
		if _, err := ps.start(b.netns, logPath, "iperf3", "-s", "-p", fmt.Sprint(iperfPort)); err != nil {
			stop()
			return nil, err
		}
		srv, err := startHTTP(b.netns, httpPort)
		if err != nil {
			stop()
			return nil, err
		}
		https = append(https, srv)
	}
	for _, b := range backends {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := testbed.WaitTCPListen(wctx, b.netns, iperfPort)
		cancel()
		if err != nil {
			stop()
			return nil, fmt.Errorf("iperf3 -s in %s: %w: %s", b.name, err, logTail(filepath.Join(dir, "iperf3-"+b.name+".log")))
		}
	}
	return stop, nil
}

// measureLB fills r's measurements: from the client namespace to
// r.Target, first waiting until its HTTP answers.
func measureLB(ctx context.Context, cfg config, client string, r *LBRow, log io.Writer) error {
	if err := waitHTTP(ctx, client, fmt.Sprintf("%s:%d", r.Target, httpPort), 15*time.Second); err != nil {
		return err
	}
	secs := fmt.Sprint(int(cfg.duration.Seconds()))
	perf := r.Target
	if r.IperfTarget != "" {
		perf = r.IperfTarget
	}
	fmt.Fprintf(log, "  %s: iperf3 -c %s -t %s\n", r.Name, perf, secs)
	cli := exec.CommandContext(ctx, "nsenter", "--net="+client, "--", "iperf3", "-c", perf, "-p", fmt.Sprint(iperfPort), "-t", secs, "-J")
	cli.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	jout, cerr := cli.Output()
	ir, err := testbed.ParseIperf3JSON(jout)
	if err != nil {
		return fmt.Errorf("iperf3 client: %v (%v)", err, cerr)
	}
	r.ThroughputBps, r.Retransmits = ir.ReceivedBitsPerSecond, ir.Retransmits
	for _, keepAlive := range []bool{false, true} {
		args := wrkArgs(cfg, r.Target, keepAlive)
		fmt.Fprintf(log, "  %s: wrk %s\n", r.Name, strings.Join(args, " "))
		wr, err := runWrk(ctx, client, args)
		if err != nil {
			return err
		}
		if keepAlive {
			r.KeepAlive = wr
		} else {
			r.Close = wr
		}
	}
	return nil
}

// wrkArgs returns wrk's arguments for a run to target's HTTP port.
func wrkArgs(cfg config, target string, keepAlive bool) []string {
	args := []string{"-t", fmt.Sprint(cfg.lb.threads), "-c", fmt.Sprint(cfg.lb.conns),
		"-d", fmt.Sprintf("%ds", int(cfg.duration.Seconds())), "--latency"}
	if !keepAlive {
		args = append(args, "-H", "Connection: close")
	}
	return append(args, fmt.Sprintf("http://%s:%d/", target, httpPort))
}

func runWrk(ctx context.Context, netns string, args []string) (WrkResult, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netns, "--", "wrk"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	b, runErr := cmd.CombinedOutput()
	r, err := ParseWrk(string(b))
	if err != nil {
		return r, fmt.Errorf("%v (exit: %v)", err, runErr)
	}
	if r.Requests == 0 {
		return r, fmt.Errorf("wrk completed no request: %s", tail(string(b), 500))
	}
	return r, nil
}

// lbRatios compares the rows that were measured.
func lbRatios(rows []LBRow) []LBRatio {
	by := map[string]LBRow{}
	for _, r := range rows {
		if r.ok() {
			by[r.Name] = r
		}
	}
	type metric struct {
		name string
		f    func(LBRow) float64
	}
	tput := metric{"throughput", func(r LBRow) float64 { return r.ThroughputBps }}
	conns := metric{"new conn/s", func(r LBRow) float64 { return r.Close.RequestsPerSec }}
	ka := metric{"keep-alive req/s", func(r LBRow) float64 { return r.KeepAlive.RequestsPerSec }}
	specs := []struct {
		a, b   string
		m      metric
		goal   string
		min    float64 // the goal: ratio >= min (> when strict)
		strict bool
	}{
		{rowVIP, rowDirect, tput, ">= 0.95", 0.95, false},
		{rowVIP, rowHAProxy, conns, "> 1", 1, true},
		{rowVIP, rowDirect, conns, "", 0, false},
		{rowVIP, rowDirect, ka, "", 0, false},
		{rowVIP, rowHAProxy, tput, "", 0, false},
		{rowVIP, rowHAProxy, ka, "", 0, false},
		{rowHAProxy, rowDirect, tput, "", 0, false},
		{rowKernelDNAT, rowKernelDirect, tput, "", 0, false},
		{rowKernelDNAT, rowKernelDirect, conns, "", 0, false},
		{rowVIP, rowKernelDNAT, conns, "", 0, false},
		{rowDirect, rowKernelDirect, tput, "", 0, false},
	}
	var out []LBRatio
	for _, s := range specs {
		a, aok := by[s.a]
		b, bok := by[s.b]
		if !aok || !bok || s.m.f(b) <= 0 {
			continue
		}
		r := LBRatio{Name: fmt.Sprintf("%s %s / %s", s.m.name, s.a, s.b), Value: s.m.f(a) / s.m.f(b), Goal: s.goal}
		if s.goal != "" {
			met := r.Value >= s.min && (!s.strict || r.Value > s.min)
			r.Met = &met
		}
		out = append(out, r)
	}
	return out
}

// printLB prints the rows, the ratios and the scale summary.
func printLB(out io.Writer, rep LBReport) {
	if len(rep.Rows) > 0 {
		fmt.Fprintf(out, "\nload balancer, 1 host: 1 client, %d backends, MTU %d; iperf3 TCP %s; wrk -t%d -c%d %s per run, GET / -> %d bytes\n\n",
			lbBackends, rep.MTU, rep.Duration, rep.WrkThreads, rep.WrkConns, rep.Duration, len(httpBody))
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "row\tpath\tGbit/s\tretrans\tconn/s (close)\tp99\treq/s (keep-alive)\tp99\twrk errors\t")
		for _, r := range rep.Rows {
			if !r.ok() {
				fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t\n", r.Name, r.Desc)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t%d\t%.0f\t%s\t%.0f\t%s\t%d\t\n", r.Name, r.Desc, r.ThroughputBps/1e9, r.Retransmits,
				r.Close.RequestsPerSec, fmtMs(r.Close.P99), r.KeepAlive.RequestsPerSec, fmtMs(r.KeepAlive.P99), r.Close.Errors()+r.KeepAlive.Errors())
		}
		tw.Flush()
		for _, r := range rep.Rows {
			switch {
			case r.Skipped != "":
				fmt.Fprintf(out, "%s skipped: %s\n", r.Name, r.Skipped)
			case r.Error != "":
				fmt.Fprintf(out, "%s failed: %s\n", r.Name, r.Error)
			}
		}
	}
	if len(rep.Ratios) > 0 {
		fmt.Fprintln(out)
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ratio\tvalue\tgoal\t")
		for _, r := range rep.Ratios {
			goal := "(context)"
			if r.Met != nil {
				goal = r.Goal + ": " + metOrNot(*r.Met)
			}
			fmt.Fprintf(tw, "%s\t%.2f\t%s\t\n", r.Name, r.Value, goal)
		}
		tw.Flush()
	}
	printScale(out, rep.Scale)
	if rep.ScaleError != "" {
		fmt.Fprintf(out, "scale benchmarks failed: %s\n", rep.ScaleError)
	}
	printLoad(out, rep.LoadBefore, rep.LoadAfter)
}
