package cluster

import (
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The scale simulation: n cluster nodes in one process on a MemNetwork,
// with memberlist's LAN configuration as the daemon uses it (Config with no
// tuning), the daemon's replicated tables, and on every node a reconciler
// shaped like the daemon's (daemon/cluster.go watchCluster): on every change
// signal it lists the networks and endpoints tables and decodes the records
// that changed. A node has converged when its reconciler has seen the
// network, and then every endpoint.

// simNet and simEp have the fields and the JSON of the daemon's netRecord
// and epRecord (the cluster package cannot import the daemon's).
type simNet struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	Subnet  string    `json:"subnet"`
	Gateway string    `json:"gateway"`
	MTU     int       `json:"mtu"`
	VNI     uint32    `json:"vni"`
	Created time.Time `json:"created"`
}

type simEp struct {
	Name    string `json:"name"`
	Network string `json:"network"`
	IP      string `json:"ip"`
	MAC     string `json:"mac"`
	Node    string `json:"node"`
}

const simNetwork = "simnet"

// simReconciler is one node's consumer of the tables.
type simReconciler struct {
	c       *Cluster
	decoded map[string]simDecoded // endpoints by key; reconcile goroutine only
	// What the node has seen, and when it first saw it (Unix ns).
	netSeen atomic.Int64
	eps     atomic.Int64 // endpoints on simNetwork
	epsGoal atomic.Int64 // endpoint count whose arrival epsAt records
	epsAt   atomic.Int64
	passes  atomic.Int64
}

type simDecoded struct {
	version uint64
	ep      simEp
}

func (r *simReconciler) run(stop <-chan struct{}) {
	ch, cancel := r.c.Subscribe()
	defer cancel()
	var last uint64
	for {
		select {
		case <-stop:
			return
		case _, ok := <-ch:
			if !ok {
				return
			}
		}
		gen := r.c.Generation()
		if gen == last {
			continue
		}
		last = gen
		r.reconcile()
	}
}

func (r *simReconciler) reconcile() {
	r.passes.Add(1)
	now := time.Now().UnixNano()
	if r.netSeen.Load() == 0 {
		for _, e := range r.c.List("networks") {
			var n simNet
			if json.Unmarshal(e.Value, &n) == nil && n.Name == simNetwork {
				r.netSeen.Store(now)
			}
		}
	}
	entries := r.c.List("endpoints")
	live := make(map[string]bool, len(entries))
	count := 0
	for _, e := range entries {
		live[e.Key] = true
		d, ok := r.decoded[e.Key]
		if !ok || d.version != e.Version {
			d.version = e.Version
			if json.Unmarshal(e.Value, &d.ep) != nil {
				continue
			}
			r.decoded[e.Key] = d
		}
		if d.ep.Network == simNetwork {
			count++
		}
	}
	for k := range r.decoded {
		if !live[k] {
			delete(r.decoded, k)
		}
	}
	r.eps.Store(int64(count))
	if g := r.epsGoal.Load(); g > 0 && int64(count) >= g && r.epsAt.Load() == 0 {
		r.epsAt.Store(now)
	}
}

// simCluster is a running simulation.
type simCluster struct {
	net   *MemNetwork
	nodes []*Cluster
	recs  []*simReconciler
	stop  chan struct{}
	wg    sync.WaitGroup
}

func simAddr(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}), DefaultGossipPort)
}

func simName(i int) string { return fmt.Sprintf("sim%04d", i) }

