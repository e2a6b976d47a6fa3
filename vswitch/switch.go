// Package vswitch is the per-network virtual switch: it forwards Ethernet
// frames between ports (container TAP devices, the tunnel) with MAC learning
// and aging, static entries for known endpoints, flooding confined to the
// switch, ARP suppression, port security, the service load balancer's
// stage (SetBalancer: VIP translation at container and gateway ports) and
// the routing mesh's reply steering (AddRemoteGateway, SetGatewayHost:
// the ingress-return table). The data path (Port.Input)
// forwards whole batches without allocating and reads only immutable
// snapshots of the control-plane state, swapped with atomic.Pointer.
package vswitch

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/internal/aging"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

// Sink is what a port sends its frames to (a netdev.Device, a tunnel
// segment). The switch hands it a packet.Frames: frame i is
// f.Buf(i)[f.Offset():], its offload metadata the slot
// f.Buf(i)[0:packet.OffloadLen], and each frame says whether the sink owns
// its buffer (a frame forwarded to this port only, or an ARP reply) or
// shares it with the other ports it is flooded to. A sink changes a frame
// only through f.Owned; a shared frame's bytes and slot stay byte-equal
// (packet.Frames has the whole rule). The switch passes the metadata
// through untouched, so a TCP super-segment read from one TAP device
// reaches another as it is; a sink that cannot send it as such (the
// tunnel) segments it. WriteFrames returns how many frames it took (sent,
// or deliberately left with nowhere to go, like a flood with no other
// host); the others count as "tx-error".
type Sink interface {
	WriteFrames(f packet.Frames) (int, error)
}

// Config configures a Switch.
type Config struct {
	// Name names the switch (usually the network name) in errors.
	Name string
	// AgingTime is how long a learned entry lives without traffic from its
	// MAC; 0 means 300s.
	AgingTime time.Duration
	// GatewayIP and GatewayMAC, if set, are answered by ARP suppression;
	// other frames to GatewayMAC go to the gateway port (AddGateway), or
	// are dropped as "no-route" while there is none.
	GatewayIP  netip.Addr
	GatewayMAC packet.MAC
	// MaxLearned bounds the learned entries (default 8192); sources beyond
	// it are forwarded but not learned, and counted in Stats.LearnLimited.
	MaxLearned int
	// Now is the clock used for aging and storm control, read once per
	// batch; nil means time.Now. For tests.
	Now func() time.Time
	// MTU, if set, is the network MTU (the largest IP packet): a frame
	// from any port longer than MTU plus the Ethernet header, or a
	// super-segment whose segments would be, is dropped ("mtu").
	MTU int
	// StormLimit is how many flooded frames (broadcast, multicast, unknown
	// unicast) per second each port with port security may send, with a
	// burst of as many at once; more are dropped ("storm"). 0 means
	// DefaultStormLimit, a negative value means no limit.
	StormLimit int
	// BalancerEpoch is the origin of the balancer's clock (see
	// SetBalancer): it is given nanoseconds since BalancerEpoch, plus one,
	// from the clock reading each batch takes. Switches sharing an
	// lb.Conntrack, and whoever sweeps it, must use the same origin; zero
	// means the switch's creation time.
	BalancerEpoch time.Time
	// Subnet is the network's subnet: the ingress-return table (see
	// AddRemoteGateway) keeps flows only for clients outside it (or
	// from the gateway address).
	Subnet netip.Prefix
	// IngressReturnMax bounds the ingress-return table, in flows; 0
	// means DefaultIngressReturnMax. It is allocated with the first
	// AddRemoteGateway.
	IngressReturnMax int
	// IngressReturnTimeouts are its entries' idle timeouts, the
	// conntrack's (TCP by state, UDP); zero fields take
	// lb.DefaultTimeouts.
	IngressReturnTimeouts lb.Timeouts
}

// DefaultStormLimit is the storm limit of a Config that sets none, in
// flooded frames per second and port.
const DefaultStormLimit = 1000

