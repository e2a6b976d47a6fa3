package main

// The scale section (-scale, make bench-scale): N testbed hosts, each
// running a real vxmesh daemon (one cluster, memberlist's default LAN
// timing as the daemon ships), a network across all of them and a
// container on every host. It measures:
//
//   - how long a new network and a new endpoint take to reach every host
//     (polled through each daemon's API: the network exists there; the
//     endpoint's MAC is in the host's forwarding table);
//   - failure detection: one daemon killed with SIGKILL, until every other
//     host has dropped its endpoint. The odd hosts run with the default
//     --node-grace (30 s), the even ones with -scale-grace, so one kill
//     measures both;
//   - gossip bytes per second per node, at rest and under -scale-rate
//     endpoint changes per second (containers run and removed through the
//     API, round robin over the hosts), counted by an nftables counter on
//     every host's gossip port (TCP and UDP 7946, IP bytes), beside
//     everything the hosts sent on the underlay (the bridge ports' veth
//     counters).
//
// Everything is made under one namespace prefix; the section checks at the
// end that no namespace and no daemon was left behind.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// scaleConfig configures the scale section.
type scaleConfig struct {
	hosts int // testbed hosts, one daemon each
	rate  int // endpoint changes per second of the load window
	// loadHosts is how many hosts (the first ones) make the load's
	// changes; 0 means all of them.
	loadHosts int
	// debugAddr, if set, is every daemon's --debug-addr (each in its
	// host's namespace: the same loopback address serves them all).
	debugAddr string
	inflight  int           // endpoint changes in flight at most, over all hosts
	change    string        // the kind of change: changeAttach or changeRun
	window    time.Duration // measuring window of the gossip rates
	grace     time.Duration // --node-grace of the even hosts
	timeout   time.Duration // bound on each wait for the cluster to converge
}

const (
	scaleNetwork = "scale"
	scaleSubnet  = "10.96.0.0/16"
)

// spread is when a change reached each host.
type spread struct {
	Reached, Of int
	Max, Median time.Duration // from the change, over the hosts reached
	Round       time.Duration // the polling period: the resolution
}

func (s spread) String() string {
	if s.Reached == 0 {
		return fmt.Sprintf("reached none of %d hosts", s.Of)
	}
	miss := ""
	if s.Reached < s.Of {
		miss = fmt.Sprintf(" (only %d of %d hosts)", s.Reached, s.Of)
	}
	return fmt.Sprintf("all %v, median %v (polled every %v)%s", s.Max.Round(time.Millisecond), s.Median.Round(time.Millisecond), s.Round.Round(time.Millisecond), miss)
}

// rates are bytes per second per node over a window.
type rates struct {
	GossipMean, GossipMax     float64 // gossip port, IP bytes
	UnderlayMean, UnderlayMax float64 // everything a host sent on its veth
	CPUMean, CPUMax           float64 // a daemon's CPU, in cores
	RSSMean, RSSMax           float64 // a daemon's RSS at the end, bytes
	// CPULoadHosts sums the CPU of the daemons of the hosts that make
	// the load's changes (-scale-load-hosts), CPUOtherHosts that of the
	// other OtherHosts daemons, which only learn of the changes.
	CPULoadHosts, CPUOtherHosts float64
	OtherHosts                  int
	// Bench, Kernel and Busy are the CPU (in cores) of the bench
	// process, of the kernel's threads, and of the whole machine (with
	// whatever else runs on it) out of Cores.
	Bench, Kernel, Busy, Cores float64
	Window                     time.Duration
}