// startSim starts n nodes with the daemon's configuration and tables, joins
// each to a few earlier nodes, and waits until every node sees n alive.
func startSim(tb testing.TB, n int, key []byte, tune func(*Config)) *simCluster {
	tb.Helper()
	s := &simCluster{net: NewMemNetwork(), stop: make(chan struct{})}
	tb.Cleanup(s.close)
	for i := range n {
		cfg := Config{
			NodeName: simName(i), BindAddr: simAddr(i).Addr(), GossipPort: DefaultGossipPort,
			Key: key, Network: s.net,
			Meta: NodeMeta{DataAddr: netip.AddrPortFrom(simAddr(i).Addr(), 4789)},
		}
		if tune != nil {
			tune(&cfg)
		}
		c, err := Start(cfg)
		if err != nil {
			tb.Fatalf("start %s: %v", cfg.NodeName, err)
		}
		for _, t := range []struct {
			name string
			opt  TableOptions
		}{{"networks", TableOptions{}}, {"endpoints", TableOptions{NodeScoped: true}}, {"services", TableOptions{}}, {"mesh-state", TableOptions{NodeScoped: true}}} {
			if err := c.DefineTable(t.name, t.opt); err != nil {
				tb.Fatal(err)
			}
		}
		s.nodes = append(s.nodes, c)
		r := &simReconciler{c: c, decoded: map[string]simDecoded{}}
		s.recs = append(s.recs, r)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			r.run(s.stop)
		}()
		if i > 0 {
			// Join through node 0 and a recent node, as hosts given a
			// couple of --join addresses do.
			peers := []string{simAddr(0).String(), simAddr(max(i-1-i%7, 0)).String()}
			if _, err := c.Join(peers); err != nil {
				tb.Fatalf("join %s: %v", cfg.NodeName, err)
			}
		}
		if testing.Verbose() && (i+1)%100 == 0 {
			fmt.Fprintf(os.Stderr, "scale sim %d nodes: %d started and joined\n", n, i+1)
		}
	}
	s.waitAll(tb, 5*time.Minute+time.Duration(n)*100*time.Millisecond, "every node sees every node alive", func(c *Cluster, _ *simReconciler) bool {
		return int(c.alive.Load()) == n
	})
	return s
}

func (s *simCluster) close() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	var wg sync.WaitGroup
	for _, c := range s.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Close()
		}()
	}
	wg.Wait()
	s.wg.Wait()
}

// waitAll polls until cond holds on every node; it fails after timeout,
// saying on how many nodes it held.
func (s *simCluster) waitAll(tb testing.TB, timeout time.Duration, what string, cond func(*Cluster, *simReconciler) bool) {
	tb.Helper()
	if k := s.pollAll(timeout, cond); k < len(s.nodes) {
		tb.Fatalf("after %v %s holds on %d of %d nodes", timeout, what, k, len(s.nodes))
	}
}

