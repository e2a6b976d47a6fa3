// Package dataplane owns the forwarding objects of one host: each
// network's switch (vswitch) and VXLAN segment (tunnel), the VTEP they
// share, and the loops that read the local ports' devices into the
// switches. The control plane describes what it wants as one Config and
// hands it to Reconfig, which computes the difference from what it has
// applied itself and applies it in an order that never leaves the
// forwarding state inconsistent: a tunnel remote exists only while the
// switch has its static entry, things are added after what they depend on
// and removed before it. Every failed step is returned, naming its object;
// the rest is applied, and the next Reconfig tries the failed steps again.
//
// The package knows nothing of the daemon, the cluster or the API.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/lb"

	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/tunnel"
	"github.com/vxmesh/vxmesh/vswitch"
)

// TunnelPortName is the name of each switch's port to the other hosts.
const TunnelPortName = "vxlan"

// Options configures a Dataplane.
type Options struct {
	// Tunnel configures the VTEP; the data plane owns it (and its
	// underlays) and closes it on Close.
	Tunnel tunnel.Config
	// Logger receives network and port events, never per-packet ones;
	// nil discards them.
	Logger *slog.Logger
	// SweepInterval is how often expired connections leave the host's
	// conntrack; 0 means DefaultSweepInterval.
	SweepInterval time.Duration
	// Egress is the host's egress, shared by every network's gateway
	// port; nil means no network has egress (gateways still answer ARP
	// and ping).
	Egress *gateway.Egress
	// BusyPoll, if positive, is how long a port's reader keeps polling
	// its device after a frame before it blocks (devices with
	// SetBusyPoll: a TAP; see internal/busypoll). The underlays' own
	// polling is set where they are opened (tunnel.UDPConfig.BusyPoll).
	BusyPoll time.Duration
}

// Dataplane is one host's data plane. Its methods are safe for concurrent
// use; Reconfig calls are serialised.
type Dataplane struct {
	log    *slog.Logger
	vtep   *tunnel.VTEP
	egress *gateway.Egress
	// batches lends read batches to the ports' loops.
	batches *batchPool
	// busyPoll is Options.BusyPoll, set on every port's device.
	busyPoll time.Duration
	// epoch is the origin of the balancers' clock (lbNow).
	epoch      time.Time
	sweepEvery time.Duration

	mu      sync.Mutex // serialises Reconfig and Close; guards the fields below
	closed  bool
	nets    map[string]*network
	ports   map[portKey]*port
	out     []tunnel.OutboundSA
	in      []tunnel.InboundSA
	changes int // mutating steps applied, for tests

	// The service load balancer: the host's conntrack (made when a
	// network first has services, with its sweeper) and each network's
	// balancer, by network name.
	ct        *lb.Conntrack
	ctMax     int
	lbs       map[string]*balancer
	nextNetID uint32
	// ctTimeouts are the conntrack timeouts of the Reconfig in progress:
	// a switch built now ages its ingress-return entries with them.
	ctTimeouts lb.Timeouts
	// switches are the networks' switches, for the sweeper (which must
	// not take mu: Close holds it while it waits for the sweeper).
	switches  atomic.Pointer[[]*vswitch.Switch]
	sweepStop chan struct{}
	sweepDone chan struct{}

	// Reconfig's fast path (incremental.go): the port lists applied
	// last, by network, whether they were clean, the ports on no switch,
	// by network and name, and, for tests, a switch to take the full
	// path always.
	lastPorts  map[string][]PortConfig
	lastClean  bool
	unattached map[string]map[string]bool
	noFastPath bool
}

// New returns a data plane with no networks. Call Run to start receiving.
func New(opts Options) *Dataplane {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sweep := opts.SweepInterval
	if sweep <= 0 {
		sweep = DefaultSweepInterval
	}
	return &Dataplane{
		log:        log,
		vtep:       tunnel.New(opts.Tunnel),
		egress:     opts.Egress,
		batches:    newBatchPool(),
		busyPoll:   opts.BusyPoll,
		epoch:      time.Now(),
		sweepEvery: sweep,
		nets:       map[string]*network{},
		ports:      map[portKey]*port{},
		lbs:        map[string]*balancer{},
	}
}

// Run receives from the underlay until ctx is done or Close is called.
func (dp *Dataplane) Run(ctx context.Context) error { return dp.vtep.Run(ctx) }

