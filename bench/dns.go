package main

// The -dns mode: vxmesh's embedded resolver (127.0.0.11 in every container
// namespace) against dnsmasq serving the same names from the same client
// namespace, both measured with dnsperf.
//
// Topology: one testbed host running a vxmesh daemon (--dns-upstream
// pointing at a closed local port, so nothing leaves the host), one network,
// containers n1..nN made by `vxmesh run` and a client container "cli". In
// cli, dnsmasq listens on 127.0.0.12:53 with a --host-record per container
// (no cache, no upstream, no /etc/hosts, TTL 5 as vxmesh's local answers).
// The query file asks each container name once (A), unqualified, as a
// container's resolver would.
//
// Runs, each -duration long, vxmesh then dnsmasq:
//   - max: dnsperf -c CLIENTS -T THREADS -q OUTSTANDING, as fast as it goes;
//   - rate: the same with -Q RATE, for latency below saturation.
//
// With -dns-rounds N the four runs are repeated N times in turn, so on a
// loaded machine each vxmesh run is compared with the dnsmasq run right
// after it, and the table closes with the median of those ratios.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

// dnsConfig are the -dns mode's knobs.
type dnsConfig struct {
	names       int // containers whose names are queried
	clients     int // dnsperf -c
	threads     int // dnsperf -T
	outstanding int // dnsperf -q
	rate        int // dnsperf -Q of the fixed-rate run
	rounds      int // times each run is repeated, interleaved
}

const (
	vxmeshResolver  = "127.0.0.11"
	dnsmasqResolver = "127.0.0.12"
)

// DNSPerfResult is dnsperf's final "Statistics:" block.
type DNSPerfResult struct {
	Sent, Completed, Lost int64
	// RCodes counts responses by code (NOERROR, NXDOMAIN, ...).
	RCodes map[string]int64
	// RequestSize and ResponseSize are the average packet sizes in bytes.
	RequestSize, ResponseSize float64
	RunTime                   time.Duration
	QPS                       float64
	// AvgLatency, MinLatency and MaxLatency are zero when nothing completed.
	AvgLatency, MinLatency, MaxLatency time.Duration
	// StdDev is absent from dnsperf's output (HasStdDev false) when fewer
	// than two queries completed.
	StdDev    time.Duration
	HasStdDev bool
}

var (
	dnsperfSentRE      = regexp.MustCompile(`(?m)^\s*Queries sent:\s+(\d+)`)
	dnsperfCompletedRE = regexp.MustCompile(`(?m)^\s*Queries completed:\s+(\d+)`)
	dnsperfLostRE      = regexp.MustCompile(`(?m)^\s*Queries lost:\s+(\d+)`)
	dnsperfRCodesRE    = regexp.MustCompile(`(?m)^\s*Response codes:[ \t]*(.*)$`)
	dnsperfRCodeRE     = regexp.MustCompile(`([A-Z][A-Z0-9]*) (\d+)`)
	dnsperfSizeRE      = regexp.MustCompile(`(?m)^\s*Average packet size:\s+request ([\d.]+), response ([\d.]+)`)
	dnsperfRunTimeRE   = regexp.MustCompile(`(?m)^\s*Run time \(s\):\s+([\d.]+)`)
	dnsperfQPSRE       = regexp.MustCompile(`(?m)^\s*Queries per second:\s+([\d.]+)`)
	dnsperfLatencyRE   = regexp.MustCompile(`(?m)^\s*Average Latency \(s\):\s+([\d.]+) \(min ([\d.]+), max ([\d.]+)\)`)
	dnsperfStdDevRE    = regexp.MustCompile(`(?m)^\s*Latency StdDev \(s\):\s+([\d.]+)`)
)