// Switch is one virtual switch. Its methods are safe for concurrent use.
type Switch struct {
	name       string
	aging      int64 // nanoseconds
	maxLearned int
	gwIP       netip.Addr
	gwMAC      packet.MAC
	now        func() time.Time
	epoch      time.Time
	lbEpoch    time.Time
	maxFrame   int   // largest frame from a port; 0: no limit
	stormGap   int64 // storm control: nanoseconds per token; 0: no limit
	subnet     netip.Prefix
	meshMax    int
	meshTO     lb.Timeouts

	view    atomic.Pointer[view]
	learned *aging.Table[*Port] // learned MACs
	learnMu sync.Mutex          // serialises commitLearned with RemovePort's pruning
	closed  atomic.Bool
	lb      atomic.Pointer[balancer]  // nil: no services (SetBalancer)
	mesh    atomic.Pointer[meshTable] // the ingress-return table; nil before AddRemoteGateway

	mu      sync.Mutex // control plane state below
	ports   map[string]*Port
	statics map[packet.MAC]staticEntry
	// byIP indexes the statics with an address by it (addresses are
	// unique among them, checkEntry): an AddPort checks its address
	// with one look-up, not a walk of every entry. Kept by putStatic and
	// dropStatic.
	byIP    map[netip.Addr]packet.MAC
	idUsed  []bool
	hostIP  netip.Addr // this host's gateway identity (SetGatewayHost)
	hostMAC packet.MAC
	// held counts HoldViews not yet released: while positive, changes
	// mark the view stale instead of publishing it.
	held  int
	stale bool
	// added are the ports AddPort attached since the view was last
	// published, and full is set when anything else changed since: a
	// view with only ports added is derived from the last one
	// (publishAdded), not built from every port.
	added []*Port
	full  bool
	// derivedViews counts the views derived, for tests.
	derivedViews int

	// queues are the free destination queues input ports borrow
	// (getQueues); queuesMade counts the ones made, for tests.
	queues     chan *destQueues
	queuesMade atomic.Uint64

	c switchCounters
}

// view is the immutable forwarding state the data path reads.
type view struct {
	ports []*Port                   // flooding targets, by id
	fdb   map[packet.MAC]*Port      // local and static entries
	arp   map[netip.Addr]packet.MAC // ARP suppression table
	// fdbAdd and arpAdd are the entries of the ports added since fdb and
	// arp were made (withAdded), which no entry of fdb and arp overrides
	// (derivable): a port added to a switch of n ports copies these
	// small maps, not fdb and arp, until they reach maxOverlay(n) and are
	// merged. Look-ups go through port and arpMAC.
	fdbAdd map[packet.MAC]*Port
	arpAdd map[netip.Addr]packet.MAC
	// hostMAC is this host's gateway-host MAC (SetGatewayHost) while the
	// switch has a gateway port, else zero; gwHosts are the other hosts'
	// (AddRemoteGateway).
	hostMAC packet.MAC
	gwHosts map[packet.MAC]struct{}
}

// Port is a port attached to a switch, returned by AddPort: what frames
// come in by (Input) and what the switch sends frames to (its Sink).
type Port struct {
	sw       *Switch
	sink     Sink
	name     string
	mac      packet.MAC
	ip       netip.Addr
	ll       netip.Addr // the IPv6 link-local address derived from mac
	llGroup  packet.MAC // the Ethernet address of ll's solicited-node group
	security bool
	storm    bool // flooding is subject to the storm limit
	gateway  bool // the gateway port (AddGateway)
	id       int  // small, unique among attached ports; indexes scratch queues
	removed  atomic.Bool
	capture  atomic.Pointer[Capture] // nil unless a capture runs (StartCapture)

	c  portCounters
	sc scratch // used only by the goroutine calling Input
}

// PortConfig describes a port.
type PortConfig struct {
	// Name identifies the port in FDB and Stats; unique per switch.
	Name string
	// MAC, if set, gets a static "local" FDB entry.
	MAC packet.MAC
	// IP, if set (IPv4), gets an ARP suppression entry for MAC.
	IP netip.Addr
	// Security allows only frames from MAC, IPv4/ARP from IP and IPv6
	// under the ND guard (see checkIPv6), and subjects the port's flooded
	// frames to the switch's storm limit.
	Security bool
}