// scaleReport is the section's result.
type scaleReport struct {
	Hosts      int
	Start      time.Duration // all daemons up and seeing each other
	CreateCall time.Duration // `network create` on h1
	Network    spread
	Fill       time.Duration // a container on every host, seen everywhere
	// FillRunMedian and FillRunMax are the times of one first run on a
	// host (it claims an address block); FillRetried counts the runs
	// that failed and were tried again.
	FillRunMedian, FillRunMax time.Duration
	FillRetried               int
	Endpoint                  spread
	Rest                      rates
	Load                      rates
	LoadDone                  int // endpoint changes made in the load window
	LoadFailed                int
	LoadBehind                int // changes due in the window not started in it (the in-flight limit)
	LoadMode                  string
	// LoadTookMedian and LoadTookMax are the times of one change (its API
	// call: a container run or removed).
	LoadTookMedian, LoadTookMax time.Duration
	LoadRmMedian, LoadRmMax     time.Duration // of the removals among them
	Settle                      spread        // after the load, every host back to the base set
	// Drops sums every daemon's gossip drops and resends (api.Stats
	// GossipDrops) and refused records after the load.
	Drops     map[string]uint64
	Victim    string
	FailGrace spread // hosts with -scale-grace
	FailDef   spread // hosts with the default --node-grace
	Grace     time.Duration
}

func runScaleMode(ctx context.Context, cfg config, out, log io.Writer) error {
	sc := cfg.scale
	if sc.hosts < 3 || sc.hosts > 250 {
		return fmt.Errorf("-scale-hosts %d: want 3 to 250", sc.hosts)
	}
	if sc.rate < 1 || sc.window < time.Second || sc.grace <= 0 {
		return fmt.Errorf("-scale-rate must be positive, -scale-window at least 1s, -scale-grace positive")
	}
	if sc.change != changeAttach && sc.change != changeRun {
		return fmt.Errorf("-scale-change %q: want %s or %s", sc.change, changeAttach, changeRun)
	}
	if sc.inflight < 1 || sc.inflight > 10*sc.hosts {
		// A host's first address block (/28) holds its container, the
		// probe and ten load containers.
		return fmt.Errorf("-scale-inflight %d: want 1 to 10 per host (%d)", sc.inflight, 10*sc.hosts)
	}
	if err := checkScaleTools(); err != nil {
		return err
	}
	bin, err := filepath.Abs(cfg.binary)
	if err != nil {
		return err
	}
	restore, err := raiseNeighLimits(neighDir, sc.hosts, log)
	if err != nil {
		return err
	}
	prefix := "vxs" + testbed.RandomID(2) + "-"
	rep, err := runClusterScale(ctx, sc, bin, prefix, log)
	if rerr := restore(); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if rep.Start > 0 {
		printClusterScale(out, sc, rep)
	}
	return errors.Join(err, checkScaleLeaks(prefix))
}

func checkScaleTools() error {
	if err := testbed.CheckPrereqs(); err != nil {
		return err
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("missing nft (the gossip byte counters): apt-get install nftables")
	}
	return nil
}