// ParseDNSPerf parses dnsperf's report (its stdout). The query counts and
// the rate are required; latencies are read when present.
func ParseDNSPerf(out string) (DNSPerfResult, error) {
	var r DNSPerfResult
	// Only the final statistics: timeouts and status lines come before.
	i := strings.LastIndex(out, "Statistics:")
	if i < 0 {
		return r, fmt.Errorf("dnsperf: no statistics in output %q", tail(out, 300))
	}
	s := out[i:]
	ints := []struct {
		re *regexp.Regexp
		v  *int64
		n  string
	}{{dnsperfSentRE, &r.Sent, "Queries sent"}, {dnsperfCompletedRE, &r.Completed, "Queries completed"}, {dnsperfLostRE, &r.Lost, "Queries lost"}}
	for _, f := range ints {
		m := f.re.FindStringSubmatch(s)
		if m == nil {
			return r, fmt.Errorf("dnsperf: no %q in statistics %q", f.n, tail(s, 300))
		}
		*f.v, _ = strconv.ParseInt(m[1], 10, 64)
	}
	m := dnsperfQPSRE.FindStringSubmatch(s)
	if m == nil {
		return r, fmt.Errorf("dnsperf: no \"Queries per second\" in statistics %q", tail(s, 300))
	}
	r.QPS, _ = strconv.ParseFloat(m[1], 64)
	r.RCodes = map[string]int64{}
	if m := dnsperfRCodesRE.FindStringSubmatch(s); m != nil {
		for _, c := range dnsperfRCodeRE.FindAllStringSubmatch(m[1], -1) {
			r.RCodes[c[1]], _ = strconv.ParseInt(c[2], 10, 64)
		}
	}
	if m := dnsperfSizeRE.FindStringSubmatch(s); m != nil {
		r.RequestSize, _ = strconv.ParseFloat(m[1], 64)
		r.ResponseSize, _ = strconv.ParseFloat(m[2], 64)
	}
	if m := dnsperfRunTimeRE.FindStringSubmatch(s); m != nil {
		r.RunTime = secDuration(m[1])
	}
	if m := dnsperfLatencyRE.FindStringSubmatch(s); m != nil {
		r.AvgLatency, r.MinLatency, r.MaxLatency = secDuration(m[1]), secDuration(m[2]), secDuration(m[3])
	}
	if m := dnsperfStdDevRE.FindStringSubmatch(s); m != nil {
		r.StdDev, r.HasStdDev = secDuration(m[1]), true
	}
	return r, nil
}

func secDuration(s string) time.Duration {
	f, _ := strconv.ParseFloat(s, 64)
	return time.Duration(f * float64(time.Second))
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// dnsRun is one dnsperf run: a row of the table.
type dnsRun struct {
	mode   string // "max" or "rate"
	round  int    // from 0
	server string // "vxmesh" or "dnsmasq"
	addr   string
	res    DNSPerfResult
	err    error
}

func checkDNSTools() error {
	if err := testbed.CheckPrereqs(); err != nil {
		return err
	}
	var missing []string
	for _, c := range []string{"dnsperf", "dnsmasq"} {
		if _, err := lookTool(c); err != nil {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: apt-get install dnsperf dnsmasq-base (Debian/Ubuntu packages; dnsmasq-base has the dnsmasq binary without the system service)", strings.Join(missing, " and "))
	}
	return nil
}

// lookTool finds a command in PATH or, as dnsmasq lives in /usr/sbin which
// a user's PATH may lack, in the sbin directories.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// runDNS is the -dns mode: it builds the topology, runs dnsperf against
// both resolvers, prints the table and removes everything (also when ctx
// is cancelled by Ctrl-C).
func runDNS(ctx context.Context, cfg config, out, log io.Writer) (err error) {
	if err := checkDNSTools(); err != nil {
		return err
	}
	d := cfg.dns
	if d.names < 1 || d.clients < 1 || d.threads < 1 || d.outstanding < 1 || d.rate < 1 || d.rounds < 1 {
		return fmt.Errorf("-dns-names, -dns-clients, -dns-threads, -dns-outstanding, -dns-rate and -dns-rounds must be positive")
	}
	if d.names > 200 {
		return fmt.Errorf("-dns-names %d: at most 200 (one /24)", d.names)
	}
	dnsperfBin, _ := lookTool("dnsperf")
	dnsmasqBin, _ := lookTool("dnsmasq")
	bin, cleanupBin, err := vxmeshBinary(cfg.binary)
	if err != nil {
		return err
	}
	defer cleanupBin()

	fmt.Fprintln(log, "dns: building testbed host and daemon")
	prefix := "vxdns" + testbed.RandomID(2) + "-"
	tb, err := testbed.New(testbed.Options{Hosts: 1, Binary: bin, Prefix: prefix})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := tb.Close(); cerr != nil {
			fmt.Fprintln(log, "dns: cleanup:", cerr)
		}
	}()
	b := &dnsBed{h: tb.Hosts[0], dir: tb.Dir, n: d.names, dnsperfBin: dnsperfBin}
	ips, err := b.startContainers(ctx, log)
	if err != nil {
		return err
	}
	dmArgs, err := b.writeQueries(ips, dnsmasqBin)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "dns: dnsmasq on %s in the client container\n", dnsmasqResolver)
	if err := b.startDnsmasq(dmArgs); err != nil {
		return err
	}
	defer func() {
		_ = b.dm.Process.Kill()
		<-b.dmDone
	}()
	if err := b.waitBoth(ctx); err != nil {
		return err
	}
	loadBefore := loadAvg()
	runs, err := b.measure(ctx, cfg, log)
	if err != nil {
		return err
	}
	printDNSTable(out, cfg, runs)
	printLoad(out, loadBefore, loadAvg())
	var errs []error
	for _, r := range runs {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", r.mode, r.server, r.err))
		}
	}
	return errors.Join(errs...)
}

