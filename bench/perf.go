package main

// The performance rows of issue 12, measured on every topology of the main
// table beside its single iperf3 stream:
//   - several streams (iperf3 -P, -streams, default 4): whether more than
//     one core carries traffic;
//   - a request/response rate (TCP_RR-style, -rr): one TCP connection, one
//     byte each way per transaction, as many transactions as the path
//     allows for -duration; the mean latency is the run time divided by the
//     transactions. iperf3 cannot do this and netperf is not packaged in
//     Debian, so the bench binary itself is the client and server (the
//     hidden subcommands rrServerCmd and rrClientCmd, run in the
//     containers' namespaces with nsenter).
//
// The anchors table then sets each vxmesh row beside the kernel (or
// userspace) datapath it is compared with, all measured in the same run.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

// measurement is what measure takes from one topology.
type measurement struct {
	iperf testbed.IperfResult // one stream
	multi testbed.IperfResult // cfg.streams streams (zero if not run)
	rr    rrResult            // request/response (zero if not run)
	ping  testbed.PingResult
	// cpuPerGB is the daemons' CPU seconds per GB received in the one
	// stream run (0: no daemon on the path).
	cpuPerGB float64
}

// iperfCPU is runIperf that also returns the CPU seconds p's daemons
// spent per GB received (0 without daemons, or if their CPU time could
// not be read): a cost that depends less on the machine's other load
// than the throughput does.
func iperfCPU(ctx context.Context, cfg config, p pair, streams int, log io.Writer) (testbed.IperfResult, float64, error) {
	if len(p.daemons) == 0 {
		r, err := runIperf(ctx, cfg, p, streams, log)
		return r, 0, err
	}
	c0, err0 := cpuTime(p.daemons)
	r, err := runIperf(ctx, cfg, p, streams, log)
	c1, err1 := cpuTime(p.daemons)
	if err != nil || err0 != nil || err1 != nil || r.ReceivedBytes <= 0 {
		return r, 0, err
	}
	return r, (c1 - c0).Seconds() / (float64(r.ReceivedBytes) / 1e9), nil
}

// fmtCPUPerGB formats a row's daemon CPU per GB ("-" for none).
func fmtCPUPerGB(v float64) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

