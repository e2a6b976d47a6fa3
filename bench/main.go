// Command bench measures vxmesh's userspace datapath against the kernel
// datapaths Docker uses, on the same topologies, and prints them side by
// side with their ratio.
//
// Topologies (all: two containers on one subnet, MTU 1450):
//
// Single host:
//   - vxmesh: a testbed host running a vxmesh daemon, a network created with
//     --mtu 1450 and two containers made by `vxmesh run`.
//   - kernel: a "host" namespace with a Linux bridge (gateway address on it)
//     and two container namespaces attached by veth pairs, as Docker's
//     bridge driver builds them.
//
// Two hosts (testbed hosts on one underlay bridge, MTU 1500):
//   - vxmesh-overlay: a vxmesh daemon per host in one cluster, a network
//     created on h1 with --mtu 1450, container c1 on h1 and c2 on h2: the
//     traffic crosses the underlay in vxmesh's VXLAN. The daemons run with
//     the default --kernel-tunnel=auto, which in the testbed's fresh
//     namespaces (no firewall) sends TCP super-segments to the kernel
//     whole, for its UDP tunnel segmentation.
//   - vxmesh-overlay-rxq: the same with the daemons' --rx-sockets at
//     -rx-sockets (several VTEP receive sockets, one loop each).
//   - vxmesh-overlay-usplit: the same with the daemons' --kernel-tunnel=off
//     (TCP super-segments are split into datagrams in the daemon, as auto
//     does where a forward firewall could drop the kernel's).
//   - vxmesh-esp: the same with an encrypted network (--encrypted,
//     aes128-gcm): ESP in UDP between the hosts, at the encrypted
//     network's MTU (1405 on a 1500-byte underlay, or -mtu if smaller).
//   - kernel-vxlan: what Docker's overlay driver builds with the kernel: in
//     each host a VXLAN device (VNI 4242, port 4789, the other host as
//     remote) enslaved to a Linux bridge, and a veth pair into a container
//     namespace.
//   - kernel-vxlan-sw: kernel-vxlan with the underlay veths' segmentation
//     offloads off, so the kernel segments in software as vxmesh does
//     (perftopo.go).
//   - wireguard-go: wireguard-go between the two host namespaces, with
//     -wireguard-go PATH only (the anchor of vxmesh-esp).
//
// In each, iperf3 -s runs in c2 and `iperf3 -c <c2> -t <duration> -J` in c1
// (once with one stream, once with -streams streams), the bench binary's
// request/response client runs against its server for -duration (perf.go),
// and c1 pings c2 20 times at 0.05 s intervals. A second table sets each
// vxmesh row beside its anchors. Run as root:
//
//	go run ./bench [-duration 10s] [-binary bin/vxmesh] [-only kernel,kernel-vxlan] [-wireguard-go PATH]
//
// With -dns it instead measures the embedded DNS resolver (127.0.0.11)
// against dnsmasq with dnsperf, from the same client container (see dns.go;
// needs dnsperf and dnsmasq):
//
//	go run ./bench -dns [-duration 10s] [-dns-rate 10000]
//
// Then the egress section (the "egress" topology of -only; see
// egress.go): iperf3 from a container through the host's gateway to a
// server outside the overlay, against slirp4netns and the host's own
// socket. The default run ends with the load-balancer section (the "lb" topology
// of -only; see lb.go): one client and four backends, direct vs the
// vxmesh service VIP vs HAProxy vs kernel nftables DNAT, measured with
// iperf3 and wrk, then lb's cost from 1 to 10,000 services (go test
// -bench ./lb). With -lb it runs that section alone (needs wrk, haproxy
// and nft; `make bench-lb`):
//
//	go run ./bench -lb [-duration 10s] [-lb-conns 32] [-json report.json]
//
// With -scale it runs the scale section alone (scale.go; `make
// bench-scale`): -scale-hosts daemons in one cluster, each with a
// container on one network; propagation of a network and an endpoint,
// failure detection, and gossip bytes per node at rest and under load:
//
//	go run ./bench -scale [-scale-hosts 100] [-scale-rate 100] [-scale-inflight 32] [-scale-grace 5s]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