// dnsBed is the DNS comparison's testbed: one host whose containers are
// the names, a client container, dnsmasq in it serving the same names,
// and the query file.
type dnsBed struct {
	h          *testbed.Host
	dir        string // the testbed's directory
	n          int    // how many names
	dnsperfBin string
	cli        string // the client container's netns path
	queries    string // the query file: each name, type A
	dm         *exec.Cmd
	dmLog      string
	dmDone     chan struct{} // closed when dnsmasq has exited
}

// dmLogTail returns the end of dnsmasq's log.
func (b *dnsBed) dmLogTail() string {
	l, _ := os.ReadFile(b.dmLog)
	return tail(strings.TrimSpace(string(l)), 500)
}

// startContainers starts the daemon, the network, a container for each
// name and the client, and returns the containers' addresses by name.
func (b *dnsBed) startContainers(ctx context.Context, log io.Writer) (map[string]string, error) {
	h := b.h
	// Names not local go upstream; a closed port on the host's loopback
	// keeps a stray query from leaving the machine. warn: no per-query logs.
	if err := h.StartDaemon("--dns-upstream", "127.0.0.1:5353", "--log-level", "warn"); err != nil {
		return nil, err
	}
	if _, err := h.CLIContext(ctx, "network", "create", "dnsb", "--subnet", "10.88.2.0/24"); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "dns: %d containers and a client\n", b.n)
	for _, n := range append(b.names(), "cli") {
		if _, err := h.CLIContext(ctx, "run", "-d", "--network", "dnsb", "--name", n, "--", "sleep", "infinity"); err != nil {
			return nil, err
		}
	}
	var eps []struct {
		Name string `json:"name"`
		IP   string `json:"ip"`
	}
	if err := h.CLIJSON(&eps, "endpoint", "ls"); err != nil {
		return nil, err
	}
	ips := map[string]string{}
	for _, e := range eps {
		ips[e.Name] = strings.Split(e.IP, "/")[0]
	}
	b.cli = h.ContainerNetnsPath("cli")
	for _, n := range b.names() {
		if ips[n] == "" {
			return nil, fmt.Errorf("endpoint ls shows no %s: %+v", n, eps)
		}
	}
	return ips, nil
}

// names returns the containers' names: n1, n2, ...
func (b *dnsBed) names() []string {
	names := make([]string, b.n)
	for i := range names {
		names[i] = fmt.Sprintf("n%d", i+1)
	}
	return names
}

// writeQueries writes the query file and returns the arguments that run
// dnsmasq in the client with a record for each name.
func (b *dnsBed) writeQueries(ips map[string]string, dnsmasqBin string) ([]string, error) {
	b.queries = filepath.Join(b.dir, "queries.txt")
	var qf strings.Builder
	dmArgs := []string{
		"--net=" + b.cli, "--", dnsmasqBin,
		"--keep-in-foreground", "--conf-file=/dev/null",
		"--listen-address=" + dnsmasqResolver, "--bind-interfaces", "--port=53",
		"--no-resolv", "--no-hosts", "--no-poll", "--cache-size=0", "--local-ttl=5",
		"--pid-file=" + filepath.Join(b.dir, "dnsmasq.pid"),
	}
	for _, n := range b.names() {
		fmt.Fprintf(&qf, "%s A\n", n)
		dmArgs = append(dmArgs, "--host-record="+n+","+ips[n])
	}
	if err := os.WriteFile(b.queries, []byte(qf.String()), 0o644); err != nil {
		return nil, err
	}
	return dmArgs, nil
}

