package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

// MaxConntrack is the largest Config.Conntrack.Max the data plane accepts
// (about 1.3 GB of entries).
const MaxConntrack = 1 << 24

// DefaultSweepInterval is how often the data plane sweeps expired
// connections out of the host's conntrack.
const DefaultSweepInterval = time.Second

// balancer is a network's service load balancer: its lb.Table on the
// host's conntrack and the services applied to it. It outlives a rebuild
// of its network (the same table, so the same connections, goes to the
// new switch) and goes when the network leaves the desired state.
type balancer struct {
	id      uint32 // the Table's host-local network id, never reused
	t       *lb.Table
	applied map[string]lb.Service // by name
}

// lbNow is the balancers' clock: nanoseconds since the data plane was
// made, plus one (lb wants > 0), monotonic. Every switch is given the same
// origin (vswitch.Config.BalancerEpoch), and the sweeper uses it too.
func (dp *Dataplane) lbNow() int64 { return int64(time.Since(dp.epoch)) + 1 }

// checkConntrack reports why cfg cannot make a Conntrack.
func checkConntrack(cfg lb.Config) error {
	t := cfg.Timeouts
	switch {
	case cfg.Max < 0 || cfg.Max > MaxConntrack:
		return fmt.Errorf("max %d: want 0 (default %d) to %d entries", cfg.Max, lb.DefaultMax, MaxConntrack)
	case cfg.AffinityMax < 0 || cfg.AffinityMax > MaxConntrack:
		return fmt.Errorf("affinity slots %d: want 0 to %d", cfg.AffinityMax, MaxConntrack)
	case cfg.SynSlots < 0 || cfg.SynSlots > MaxConntrack:
		return fmt.Errorf("SYN slots %d: want 0 to %d", cfg.SynSlots, MaxConntrack)
	case min(t.TCPEstablished, t.TCPSyn, t.TCPClosing, t.TCPClose, t.UDP, t.ICMP, t.SynRetry, t.Eject) < 0:
		return errors.New("negative timeout")
	}
	return nil
}

// conntrack returns the host's conntrack, making it (from cfg) and
// starting its sweeper the first time. dp.mu is held.
func (dp *Dataplane) conntrack(cfg lb.Config) (*lb.Conntrack, error) {
	if dp.ct != nil {
		return dp.ct, nil
	}
	if err := checkConntrack(cfg); err != nil {
		return nil, err
	}
	dp.changes++
	dp.ct = lb.NewConntrack(cfg)
	dp.ctMax = cfg.Max
	if dp.ctMax == 0 {
		dp.ctMax = lb.DefaultMax
	}
	dp.sweepStop, dp.sweepDone = make(chan struct{}), make(chan struct{})
	go dp.sweep(dp.ct, dp.sweepStop, dp.sweepDone)
	return dp.ct, nil
}

// sweep frees expired connections, and the switches' expired
// ingress-return entries, every sweep interval until stop is closed.
func (dp *Dataplane) sweep(ct *lb.Conntrack, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(dp.sweepEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			ct.Sweep(dp.lbNow())
			if sws := dp.switches.Load(); sws != nil {
				for _, sw := range *sws {
					sw.SweepIngressReturn()
				}
			}
		}
	}
}

// stopSweep stops the sweeper, if it runs. dp.mu is held.
func (dp *Dataplane) stopSweep() {
	if dp.sweepStop != nil {
		close(dp.sweepStop)
		<-dp.sweepDone
		dp.sweepStop = nil
	}
}

// applyServices makes w's balancer serve w.Services and gives it to n's
// switch (n is nil if the network could not be built). A network gets a
// balancer (and the host its conntrack) when it first has services.
func (dp *Dataplane) applyServices(w *NetworkConfig, n *network, ctCfg lb.Config, errs *[]error) {
	b := dp.lbs[w.Name]
	if b == nil && len(w.Services) == 0 {
		return
	}
	if b == nil {
		ct, err := dp.conntrack(ctCfg)
		if err != nil {
			*errs = append(*errs, &Error{Network: w.Name, Object: "conntrack", Err: err})
			return
		}
		dp.changes++
		dp.nextNetID++
		b = &balancer{id: dp.nextNetID, t: lb.NewTable(ct, dp.nextNetID), applied: map[string]lb.Service{}}
		dp.lbs[w.Name] = b
	}
	fail := func(name string, err error) {
		// lb's errors name the service too; the Error's object does.
		msg := strings.TrimPrefix(err.Error(), fmt.Sprintf("service %q: ", name))
		*errs = append(*errs, &Error{Network: w.Name, Object: "service " + name, Err: errors.New(msg)})
	}
	dp.swapServices(b, wantedServices(w, b.applied, fail), fail)
	if n != nil && n.lb != b.t {
		dp.changes++
		n.sw.SetBalancer(b.t)
		n.lb = b.t
	}
}