// New returns a switch with no ports.
func New(cfg Config) *Switch {
	s := &Switch{
		name:       cfg.Name,
		aging:      int64(cfg.AgingTime),
		maxLearned: cfg.MaxLearned,
		gwIP:       cfg.GatewayIP,
		gwMAC:      cfg.GatewayMAC,
		now:        cfg.Now,
		subnet:     cfg.Subnet,
		meshMax:    cfg.IngressReturnMax,
		meshTO:     cfg.IngressReturnTimeouts,
		ports:      map[string]*Port{},
		statics:    map[packet.MAC]staticEntry{},
		byIP:       map[netip.Addr]packet.MAC{},
		queues:     make(chan *destQueues, freeQueues),
	}
	if s.aging <= 0 {
		s.aging = int64(300 * time.Second)
	}
	if s.maxLearned <= 0 {
		s.maxLearned = 8192
	}
	if s.now == nil {
		s.now = time.Now
	}
	if cfg.MTU > 0 {
		s.maxFrame = cfg.MTU + packet.EthernetHeaderLen
	}
	switch limit := cfg.StormLimit; {
	case limit == 0:
		s.stormGap = int64(time.Second) / DefaultStormLimit
	case limit > 0:
		s.stormGap = max(1, int64(time.Second)/int64(limit))
	}
	s.epoch = s.now()
	s.lbEpoch = cfg.BalancerEpoch
	if s.lbEpoch.IsZero() {
		s.lbEpoch = s.epoch
	}
	s.learned = aging.New[*Port](s.aging, s.maxLearned)
	s.publish()
	return s
}

// clock returns the switch time in nanoseconds since New.
func (s *Switch) clock() int64 { return int64(s.now().Sub(s.epoch)) }

func (s *Switch) errorf(format string, args ...any) error {
	return fmt.Errorf("switch %q: "+format, append([]any{s.name}, args...)...)
}

// AddPort attaches p. A port with a MAC gets a static "local" FDB entry and,
// with an IP, an ARP suppression entry. Names, MACs and IPs must be unique.
func (s *Switch) AddPort(p Sink, cfg PortConfig) (*Port, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed.Load():
		return nil, s.errorf("port %q: switch closed", cfg.Name)
	case p == nil:
		return nil, s.errorf("port %q: no device", cfg.Name)
	case cfg.Name == "":
		return nil, s.errorf("port needs a name")
	case s.ports[cfg.Name] != nil:
		return nil, s.errorf("port %q: name in use", cfg.Name)
	case cfg.Security && cfg.MAC.IsZero():
		return nil, s.errorf("port %q: port security needs a MAC", cfg.Name)
	case cfg.IP.IsValid() && cfg.MAC.IsZero():
		return nil, s.errorf("port %q: an IP needs a MAC", cfg.Name)
	}
	if !cfg.MAC.IsZero() {
		if err := s.checkEntry(cfg.MAC, cfg.IP); err != nil {
			return nil, s.errorf("port %q: %w", cfg.Name, err)
		}
	}
	r := &Port{sw: s, sink: p, name: cfg.Name, mac: cfg.MAC, ip: cfg.IP, security: cfg.Security, id: s.allocID()}
	r.setLinkLocal(cfg.MAC)
	r.storm = cfg.Security && s.stormGap > 0
	s.ports[r.name] = r
	if !cfg.MAC.IsZero() {
		s.putStatic(cfg.MAC, staticEntry{ip: cfg.IP, port: r, kind: KindLocal})
	}
	s.added = append(s.added, r)
	s.flush()
	return r, nil
}