// startDnsmasq starts dnsmasq (nsenter with dmArgs) logging to the
// testbed's directory; b.dmDone is closed when it exits.
func (b *dnsBed) startDnsmasq(dmArgs []string) error {
	b.dmLog = filepath.Join(b.dir, "dnsmasq.log")
	lf, err := os.Create(b.dmLog)
	if err != nil {
		return err
	}
	dm := exec.Command("nsenter", dmArgs...)
	dm.Stdout, dm.Stderr = lf, lf
	// Out of our process group (Ctrl-C reaches us, we stop it) and killed
	// if we die; tb.Close kills whatever is left in the namespaces.
	dm.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := dm.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("dnsmasq: %w", err)
	}
	lf.Close()
	b.dm, b.dmDone = dm, make(chan struct{})
	go func() { _ = dm.Wait(); close(b.dmDone) }()
	return nil
}

// dnsServers returns the two resolvers compared, in the order they are
// run.
func dnsServers() []struct{ name, addr string } {
	return []struct{ name, addr string }{{"vxmesh", vxmeshResolver}, {"dnsmasq", dnsmasqResolver}}
}

// waitBoth waits until both resolvers answer every name (NOERROR, each
// once) before anything is measured; this also waits for dnsmasq to
// listen.
func (b *dnsBed) waitBoth(ctx context.Context) error {
	for _, srv := range dnsServers() {
		if err := waitResolves(ctx, dnsQuery{bin: b.dnsperfBin, netns: b.cli, server: srv.addr, queries: b.queries}, b.n, b.dmDone); err != nil {
			err = fmt.Errorf("%s (%s): %w", srv.name, srv.addr, err)
			if srv.name == "vxmesh" {
				return withDaemonLog(b.h, err)
			}
			return fmt.Errorf("%w; dnsmasq log:\n%s", err, b.dmLogTail())
		}
	}
	return nil
}

// measure runs dnsperf against each resolver in each mode, round after
// round; a run's error (a resolver that exited among them) is kept in
// the run.
func (b *dnsBed) measure(ctx context.Context, cfg config, log io.Writer) ([]dnsRun, error) {
	var runs []dnsRun
	for round := range cfg.dns.rounds {
		for _, mode := range []string{"max", "rate"} {
			for _, srv := range dnsServers() {
				if ctx.Err() != nil {
					return nil, fmt.Errorf("interrupted: %w", ctx.Err())
				}
				args := dnsperfArgs(cfg, srv.addr, b.queries, mode == "rate")
				fmt.Fprintf(log, "dns: %s: dnsperf %s (in cli)\n", srv.name, strings.Join(args, " "))
				r := dnsRun{mode: mode, round: round, server: srv.name, addr: srv.addr}
				r.res, r.err = dnsperf(ctx, b.dnsperfBin, b.cli, args)
				if ctx.Err() != nil {
					return nil, fmt.Errorf("interrupted: %w", ctx.Err())
				}
				switch {
				case srv.name == "vxmesh" && !b.h.Running():
					r.err = withDaemonLog(b.h, errors.Join(r.err, errors.New("the vxmesh daemon exited")))
				case srv.name == "dnsmasq" && chanClosed(b.dmDone):
					r.err = fmt.Errorf("%v; dnsmasq exited; log:\n%s", r.err, b.dmLogTail())
				}
				runs = append(runs, r)
			}
		}
	}
	return runs, nil
}

func chanClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// dnsperfArgs returns dnsperf's arguments for a measured run.
func dnsperfArgs(cfg config, server, queries string, fixedRate bool) []string {
	d := cfg.dns
	args := []string{
		"-s", server, "-d", queries,
		"-l", strconv.FormatFloat(cfg.duration.Seconds(), 'f', -1, 64),
		"-c", fmt.Sprint(d.clients), "-T", fmt.Sprint(d.threads), "-q", fmt.Sprint(d.outstanding),
	}
	if fixedRate {
		args = append(args, "-Q", fmt.Sprint(d.rate))
	}
	return args
}

// dnsperf runs dnsperf in the namespace at netns and parses its report.
func dnsperf(ctx context.Context, bin, netns string, args []string) (DNSPerfResult, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netns, "--", bin}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	b, runErr := cmd.CombinedOutput()
	r, err := ParseDNSPerf(string(b))
	if err != nil {
		return r, fmt.Errorf("%v (exit: %v)", err, runErr)
	}
	return r, nil
}

// dnsQuery is where dnsperf runs (its binary, in netns) and what it asks:
// the query file, of server.
type dnsQuery struct {
	bin, netns, server, queries string
}

