package lb

import (
	"bytes"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/packet"
)

// Snapshot is an immutable set of services of one network, keyed by VIP.
// Build one with NewSnapshot (or With/Without from a previous one) and
// publish it with Table.Swap; the data path reads it without locking. A
// Snapshot swapped into a Table belongs to that Table.
type Snapshot struct {
	// vips is a two-level index on the VIP's last two bytes:
	// vips[v[2]].slot[v[3]]. A network's VIPs come from its subnet, so
	// up to a /16 every VIP has a slot of its own (a lookup reads one
	// pointer of each level); wider networks put a VIP whose slot is
	// taken in the node's overflow map. With and Without copy one node
	// (2 KiB) and this array (2 KiB), and Swap compares only those, so
	// publishing a change costs the same with 1 or 10,000 services.
	vips [256]*vipNode
}

// vipNode is a shared, immutable part of a Snapshot's VIP index.
type vipNode struct {
	slot [256]*service
	more map[[4]byte]*service // VIPs whose slot holds another VIP
}

// get returns the service on VIP v, or nil.
func (s *Snapshot) get(v [4]byte) *service {
	n := s.vips[v[2]]
	if n == nil {
		return nil
	}
	if c := n.slot[v[3]]; c != nil && c.vip == v {
		return c
	}
	if n.more != nil {
		return n.more[v]
	}
	return nil
}

// set adds c; its node must be s's own (from clone).
func (s *Snapshot) set(c *service) {
	n := s.node(c.vip)
	if o := n.slot[c.vip[3]]; o == nil || o.vip == c.vip {
		n.slot[c.vip[3]] = c
		return
	}
	if n.more == nil {
		n.more = make(map[[4]byte]*service)
	}
	n.more[c.vip] = c
}

// del removes the service on v; its node must be s's own (from clone).
// A VIP waiting in the overflow map for the freed slot takes it.
func (s *Snapshot) del(v [4]byte) {
	n := s.node(v)
	if c := n.slot[v[3]]; c == nil || c.vip != v {
		delete(n.more, v)
		return
	}
	n.slot[v[3]] = nil
	for k, c := range n.more {
		if k[3] == v[3] {
			n.slot[v[3]] = c
			delete(n.more, k)
			return
		}
	}
}

// node returns s's own node for v, making it if there is none.
func (s *Snapshot) node(v [4]byte) *vipNode {
	if s.vips[v[2]] == nil {
		s.vips[v[2]] = &vipNode{}
	}
	return s.vips[v[2]]
}

// each calls f for every service of s that other does not have at the
// same place (every service if other is nil): nodes and slots shared
// with other are skipped by comparing pointers.
func (s *Snapshot) each(other *Snapshot, f func(*service)) {
	for i, n := range s.vips {
		var o *vipNode
		if other != nil {
			if o = other.vips[i]; o == n {
				continue
			}
		}
		if n == nil {
			continue
		}
		for j, c := range n.slot {
			if c != nil && (o == nil || o.slot[j] != c) {
				f(c)
			}
		}
		for k, c := range n.more {
			if o == nil || o.more[k] != c {
				f(c)
			}
		}
	}
}

// inlineBackends is how many backends (and active indexes) a service
// keeps inside its own allocation, next to its hot fields; larger
// services allocate them apart.
const inlineBackends = 4

// scanBackends is the most backends a service finds by address with a
// linear scan (a client that is a backend, affinity); larger services
// build a map.
const scanBackends = 8

// service is a compiled Service: configuration plus pointers to the
// runtime state (counters, scheduler state) that survives swaps. The
// fields every packet reads (VIP, ports, state) are the first cache line,
// then what a new connection reads: the active indexes and backends of a
// small service (inline), then the cold configuration, so that a
// connection to a service whose state is cold in the CPU caches reads a
// few adjacent lines of one allocation (TestSmallServiceHotDataIsCompact).
type service struct {
	vip      [4]byte
	mac      [6]byte
	sched    Scheduler
	st       *svcState
	affinity int64  // ns
	ports    []Port // Target filled in
	backends []backend
	active   []int32           // indexes of Active backends, in backends order
	byIP     map[[4]byte]int32 // backend index by address, only past scanBackends backends

	inlineAct [inlineBackends]int32
	inlineBE  [inlineBackends]backend

	maglev []uint16 // Maglev lookup table (backend indexes), or nil
	cfg    Service
}