// runClusterScale builds the testbed, measures, and tears it down.
func runClusterScale(ctx context.Context, sc scaleConfig, bin, prefix string, log io.Writer) (rep scaleReport, err error) {
	rep = scaleReport{Hosts: sc.hosts, Grace: sc.grace}
	fmt.Fprintf(log, "scale: %d hosts (prefix %s)\n", sc.hosts, prefix)
	tb, err := testbed.New(testbed.Options{Hosts: sc.hosts, Binary: bin, Prefix: prefix, ReadyTimeout: time.Minute})
	if err != nil {
		return rep, err
	}
	defer func() {
		if cerr := tb.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()
	t0 := time.Now()
	hs, err := startScaleHosts(ctx, tb, sc, log)
	if err != nil {
		return rep, err
	}
	rep.Start = time.Since(t0)
	fmt.Fprintf(log, "scale: cluster of %d formed in %v\n", sc.hosts, rep.Start.Round(time.Millisecond))
	s := &scaleRun{ctx: ctx, sc: sc, tb: tb, hs: hs, log: log}
	for _, step := range []func(*scaleReport) error{s.network, s.fill, s.endpoint, s.prepare, s.rest, s.load, s.fail} {
		if err := step(&rep); err != nil {
			return rep, err
		}
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}
	return rep, nil
}

// scaleHost is a testbed host with its API client.
type scaleHost struct {
	*testbed.Host
	c      *api.Client
	graced bool   // runs with -scale-grace
	mac    string // of its container on the network
}

// scaleRun is the state of one run of the section.
type scaleRun struct {
	ctx context.Context
	sc  scaleConfig
	tb  *testbed.Testbed
	hs  []*scaleHost
	log io.Writer
	// probe is the endpoint whose propagation was measured.
	probe string
	// lg makes the load's changes.
	lg *loadGen
}

// startScaleHosts starts every daemon in order (h1 first: the others
// join it), installs the gossip counters, and waits until every daemon
// sees all of them alive.
func startScaleHosts(ctx context.Context, tb *testbed.Testbed, sc scaleConfig, log io.Writer) ([]*scaleHost, error) {
	var hs []*scaleHost
	for i, h := range tb.Hosts {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		sh := &scaleHost{Host: h, c: api.NewClient(h.Socket), graced: (i+1)%2 == 0}
		if sh.graced {
			h.Flags = append(h.Flags, "--node-grace", sc.grace.String())
		}
		if sc.debugAddr != "" {
			h.Flags = append(h.Flags, "--debug-addr", sc.debugAddr)
		}
		if err := installGossipCounter(ctx, h.NetnsPath); err != nil {
			return nil, fmt.Errorf("%s: %w", h.Name, err)
		}
		if i > 1 {
			// h1 answers every join's push/pull otherwise: on a loaded
			// machine it misses the 10 s join timeout. The previous
			// host first, h1 if it does not answer.
			h.Join = []string{tb.Hosts[i-1].Addr, tb.Hosts[0].Addr}
		}
		if err := startRetry(h, log); err != nil {
			return nil, err
		}
		hs = append(hs, sh)
		if (i+1)%20 == 0 {
			fmt.Fprintf(log, "scale: %d daemons started\n", i+1)
		}
	}
	sp := pollHosts(ctx, hs, time.Now(), sc.timeout, func(h *scaleHost) bool {
		ns, err := h.c.Nodes()
		if err != nil {
			return false
		}
		alive := 0
		for _, n := range ns {
			if n.State == "alive" {
				alive++
			}
		}
		return alive == len(hs)
	})
	if sp.Reached < len(hs) {
		return nil, fmt.Errorf("cluster not formed after %v: %d of %d hosts see every host alive", sc.timeout, sp.Reached, len(hs))
	}
	return hs, nil
}

// startRetry starts h's daemon, once more if the first start failed (a
// join that timed out on a starved machine).
func startRetry(h *testbed.Host, log io.Writer) error {
	err := h.StartDaemon()
	if err == nil {
		return nil
	}
	fmt.Fprintf(log, "scale: %s did not start, trying again: %v\n", h.Name, firstLine(err.Error()))
	return h.StartDaemon()
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// network creates the network on h1 and waits until every host has it.
func (s *scaleRun) network(rep *scaleReport) error {
	t0 := time.Now()
	if _, err := s.hs[0].c.CreateNetwork(api.NetworkCreateRequest{Name: scaleNetwork, Subnet: scaleSubnet}); err != nil {
		return fmt.Errorf("network create: %w", err)
	}
	rep.CreateCall = time.Since(t0)
	rep.Network = pollHosts(s.ctx, s.hs, t0, s.sc.timeout, func(h *scaleHost) bool {
		_, err := h.c.Network(scaleNetwork)
		return err == nil
	})
	fmt.Fprintf(s.log, "scale: network on every host: %v\n", rep.Network)
	if rep.Network.Reached < len(s.hs) {
		return fmt.Errorf("network %s did not reach every host", scaleNetwork)
	}
	return nil
}

// fillParallel is how many hosts run their first container at once. Each
// claims an address block, a round trip to every member; two at once both
// try the lowest free block first, and one loses a round.
const fillParallel = 1

// fillTries is how many times fill runs a host's first container before
// it gives up.
const fillTries = 3

// fill runs a container on every host and waits until every host has all
// of them in its forwarding table. A run that fails (its block claim not
// confirmed by every member within the claim timeout on this loaded
// machine) is tried again, up to fillTries times, and counted.
func (s *scaleRun) fill(rep *scaleReport) error {
	t0 := time.Now()
	var mu sync.Mutex
	var took []time.Duration
	err := forEachHost(s.hs, fillParallel, func(h *scaleHost) error {
		for try := 0; ; try++ {
			t := time.Now()
			ep, err := h.c.Attach(api.AttachRequest{Network: scaleNetwork, Name: "c-" + h.Name, Create: true})
			mu.Lock()
			if err == nil {
				h.mac = ep.MAC
				took = append(took, time.Since(t))
			} else {
				rep.FillRetried++
			}
			mu.Unlock()
			if err == nil {
				return nil
			}
			if try+1 == fillTries {
				return fmt.Errorf("%s: run: %w", h.Name, err)
			}
			fmt.Fprintf(s.log, "scale: %s: run failed after %v, trying again: %v\n", h.Name, time.Since(t).Round(time.Millisecond), err)
		}
	})
	if err != nil {
		return err
	}
	slices.Sort(took)
	rep.FillRunMedian, rep.FillRunMax = took[len(took)/2], took[len(took)-1]
	var macs []string
	for _, h := range s.hs {
		macs = append(macs, h.mac)
	}
	sp := pollHosts(s.ctx, s.hs, t0, s.sc.timeout, func(h *scaleHost) bool {
		return fdbHas(h, macs, nil)
	})
	rep.Fill = sp.Max
	fmt.Fprintf(s.log, "scale: %d containers (each run: median %v, max %v; %d tried again), each seen on every host: %v\n",
		len(s.hs), rep.FillRunMedian.Round(time.Millisecond), rep.FillRunMax.Round(time.Millisecond), rep.FillRetried, sp)
	if sp.Reached < len(s.hs) {
		return fmt.Errorf("containers not seen everywhere after %v", s.sc.timeout)
	}
	return nil
}

// endpoint runs one more container on the last host and waits until every
// host has its MAC.
func (s *scaleRun) endpoint(rep *scaleReport) error {
	h := s.hs[len(s.hs)-1]
	t0 := time.Now()
	ep, err := h.c.Attach(api.AttachRequest{Network: scaleNetwork, Name: "probe", Create: true})
	if err != nil {
		return fmt.Errorf("%s: run probe: %w", h.Name, err)
	}
	s.probe = ep.MAC
	rep.Endpoint = pollHosts(s.ctx, s.hs, t0, s.sc.timeout, func(h *scaleHost) bool {
		return fdbHas(h, []string{ep.MAC}, nil)
	})
	fmt.Fprintf(s.log, "scale: new endpoint on every host: %v\n", rep.Endpoint)
	return nil
}

// prepare makes the load's containers (changeAttach: run and detached,
// before the rest window, so that the load window only attaches and
// detaches endpoints).
func (s *scaleRun) prepare(rep *scaleReport) error {
	s.lg = newLoadGen(s.hs[:s.loadHosts()], s.sc.change, s.sc.inflight)
	rep.LoadMode = s.sc.change
	t0 := time.Now()
	if err := s.lg.prepare(); err != nil {
		return err
	}
	if s.sc.change == changeAttach {
		fmt.Fprintf(s.log, "scale: %d load containers made and detached in %v\n", len(s.lg.netns), time.Since(t0).Round(time.Millisecond))
	}
	return nil
}

// rest measures the gossip rates with nothing changing.
func (s *scaleRun) rest(rep *scaleReport) error {
	var err error
	rep.Rest, err = s.measureRates(func() {
		select {
		case <-s.ctx.Done():
		case <-time.After(s.sc.window): // the measuring window
		}
	})
	fmt.Fprintf(s.log, "scale: at rest: gossip %.0f B/s per node; daemon CPU %s\n", rep.Rest.GossipMean, fmtDaemonUse(rep.Rest))
	return err
}

// load measures the gossip rates while endpoints change at the configured
// rate, then waits until every host is back to the base endpoints.
func (s *scaleRun) load(rep *scaleReport) error {
	lg := s.lg
	var err error
	rep.Load, err = s.measureRates(func() {
		lg.run(s.ctx, s.sc.rate, s.sc.window)
	})
	if err != nil {
		return err
	}
	rep.LoadDone, rep.LoadFailed, rep.LoadBehind = lg.done, lg.failed, lg.behind
	if len(lg.took) > 0 {
		slices.Sort(lg.took)
		rep.LoadTookMedian, rep.LoadTookMax = lg.took[len(lg.took)/2], lg.took[len(lg.took)-1]
	}
	if len(lg.tookRm) > 0 {
		slices.Sort(lg.tookRm)
		rep.LoadRmMedian, rep.LoadRmMax = lg.tookRm[len(lg.tookRm)/2], lg.tookRm[len(lg.tookRm)-1]
	}
	fmt.Fprintf(s.log, "scale: under load (%s): %d changes (%d failed, %d due but not started) in %v, each took median %v, max %v; gossip %.0f B/s per node over %v\n",
		lg.mode, lg.done, lg.failed, lg.behind, s.sc.window, rep.LoadTookMedian.Round(time.Millisecond), rep.LoadTookMax.Round(time.Millisecond), rep.Load.GossipMean, rep.Load.Window.Round(time.Millisecond))
	fmt.Fprintf(s.log, "scale: CPU per change: %s\n", fmtCPUPerChange(rep.Rest, rep.Load, lg.done, len(s.hs)))
	t0 := time.Now()
	lg.removeAll()
	base := []string{s.probe}
	for _, h := range s.hs {
		base = append(base, h.mac)
	}
	rep.Settle = pollHosts(s.ctx, s.hs, t0, s.sc.timeout, func(h *scaleHost) bool {
		return fdbHas(h, base, lg.macs())
	})
	fmt.Fprintf(s.log, "scale: after the load, every host back to the %d base endpoints: %v\n", len(base), rep.Settle)
	rep.Drops = s.drops()
	fmt.Fprintf(s.log, "scale: gossip drops and resends, summed over the daemons: %v\n", rep.Drops)
	return lg.cleanup()
}

// loadHosts is how many hosts (the first ones) make the load's changes.
func (s *scaleRun) loadHosts() int {
	if s.sc.loadHosts <= 0 || s.sc.loadHosts > len(s.hs) {
		return len(s.hs)
	}
	return s.sc.loadHosts
}

// fmtCPUPerChange splits the CPU the load added over the rest window
// (in ms of CPU per change made) between the daemons that made the
// changes, the other daemons (each learns of every change; their share is
// scaled to all n-1 daemons that learn of one change), the kernel's
// threads, the bench, and the machine as a whole.
func fmtCPUPerChange(rest, load rates, done, n int) string {
	if done == 0 {
		return "no change made"
	}
	per := func(l, r float64) float64 { return (l - r) * load.Window.Seconds() * 1e3 / float64(done) }
	out := fmt.Sprintf("machine %.0f ms (busy %.2f of %.2f cores, %.2f at rest); kernel threads %.0f ms; bench %.0f ms; ",
		per(load.Busy, rest.Busy), load.Busy, load.Cores, rest.Busy, per(load.Kernel, rest.Kernel), per(load.Bench, rest.Bench))
	if load.OtherHosts == 0 {
		return out + fmt.Sprintf("all daemons %.0f ms", per(load.CPULoadHosts, rest.CPULoadHosts))
	}
	other := per(load.CPUOtherHosts, rest.CPUOtherHosts) / float64(load.OtherHosts)
	return out + fmt.Sprintf("the daemons making the changes %.0f ms (their own change and the others'); each other daemon %.2f ms (%.0f ms over the %d that learn of a change)",
		per(load.CPULoadHosts, rest.CPULoadHosts), other, other*float64(n-1), n-1)
}

// drops sums the gossip drops and refused records of every daemon's stats.
func (s *scaleRun) drops() map[string]uint64 {
	var mu sync.Mutex
	sum := map[string]uint64{}
	_ = forEachHost(s.hs, pollParallel, func(h *scaleHost) error {
		st, err := h.c.Stats()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			sum["stats-unreadable"]++
			return nil
		}
		for k, v := range st.GossipDrops {
			sum[k] += v
		}
		for k, v := range st.RefusedRecords {
			sum["refused-"+k] += v
		}
		return nil
	})
	return sum
}

// fail kills h2's daemon and waits until every other host dropped its
// container.
func (s *scaleRun) fail(rep *scaleReport) error {
	victim := s.hs[1]
	rep.Victim = victim.Name
	var graced, def []*scaleHost
	for _, h := range s.hs {
		switch {
		case h == victim:
		case h.graced:
			graced = append(graced, h)
		default:
			def = append(def, h)
		}
	}
	t0 := time.Now()
	if err := victim.KillDaemon(); err != nil {
		return fmt.Errorf("kill %s: %w", victim.Name, err)
	}
	gone := func(h *scaleHost) bool { return fdbLacks(h, victim.mac) }
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		rep.FailGrace = pollHosts(s.ctx, graced, t0, s.sc.timeout+s.sc.grace, gone)
	}()
	go func() {
		defer wg.Done()
		rep.FailDef = pollHosts(s.ctx, def, t0, s.sc.timeout+30*time.Second, gone)
	}()
	wg.Wait()
	fmt.Fprintf(s.log, "scale: %s killed: gone with --node-grace %v: %v; with the default: %v\n", victim.Name, s.sc.grace, rep.FailGrace, rep.FailDef)
	return nil
}