// checkEntry reports why mac/ip cannot become a new entry. s.mu is held.
func (s *Switch) checkEntry(mac packet.MAC, ip netip.Addr) error {
	if mac.IsMulticast() || mac.IsZero() {
		return fmt.Errorf("MAC %s is not a unicast address", mac)
	}
	if mac == s.gwMAC {
		return fmt.Errorf("MAC %s is the gateway's", mac)
	}
	if mac == s.hostMAC {
		return fmt.Errorf("MAC %s is this host's gateway's", mac)
	}
	if e, ok := s.statics[mac]; ok {
		return fmt.Errorf("MAC %s already on port %q", mac, e.port.name)
	}
	if !ip.IsValid() {
		return nil
	}
	if !ip.Is4() {
		return fmt.Errorf("IP %s is not IPv4", ip)
	}
	if ip == s.gwIP {
		return fmt.Errorf("IP %s is the gateway's", ip)
	}
	if ip == s.hostIP {
		return fmt.Errorf("IP %s is this host's gateway's", ip)
	}
	if m, ok := s.byIP[ip]; ok {
		return fmt.Errorf("IP %s already used by %s on port %q", ip, m, s.statics[m].port.name)
	}
	return nil
}

// putStatic sets the static entry of mac. s.mu is held.
func (s *Switch) putStatic(mac packet.MAC, e staticEntry) {
	s.dropStatic(mac)
	s.statics[mac] = e
	if e.ip.IsValid() {
		s.byIP[e.ip] = mac
	}
}

// dropStatic removes the static entry of mac, if any. s.mu is held.
func (s *Switch) dropStatic(mac packet.MAC) {
	e, ok := s.statics[mac]
	if !ok {
		return
	}
	if e.ip.IsValid() && s.byIP[e.ip] == mac {
		delete(s.byIP, e.ip)
	}
	delete(s.statics, mac)
}

func (s *Switch) allocID() int {
	for i, used := range s.idUsed {
		if !used {
			s.idUsed[i] = true
			return i
		}
	}
	s.idUsed = append(s.idUsed, true)
	return len(s.idUsed) - 1
}

// RemovePort detaches r and removes its static and learned entries. An
// Input already running on another port may still write to r once.
func (s *Switch) RemovePort(r *Port) {
	s.mu.Lock()
	if r == nil || r.sw != s || r.removed.Load() {
		s.mu.Unlock()
		return
	}
	r.removed.Store(true)
	delete(s.ports, r.name)
	for mac, e := range s.statics {
		if e.port == r {
			s.dropStatic(mac)
		}
	}
	s.idUsed[r.id] = false
	s.publish()
	s.mu.Unlock()
	s.pruneLearned(s.clock())
}

// publish installs a new view after a change other than a port added.
// s.mu is held.
func (s *Switch) publish() {
	s.full = true
	s.flush()
}

// flush installs the view of the changes made (unless a HoldViews defers
// it): derived from the last one when ports were only added, else built
// whole. s.mu is held.
func (s *Switch) flush() {
	if s.held > 0 {
		s.stale = true
		return
	}
	v := s.view.Load()
	if s.full || v == nil || !s.derivable(v) {
		v = s.buildView()
	} else {
		v = s.withAdded(v)
		s.derivedViews++
	}
	s.added, s.full = nil, false
	s.view.Store(v)
}

// derivable reports whether the view of s is last with s.added added:
// no added port takes a MAC or address that the gateway's or the host's
// entries override in a view built whole. s.mu is held.
func (s *Switch) derivable(last *view) bool {
	for _, r := range s.added {
		if r.removed.Load() || r.mac == s.gwMAC || r.mac == s.hostMAC || r.mac == last.hostMAC ||
			(r.ip.IsValid() && (r.ip == s.gwIP || r.ip == s.hostIP)) {
			return false
		}
	}
	return true
}

// port returns the local or static entry of mac, or nil.
func (v *view) port(mac packet.MAC) *Port {
	if len(v.fdbAdd) > 0 {
		if p := v.fdbAdd[mac]; p != nil {
			return p
		}
	}
	return v.fdb[mac]
}

// arpMAC returns the ARP suppression entry of ip.
func (v *view) arpMAC(ip netip.Addr) (packet.MAC, bool) {
	if len(v.arpAdd) > 0 {
		if mac, ok := v.arpAdd[ip]; ok {
			return mac, true
		}
	}
	mac, ok := v.arp[ip]
	return mac, ok
}