// rrResult is a request/response run: Transactions one-byte exchanges in
// Seconds over one TCP connection, and the median and 99th percentile
// of one exchange's time in microseconds (0: not measured). A mean far
// above the median says the time goes to rare stalls (scheduling on a
// loaded machine), not to every exchange.
type rrResult struct {
	Transactions int64   `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	P50us        float64 `json:"p50_us,omitempty"`
	P99us        float64 `json:"p99_us,omitempty"`
}

// Rate returns transactions per second (0 without a run).
func (r rrResult) Rate() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Transactions) / r.Seconds
}

// Mean returns the mean time of one transaction (0 without a run).
func (r rrResult) Mean() time.Duration {
	if r.Transactions <= 0 {
		return 0
	}
	return time.Duration(r.Seconds / float64(r.Transactions) * float64(time.Second))
}

// Hidden subcommands of the bench binary: the request/response server and
// client, run inside the containers' namespaces.
const (
	rrServerCmd = "rr-server"
	rrClientCmd = "rr-client"
	rrPort      = 5202
)

// rrMain runs a hidden subcommand (args after its name) and returns the
// process's exit code.
func rrMain(cmd string, args []string, out, errOut io.Writer) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(errOut)
	addr := fs.String("addr", fmt.Sprintf(":%d", rrPort), "listen (server) or connect (client) address")
	d := fs.Duration("duration", 10*time.Second, "client: run time")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	switch cmd {
	case rrServerCmd:
		var ln net.Listener
		if ln, err = net.Listen("tcp", *addr); err == nil {
			err = rrServe(ln)
		}
	case rrClientCmd:
		var r rrResult
		if r, err = rrClient(*addr, *d); err == nil {
			err = json.NewEncoder(out).Encode(r)
		}
	default:
		err = fmt.Errorf("unknown subcommand %q", cmd)
	}
	if err != nil {
		fmt.Fprintf(errOut, "bench %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// rrServe answers one connection of ln: every byte read is written back.
// It returns when the client closes the connection.
func rrServe(ln net.Listener) error {
	defer ln.Close()
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
}

// rrClient connects to addr and exchanges one byte at a time (write, then
// read the echo) for d.
func rrClient(addr string, d time.Duration) (rrResult, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return rrResult{}, err
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		if err := tc.SetNoDelay(true); err != nil {
			return rrResult{}, err
		}
	}
	buf := []byte{'x'}
	start := time.Now()
	end := start.Add(d)
	var n int64
	times := make([]time.Duration, 0, 1<<16)
	for last := start; ; {
		if _, err := c.Write(buf); err != nil {
			return rrResult{}, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return rrResult{}, err
		}
		n++
		now := time.Now()
		times = append(times, now.Sub(last))
		last = now
		if n%64 == 0 && !now.Before(end) {
			break
		}
	}
	r := rrResult{Transactions: n, Seconds: time.Since(start).Seconds()}
	r.P50us, r.P99us = percentileUs(times, 0.50), percentileUs(times, 0.99)
	return r, nil
}

// percentileUs returns the q quantile of ds in microseconds (ds is
// sorted in place).
func percentileUs(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return float64(ds[min(len(ds)-1, int(q*float64(len(ds))))]) / float64(time.Microsecond)
}

// measureRR runs the request/response server in c2 and the client in c1.
func measureRR(ctx context.Context, cfg config, p pair, log io.Writer) (rrResult, error) {
	self, err := os.Executable()
	if err != nil {
		return rrResult{}, err
	}
	srv := exec.CommandContext(ctx, "nsenter", "--net="+p.c2, "--", self, rrServerCmd, "-addr", fmt.Sprintf(":%d", rrPort))
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := srv.Start(); err != nil {
		return rrResult{}, fmt.Errorf("rr server: %w", err)
	}
	defer func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
	}()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := testbed.WaitTCPListen(wctx, p.c2, rrPort); err != nil {
		return rrResult{}, fmt.Errorf("rr server: %w: %s", err, srvOut.String())
	}
	addr := net.JoinHostPort(p.c2IP, fmt.Sprint(rrPort))
	fmt.Fprintf(log, "  %s -addr %s -duration %v (in c1)\n", rrClientCmd, addr, cfg.duration)
	cli := exec.CommandContext(ctx, "nsenter", "--net="+p.c1, "--", self, rrClientCmd, "-addr", addr, "-duration", cfg.duration.String())
	cli.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var cliErr strings.Builder
	cli.Stderr = &cliErr
	jout, err := cli.Output()
	if err != nil {
		return rrResult{}, fmt.Errorf("rr client: %v: %s", err, strings.TrimSpace(cliErr.String()))
	}
	return parseRR(jout)
}

// parseRR parses the client's report.
func parseRR(b []byte) (rrResult, error) {
	var r rrResult
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("rr client report %q: %w", strings.TrimSpace(string(b)), err)
	}
	if r.Transactions <= 0 || r.Seconds <= 0 {
		return r, fmt.Errorf("rr client report %q: no transactions", strings.TrimSpace(string(b)))
	}
	return r, nil
}

// runIperf runs `iperf3 -s -1` in c2 and `iperf3 -c -P streams` in c1.
func runIperf(ctx context.Context, cfg config, p pair, streams int, log io.Writer) (testbed.IperfResult, error) {
	srv := exec.CommandContext(ctx, "nsenter", "--net="+p.c2, "--", "iperf3", "-s", "-1", "-p", "5201")
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := srv.Start(); err != nil {
		return testbed.IperfResult{}, fmt.Errorf("iperf3 server: %w", err)
	}
	defer func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
	}()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := testbed.WaitTCPListen(wctx, p.c2, 5201); err != nil {
		return testbed.IperfResult{}, fmt.Errorf("iperf3 server: %w: %s", err, srvOut.String())
	}
	args := []string{"iperf3", "-c", p.c2IP, "-p", "5201", "-t", fmt.Sprint(max(1, int(cfg.duration.Seconds()))), "-J"}
	if streams > 1 {
		args = append(args, "-P", fmt.Sprint(streams))
	}
	fmt.Fprintf(log, "  %s (in c1)\n", strings.Join(args, " "))
	cli := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + p.c1, "--"}, args...)...)
	cli.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	jout, cerr := cli.Output()
	ir, err := testbed.ParseIperf3JSON(jout)
	if err != nil {
		return ir, fmt.Errorf("iperf3 client: %v (%v)", err, cerr)
	}
	return ir, nil
}

// anchor pairs a vxmesh row with a datapath it is compared with.
type anchor struct{ row, anchor string }

// anchors are the comparisons of issue 12, in the order printed.
var anchors = []anchor{
	{"vxmesh", "kernel"},
	{"vxmesh-overlay", "kernel-vxlan"},
	{"vxmesh-overlay", "kernel-vxlan-sw"},
	{rxqTopology, "vxmesh-overlay"},
	{rxqTopology, "kernel-vxlan"},
	{usplitTopology, "vxmesh-overlay"},
	{usplitTopology, "kernel-vxlan"},
	{usplitTopology, "kernel-vxlan-sw"},
	{"vxmesh-esp", wireguardTopology},
}

// printAnchors prints each anchor pair both of whose rows were measured:
// throughput ratios (1 stream, cfg.streams streams, request/response rate)
// and latency differences (mean request/response time, ping RTT).
func printAnchors(out io.Writer, cfg config, results []result) {
	by := map[string]result{}
	for _, r := range results {
		if r.err == nil {
			by[r.name] = r
		}
	}
	var lines []string
	for _, a := range anchors {
		r, ok1 := by[a.row]
		b, ok2 := by[a.anchor]
		if !ok1 || !ok2 {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t", a.row, a.anchor,
			ratio(r.iperf.ReceivedBitsPerSecond, b.iperf.ReceivedBitsPerSecond),
			ratio(r.multi.ReceivedBitsPerSecond, b.multi.ReceivedBitsPerSecond),
			ratio(r.rr.Rate(), b.rr.Rate()),
			delta(r.rr.Mean(), b.rr.Mean()),
			pingDelta(r.ping, b.ping)))
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(out, "\nvxmesh against its anchors, same run (ratio = vxmesh / anchor; +us = vxmesh - anchor)\n\n")
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "vxmesh\tanchor\t1 stream\t%d streams\tRR rate\tRR mean\tping avg\t\n", cfg.streams)
	for _, l := range lines {
		fmt.Fprintln(tw, l)
	}
	tw.Flush()
}

func delta(a, b time.Duration) string {
	if a <= 0 || b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%+.0f us", float64(a-b)/float64(time.Microsecond))
}

func pingDelta(a, b testbed.PingResult) string {
	if a.Received == 0 || b.Received == 0 {
		return "-"
	}
	return delta(a.Avg, b.Avg)
}

// fmtRR formats a request/response result for the main table.
func fmtRR(r rrResult) (rate, mean string) {
	if r.Transactions <= 0 {
		return "-", "-"
	}
	mean = fmt.Sprintf("%.1f us", float64(r.Mean())/float64(time.Microsecond))
	if r.P50us > 0 {
		mean += fmt.Sprintf(" (p50 %.0f, p99 %.0f)", r.P50us, r.P99us)
	}
	return fmt.Sprintf("%.0f", r.Rate()), mean
}

// fmtMulti formats the multi-stream throughput for the main table.
func fmtMulti(r testbed.IperfResult) string {
	if r.ReceivedBitsPerSecond <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", r.Gbps())
}