// wantedServices returns w's valid services by name, reporting the
// others. A service whose new version is refused keeps the version
// applied, if any: bad input changes nothing.
func wantedServices(w *NetworkConfig, applied map[string]lb.Service, fail func(string, error)) map[string]lb.Service {
	ips := map[netip.Addr]string{}
	macs := map[packet.MAC]string{}
	if w.Gateway.IsValid() {
		ips[w.Gateway], macs[w.GatewayMAC] = "the gateway's", "the gateway's"
	}
	if w.GatewayHost.IsValid() {
		ips[w.GatewayHost], macs[w.GatewayHostMAC] = "this host's gateway's", "this host's gateway's"
	}
	for _, p := range w.Ports {
		ips[p.IP], macs[p.MAC] = "port "+p.Name+"'s", "port "+p.Name+"'s"
	}
	for _, r := range w.Remotes {
		ips[r.IP], macs[r.MAC] = "remote "+r.MAC.String()+"'s", "remote "+r.MAC.String()+"'s"
	}
	want := make(map[string]lb.Service, len(w.Services))
	var refused []string
	for _, svc := range w.Services {
		if _, dup := want[svc.Name]; dup || slices.Contains(refused, svc.Name) {
			fail(svc.Name, errors.New("named twice in the desired state"))
			continue
		}
		if err := checkService(&svc, ips, macs); err != nil {
			fail(svc.Name, err)
			refused = append(refused, svc.Name)
			continue
		}
		want[svc.Name] = svc
	}
	for _, name := range refused {
		if old, ok := applied[name]; ok && checkService(&old, ips, macs) == nil {
			want[name] = old
		}
	}
	return want
}

// checkService validates svc and that its VIP and MAC are no other
// object's (ips and macs say whose they are), and records them.
func checkService(svc *lb.Service, ips map[netip.Addr]string, macs map[packet.MAC]string) error {
	if svc.Name == "" {
		return errors.New("no name")
	}
	if err := svc.Validate(); err != nil {
		return err
	}
	mac := svc.MAC
	if mac.IsZero() {
		mac = lb.VIPMAC(svc.VIP)
	}
	if mac.IsMulticast() {
		return fmt.Errorf("MAC %s is not a unicast address", mac)
	}
	if who, ok := ips[svc.VIP]; ok {
		return fmt.Errorf("VIP %s is also %s address", svc.VIP, who)
	}
	if who, ok := macs[mac]; ok {
		return fmt.Errorf("MAC %s is also %s", mac, who)
	}
	ips[svc.VIP], macs[mac] = "service "+svc.Name+"'s", "service "+svc.Name+"'s"
	return nil
}

// swapServices publishes want in b's table if it differs from what is
// applied: only the services that changed are compiled again.
func (dp *Dataplane) swapServices(b *balancer, want map[string]lb.Service, fail func(string, error)) {
	changed := len(want) != len(b.applied)
	for name, svc := range want {
		if old, ok := b.applied[name]; !ok || !sameService(&old, &svc) {
			changed = true
		}
	}
	if !changed {
		return
	}
	snap := b.t.Snapshot()
	for name, old := range b.applied {
		if svc, ok := want[name]; !ok || svc.VIP != old.VIP {
			snap = snap.Without(old.VIP)
		}
	}
	names := make([]string, 0, len(want))
	for name := range want {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		svc := want[name]
		if old, ok := b.applied[name]; ok && sameService(&old, &svc) {
			continue
		}
		next, err := snap.With(svc)
		if err != nil {
			fail(name, err)
			delete(want, name)
			if old, ok := b.applied[name]; ok && old.VIP == svc.VIP {
				want[name] = old // still in snap
			}
			continue
		}
		snap = next
	}
	dp.changes++
	b.t.Swap(snap)
	b.applied = want
}

// sameService reports whether a and b are the same configuration.
func sameService(a, b *lb.Service) bool {
	return a.Name == b.Name && a.VIP == b.VIP && a.MAC == b.MAC && a.Scheduler == b.Scheduler &&
		a.Affinity == b.Affinity && slices.Equal(a.Ports, b.Ports) && slices.Equal(a.Backends, b.Backends)
}

// removeBalancer drops the balancer of a network that left the desired
// state, with the connections to its services' backends (its network id
// is never reused, so entries left behind match nothing and age out).
// dp.mu is held.
func (dp *Dataplane) removeBalancer(name string) {
	b := dp.lbs[name]
	if b == nil {
		return
	}
	dp.changes++
	for _, svc := range b.applied {
		for _, be := range svc.Backends {
			b.t.Flush(be.IP)
		}
	}
	delete(dp.lbs, name)
}