// Close takes everything down: it closes every port's device and the
// VTEP, and stops the conntrack sweeper.
func (dp *Dataplane) Close() error {
	dp.mu.Lock()
	if !dp.closed {
		dp.closed = true
		for _, p := range dp.ports {
			dp.removePort(p)
		}
		for _, n := range dp.nets {
			dp.removeNetwork(n)
		}
		dp.stopSweep()
	}
	dp.mu.Unlock()
	return dp.vtep.Close()
}

// Reconfig makes the data plane match cfg. It returns the failed steps
// joined (each an *Error naming its object), or nil; what did not fail
// is applied. Applying the Config that is already applied changes
// nothing.
func (dp *Dataplane) Reconfig(cfg Config) error {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if dp.closed {
		return &Error{Object: "data plane", Err: errors.New("closed")}
	}
	var errs []error
	dp.ctTimeouts = cfg.Conntrack.Timeouts
	defer dp.listSwitches()
	if windows, ok := dp.portWindows(cfg); ok {
		errs = dp.reconfigPorts(cfg, windows)
		for _, pw := range windows {
			dp.lastPorts[pw.w.Name] = slices.Clone(pw.w.Ports)
		}
		return errors.Join(errs...)
	}
	order, wantPorts := dp.index(cfg, &errs)
	clean := len(errs) == 0
	want := make(map[string]*NetworkConfig, len(order))
	for _, w := range order {
		want[w.Name] = w
	}

	// Removals first, the dependants before what they depend on: ports
	// that left, then networks that left or must be rebuilt.
	for k, p := range dp.ports {
		w, ok := wantPorts[k]
		dp.retire(p, w, ok)
	}
	for name, n := range dp.nets {
		if w := want[name]; w == nil || !n.sameShape(w) {
			for _, p := range dp.ports {
				if p.key.network == name {
					dp.detach(p)
				}
			}
			dp.removeNetwork(n)
		}
	}
	for name := range dp.lbs {
		if want[name] == nil {
			dp.removeBalancer(name)
		}
	}

	errs = dp.applySAs(cfg, errs)

	// Additions, in a stable order.
	for k, w := range wantPorts {
		if dp.ports[k] == nil {
			dp.addPort(k, w)
		}
	}
	for _, w := range order {
		n, err := dp.applyNetwork(w)
		dp.applyServices(w, n, cfg.Conntrack, &errs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// The ports attached now (all of them at a restart) reach the
		// switch's data path in one view.
		release := n.sw.HoldViews()
		for _, pc := range w.Ports {
			if p := dp.ports[portKey{w.Name, pc.Name}]; p != nil && p.ref.Load() == nil {
				if err := dp.attach(p, n); err != nil {
					errs = append(errs, &Error{Network: w.Name, Object: "port " + pc.Name, Err: err})
				}
			}
		}
		release()
		dp.applyRemotes(n, w, &errs)
		dp.applyGateway(n, w, &errs)
		dp.applyGatewayHost(n, w, &errs)
	}
	dp.setOverlay(order)
	dp.lastApplied(order, clean)
	return errors.Join(errs...)
}

// applySAs installs cfg's SAs, before any peer that needs them is added,
// and returns errs with what failed. dp.mu is held.
func (dp *Dataplane) applySAs(cfg Config, errs []error) []error {
	if !sameSAs(dp.out, dp.in, cfg.Outbound, cfg.Inbound) {
		dp.changes++
		// SetSAs installs what does not collide; the lists are recorded
		// as applied only without error, so a failure is retried.
		if err := dp.vtep.SetSAs(cfg.Outbound, cfg.Inbound); err != nil {
			errs = append(errs, &Error{Object: "SAs", Err: err})
		} else {
			dp.out, dp.in = cfg.Outbound, cfg.Inbound
		}
	}
	return errs
}

// listSwitches records the networks' switches for the sweeper. dp.mu is
// held.
func (dp *Dataplane) listSwitches() {
	sws := make([]*vswitch.Switch, 0, len(dp.nets))
	for _, n := range dp.nets {
		sws = append(sws, n.sw)
	}
	dp.switches.Store(&sws)
}

// retire ends what port p can no longer keep given its wanted entry w
// (ok: the port is still wanted): a port that is not wanted or has another
// device is removed; one whose address changed leaves its switch and takes
// w, to join again.
func (dp *Dataplane) retire(p *port, w PortConfig, ok bool) {
	switch {
	case !ok || w.Device != p.cfg.Device:
		dp.removePort(p)
	case w.MAC != p.cfg.MAC || w.IP != p.cfg.IP:
		dp.detach(p)
		p.cfg = w
	}
}

// index lists the networks of cfg and maps its ports by key, reporting
// duplicates (the first one counts) and ports without a device.
func (dp *Dataplane) index(cfg Config, errs *[]error) ([]*NetworkConfig, map[portKey]PortConfig) {
	var order []*NetworkConfig
	want := map[string]*NetworkConfig{}
	vnis := map[uint32]string{}
	n := 0
	for i := range cfg.Networks {
		n += len(cfg.Networks[i].Ports)
	}
	ports := make(map[portKey]PortConfig, n) // sized once, not grown port by port
	for i := range cfg.Networks {
		w := &cfg.Networks[i]
		if want[w.Name] != nil {
			*errs = append(*errs, &Error{Network: w.Name, Object: "network", Err: errors.New("named twice in the desired state")})
			continue
		}
		if other, ok := vnis[w.VNI]; ok {
			*errs = append(*errs, &Error{Network: w.Name, Object: "network", Err: fmt.Errorf("vni %d: also network %q's", w.VNI, other)})
			continue
		}
		want[w.Name], vnis[w.VNI] = w, w.Name
		order = append(order, w)
		for _, pc := range w.Ports {
			k := portKey{w.Name, pc.Name}
			if _, dup := ports[k]; dup {
				*errs = append(*errs, &Error{Network: w.Name, Object: "port " + pc.Name, Err: errors.New("named twice in the desired state")})
				continue
			}
			if pc.Device == nil {
				*errs = append(*errs, &Error{Network: w.Name, Object: "port " + pc.Name, Err: errors.New("no device")})
				continue
			}
			ports[k] = pc
		}
	}
	return order, ports
}

// NetworkStats returns the counters of a network's switch and tunnel.
func (dp *Dataplane) NetworkStats(name string) (vswitch.Stats, tunnel.SegmentStats, bool) {
	dp.mu.Lock()
	n := dp.nets[name]
	dp.mu.Unlock()
	if n == nil {
		return vswitch.Stats{}, tunnel.SegmentStats{}, false
	}
	return n.sw.Stats(), n.tn.Stats(), true
}

// FDB returns the forwarding entries of a network's switch and tunnel.
func (dp *Dataplane) FDB(name string) ([]vswitch.FDBEntry, []tunnel.FDBEntry, bool) {
	dp.mu.Lock()
	n := dp.nets[name]
	dp.mu.Unlock()
	if n == nil {
		return nil, nil, false
	}
	return n.sw.FDB(), n.tn.FDB(), true
}

// TunnelStats returns the VTEP's counters.
func (dp *Dataplane) TunnelStats() tunnel.Stats { return dp.vtep.Stats() }

// SetKernelTunnel switches the VTEP's kernel path (tunnel.Config.Super)
// on or off at run time (tunnel.VTEP.SetSuperEnabled); it reports whether
// there is one.
func (dp *Dataplane) SetKernelTunnel(on bool) bool { return dp.vtep.SetSuperEnabled(on) }

// KernelTunnel reports whether the VTEP's kernel path is in use.
func (dp *Dataplane) KernelTunnel() bool { return dp.vtep.SuperEnabled() }

// PortState describes a port: "up", or "down: " and why (its device
// failed, or it could not join its switch); "" for a port the data plane
// does not have.
func (dp *Dataplane) PortState(network, name string) string {
	dp.mu.Lock()
	p := dp.ports[portKey{network, name}]
	dp.mu.Unlock()
	if p == nil {
		return ""
	}
	return p.stateString()
}

// StartCapture starts c on the port named port of network (TunnelPortName
// for the network's tunnel port, whose frames are the switch's: an
// encrypted network's in the clear) and returns the function that stops
// it. A capture follows the port it started on: if the port leaves its
// switch (the network is rebuilt, the endpoint removed), it sees no more
// frames.
func (dp *Dataplane) StartCapture(network, port string, c *vswitch.Capture) (stop func(), err error) {
	dp.mu.Lock()
	var ref *vswitch.Port
	if n := dp.nets[network]; n == nil {
		err = fmt.Errorf("capture: network %q is not on this host", network)
	} else if port == TunnelPortName {
		ref = n.tport
	} else if p := dp.ports[portKey{network, port}]; p != nil {
		ref = p.ref.Load()
	}
	dp.mu.Unlock()
	switch {
	case err != nil:
		return nil, err
	case ref == nil:
		return nil, fmt.Errorf("capture: port %q of network %q is not on its switch", port, network)
	}
	if err := ref.StartCapture(c); err != nil {
		return nil, err
	}
	return func() { ref.StopCapture(c) }, nil
}