type backend struct {
	ip     [4]byte
	mac    [6]byte
	state  BackendState
	weight int32
	st     *beState
}

// svcState is a service's runtime state, kept across snapshots.
type svcState struct {
	rr       atomic.Uint64
	mu       sync.Mutex // guards the backends' wrr current weights
	newConns atomic.Uint64
	packets  atomic.Uint64
	bytes    atomic.Uint64
	retries  atomic.Uint64
	rejects  atomic.Uint64
}

// Backend runtime states beyond BackendState.
const removed = 3

// beState is a backend's runtime state, kept across snapshots. Its first
// cache line holds what scheduling reads and new connections write; the
// counters every packet writes have the second one to themselves, so
// that a stream on one core does not keep taking from the others the
// line their new connections read. A new service's backend states are
// one array, 64-byte aligned for the usual counts (Go size classes).
type beState struct {
	cfg          atomic.Uint32 // BackendState, or removed
	fails        atomic.Uint32 // consecutive failed connection attempts
	ejectedUntil atomic.Int64  // passive ejection, clock of Translate's now
	active       atomic.Int64
	newConns     atomic.Uint64
	retries      atomic.Uint64 // connection attempts moved away from it
	failures     atomic.Uint64
	ejections    atomic.Uint64
	cw           int64 // smooth wrr current weight, guarded by svcState.mu

	packets atomic.Uint64
	bytes   atomic.Uint64
	_       [48]byte
}

// index returns the index of the backend with address ip.
func (c *service) index(ip [4]byte) (int32, bool) {
	if c.byIP != nil {
		i, ok := c.byIP[ip]
		return i, ok
	}
	for i := range c.backends {
		if c.backends[i].ip == ip {
			return int32(i), true
		}
	}
	return none, false
}

// NewSnapshot validates and compiles services; VIPs must be distinct.
// The error names the first bad service.
func NewSnapshot(services []Service) (*Snapshot, error) {
	s := &Snapshot{}
	for i := range services {
		c, err := compile(&services[i])
		if err != nil {
			return nil, err
		}
		if o := s.get(c.vip); o != nil {
			return nil, fmt.Errorf("service %q: VIP %v already used by service %q", c.cfg.Name, c.cfg.VIP, o.cfg.Name)
		}
		s.set(c)
	}
	return s, nil
}

// With returns a copy of s in which svc replaces the service with the same
// VIP, or is added. Only svc is compiled (the others are shared), so the
// cost is two 2 KiB copies plus svc's own size, whatever the number of
// services.
func (s *Snapshot) With(svc Service) (*Snapshot, error) {
	c, err := compile(&svc)
	if err != nil {
		return nil, err
	}
	n := s.clone(c.vip)
	n.set(c)
	return n, nil
}

// Without returns a copy of s without the service on vip.
func (s *Snapshot) Without(vip netip.Addr) *Snapshot {
	n := s.clone(vip.As4())
	n.del(vip.As4())
	return n
}

// clone copies s, sharing every node but v's, which is copied.
func (s *Snapshot) clone(v [4]byte) *Snapshot {
	n := &Snapshot{vips: s.vips}
	nd := &vipNode{}
	if old := s.vips[v[2]]; old != nil {
		nd.slot = old.slot
		if len(old.more) > 0 {
			nd.more = maps.Clone(old.more)
		}
	}
	n.vips[v[2]] = nd
	return n
}

// Services returns the configuration of every service, sorted by VIP.
func (s *Snapshot) Services() []Service {
	var out []Service
	s.each(nil, func(c *service) { out = append(out, c.cfg) })
	slices.SortFunc(out, func(a, b Service) int { return a.VIP.Compare(b.VIP) })
	return out
}