func main() {
	cfg := config{}
	flag.DurationVar(&cfg.duration, "duration", 10*time.Second, "iperf3 run time per topology")
	flag.StringVar(&cfg.binary, "binary", "bin/vxmesh", "vxmesh binary (built from ./cmd/vxmesh if missing)")
	flag.StringVar(&cfg.only, "only", "", "run only these topologies (comma separated: vxmesh,kernel,tap-relay,vxmesh-overlay,vxmesh-esp,kernel-vxlan,egress,publish,lb)")
	flag.IntVar(&cfg.pings, "pings", 20, "pings per topology (0.05 s apart)")
	flag.IntVar(&cfg.mtu, "mtu", 1450, "container interface MTU")
	flag.IntVar(&cfg.publishRounds, "publish-rounds", 5, "publish: measure each goal's new conn/s again in this many interleaved rounds (vxmesh row and HAProxy back to back, order alternating) and print the median ratio (0: none)")
	flag.DurationVar(&cfg.publishRound, "publish-round", 2*time.Second, "publish: wrk run time of each row in each interleaved round (whole seconds)")
	daemonFlags := flag.String("daemon-flags", "", "extra flags for the daemons of the throughput rows (vxmesh, vxmesh-overlay and its variants, vxmesh-esp), space separated, e.g. \"--busy-poll 50us\"")
	flag.IntVar(&cfg.rounds, "rounds", 5, "measure each of issue 12's goals again in this many interleaved rounds (the row and its anchor back to back, order alternating) and print the median (0: none)")
	flag.DurationVar(&cfg.round, "round", 2*time.Second, "rounds: run time of each row's measurement in each round (whole seconds)")
	dnsMode := flag.Bool("dns", false, "measure the embedded DNS resolver against dnsmasq with dnsperf instead (each dnsperf run lasts -duration)")
	flag.IntVar(&cfg.dns.names, "dns-names", 10, "-dns: containers whose names are queried")
	flag.IntVar(&cfg.dns.clients, "dns-clients", 4, "-dns: dnsperf -c (client sockets)")
	flag.IntVar(&cfg.dns.threads, "dns-threads", 2, "-dns: dnsperf -T (threads)")
	flag.IntVar(&cfg.dns.outstanding, "dns-outstanding", 200, "-dns: dnsperf -q (queries in flight)")
	flag.IntVar(&cfg.dns.rate, "dns-rate", 10000, "-dns: dnsperf -Q of the fixed-rate latency run (queries/s)")
	flag.IntVar(&cfg.dns.rounds, "dns-rounds", 1, "-dns: repeat the runs, interleaved, and print the median ratios (for a loaded machine)")
	lbMode := flag.Bool("lb", false, "measure only the load-balancer section (direct, service VIP, HAProxy, kernel DNAT; lb scale benchmarks)")
	flag.IntVar(&cfg.lb.threads, "lb-threads", 1, "lb: wrk -t (threads)")
	flag.IntVar(&cfg.lb.conns, "lb-conns", 32, "lb: wrk -c (connections)")
	flag.StringVar(&cfg.lb.jsonPath, "json", "", "lb: also write the load-balancer report as JSON to this file")
	flag.BoolVar(&cfg.lb.scale, "lb-scale", true, "lb: run lb's Go benchmarks over 1 to 10,000 services")
	flag.BoolVar(&cfg.lb.topo, "lb-topo", true, "lb: measure the namespace topologies (false: only the Go benchmarks)")
	flag.StringVar(&cfg.lb.benchtime, "lb-benchtime", "200000x", "lb: -benchtime of the Go benchmarks")
	flag.IntVar(&cfg.lb.count, "lb-count", 5, "lb: rounds of the Go benchmarks, each over every service count (the table shows medians and minimums)")
	scaleMode := flag.Bool("scale", false, "measure only the scale section: -scale-hosts daemons in one cluster, propagation, failure detection and gossip rates (make bench-scale)")
	flag.IntVar(&cfg.scale.hosts, "scale-hosts", 100, "scale: testbed hosts, one daemon and one container each (3 to 250)")
	flag.IntVar(&cfg.scale.rate, "scale-rate", 100, "scale: endpoint changes per second of the load window")
	flag.IntVar(&cfg.scale.loadHosts, "scale-load-hosts", 0, "scale: only the first N hosts make the load's changes (0: all); the others' CPU is what learning of a change costs")
	flag.StringVar(&cfg.scale.debugAddr, "scale-debug-addr", "", "scale: every daemon's --debug-addr (Go profiles, in each host's namespace), e.g. 127.0.0.1:6060")
	flag.StringVar(&cfg.scale.change, "scale-change", changeAttach, "scale: the load's changes: attach (endpoints attached to and detached from containers made before) or run (containers run and removed)")
	flag.IntVar(&cfg.scale.inflight, "scale-inflight", 32, "scale: endpoint changes in flight at most during the load window, over all hosts (spread over them)")
	flag.DurationVar(&cfg.scale.window, "scale-window", 10*time.Second, "scale: measuring window of the gossip rates (at rest, under load)")
	flag.DurationVar(&cfg.scale.grace, "scale-grace", 5*time.Second, "scale: --node-grace of the even hosts (the odd ones keep the default)")
	flag.DurationVar(&cfg.scale.timeout, "scale-timeout", 3*time.Minute, "scale: bound on each wait for the cluster to converge")
	flag.StringVar(&cfg.wireguardGo, "wireguard-go", "", "wireguard-go binary: adds the wireguard-go row (two hosts, the anchor of vxmesh-esp)")
	flag.IntVar(&cfg.streams, "streams", 4, "iperf3 -P of the multi-stream run per topology (0 or 1: none)")
	flag.IntVar(&cfg.rxSockets, "rx-sockets", 2, "daemons' --rx-sockets of the vxmesh-overlay-rxq row, beside vxmesh-overlay's default (0 or 1: no such row)")
	flag.BoolVar(&cfg.rr, "rr", true, "run the request/response (TCP_RR-style) measurement per topology")
	flag.StringVar(&cfg.abBinary, "ab", "", "A/B mode: measure this vxmesh binary against -binary on the vxmesh topologies of -only (default vxmesh,vxmesh-overlay,vxmesh-esp), both kept up, in -rounds interleaved rounds of -round, order alternating; nothing else runs")
	if len(os.Args) > 1 && (os.Args[1] == rrServerCmd || os.Args[1] == rrClientCmd) {
		os.Exit(rrMain(os.Args[1], os.Args[2:], os.Stdout, os.Stderr))
	}
	if len(os.Args) > 1 && os.Args[1] == tapRelayCmd {
		os.Exit(tapRelayMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	flag.Parse()
	cfg.daemonFlags = strings.Fields(*daemonFlags)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	runMode := run
	switch {
	case btoi(*dnsMode)+btoi(*lbMode)+btoi(*scaleMode) > 1:
		fmt.Fprintln(os.Stderr, "bench: -dns, -lb and -scale are separate modes; give one")
		os.Exit(2)
	case *scaleMode:
		runMode = runScaleMode
	case *dnsMode:
		runMode = runDNS
	case *lbMode:
		runMode = runLBMode
	}
	if cfg.abBinary != "" {
		if *dnsMode || *lbMode || *scaleMode {
			fmt.Fprintln(os.Stderr, "bench: -ab is a mode of its own; give it without -dns, -lb or -scale")
			os.Exit(2)
		}
		runMode = runAB
	}
	if err := runMode(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

type config struct {
	duration time.Duration
	binary   string
	only     string
	pings    int
	mtu      int
	dns      dnsConfig
	lb       lbConfig
	scale    scaleConfig
	// wireguardGo is the wireguard-go binary of the wireguard-go row.
	wireguardGo string
	// streams is iperf3 -P of the multi-stream run; rr runs the
	// request/response measurement (perf.go).
	streams int
	rr      bool
	// rxSockets is the daemons' --rx-sockets of the vxmesh-overlay-rxq
	// row (perftopo.go).
	rxSockets int
	// publishRounds and publishRound are the published-port section's
	// interleaved rounds and the wrk run time of each row in each
	// (publishrounds.go).
	publishRounds int
	publishRound  time.Duration
	// daemonFlags are added to every daemon of the throughput rows
	// (vxmesh and vxmesh-overlay, their variants, vxmesh-esp).
	daemonFlags []string
	// rounds and round are the interleaved rounds of issue 12's goals
	// (perfrounds.go): how many, and the run time of each measurement.
	rounds int
	round  time.Duration
	// abBinary is the vxmesh binary -ab compares with binary
	// (abrounds.go); empty: no A/B mode.
	abBinary string
}

// result is one row of the table.
type result struct {
	name  string
	desc  string
	group string // the topology group: singleHost or twoHosts
	// baseline marks the kernel row the group's ratios divide by.
	baseline bool
	iperf    testbed.IperfResult
	ping     testbed.PingResult
	multi    testbed.IperfResult
	rr       rrResult
	cpuPerGB float64
	err      error
}

// Topology groups, in the order the table prints them.
const (
	singleHost = "single host"
	twoHosts   = "two hosts over a 1500-byte underlay"
)

// topology is one measured setup.
type topology struct {
	name, desc, group string
	baseline          bool
	run               func(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error)
}

var topologies = []topology{
	{"vxmesh", "userspace switch, TAP per container", singleHost, false, benchVxmesh},
	{"kernel", "Linux bridge + veth (Docker bridge)", singleHost, true, benchKernel},
	{tapRelayTopology, "two TAPs, minimal userspace relay (the TAP ceiling)", singleHost, false, benchTAPRelay},
	{"vxmesh-overlay", "vxmesh VXLAN between two daemons", twoHosts, false, benchVxmeshOverlay},
	{rxqTopology, "vxmesh-overlay, daemons with --rx-sockets N", twoHosts, false, benchVxmeshOverlayRxq},
	{usplitTopology, "vxmesh-overlay, daemons with --kernel-tunnel=off", twoHosts, false, benchVxmeshOverlayUserspaceSplit},
	{"vxmesh-esp", "vxmesh encrypted (ESP aes128-gcm), MTU <= 1405", twoHosts, false, benchVxmeshOverlayESP},
	{"kernel-vxlan", "kernel VXLAN + bridge + veth (Docker overlay)", twoHosts, true, benchKernelVXLAN},
	{"kernel-vxlan-sw", "kernel-vxlan, underlay segmentation offloads off", twoHosts, false, benchKernelVXLANSoftSeg},
	{wireguardTopology, "wireguard-go between the hosts, MTU <= 1405", twoHosts, false, benchWireguardGo},
}

// lbTopology is -only's name of the load-balancer section (lb.go).
const lbTopology = "lb"

// pair is a built topology: two container namespaces and c2's address.
type pair struct {
	c1, c2 string // netns paths
	c2IP   string
	// daemons are the PIDs whose CPU time a throughput run is charged:
	// the vxmesh daemons, or the wireguard-go processes of its row (none
	// for the kernel's and other rows).
	daemons []int
}

func run(ctx context.Context, cfg config, out, log io.Writer) error {
	if err := checkTools(); err != nil {
		return err
	}
	want := map[string]bool{lbTopology: cfg.only == "", egressTopology: cfg.only == "", publishTopology: cfg.only == ""}
	for _, t := range topologies {
		want[t.name] = cfg.only == ""
	}
	want[wireguardTopology] = cfg.only == "" && cfg.wireguardGo != ""
	want[rxqTopology] = cfg.only == "" && cfg.rxSockets > 1
	if cfg.only != "" {
		for _, n := range strings.Split(cfg.only, ",") {
			n = strings.TrimSpace(n)
			if _, ok := want[n]; !ok {
				return fmt.Errorf("-only: unknown topology %q (want vxmesh, kernel, tap-relay, vxmesh-overlay, vxmesh-esp, kernel-vxlan, kernel-vxlan-sw, wireguard-go, vxmesh-overlay-rxq, vxmesh-overlay-usplit, egress, publish or lb)", n)
			}
			if n == wireguardTopology && cfg.wireguardGo == "" {
				return fmt.Errorf("-only %s needs -wireguard-go PATH (make bench WIREGUARD_GO=PATH)", n)
			}
			want[n] = true
		}
	}
	prefix := "vxb" + testbed.RandomID(2) + "-"
	var results []result
	for i, t := range topologies {
		if !want[t.name] || ctx.Err() != nil {
			continue
		}
		r := result{name: t.name, desc: t.desc, group: t.group, baseline: t.baseline}
		// Prefixes stay short: they become part of namespace names.
		var m measurement
		m, r.err = t.run(ctx, cfg, fmt.Sprintf("%s%d", prefix, i), log)
		r.iperf, r.ping, r.multi, r.rr, r.cpuPerGB = m.iperf, m.ping, m.multi, m.rr, m.cpuPerGB
		results = append(results, r)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	printTable(out, cfg, results)
	printAnchors(out, cfg, results)
	loadBefore := loadAvg()
	if rounds := measurePerfRounds(ctx, cfg, want, prefix+"r", log); len(rounds) > 0 {
		printPerfRounds(out, cfg, rounds)
		printLoad(out, loadBefore, loadAvg())
	}
	var errs []error
	for _, r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.name, r.err))
		}
	}
	if want[egressTopology] && ctx.Err() == nil {
		if err := runEgress(ctx, cfg, prefix+"e", out, log); err != nil {
			errs = append(errs, fmt.Errorf("egress: %w", err))
		}
	}
	if want[publishTopology] && ctx.Err() == nil {
		if err := runPublish(ctx, cfg, prefix+"p", out, log); err != nil {
			errs = append(errs, fmt.Errorf("publish: %w", err))
		}
	}
	if want[lbTopology] {
		if err := runLBMode(ctx, cfg, out, log); err != nil {
			errs = append(errs, fmt.Errorf("lb: %w", err))
		}
	}
	return errors.Join(errs...)
}

func checkTools() error {
	if err := testbed.CheckPrereqs(); err != nil {
		return err
	}
	for _, c := range []string{"iperf3", "ping", "ss"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("missing %s: apt-get install iperf3 iputils-ping iproute2", c)
		}
	}
	return nil
}

