package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// pollParallel is how many daemons one polling round asks at once.
const pollParallel = 8

// pollHosts checks cond on every host in rounds until it holds on all of
// them, timeout passes or ctx ends. A host's time is when the first check
// that passed started, from t0.
func pollHosts(ctx context.Context, hs []*scaleHost, t0 time.Time, timeout time.Duration, cond func(*scaleHost) bool) spread {
	sp := spread{Of: len(hs)}
	at := make([]time.Duration, len(hs))
	done := make([]bool, len(hs))
	deadline := t0.Add(timeout)
	rounds := 0
	start := time.Now()
	for sp.Reached < len(hs) && time.Now().Before(deadline) && ctx.Err() == nil {
		rounds++
		var mu sync.Mutex
		var wg sync.WaitGroup
		sem := make(chan struct{}, pollParallel)
		for i, h := range hs {
			if done[i] {
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				now := time.Now()
				if cond(h) {
					mu.Lock()
					done[i], at[i] = true, now.Sub(t0)
					sp.Reached++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if sp.Reached < len(hs) {
			time.Sleep(20 * time.Millisecond) // between polling rounds
		}
	}
	if rounds > 0 {
		sp.Round = time.Since(start) / time.Duration(rounds)
	}
	var got []time.Duration
	for i := range hs {
		if done[i] {
			got = append(got, at[i])
		}
	}
	sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
	if len(got) > 0 {
		sp.Max, sp.Median = got[len(got)-1], got[len(got)/2]
	}
	return sp
}

// forEachHost runs f on every host, parallel at a time, and joins the
// errors.
func forEachHost(hs []*scaleHost, parallel int, f func(*scaleHost) error) error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	sem := make(chan struct{}, parallel)
	for _, h := range hs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(h); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// gossipTable is the nftables table of the gossip counters in each host.
const gossipTable = "vxscale"

// installGossipCounter counts, in the host's namespace, the IP bytes the
// host sends from or to the gossip port: memberlist's UDP packets (port
// 7946 on both ends) and both directions' sends of its TCP streams.
func installGossipCounter(ctx context.Context, netnsPath string) error {
	rules := "add table inet " + gossipTable + "; " +
		"add chain inet " + gossipTable + " out { type filter hook output priority 0; policy accept; }; " +
		"add rule inet " + gossipTable + " out meta l4proto { tcp, udp } th dport 7946 counter accept; " +
		"add rule inet " + gossipTable + " out meta l4proto { tcp, udp } th sport 7946 counter accept"
	if _, err := testbed.InNetns(ctx, netnsPath, "nft", rules); err != nil {
		return fmt.Errorf("gossip counter: %w", err)
	}
	return nil
}

// gossipBytes reads the counter installInGossipCounter made.
func gossipBytes(ctx context.Context, netnsPath string) (uint64, error) {
	out, err := testbed.InNetns(ctx, netnsPath, "nft", "-j", "list", "table", "inet", gossipTable)
	if err != nil {
		return 0, err
	}
	return parseNftCounters([]byte(out))
}

// parseNftCounters sums the bytes of every counter in `nft -j list ...`.
func parseNftCounters(b []byte) (uint64, error) {
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Expr []struct {
					Counter *struct {
						Bytes uint64 `json:"bytes"`
					} `json:"counter"`
				} `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return 0, fmt.Errorf("nft -j output: %w", err)
	}
	var sum uint64
	n := 0
	for _, o := range doc.Nftables {
		if o.Rule == nil {
			continue
		}
		for _, e := range o.Rule.Expr {
			if e.Counter != nil {
				sum += e.Counter.Bytes
				n++
			}
		}
	}
	if n == 0 {
		return 0, errors.New("nft -j output: no counter")
	}
	return sum, nil
}

// underlayTx returns, by bridge port (named after its host), the bytes the
// bridge received from each host: what the host sent on its eth0.
func underlayTx(ctx context.Context, underlay string) (map[string]uint64, error) {
	out, err := testbed.InNetns(ctx, "/run/netns/"+underlay, "ip", "-s", "-j", "link", "show")
	if err != nil {
		return nil, err
	}
	return parseLinkRx([]byte(out))
}

// parseLinkRx returns the received bytes of every link in `ip -s -j link`.
func parseLinkRx(b []byte) (map[string]uint64, error) {
	var links []struct {
		Name  string `json:"ifname"`
		Stats struct {
			Rx struct {
				Bytes uint64 `json:"bytes"`
			} `json:"rx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(b, &links); err != nil {
		return nil, fmt.Errorf("ip -s -j link output: %w", err)
	}
	out := make(map[string]uint64, len(links))
	for _, l := range links {
		out[l.Name] = l.Stats.Rx.Bytes
	}
	return out, nil
}

// countersAt is one reading of every host's counters.
type countersAt struct {
	gossip   []uint64
	gossipAt []time.Time
	cpu      []uint64 // daemon CPU ticks
	rss      []uint64 // daemon RSS, bytes
	underlay map[string]uint64
	at       time.Time
	sys      cpuTicks
}

func (s *scaleRun) readCounters() (countersAt, error) {
	c := countersAt{gossip: make([]uint64, len(s.hs)), gossipAt: make([]time.Time, len(s.hs)),
		cpu: make([]uint64, len(s.hs)), rss: make([]uint64, len(s.hs))}
	var err error
	// Each reading is timed at the middle of the command that made it: on
	// a loaded machine a command takes a good part of a second.
	t := time.Now()
	if c.underlay, err = underlayTx(s.ctx, s.tb.Underlay); err != nil {
		return c, err
	}
	c.at = t.Add(time.Since(t) / 2)
	idx := map[*scaleHost]int{}
	for i, h := range s.hs {
		idx[h] = i
	}
	err = forEachHost(s.hs, pollParallel, func(h *scaleHost) error {
		at := time.Now()
		v, err := gossipBytes(s.ctx, h.NetnsPath)
		if err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		c.gossip[idx[h]], c.gossipAt[idx[h]] = v, at.Add(time.Since(at)/2)
		if c.cpu[idx[h]], c.rss[idx[h]], err = daemonCPU(h); err != nil {
			return fmt.Errorf("%s: %w", h.Name, err)
		}
		return nil
	})
	if err != nil {
		return c, err
	}
	c.sys, err = readCPUTicks()
	return c, err
}

// measureRates reads the counters around during and returns the rates of
// the hosts whose daemon ran throughout.
func (s *scaleRun) measureRates(during func()) (rates, error) {
	a, err := s.readCounters()
	if err != nil {
		return rates{}, err
	}
	during()
	b, err := s.readCounters()
	if err != nil {
		return rates{}, err
	}
	r := rates{Window: b.at.Sub(a.at)}
	sec := r.Window.Seconds()
	r.Bench = float64(b.sys.bench-a.sys.bench) / userHZ / sec
	r.Kernel = float64(kernelTicksSince(a.sys, b.sys)) / userHZ / sec
	r.Busy = float64(b.sys.busy-a.sys.busy) / userHZ / sec
	r.Cores = float64(b.sys.total-a.sys.total) / userHZ / sec
	n := 0
	for i, h := range s.hs {
		if !h.Running() {
			continue
		}
		n++
		g := float64(b.gossip[i]-a.gossip[i]) / b.gossipAt[i].Sub(a.gossipAt[i]).Seconds()
		u := float64(b.underlay[h.Name]-a.underlay[h.Name]) / r.Window.Seconds()
		r.GossipMean += g
		r.UnderlayMean += u
		r.GossipMax = max(r.GossipMax, g)
		cpu := float64(b.cpu[i]-a.cpu[i]) / userHZ / r.Window.Seconds()
		r.CPUMean += cpu
		r.CPUMax = max(r.CPUMax, cpu)
		if i < s.loadHosts() {
			r.CPULoadHosts += cpu
		} else {
			r.CPUOtherHosts += cpu
			r.OtherHosts++
		}
		r.RSSMean += float64(b.rss[i])
		r.RSSMax = max(r.RSSMax, float64(b.rss[i]))
		r.UnderlayMax = max(r.UnderlayMax, u)
	}
	if n > 0 {
		r.GossipMean /= float64(n)
		r.UnderlayMean /= float64(n)
		r.CPUMean /= float64(n)
		r.RSSMean /= float64(n)
	}
	return r, nil
}

// The kinds of change the load makes (-scale-change).
const (
	// changeAttach attaches endpoints to containers made before the
	// window (run, then detached) and detaches them: each change is an
	// endpoint of the network appearing or leaving on every host, and a
	// TAP device made or deleted, without a namespace made or torn down.
	changeAttach = "attach"
	// changeRun runs containers (a new namespace with its endpoint) and
	// removes them.
	changeRun = "run"
)

// loadGen makes endpoint changes: each host has a few slots, each of which
// attaches an endpoint (or runs a container), then detaches it (removes
// it), then attaches another, ...; at most one change of a slot is under
// way at a time, and at most inflight over all hosts. Changes fall due at
// the rate asked; each due change is started as soon as the limit allows,
// in the next free slot, host by host round robin. The limit keeps the
// machine's work bounded whatever the number of hosts: past it, a change
// (a TAP device or a namespace made or removed) only waits longer.
type loadGen struct {
	hs       []*scaleHost
	mode     string
	slots    int // slots per host
	inflight int // changes in flight at most, over all hosts

	mu      sync.Mutex
	now     int                       // changes in flight
	next    int                       // the slot the next change tries first
	netns   map[loadSlot]string       // changeAttach: each slot's container's namespace
	running map[loadSlot]api.Endpoint // the endpoint of each slot
	busy    map[loadSlot]bool
	seen    map[string]bool // MACs of every load endpoint
	seq     int
	started int
	done    int
	failed  int
	// behind counts the changes that fell due in the window and were not
	// started in it: every slot busy, or inflight changes under way.
	behind   int
	took     []time.Duration // of each change made, its API call
	tookRm   []time.Duration // of each detach or removal among them
	inFlight sync.WaitGroup
}

// loadSlot is one of a host's slots.
type loadSlot struct {
	h *scaleHost
	i int
}

// name is the container of a slot in changeAttach mode.
func (s loadSlot) name() string { return fmt.Sprintf("l-%s-%d", s.h.Name, s.i) }

func newLoadGen(hs []*scaleHost, mode string, inflight int) *loadGen {
	return &loadGen{hs: hs, mode: mode, slots: (inflight + len(hs) - 1) / len(hs), inflight: inflight,
		netns: map[loadSlot]string{}, running: map[loadSlot]api.Endpoint{}, busy: map[loadSlot]bool{}, seen: map[string]bool{}}
}

// runLoad makes rate changes per second (containers run and removed) for
// window, at most inflight at a time, and waits for the changes in flight.
func runLoad(ctx context.Context, hs []*scaleHost, rate, inflight int, window time.Duration) *loadGen {
	lg := newLoadGen(hs, changeRun, inflight)
	lg.run(ctx, rate, window)
	return lg
}

// prepare makes, in changeAttach mode, every slot's container: run, then
// detached from the network (it stays, with no endpoint).
func (lg *loadGen) prepare() error {
	if lg.mode != changeAttach {
		return nil
	}
	return forEachHost(lg.hs, 4, func(h *scaleHost) error {
		for i := range lg.slots {
			s := loadSlot{h, i}
			ep, err := h.c.Attach(api.AttachRequest{Network: scaleNetwork, Name: s.name(), Create: true})
			if err != nil {
				return fmt.Errorf("%s: run %s: %w", h.Name, s.name(), err)
			}
			if err := h.c.Detach(s.name(), scaleNetwork); err != nil {
				return fmt.Errorf("%s: detach %s: %w", h.Name, s.name(), err)
			}
			lg.mu.Lock()
			lg.netns[s] = ep.Netns
			lg.seen[ep.MAC] = true
			lg.mu.Unlock()
		}
		return nil
	})
}

// run makes rate changes per second for window and waits for the changes
// in flight.
func (lg *loadGen) run(ctx context.Context, rate int, window time.Duration) {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	start := time.Now()
	end := time.After(window)
	due := func() int { return int(time.Since(start).Seconds()*float64(rate)) + 1 }
	for {
		select {
		case <-ctx.Done():
		case <-end:
		case <-tick.C:
			for lg.started < due() && lg.startNext() {
			}
			continue
		}
		lg.behind = max(0, min(due(), int(window.Seconds()*float64(rate)))-lg.started)
		lg.inFlight.Wait()
		return
	}
}

// startNext starts a change in the next free slot, unless inflight changes
// are under way or every slot is busy.
func (lg *loadGen) startNext() bool {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	if lg.now >= lg.inflight {
		return false
	}
	n := len(lg.hs) * lg.slots
	for k := range n {
		i := (lg.next + k) % n
		s := loadSlot{lg.hs[i%len(lg.hs)], i / len(lg.hs)}
		if lg.busy[s] {
			continue
		}
		lg.next = i + 1
		lg.startLocked(s)
		return true
	}
	return false
}

// startLocked starts the next change of slot s; callers hold lg.mu.
func (lg *loadGen) startLocked(s loadSlot) {
	lg.busy[s] = true
	lg.now++
	lg.started++
	ep, has := lg.running[s]
	lg.seq++
	name := "l" + strconv.Itoa(lg.seq)
	netns := lg.netns[s]
	lg.inFlight.Add(1)
	go func() {
		defer lg.inFlight.Done()
		var err error
		var got api.Endpoint
		t0 := time.Now()
		switch {
		case has && lg.mode == changeAttach:
			err = s.h.c.Detach(ep.Name, scaleNetwork)
		case has:
			err = s.h.c.RemoveContainer(ep.Name)
		case lg.mode == changeAttach:
			got, err = s.h.c.Attach(api.AttachRequest{Network: scaleNetwork, Name: s.name(), Netns: netns})
		default:
			got, err = s.h.c.Attach(api.AttachRequest{Network: scaleNetwork, Name: name, Create: true})
		}
		lg.mu.Lock()
		defer lg.mu.Unlock()
		lg.busy[s] = false
		lg.now--
		if err != nil {
			lg.failed++
			return
		}
		lg.done++
		lg.took = append(lg.took, time.Since(t0))
		if has {
			lg.tookRm = append(lg.tookRm, time.Since(t0))
			delete(lg.running, s)
		} else {
			lg.running[s] = got
			lg.seen[got.MAC] = true
		}
	}()
}

// removeAll detaches (removes) the load endpoints (containers) still
// there.
func (lg *loadGen) removeAll() {
	lg.mu.Lock()
	left := make(map[*scaleHost][]loadSlot)
	for s := range lg.running {
		left[s.h] = append(left[s.h], s)
	}
	lg.mu.Unlock()
	var hs []*scaleHost
	for h := range left {
		hs = append(hs, h)
	}
	_ = forEachHost(hs, 4, func(h *scaleHost) error {
		for _, s := range left[h] {
			lg.mu.Lock()
			ep := lg.running[s]
			lg.mu.Unlock()
			var err error
			if lg.mode == changeAttach {
				err = h.c.Detach(ep.Name, scaleNetwork)
			} else {
				err = h.c.RemoveContainer(ep.Name)
			}
			if err != nil {
				return err
			}
			lg.mu.Lock()
			delete(lg.running, s)
			lg.mu.Unlock()
		}
		return nil
	})
}

// cleanup removes the containers prepare made.
func (lg *loadGen) cleanup() error {
	return forEachHost(lg.hs, 4, func(h *scaleHost) error {
		var errs []error
		for i := range lg.slots {
			s := loadSlot{h, i}
			lg.mu.Lock()
			_, made := lg.netns[s]
			lg.mu.Unlock()
			if made {
				if err := h.c.RemoveContainer(s.name()); err != nil {
					errs = append(errs, fmt.Errorf("%s: rm %s: %w", h.Name, s.name(), err))
				}
			}
		}
		return errors.Join(errs...)
	})
}

// macs returns the MACs of every load endpoint there was.
func (lg *loadGen) macs() []string {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	out := make([]string, 0, len(lg.seen))
	for m := range lg.seen {
		out = append(out, m)
	}
	return out
}

// userHZ is the unit of the CPU times in /proc/PID/stat (USER_HZ, 100 on
// every Linux architecture the daemon runs on).
const userHZ = 100

// parseProcStat returns utime+stime, in clock ticks, of a /proc/PID/stat.
func parseProcStat(b []byte) (uint64, error) {
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold anything
	if i < 0 {
		return 0, errors.New("/proc stat: no command name")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat: %d fields after the command name, want at least 13", len(f))
	}
	u, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc stat: utime: %w", err)
	}
	st, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc stat: stime: %w", err)
	}
	return u + st, nil
}

// parseStatmRSS returns the resident pages of a /proc/PID/statm.
func parseStatmRSS(b []byte) (uint64, error) {
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, errors.New("/proc statm: fewer than 2 fields")
	}
	n, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc statm: resident: %w", err)
	}
	return n, nil
}

// daemonCPU returns the CPU ticks the daemon of h has used, and its RSS
// in bytes.
func daemonCPU(h *scaleHost) (ticks, rss uint64, err error) {
	pid := h.DaemonPID()
	if pid == 0 {
		return 0, 0, fmt.Errorf("%s: no daemon", h.Name)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	if ticks, err = parseProcStat(b); err != nil {
		return 0, 0, err
	}
	if b, err = os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid)); err != nil {
		return 0, 0, err
	}
	pages, err := parseStatmRSS(b)
	return ticks, pages * uint64(os.Getpagesize()), err
}