// pollAll polls until cond holds on every node or timeout passes, and
// returns on how many nodes it held last.
func (s *simCluster) pollAll(timeout time.Duration, cond func(*Cluster, *simReconciler) bool) int {
	deadline := time.Now().Add(timeout)
	from := 0 // nodes before from held already
	for {
		for from < len(s.nodes) && cond(s.nodes[from], s.recs[from]) {
			from++
		}
		if from == len(s.nodes) {
			return from
		}
		if time.Now().After(deadline) {
			k := from
			for i := from; i < len(s.nodes); i++ {
				if cond(s.nodes[i], s.recs[i]) {
					k++
				}
			}
			return k
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// simPhase is the measurement of one change spreading.
type simPhase struct {
	Converged int           // nodes that converged
	Time      time.Duration // until the last of them had (from the change)
	Median    time.Duration // until half of the nodes had
	Sent      MemStats      // sent by all nodes until the poll saw convergence
	CPU       time.Duration // process CPU time meanwhile
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure applies change at t0 and waits until at(rec) (a Unix ns, 0 when
// not yet) is set on every node.
func (s *simCluster) measure(timeout time.Duration, change func(), at func(*simReconciler) int64) simPhase {
	before, cpu0 := s.net.Stats(), cpuTime()
	t0 := time.Now()
	change()
	k := s.pollAll(timeout, func(_ *Cluster, r *simReconciler) bool { return at(r) != 0 })
	p := simPhase{Converged: k, Sent: s.net.Stats().Sub(before), CPU: cpuTime() - cpu0}
	var times []time.Duration
	for _, r := range s.recs {
		if v := at(r); v != 0 {
			times = append(times, time.Duration(max(v-t0.UnixNano(), 0)))
		}
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	if len(times) > 0 {
		p.Time = times[len(times)-1]
		p.Median = times[len(times)/2]
	}
	return p
}

// createNetwork writes the network record on node 0, as `network create`
// does.
func (s *simCluster) createNetwork() error {
	b, _ := json.Marshal(simNet{
		Name: simNetwork, ID: strings.Repeat("5e", 32), Subnet: "10.80.0.0/16", Gateway: "10.80.0.1",
		MTU: 1450, VNI: 4242, Created: time.Now().UTC(),
	})
	return s.nodes[0].Put("networks", simNetwork, b)
}

// addEndpoints writes count new endpoints on simNetwork, endpoint i by node
// i mod n, as that many `run`s spread over the hosts do.
func (s *simCluster) addEndpoints(count int) error {
	for _, r := range s.recs {
		r.epsGoal.Store(int64(count))
	}
	for i := range count {
		c := s.nodes[i%len(s.nodes)]
		name := fmt.Sprintf("c%05d", i)
		ip := netip.AddrFrom4([4]byte{10, 80, byte((i + 2) >> 8), byte(i + 2)})
		b, _ := json.Marshal(simEp{
			Name: name, Network: simNetwork, IP: ip.String(),
			MAC: fmt.Sprintf("02:42:0a:50:%02x:%02x", byte((i+2)>>8), byte(i+2)), Node: c.LocalName(),
		})
		if err := c.Put("endpoints", c.LocalName()+"/"+simNetwork+"/"+name, b); err != nil {
			return err
		}
	}
	return nil
}

// simResult is one run of the simulation.
type simResult struct {
	Nodes     int
	Setup     time.Duration // start and join until every node sees all alive
	Idle      MemStats      // sent at rest over IdleTime
	IdleTime  time.Duration
	Network   simPhase
	Endpoints simPhase
	Changes   int
}

// runSim runs the simulation: idle, a network create, then changes new
// endpoints.
func runSim(tb testing.TB, n, changes int, idle, timeout time.Duration, tune func(*Config)) simResult {
	tb.Helper()
	key, err := GenerateKey()
	if err != nil {
		tb.Fatal(err)
	}
	t0 := time.Now()
	s := startSim(tb, n, key, tune)
	res := simResult{Nodes: n, Setup: time.Since(t0), IdleTime: idle, Changes: changes}
	progress := func(what string) {
		if testing.Verbose() {
			fmt.Fprintf(os.Stderr, "scale sim %d nodes: %s at %v\n", n, what, time.Since(t0).Round(time.Millisecond))
		}
	}
	progress("cluster formed")
	if idle > 0 {
		before := s.net.Stats()
		time.Sleep(idle) // a measurement window, not a synchronisation
		res.Idle = s.net.Stats().Sub(before)
	}
	res.Network = s.measure(timeout, func() {
		if err := s.createNetwork(); err != nil {
			tb.Fatal(err)
		}
	}, func(r *simReconciler) int64 { return r.netSeen.Load() })
	progress(fmt.Sprintf("network on %d nodes", res.Network.Converged))
	res.Endpoints = s.measure(timeout, func() {
		if err := s.addEndpoints(changes); err != nil {
			tb.Fatal(err)
		}
	}, func(r *simReconciler) int64 { return r.epsAt.Load() })
	s.close()
	return res
}

func (r simResult) String() string {
	var b strings.Builder
	perNode := func(s MemStats, d time.Duration) float64 {
		if d <= 0 {
			return 0
		}
		return float64(s.Bytes()) / d.Seconds() / float64(r.Nodes)
	}
	fmt.Fprintf(&b, "%d nodes: setup %v; idle %.0f B/s per node (%d packets, %d streams in %v)\n",
		r.Nodes, r.Setup.Round(time.Millisecond), perNode(r.Idle, r.IdleTime), r.Idle.Packets, r.Idle.Streams, r.IdleTime)
	for _, p := range []struct {
		name string
		ph   simPhase
	}{{"network create", r.Network}, {fmt.Sprintf("%d endpoint changes", r.Changes), r.Endpoints}} {
		fmt.Fprintf(&b, "  %s: converged on %d/%d nodes, all in %v (half in %v); sent %.1f KB (%.1f KB per node; %d packets, %d lost, %d streams, %.1f KB in streams); CPU %v\n",
			p.name, p.ph.Converged, r.Nodes, p.ph.Time.Round(time.Millisecond), p.ph.Median.Round(time.Millisecond),
			float64(p.ph.Sent.Bytes())/1e3, float64(p.ph.Sent.Bytes())/1e3/float64(r.Nodes),
			p.ph.Sent.Packets, p.ph.Sent.Lost, p.ph.Sent.Streams, float64(p.ph.Sent.StreamBytes)/1e3, p.ph.CPU.Round(time.Millisecond))
	}
	return b.String()
}

// TestScaleSim10 is the small simulation of make test: ten nodes converge
// on a new network and on 1,000 new endpoints (100 with the race detector,
// which makes every reconcile pass tens of times slower), and the
// in-memory network counted what they sent. The gossip runs ten times
// faster than the daemon's (20 ms instead of 200 ms, push/pull every 3 s
// instead of 30 s) to keep make test short: at the daemon's timing the
// thousand changes take about 50 s (BenchmarkScaleSim).
func TestScaleSim10(t *testing.T) {
	changes := 1000
	if raceEnabled {
		changes = 100
	}
	res := runSim(t, 10, changes, 0, 2*time.Minute, func(c *Config) {
		c.GossipInterval = 20 * time.Millisecond
		c.PushPullInterval = 3 * time.Second
	})
	t.Log(res)
	for _, p := range []simPhase{res.Network, res.Endpoints} {
		if p.Converged != 10 {
			t.Fatalf("converged on %d of 10 nodes\n%v", p.Converged, res)
		}
		if p.Sent.Bytes() == 0 || p.Sent.Packets == 0 {
			t.Fatalf("no gossip counted\n%v", res)
		}
	}
	// The endpoint records reached 9 other nodes each: at least their
	// encoded size (over 100 bytes) crossed the network that many times.
	if min := uint64(changes * 9 * 100); res.Endpoints.Sent.Bytes() < min {
		t.Fatalf("endpoint changes sent %d bytes, want at least %d\n%v", res.Endpoints.Sent.Bytes(), min, res)
	}
}

// simTimeout bounds each convergence wait of BenchmarkScaleSim; a phase
// that times out is reported with the nodes it reached.
var simTimeout = flag.Duration("sim-timeout", 15*time.Minute, "BenchmarkScaleSim: bound on each convergence wait")

// BenchmarkScaleSim runs the simulation at 10, 100 and 1,000 nodes (one run
// each; select one with -bench 'ScaleSim/nodes=100'):
//
//	go test -run '^$' -bench ScaleSim -benchtime 1x -timeout 60m ./cluster
func BenchmarkScaleSim(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			for range b.N {
				runtime.GC()
				res := runSim(b, n, 1000, 10*time.Second, *simTimeout, nil)
				b.Log("\n" + res.String())
				b.ReportMetric(res.Network.Time.Seconds(), "net-s")
				b.ReportMetric(float64(res.Network.Sent.Bytes())/float64(n), "net-B/node")
				b.ReportMetric(res.Endpoints.Time.Seconds(), "eps-s")
				b.ReportMetric(float64(res.Endpoints.Sent.Bytes())/float64(n), "eps-B/node")
				b.ReportMetric(float64(res.Idle.Bytes())/res.IdleTime.Seconds()/float64(n), "idle-B/s/node")
				b.ReportMetric(float64(res.Endpoints.Converged)/float64(n), "eps-converged")
			}
		})
	}
}