func printTable(out io.Writer, cfg config, results []result) {
	for _, g := range []string{singleHost, twoHosts} {
		var rows []result
		var base *result
		for _, r := range results {
			if r.group != g {
				continue
			}
			rows = append(rows, r)
			if r.baseline && r.err == nil {
				base = &rows[len(rows)-1]
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(out, "\n%s, 2 containers, MTU %d, TCP iperf3 %v (1 and -P %d streams), request/response %v, %d pings at 0.05 s\n\n", g, cfg.mtu, cfg.duration, cfg.streams, cfg.duration, cfg.pings)
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "topology\t\tGbit/s\tretrans\tdaemon CPU s/GB\t%d streams\tRR/s\tRR mean\tping avg\tratio to kernel\t\n", cfg.streams)
		for _, r := range rows {
			if r.err != nil {
				fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t\n", r.name, r.desc)
				continue
			}
			rrRate, rrMean := fmtRR(r.rr)
			ratio := "-"
			if base != nil && base.iperf.ReceivedBitsPerSecond > 0 {
				ratio = fmt.Sprintf("%.2f", r.iperf.ReceivedBitsPerSecond/base.iperf.ReceivedBitsPerSecond)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.name, r.desc, r.iperf.Gbps(), r.iperf.Retransmits, fmtCPUPerGB(r.cpuPerGB), fmtMulti(r.multi), rrRate, rrMean, fmtRTT(r.ping), ratio)
		}
		tw.Flush()
	}
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(out, "%s failed: %v\n", r.name, r.err)
		}
	}
}