// FlushBackend removes the connections of network's balancer to backend
// ip and returns how many. The control plane calls it when a backend
// that left a service's backend list (its TCP connections are kept while
// it drains) reaches the end of its stop grace period.
func (dp *Dataplane) FlushBackend(network string, ip netip.Addr) int {
	dp.mu.Lock()
	b := dp.lbs[network]
	dp.mu.Unlock()
	if b == nil {
		return 0
	}
	return b.t.Flush(ip)
}

// ServiceStats is the service load balancer's state on this host, for
// `vxmesh service inspect` and `vxmesh stats`.
type ServiceStats struct {
	// Networks maps every network that has (or had) services to its
	// balancer's counters.
	Networks map[string]NetworkServiceStats
	// ConntrackEntries is how many connections the host's conntrack
	// holds (live, or expired and not swept yet), ConntrackMax its size,
	// ConntrackEvictions how many live ones were evicted because it was
	// full. FragHeld is how many later fragments its balancers held
	// for their first fragment (not drops). FragEvictions is how many fragmented datagrams still
	// incomplete its fragment table forgot to make room for new ones.
	// All zero until a network has services.
	ConntrackEntries   int
	ConntrackMax       int
	ConntrackEvictions uint64
	FragEvictions      uint64
	FragHeld           uint64
}

// NetworkServiceStats is one network's balancer.
type NetworkServiceStats struct {
	// Services are the counters of every service, by VIP: new and active
	// connections, packets, bytes, retries, rejects, ejections, and the
	// same per backend.
	Services []lb.ServiceStats
	// Reasons counts the frames the balancer dropped or refused, by
	// lb.Reason label ("port", "no-conn", "no-backend", ...). The switch's
	// own counters (NetworkStats) have "lb-drop", "lb-reject", "lb-retry",
	// "vip-pass" and "vip-remote".
	Reasons map[string]uint64
}

// ServiceStats returns the balancers' counters and the conntrack's.
func (dp *Dataplane) ServiceStats() ServiceStats {
	dp.mu.Lock()
	ct, max := dp.ct, dp.ctMax
	tables := make(map[string]*lb.Table, len(dp.lbs))
	for name, b := range dp.lbs {
		tables[name] = b.t
	}
	dp.mu.Unlock()
	st := ServiceStats{Networks: make(map[string]NetworkServiceStats, len(tables)), ConntrackMax: max}
	now := dp.lbNow()
	for name, t := range tables {
		st.Networks[name] = NetworkServiceStats{Services: t.Stats(now), Reasons: t.Reasons()}
	}
	if ct != nil {
		st.ConntrackEntries, st.ConntrackEvictions = ct.Len(), ct.Evictions()
		st.FragEvictions, st.FragHeld = ct.FragEvictions(), ct.FragHeld()
	}
	return st
}

// PickedConn is a TCP connection whose backend network's balancer picked
// before it was dialled (OpenConn), as gateway.Picked: the routing mesh
// reaches a backend on this host on the published-port fast path, and
// tells the balancer what its frames would have (lb.Conn).
type PickedConn struct {
	dp *Dataplane
	c  lb.Conn
}

// OpenConn picks the backend of a new TCP connection from client to vip
// (a VIP and port of one of network's services) and makes it the
// balancer's connection (lb.Table.Open), at the balancers' clock. It
// reports false when the balancer would not forward the connection's
// SYN (or network has no balancer): nothing was counted.
func (dp *Dataplane) OpenConn(network string, client, vip netip.AddrPort) (*PickedConn, bool) {
	dp.mu.Lock()
	b := dp.lbs[network]
	dp.mu.Unlock()
	if b == nil {
		return nil, false
	}
	c, ok := b.t.Open(client, vip, dp.lbNow())
	if !ok {
		return nil, false
	}
	return &PickedConn{dp: dp, c: c}, true
}

// Backend is the connection's backend address and port now.
func (p *PickedConn) Backend() netip.AddrPort { return p.c.Backend }

// Connected records that the backend accepted the connection.
func (p *PickedConn) Connected() { p.c.Connected(p.dp.lbNow()) }

// Failed records that the backend refused the connection or did not
// answer; it reports whether the connection moved to another backend.
func (p *PickedConn) Failed() bool { return p.c.Failed(p.dp.lbNow()) }

// Closed records that the connection ended.
func (p *PickedConn) Closed() { p.c.Closed(p.dp.lbNow()) }