// fdbHas reports whether h's forwarding table of the network has every MAC
// of want and none of not, among its published entries.
func fdbHas(h *scaleHost, want, not []string) bool {
	f, err := h.c.FDB(scaleNetwork)
	if err != nil {
		return false
	}
	have := make(map[string]bool, len(f))
	for _, e := range f {
		if published(e) {
			have[strings.ToLower(e.MAC)] = true
		}
	}
	for _, m := range want {
		if !have[strings.ToLower(m)] {
			return false
		}
	}
	for _, m := range not {
		if have[strings.ToLower(m)] {
			return false
		}
	}
	return true
}

func fdbLacks(h *scaleHost, mac string) bool {
	f, err := h.c.FDB(scaleNetwork)
	if err != nil {
		return false
	}
	return !slices.ContainsFunc(f, func(e api.FDBEntry) bool { return published(e) && strings.EqualFold(e.MAC, mac) })
}

// published reports whether an entry comes from the cluster's endpoint
// records (or is the host's own container), not from learning: frames a
// container flooded (its DAD, say) are learned on other hosts and age out
// on their own.
func published(e api.FDBEntry) bool { return e.Kind == "remote" || e.Kind == "local" }

func printClusterScale(out io.Writer, sc scaleConfig, r scaleReport) {
	fmt.Fprintf(out, "\nscale: %d namespace hosts, one vxmesh daemon each (memberlist LAN timing), a container on every host\n\n", r.Hosts)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "cluster formed (daemons started one by one)\t%v\t\n", r.Start.Round(time.Millisecond))
	fmt.Fprintf(tw, "network create on h1 (the call)\t%v\t\n", r.CreateCall.Round(time.Millisecond))
	fmt.Fprintf(tw, "new network on every host\t%v\t\n", r.Network)
	fmt.Fprintf(tw, "a container on every host, all seen everywhere (%d at a time)\t%v\t\n", fillParallel, r.Fill.Round(time.Millisecond))
	fmt.Fprintf(tw, "first run on a host, with its block claim (median, max; runs failed and tried again)\t%v, %v; %d\t\n", r.FillRunMedian.Round(time.Millisecond), r.FillRunMax.Round(time.Millisecond), r.FillRetried)
	fmt.Fprintf(tw, "new endpoint in every host's forwarding table\t%v\t\n", r.Endpoint)
	fmt.Fprintf(tw, "%s killed: its endpoint gone, --node-grace %v\t%v\t\n", r.Victim, r.Grace, r.FailGrace)
	fmt.Fprintf(tw, "%s killed: its endpoint gone, default --node-grace\t%v\t\n", r.Victim, r.FailDef)
	fmt.Fprintf(tw, "gossip per node at rest (mean, max)\t%s\t\n", fmtRates(r.Rest, false))
	fmt.Fprintf(tw, "underlay per node at rest (mean, max)\t%s\t\n", fmtRates(r.Rest, true))
	fmt.Fprintf(tw, "daemon CPU and RSS at rest (mean, max)\t%s\t\n", fmtDaemonUse(r.Rest))
	started := float64(r.LoadDone) / sc.window.Seconds()
	achieved := float64(r.LoadDone) / max(r.Load.Window.Seconds(), 1e-9)
	fmt.Fprintf(tw, "endpoint changes (%s): %d/s asked for %v, up to %d in flight\t%d made (%.1f/s started, %.1f/s over the window until the last ended); %d failed; %d due but not started (in-flight limit)\t\n",
		r.LoadMode, sc.rate, sc.window, sc.inflight, r.LoadDone, started, achieved, r.LoadFailed, r.LoadBehind)
	fmt.Fprintf(tw, "one change (an endpoint attached or detached, or a container run or removed), median, max; detaches (removals) alone\t%v, %v; %v, %v\t\n", r.LoadTookMedian.Round(time.Millisecond), r.LoadTookMax.Round(time.Millisecond), r.LoadRmMedian.Round(time.Millisecond), r.LoadRmMax.Round(time.Millisecond))
	fmt.Fprintf(tw, "gossip per node under those changes (mean, max)\t%s\t\n", fmtRates(r.Load, false))
	fmt.Fprintf(tw, "underlay per node under that load (mean, max)\t%s\t\n", fmtRates(r.Load, true))
	fmt.Fprintf(tw, "daemon CPU and RSS under that load (mean, max)\t%s\t\n", fmtDaemonUse(r.Load))
	fmt.Fprintf(tw, "CPU per change (over the rest window's)\t%s\t\n", fmtCPUPerChange(r.Rest, r.Load, r.LoadDone, r.Hosts))
	fmt.Fprintf(tw, "after the load, every host back to the base endpoints\t%v\t\n", r.Settle)
	fmt.Fprintf(tw, "gossip drops and resends, refused records, summed over the daemons\t%v\t\n", r.Drops)
	tw.Flush()
}