func fmtRTT(p testbed.PingResult) string {
	if p.Received == 0 {
		return "lost"
	}
	return fmt.Sprintf("%.3f ms", float64(p.Avg)/float64(time.Millisecond))
}

// measure pings c2 from c1, then runs iperf3 with one stream and with
// cfg.streams streams, and the request/response client (perf.go) from c1
// to c2.
// waitReachable pings until c2 answers c1 (ARP, and on two hosts the
// remote endpoint reaching h1, may take a moment).
func waitReachable(ctx context.Context, p pair) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := testbed.InNetns(ctx, p.c1, "ping", "-c", "1", "-W", "1", p.c2IP)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("c1 cannot reach c2 (%s): %w", p.c2IP, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// measure pings, then runs one stream, cfg.streams streams and the
// request/response measurement between p's containers.
func measure(ctx context.Context, cfg config, p pair, log io.Writer) (measurement, error) {
	var m measurement
	if err := waitReachable(ctx, p); err != nil {
		return m, err
	}
	pout, err := testbed.InNetns(ctx, p.c1, "ping", "-q", "-c", fmt.Sprint(cfg.pings), "-i", "0.05", "-W", "1", p.c2IP)
	pr, perr := testbed.ParsePing(pout)
	if perr != nil {
		return m, fmt.Errorf("ping: %v (%v)", perr, err)
	}
	m.ping = pr
	if m.iperf, m.cpuPerGB, err = iperfCPU(ctx, cfg, p, 1, log); err != nil {
		return m, err
	}
	if cfg.streams > 1 {
		if m.multi, err = runIperf(ctx, cfg, p, cfg.streams, log); err != nil {
			return m, fmt.Errorf("-P %d: %w", cfg.streams, err)
		}
	}
	if cfg.rr {
		if m.rr, err = measureRR(ctx, cfg, p, log); err != nil {
			return m, err
		}
	}
	return m, nil
}

func benchVxmesh(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error) {
	return measureSetup(ctx, cfg, prefix, log, setupVxmesh)
}

// setupVxmesh builds one testbed host with a daemon and two containers.
func setupVxmesh(ctx context.Context, cfg config, prefix string, log io.Writer) (b *built, err error) {
	fmt.Fprintln(log, "vxmesh: building testbed host and daemon")
	b = &built{}
	defer b.closeOnError(&err)
	bin, cleanupBin, err := vxmeshBinary(cfg.binary)
	if err != nil {
		return nil, err
	}
	b.onClose(cleanupBin)
	tb, err := testbed.New(testbed.Options{Hosts: 1, Binary: bin, Prefix: prefix + "-"})
	if err != nil {
		return nil, err
	}
	b.onClose(func() {
		if err := tb.Close(); err != nil {
			fmt.Fprintln(log, "vxmesh: cleanup:", err)
		}
	})
	h := tb.Hosts[0]
	b.explain = func(err error) error { return withDaemonLog(h, err) }
	if err := h.StartDaemon(cfg.daemonFlags...); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"network", "create", "bench", "--subnet", "10.88.0.0/24", "--mtu", fmt.Sprint(cfg.mtu)},
		{"run", "-d", "--network", "bench", "--name", "c1", "--", "sleep", "infinity"},
		{"run", "-d", "--network", "bench", "--name", "c2", "--", "sleep", "infinity"},
	}
	for _, s := range steps {
		if _, err := h.CLIContext(ctx, s...); err != nil {
			return nil, err
		}
	}
	b.pair = pair{c1: h.ContainerNetnsPath("c1"), c2: h.ContainerNetnsPath("c2"), daemons: []int{h.DaemonPID()}}
	if b.c2IP, err = endpointIP(h, "c2"); err != nil {
		return nil, err
	}
	return b, nil
}