// maxOverlay is how many entries the overlays of a view over n entries
// hold at most before they are merged: about the square root, so that an
// added port copies O(sqrt n) entries, and a merge (O(n)) comes once per
// O(sqrt n) ports.
func maxOverlay(n int) int {
	m := 8
	for m*m < n {
		m *= 2
	}
	return m
}

// withAdded derives the next view from last and s.added: the ports put in
// at their place by id, their entries in copies of last's overlays, or,
// once those are large, in copies of the maps with the overlays merged (a
// copy of a map whole is far cheaper than a build entry by entry). s.mu
// is held.
func (s *Switch) withAdded(last *view) *view {
	v := &view{fdb: last.fdb, arp: last.arp, hostMAC: last.hostMAC, gwHosts: last.gwHosts}
	if len(last.fdbAdd)+len(s.added) > maxOverlay(len(last.fdb)) {
		v.fdb, v.arp = maps.Clone(last.fdb), maps.Clone(last.arp)
		maps.Copy(v.fdb, last.fdbAdd)
		maps.Copy(v.arp, last.arpAdd)
		v.fdbAdd, v.arpAdd = map[packet.MAC]*Port{}, map[netip.Addr]packet.MAC{}
	} else {
		v.fdbAdd, v.arpAdd = maps.Clone(last.fdbAdd), maps.Clone(last.arpAdd)
		if v.fdbAdd == nil {
			v.fdbAdd, v.arpAdd = map[packet.MAC]*Port{}, map[netip.Addr]packet.MAC{}
		}
	}
	v.ports = make([]*Port, 0, len(last.ports)+len(s.added))
	v.ports = append(v.ports, last.ports...)
	for _, r := range s.added {
		i, _ := slices.BinarySearchFunc(v.ports, r.id, func(p *Port, id int) int { return cmp.Compare(p.id, id) })
		v.ports = slices.Insert(v.ports, i, r)
		if !r.mac.IsZero() {
			v.fdbAdd[r.mac] = r
			if r.ip.IsValid() {
				v.arpAdd[r.ip] = r.mac
			}
		}
	}
	return v
}

// buildView builds the view from every port and entry. s.mu is held.
func (s *Switch) buildView() *view {
	v := &view{
		fdb: make(map[packet.MAC]*Port, len(s.statics)),
		arp: make(map[netip.Addr]packet.MAC, len(s.statics)+1),
	}
	for _, r := range s.ports {
		v.ports = append(v.ports, r)
	}
	sort.Slice(v.ports, func(i, j int) bool { return v.ports[i].id < v.ports[j].id })
	for mac, e := range s.statics {
		v.fdb[mac] = e.port
		if e.ip.IsValid() {
			v.arp[e.ip] = mac
		}
		if e.gwHost {
			if v.gwHosts == nil {
				v.gwHosts = map[packet.MAC]struct{}{}
			}
			v.gwHosts[mac] = struct{}{}
		}
	}
	if s.gwIP.IsValid() && !s.gwMAC.IsZero() {
		v.arp[s.gwIP] = s.gwMAC
	}
	if gw := v.fdb[s.gwMAC]; gw != nil && gw.gateway && !s.hostMAC.IsZero() {
		v.hostMAC = s.hostMAC
		v.fdb[s.hostMAC] = gw
		v.arp[s.hostIP] = s.hostMAC
	}
	return v
}

// HoldViews defers publishing the forwarding view: the control-plane
// changes made until release (adding a thousand ports at a restart) are
// published once, by release, instead of once each, which costs a copy
// of the whole table per change. Until then the data path forwards with
// the view from before the hold. Holds nest; release is idempotent.
func (s *Switch) HoldViews() (release func()) {
	s.mu.Lock()
	s.held++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.held--; s.held == 0 && s.stale {
				s.stale = false
				s.flush()
			}
		})
	}
}

// Close stops forwarding: later Input calls drop their frames as
// "port-down" and AddPort fails.
func (s *Switch) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed.Store(true)
}

// Name returns the port name.
func (r *Port) Name() string { return r.name }
