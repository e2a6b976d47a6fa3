package main

// The egress section (-only egress, and part of the default run): TCP
// throughput from inside a container to a server outside the overlay,
// through the host's gateway (package gateway: the flow is terminated in
// the network's netstack and re-originated from a host socket), measured
// in one run against slirp4netns (rootless Podman's egress, the same
// technique in another process) at the container's MTU and at its own
// default MTU 65520, and against the host's own socket (no overlay, no
// gateway: the ceiling).
//
// One testbed host with its daemon; an "outside" namespace on the underlay
// runs `iperf3 -s`. Rows:
//   - host: iperf3 from the host's namespace itself.
//   - vxmesh: from container c1 on network egr (MTU from network inspect).
//   - slirp4netns: from a namespace whose tap0 is slirp4netns's, started
//     in the host's namespace with --mtu of the container.
//   - slirp4netns-65520: the same at slirp4netns's default MTU.

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// egressTopology is -only's name of the egress section.
const egressTopology = "egress"

// egressRow is one measured egress path.
type egressRow struct {
	name, desc string
	gbps       float64
	retrans    int64
	err        error
}

// runEgress measures the egress rows and prints them with their ratios.
func runEgress(ctx context.Context, cfg config, prefix string, out, log io.Writer) error {
	rows, err := measureEgress(ctx, cfg, prefix, log)
	if err != nil {
		return err
	}
	printEgress(out, cfg, rows)
	var errs []string
	for _, r := range rows {
		if r.err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", r.name, r.err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// egressBed is the egress section's testbed: one host with a container
// c1 on network egr, and an outside namespace running `iperf3 -s`.
type egressBed struct {
	host *testbed.Host
	peer *testbed.UnderlayPeer
	mtu  int // the container's
}

// newEgressBed builds the bed; close removes it.
func newEgressBed(ctx context.Context, cfg config, prefix string) (bed egressBed, close func(), err error) {
	bin, cleanupBin, err := vxmeshBinary(cfg.binary)
	if err != nil {
		return bed, nil, err
	}
	tb, err := testbed.New(testbed.Options{Hosts: 1, Binary: bin, Prefix: prefix + "-"})
	if err != nil {
		cleanupBin()
		return bed, nil, err
	}
	var srv *exec.Cmd
	close = func() {
		if srv != nil {
			_ = srv.Process.Kill()
			_ = srv.Wait()
		}
		_ = tb.Close()
		cleanupBin()
	}
	defer func() {
		if err != nil {
			close()
		}
	}()
	bed.host = tb.Hosts[0]
	if err = bed.host.StartDaemon(); err != nil {
		return bed, nil, err
	}
	if bed.peer, err = tb.AddUnderlayPeer("out"); err != nil {
		return bed, nil, err
	}
	for _, args := range [][]string{
		{"network", "create", "egr", "--subnet", "10.90.0.0/24"},
		{"run", "-d", "--network", "egr", "--name", "c1", "--", "sleep", "infinity"},
	} {
		if _, err = bed.host.CLIContext(ctx, args...); err != nil {
			return bed, nil, err
		}
	}
	var n api.Network
	if err = bed.host.CLIJSON(&n, "network", "inspect", "egr"); err != nil {
		return bed, nil, err
	}
	bed.mtu = n.MTU
	srv = exec.CommandContext(ctx, "ip", "netns", "exec", bed.peer.Netns, "iperf3", "-s", "-B", bed.peer.Addr)
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err = srv.Start(); err != nil {
		srv = nil
		return bed, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err = testbed.WaitTCPListen(wctx, bed.peer.NetnsPath, 5201); err != nil {
		return bed, nil, fmt.Errorf("iperf3 server outside: %w", err)
	}
	return bed, close, nil
}

// measureEgress builds the bed and runs iperf3 from each row's client.
func measureEgress(ctx context.Context, cfg config, prefix string, log io.Writer) ([]egressRow, error) {
	fmt.Fprintln(log, "egress: building host, daemon and outside server")
	bed, closeBed, err := newEgressBed(ctx, cfg, prefix)
	if err != nil {
		return nil, err
	}
	defer closeBed()
	rows := []egressRow{
		{name: "host", desc: "the host's own socket -> outside (no overlay)"},
		{name: "vxmesh", desc: fmt.Sprintf("container (MTU %d) -> vxmesh gateway -> host socket -> outside", bed.mtu)},
		{name: "slirp4netns", desc: fmt.Sprintf("namespace (MTU %d) -> slirp4netns -> outside", bed.mtu)},
		{name: "slirp4netns-65520", desc: "namespace (MTU 65520) -> slirp4netns -> outside"},
	}
	for i := range rows {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(log, "egress: measuring %s\n", rows[i].name)
		rows[i].gbps, rows[i].retrans, rows[i].err = bed.measure(ctx, cfg, rows[i].name)
	}
	return rows, ctx.Err()
}

// measure runs iperf3 for cfg.duration from row's client to the outside
// server and returns Gbit/s and retransmits.
func (bed egressBed) measure(ctx context.Context, cfg config, row string) (float64, int64, error) {
	secs := strconv.Itoa(max(1, int(cfg.duration.Seconds())))
	iperf := []string{"iperf3", "-c", bed.peer.Addr, "-t", secs, "-J"}
	var cmd *exec.Cmd
	switch row {
	case "host":
		cmd = exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + bed.host.NetnsPath, "--"}, iperf...)...)
	case "vxmesh":
		cmd = bed.host.Command(ctx, append([]string{"exec", "c1", "--"}, iperf...)...)
	default:
		mtu := bed.mtu
		if row == "slirp4netns-65520" {
			mtu = 65520
		}
		pid, stop, err := startSlirp(ctx, bed.host.Netns, mtu)
		if err != nil {
			return 0, 0, err
		}
		defer stop()
		cmd = exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "--"}, iperf...)...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	o, err := cmd.Output()
	res, perr := testbed.ParseIperf3JSON(o)
	if perr != nil {
		return 0, 0, fmt.Errorf("iperf3: %v (%v)", perr, err)
	}
	return res.ReceivedBitsPerSecond / 1e9, res.Retransmits, nil
}