// endpointIP returns the address of the endpoint of container name, as
// `endpoint ls` on h shows it.
func endpointIP(h *testbed.Host, name string) (string, error) {
	var eps []struct {
		Name string `json:"name"`
		IP   string `json:"ip"`
	}
	if err := h.CLIJSON(&eps, "endpoint", "ls"); err != nil {
		return "", err
	}
	for _, e := range eps {
		if e.Name == name {
			return strings.Split(e.IP, "/")[0], nil
		}
	}
	return "", fmt.Errorf("endpoint ls on %s shows no %s: %+v", h.Name, name, eps)
}

// vxmeshBinary returns path if it exists, or builds ./cmd/vxmesh into a
// temporary directory.
func vxmeshBinary(path string) (string, func(), error) {
	if st, err := os.Stat(path); err == nil && !st.IsDir() {
		abs, err := filepath.Abs(path)
		return abs, func() {}, err
	}
	dir, err := os.MkdirTemp("", "vxbench")
	if err != nil {
		return "", nil, err
	}
	bin := filepath.Join(dir, "vxmesh")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/vxmesh/vxmesh/cmd/vxmesh").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("%s missing and go build ./cmd/vxmesh failed: %v: %s", path, err, out)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

func benchKernel(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error) {
	return measureSetup(ctx, cfg, prefix, log, setupKernel)
}

// setupKernel builds the Linux bridge topology.
func setupKernel(ctx context.Context, cfg config, prefix string, log io.Writer) (*built, error) {
	fmt.Fprintln(log, "kernel: building Linux bridge + veth topology")
	kb := kernelBridge{prefix: prefix + "-", mtu: cfg.mtu}
	b := &built{}
	b.onClose(func() {
		if err := testbed.Cleanup(kb.prefix); err != nil {
			fmt.Fprintln(log, "kernel: cleanup:", err)
		}
	})
	p, err := kb.build()
	if err != nil {
		b.close()
		return nil, err
	}
	b.pair = p
	return b, nil
}

// kernelBridge is what Docker's bridge driver builds: a bridge holding the
// gateway address in the host and one veth pair per container.
type kernelBridge struct {
	prefix string
	mtu    int
}

func (k kernelBridge) build() (pair, error) {
	host := k.prefix + "host"
	mtu := fmt.Sprint(k.mtu)
	cmds := [][]string{
		{"netns", "add", host},
		{"-n", host, "link", "set", "lo", "up"},
		{"-n", host, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"},
		{"-n", host, "link", "set", "br0", "mtu", mtu, "up"},
		{"-n", host, "addr", "add", "10.89.0.1/24", "dev", "br0"},
	}
	for i, c := range []string{"c1", "c2"} {
		ns := k.prefix + c
		ipAddr := fmt.Sprintf("10.89.0.%d", i+2)
		mac := fmt.Sprintf("02:42:0a:59:00:%02x", i+2)
		veth := "veth" + c
		cmds = append(cmds,
			[]string{"netns", "add", ns},
			[]string{"-n", ns, "link", "set", "lo", "up"},
			[]string{"-n", host, "link", "add", veth, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"-n", host, "link", "set", veth, "master", "br0", "up"},
			[]string{"-n", ns, "link", "set", "eth0", "address", mac, "mtu", mtu, "up"},
			[]string{"-n", ns, "addr", "add", ipAddr + "/24", "dev", "eth0"},
			[]string{"-n", ns, "route", "add", "default", "via", "10.89.0.1"},
		)
	}
	for _, c := range cmds {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			return pair{}, fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return pair{
		c1:   filepath.Join(testbed.NetnsDir, k.prefix+"c1"),
		c2:   filepath.Join(testbed.NetnsDir, k.prefix+"c2"),
		c2IP: "10.89.0.3",
	}, nil
}

// benchVxmeshOverlay measures two testbed hosts in one vxmesh cluster with
// c1 on h1 and c2 on h2.
func benchVxmeshOverlay(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error) {
	return vxmeshOverlay(ctx, cfg, prefix, log, false)
}

// benchVxmeshOverlayESP is benchVxmeshOverlay with an encrypted network.
func benchVxmeshOverlayESP(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error) {
	return vxmeshOverlay(ctx, cfg, prefix, log, true)
}

// espMaxMTU is the largest MTU of an encrypted network on a 1500-byte
// underlay.
const espMaxMTU = 1405

// vxmeshOverlay measures setupVxmeshOverlay's testbed.
func vxmeshOverlay(ctx context.Context, cfg config, prefix string, log io.Writer, encrypted bool, daemonFlags ...string) (measurement, error) {
	return measureSetup(ctx, cfg, prefix, log, func(ctx context.Context, cfg config, prefix string, log io.Writer) (*built, error) {
		return setupVxmeshOverlay(ctx, cfg, prefix, log, encrypted, daemonFlags...)
	})
}

// setupVxmeshOverlay builds two testbed hosts in one vxmesh cluster, the
// daemons started with daemonFlags, with c1 on h1 and c2 on h2 in one
// network (encrypted or not).
func setupVxmeshOverlay(ctx context.Context, cfg config, prefix string, log io.Writer, encrypted bool, daemonFlags ...string) (b *built, err error) {
	fmt.Fprintln(log, "vxmesh-overlay: building two testbed hosts with a daemon each")
	b = &built{}
	defer b.closeOnError(&err)
	bin, cleanupBin, err := vxmeshBinary(cfg.binary)
	if err != nil {
		return nil, err
	}
	b.onClose(cleanupBin)
	tb, err := testbed.New(testbed.Options{Hosts: 2, Binary: bin, Prefix: prefix + "-"})
	if err != nil {
		return nil, err
	}
	b.onClose(func() {
		if err := tb.Close(); err != nil {
			fmt.Fprintln(log, "vxmesh-overlay: cleanup:", err)
		}
	})
	if err := tb.StartDaemons(append(slices.Clone(cfg.daemonFlags), daemonFlags...)...); err != nil {
		return nil, err
	}
	h1, h2 := tb.Hosts[0], tb.Hosts[1]
	b.explain = func(err error) error {
		return fmt.Errorf("%w; h1 log:\n%s\nh2 log:\n%s", err, h1.LogTail(10), h2.LogTail(10))
	}
	var st api.Stats
	if err := h1.CLIJSON(&st, "stats"); err == nil && st.KernelTunnel != nil {
		k := st.KernelTunnel
		fmt.Fprintf(log, "vxmesh-overlay: kernel tunnel (--kernel-tunnel=%s) active %v: %s\n", k.Mode, k.Active, k.Reason)
	}
	create := []string{"network", "create", "bench", "--subnet", "10.88.1.0/24", "--mtu", fmt.Sprint(cfg.mtu)}
	if encrypted {
		create = []string{"network", "create", "bench", "--subnet", "10.88.1.0/24", "--encrypted", "--mtu", fmt.Sprint(min(cfg.mtu, espMaxMTU))}
	}
	if _, err := h1.CLIContext(ctx, create...); err != nil {
		return nil, err
	}
	// The network reaches h2 through the cluster.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := h2.CLIContext(ctx, "network", "inspect", "bench")
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("network bench did not reach h2: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, c := range []struct {
		h    *testbed.Host
		name string
	}{{h1, "c1"}, {h2, "c2"}} {
		if _, err := c.h.CLIContext(ctx, "run", "-d", "--network", "bench", "--name", c.name, "--", "sleep", "infinity"); err != nil {
			return nil, err
		}
	}
	b.pair = pair{c1: h1.ContainerNetnsPath("c1"), c2: h2.ContainerNetnsPath("c2"), daemons: []int{h1.DaemonPID(), h2.DaemonPID()}}
	if b.c2IP, err = endpointIP(h2, "c2"); err != nil {
		return nil, err
	}
	return b, nil
}

// benchKernelVXLAN measures the kernel datapath of Docker's overlay driver
// on two testbed hosts (no daemons).
func benchKernelVXLAN(ctx context.Context, cfg config, prefix string, log io.Writer) (measurement, error) {
	return measureSetup(ctx, cfg, prefix, log, setupKernelVXLAN)
}

// setupKernelVXLAN builds two testbed hosts (no daemons) with kernel VXLAN.
func setupKernelVXLAN(ctx context.Context, cfg config, prefix string, log io.Writer) (*built, error) {
	fmt.Fprintln(log, "kernel-vxlan: building two hosts with kernel VXLAN + bridge + veth")
	b, _, err := kernelVXLANTestbed(cfg, prefix, log)
	return b, err
}

// kernelVXLANTestbed builds two testbed hosts with kernel VXLAN and
// returns them with the testbed.
func kernelVXLANTestbed(cfg config, prefix string, log io.Writer) (*built, *testbed.Testbed, error) {
	tb, err := testbed.New(testbed.Options{Hosts: 2, Prefix: prefix + "-"})
	if err != nil {
		return nil, nil, err
	}
	b := &built{}
	b.onClose(func() {
		if err := tb.Close(); err != nil {
			fmt.Fprintln(log, "kernel-vxlan: cleanup:", err)
		}
	})
	if b.pair, err = buildKernelVXLAN(tb, cfg.mtu); err != nil {
		b.close()
		return nil, nil, err
	}
	return b, tb, nil
}

// buildKernelVXLAN gives each of the testbed's two hosts a VXLAN device to
// the other host, a bridge and a container namespace on it.
func buildKernelVXLAN(tb *testbed.Testbed, mtu int) (pair, error) {
	m := fmt.Sprint(mtu)
	var p pair
	for i, h := range tb.Hosts[:2] {
		peer := tb.Hosts[1-i]
		c := fmt.Sprintf("c%d", i+1)
		ns, err := tb.AddNetns(c)
		if err != nil {
			return pair{}, err
		}
		ipAddr := fmt.Sprintf("10.89.1.%d", i+2)
		cmds := [][]string{
			{"-n", h.Netns, "link", "add", "vxlan0", "type", "vxlan", "id", "4242", "dstport", "4789", "local", h.Addr, "remote", peer.Addr},
			{"-n", h.Netns, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"},
			{"-n", h.Netns, "link", "set", "vxlan0", "mtu", m, "master", "br0", "up"},
			{"-n", h.Netns, "link", "add", "veth" + c, "mtu", m, "type", "veth", "peer", "name", "eth0", "netns", tb.NetnsName(c)},
			{"-n", h.Netns, "link", "set", "veth" + c, "master", "br0", "up"},
			{"-n", h.Netns, "link", "set", "br0", "mtu", m, "up"},
			{"-n", tb.NetnsName(c), "link", "set", "eth0", "address", fmt.Sprintf("02:42:0a:59:01:%02x", i+2), "up"},
			{"-n", tb.NetnsName(c), "addr", "add", ipAddr + "/24", "dev", "eth0"},
		}
		for _, a := range cmds {
			if out, err := exec.Command("ip", a...).CombinedOutput(); err != nil {
				return pair{}, fmt.Errorf("ip %s: %v: %s", strings.Join(a, " "), err, strings.TrimSpace(string(out)))
			}
		}
		if i == 0 {
			p.c1 = ns
		} else {
			p.c2, p.c2IP = ns, ipAddr
		}
	}
	return p, nil
}