// VIP reports whether ip is a VIP of s and the MAC to answer ARP with.
func (s *Snapshot) VIP(ip netip.Addr) (packet.MAC, bool) {
	if !ip.Is4() {
		return packet.MAC{}, false
	}
	c := s.get(ip.As4())
	if c == nil {
		return packet.MAC{}, false
	}
	return c.mac, true
}

func compile(in *Service) (*service, error) {
	if err := in.Validate(); err != nil {
		return nil, err
	}
	c := &service{cfg: *in, vip: in.VIP.As4(), mac: in.MAC, sched: in.Scheduler, affinity: int64(in.Affinity), st: &svcState{}}
	c.cfg.Ports = slices.Clone(in.Ports)
	c.cfg.Backends = slices.Clone(in.Backends)
	if c.mac == ([6]byte{}) {
		c.mac = VIPMAC(in.VIP)
	}
	for _, p := range in.Ports {
		if p.Target == 0 {
			p.Target = p.Port
		}
		c.ports = append(c.ports, p)
	}
	n := len(in.Backends)
	if n <= inlineBackends {
		c.backends, c.active = c.inlineBE[:n:n], c.inlineAct[:0:n]
	} else {
		c.backends, c.active = make([]backend, n), make([]int32, 0, n)
	}
	st := make([]beState, n)
	for i, b := range in.Backends {
		w := int32(b.Weight)
		if w == 0 {
			w = 1
		}
		c.backends[i] = backend{ip: b.IP.As4(), mac: b.MAC, weight: w, state: b.State}
	}
	// Identity order, not insertion order: every host builds the same
	// Maglev table and round-robin sequence from the same backend set.
	slices.SortFunc(c.backends, func(a, b backend) int { return bytes.Compare(a.ip[:], b.ip[:]) })
	if n > scanBackends {
		c.byIP = make(map[[4]byte]int32, n)
	}
	for i := range c.backends {
		b := &c.backends[i]
		b.st = &st[i]
		b.st.cfg.Store(uint32(b.state))
		if c.byIP != nil {
			c.byIP[b.ip] = int32(i)
		}
		if b.state == Active {
			c.active = append(c.active, int32(i))
		}
	}
	if c.sched == Maglev {
		c.maglev = buildMaglev(c.backends, c.active)
	}
	return c, nil
}

// port returns the backend port for a packet to proto/dport, or false if
// the service has ports and this is not one of them.
func (c *service) port(proto uint8, dport uint16) (uint16, bool) {
	if len(c.ports) == 0 {
		return dport, true
	}
	for i := range c.ports {
		if c.ports[i].Proto == proto && c.ports[i].Port == dport {
			return c.ports[i].Target, true
		}
	}
	return 0, false
}

// inherit moves the runtime state of old's matching services and
// backends into s before s is published, and marks backends that left as
// removed. Only buckets that differ are visited, so publishing a
// snapshot made by With costs the same whatever the number of services.
// Called by Table.Swap under its lock.
func (s *Snapshot) inherit(old *Snapshot) {
	s.each(old, func(c *service) {
		var o *service
		if old != nil {
			o = old.get(c.vip)
		}
		if o == c {
			return
		}
		if o != nil && o.cfg.Name == c.cfg.Name {
			c.st = o.st
		}
		for i := range c.backends {
			b := &c.backends[i]
			if o != nil {
				if j, ok := o.index(b.ip); ok {
					b.st = o.backends[j].st
				}
			}
			b.st.cfg.Store(uint32(b.state))
		}
	})
	if old != nil {
		old.each(s, func(o *service) { s.leaving(o) })
	}
}

// leaving marks removed the backends of old service o that s no longer
// has.
func (s *Snapshot) leaving(o *service) {
	c := s.get(o.vip)
	if c == o {
		return
	}
	for i := range o.backends {
		b := &o.backends[i]
		if c == nil || c.st != o.st {
			b.st.cfg.Store(removed)
		} else if _, ok := c.index(b.ip); !ok {
			b.st.cfg.Store(removed)
		}
	}
}