// startSlirp starts a namespace (a sleeping process unshared from host
// namespace hostNetns) and slirp4netns for it with mtu, waits until its
// tap0 is configured, and returns the process id to enter and a stop
// function.
func startSlirp(ctx context.Context, hostNetns string, mtu int) (int, func(), error) {
	if _, err := exec.LookPath("slirp4netns"); err != nil {
		return 0, nil, fmt.Errorf("slirp4netns not installed (make deps installs it)")
	}
	ns := exec.CommandContext(ctx, "ip", "netns", "exec", hostNetns, "unshare", "--net", "--", "sleep", "600")
	ns.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ns.Start(); err != nil {
		return 0, nil, err
	}
	pid := ns.Process.Pid
	// slirp4netns joins pid's namespace: wait until pid has unshared its
	// own, or the tap would land in the host's.
	if err := waitOwnNetns(ctx, pid, hostNetns); err != nil {
		_ = ns.Process.Kill()
		_ = ns.Wait()
		return 0, nil, err
	}
	sl := exec.CommandContext(ctx, "ip", "netns", "exec", hostNetns, "slirp4netns", "--configure", "--mtu", strconv.Itoa(mtu), "--disable-host-loopback", strconv.Itoa(pid), "tap0")
	sl.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sl.Start(); err != nil {
		_ = ns.Process.Kill()
		_ = ns.Wait()
		return 0, nil, err
	}
	stop := func() {
		for _, c := range []*exec.Cmd{sl, ns} {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// Configured: the address, and the default route, which
		// slirp4netns adds after it.
		o, _ := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(pid), "-n", "ip", "-4", "route", "show", "default").Output()
		if strings.Contains(string(o), "dev tap0") {
			return pid, stop, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return 0, nil, fmt.Errorf("slirp4netns (MTU %d) did not configure tap0", mtu)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitOwnNetns waits until process pid is in a network namespace that is
// neither the bench's nor named namespace hostNetns.
func waitOwnNetns(ctx context.Context, pid int, hostNetns string) error {
	ino := func(path string) uint64 {
		var st syscall.Stat_t
		if syscall.Stat(path, &st) != nil {
			return 0
		}
		return st.Ino
	}
	host, self := ino(filepath.Join(testbed.NetnsDir, hostNetns)), ino("/proc/self/ns/net")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if n := ino(fmt.Sprintf("/proc/%d/ns/net", pid)); n != 0 && n != host && n != self {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("process %d did not unshare its network namespace", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// printEgress prints the rows and the ratios of the egress section.
func printEgress(out io.Writer, cfg config, rows []egressRow) {
	fmt.Fprintf(out, "\negress, 1 host: iperf3 TCP %s from inside to a server outside the overlay\n\n", cfg.duration)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "row\tpath\tGbit/s\tretrans\t")
	by := map[string]float64{}
	for _, r := range rows {
		if r.err != nil {
			fmt.Fprintf(tw, "%s\t%s\tfailed: %v\t\t\n", r.name, r.desc, r.err)
			continue
		}
		by[r.name] = r.gbps
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%d\t\n", r.name, r.desc, r.gbps, r.retrans)
	}
	tw.Flush()
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ratio\tvalue\tgoal\t")
	for _, q := range egressRatios(by) {
		fmt.Fprintf(tw, "%s\t%.2f\t%s\t\n", q.name, q.value, q.goal)
	}
	tw.Flush()
}

// egressRatio is one ratio of the egress section.
type egressRatio struct {
	name  string
	value float64
	goal  string
}

// egressRatios are vxmesh against slirp4netns at the same MTU (the
// issue's goal: at least 2x), against slirp4netns at its own MTU, and
// against the host's socket, for the rows that were measured.
func egressRatios(by map[string]float64) []egressRatio {
	var out []egressRatio
	add := func(a, b, goal string, min float64) {
		if by[a] <= 0 || by[b] <= 0 {
			return
		}
		v := by[a] / by[b]
		if min > 0 {
			if v >= min {
				goal += ": met"
			} else {
				goal += ": not met"
			}
		}
		out = append(out, egressRatio{name: "throughput " + a + " / " + b, value: v, goal: goal})
	}
	add("vxmesh", "slirp4netns", ">= 2", 2)
	add("vxmesh", "slirp4netns-65520", "(context)", 0)
	add("vxmesh", "host", "(context)", 0)
	return out
}