func fmtRates(r rates, underlay bool) string {
	mean, mx := r.GossipMean, r.GossipMax
	if underlay {
		mean, mx = r.UnderlayMean, r.UnderlayMax
	}
	return fmt.Sprintf("%.1f KB/s, %.1f KB/s (over %v)", mean/1e3, mx/1e3, r.Window.Round(time.Millisecond))
}

// fmtDaemonUse formats the daemons' CPU share and RSS of a window (mean,
// max over the daemons).
func fmtDaemonUse(r rates) string {
	return fmt.Sprintf("%.1f%%, %.1f%% of a core; %.0f MB, %.0f MB", 100*r.CPUMean, 100*r.CPUMax, r.RSSMean/1e6, r.RSSMax/1e6)
}

// checkScaleLeaks fails if a namespace or a daemon of the run is left.
func checkScaleLeaks(prefix string) error {
	left, err := testbed.ListNetns(prefix)
	if err != nil {
		return err
	}
	var errs []error
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("leak: namespaces left behind: %s", strings.Join(left, " ")))
	}
	if pids := processesWith(prefix); len(pids) > 0 {
		errs = append(errs, fmt.Errorf("leak: processes left behind: %s", strings.Join(pids, " ")))
	}
	return errors.Join(errs...)
}

// processesWith returns the PIDs whose command line mentions s.
func processesWith(s string) []string {
	ms, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	self := fmt.Sprint(os.Getpid())
	var out []string
	for _, m := range ms {
		b, err := os.ReadFile(m)
		pid := filepath.Base(filepath.Dir(m))
		if err == nil && pid != self && strings.Contains(string(b), s) {
			out = append(out, pid)
		}
	}
	return out
}