// waitResolves runs the query file once (dnsperf -n 1) against q.server until
// every one of the n names gets a NOERROR answer, for up to 10 s.
func waitResolves(ctx context.Context, q dnsQuery, n int, serverDone chan struct{}) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := dnsperf(ctx, q.bin, q.netns, []string{"-s", q.server, "-d", q.queries, "-n", "1", "-t", "1"})
		if err == nil {
			if r.Completed == int64(n) && r.RCodes["NOERROR"] == int64(n) {
				return nil
			}
			err = fmt.Errorf("%d queries for the %d names: %d completed, response codes %v", r.Sent, n, r.Completed, r.RCodes)
		}
		if chanClosed(serverDone) {
			return fmt.Errorf("server exited: %w", err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("names do not resolve: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// printDNSTable prints the runs, vxmesh's row of each mode with its ratios
// to dnsmasq's (QPS and average latency).
func printDNSTable(out io.Writer, cfg config, runs []dnsRun) {
	d := cfg.dns
	fmt.Fprintf(out, "\nDNS, 1 host, %d containers: A queries for their names from a client container, dnsperf -c %d -T %d -q %d, %v per run\n",
		d.names, d.clients, d.threads, d.outstanding, cfg.duration)
	fmt.Fprintf(out, "vxmesh = embedded resolver %s; dnsmasq = %s in the same client netns (--host-record, no cache, no upstream)\n\n", vxmeshResolver, dnsmasqResolver)
	type key struct {
		mode  string
		round int
	}
	base := map[key]*dnsRun{}
	for i := range runs {
		if runs[i].server == "dnsmasq" && runs[i].err == nil {
			base[key{runs[i].mode, runs[i].round}] = &runs[i]
		}
	}
	qpsRatios, latRatios := map[string][]float64{}, map[string][]float64{}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "run\tserver\tQPS\tcompleted\tlost\tavg latency\tstddev\tresp B\tQPS vxmesh/dnsmasq\tlatency vxmesh/dnsmasq\t")
	for _, r := range runs {
		mode := "max"
		if r.mode == "rate" {
			mode = fmt.Sprintf("-Q %d", d.rate)
		}
		if d.rounds > 1 {
			mode += fmt.Sprintf(" #%d", r.round+1)
		}
		if r.err != nil {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t\n", mode, r.server)
			continue
		}
		qr, lr := "-", "-"
		if b := base[key{r.mode, r.round}]; b != nil && r.server == "vxmesh" {
			qr, lr = ratio(r.res.QPS, b.res.QPS), ratio(float64(r.res.AvgLatency), float64(b.res.AvgLatency))
			if r.res.QPS > 0 && b.res.QPS > 0 {
				qpsRatios[r.mode] = append(qpsRatios[r.mode], r.res.QPS/b.res.QPS)
			}
			if r.res.AvgLatency > 0 && b.res.AvgLatency > 0 {
				latRatios[r.mode] = append(latRatios[r.mode], float64(r.res.AvgLatency)/float64(b.res.AvgLatency))
			}
		}
		stddev := "-"
		if r.res.HasStdDev {
			stddev = fmtMs(r.res.StdDev)
		}
		avg := "-"
		if r.res.Completed > 0 {
			avg = fmtMs(r.res.AvgLatency)
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%d\t%s\t%s\t%s\t%.0f\t%s\t%s\t\n", mode, r.server, r.res.QPS, r.res.Completed,
			fmtLost(r.res), avg, stddev, r.res.ResponseSize, qr, lr)
	}
	tw.Flush()
	if d.rounds > 1 {
		for _, mode := range []string{"max", "rate"} {
			if len(qpsRatios[mode]) > 0 {
				lat := "-"
				if len(latRatios[mode]) > 0 {
					lat = fmt.Sprintf("%.2f", sortedMedian(latRatios[mode]))
				}
				fmt.Fprintf(out, "%s: median of %d rounds, vxmesh/dnsmasq: QPS %.2f, avg latency %s\n",
					mode, len(qpsRatios[mode]), sortedMedian(qpsRatios[mode]), lat)
			}
		}
	}
	for _, r := range runs {
		if r.err != nil {
			fmt.Fprintf(out, "%s %s failed: %v\n", r.mode, r.server, r.err)
		}
	}
}

// sortedMedian sorts v, which is not empty, and returns its median.
func sortedMedian(v []float64) float64 {
	slices.Sort(v)
	return median(v)
}

func ratio(a, b float64) string {
	if b <= 0 || a <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

func fmtMs(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

func fmtLost(r DNSPerfResult) string {
	if r.Sent == 0 {
		return fmt.Sprint(r.Lost)
	}
	return fmt.Sprintf("%d (%.2f%%)", r.Lost, 100*float64(r.Lost)/float64(r.Sent))
}
