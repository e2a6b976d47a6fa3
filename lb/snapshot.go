package lb

import (
	"bytes"
	"fmt"
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
	// vips is split in buckets so that With and Without copy one small
	// map, not all of them: publishing a change costs about the same
	// with 10 or 10,000 services.
	vips [vipBuckets]*bucket
}

// bucket is a shared, immutable part of a Snapshot's VIP map.
type bucket struct {
	m map[[4]byte]*service
}

const vipBuckets = 256

func vipBucket(v [4]byte) int { return int(v[2]*7 ^ v[3]) }

// get returns the service on VIP v, or nil.
func (s *Snapshot) get(v [4]byte) *service {
	if b := s.vips[vipBucket(v)]; b != nil {
		return b.m[v]
	}
	return nil
}

// set adds c; its bucket must be s's own (from clone, or new).
func (s *Snapshot) set(c *service) {
	b := vipBucket(c.vip)
	if s.vips[b] == nil {
		s.vips[b] = &bucket{m: make(map[[4]byte]*service)}
	}
	s.vips[b].m[c.vip] = c
}

// each calls f for every service in the buckets where s differs from
// other (every bucket if other is nil).
func (s *Snapshot) each(other *Snapshot, f func(*service)) {
	for i, b := range s.vips {
		if b == nil || (other != nil && other.vips[i] == b) {
			continue
		}
		for _, c := range b.m {
			f(c)
		}
	}
}

// service is a compiled Service: configuration plus pointers to the
// runtime state (counters, scheduler state) that survives swaps.
type service struct {
	cfg      Service
	vip      [4]byte
	mac      [6]byte
	ports    []Port // Target filled in
	affinity int64  // ns
	backends []backend
	byIP     map[[4]byte]int32
	active   []int32  // indexes of Active backends, in backends order
	maglev   []uint16 // Maglev lookup table (backend indexes), or nil
	st       *svcState
}

type backend struct {
	ip     [4]byte
	mac    [6]byte
	weight int64
	state  BackendState
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

// beState is a backend's runtime state, kept across snapshots.
type beState struct {
	cfg          atomic.Uint32 // BackendState, or removed
	ejectedUntil atomic.Int64  // passive ejection, clock of Translate's now
	fails        atomic.Uint32 // consecutive failed connection attempts
	active       atomic.Int64
	newConns     atomic.Uint64
	packets      atomic.Uint64
	bytes        atomic.Uint64
	retries      atomic.Uint64 // connection attempts moved away from it
	failures     atomic.Uint64
	ejections    atomic.Uint64
	cw           int64 // smooth wrr current weight, guarded by svcState.mu
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
// cost is one map copy plus svc's own size.
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
	delete(n.vips[vipBucket(vip.As4())].m, vip.As4())
	return n
}

// clone copies s, sharing every bucket but v's, which is copied.
func (s *Snapshot) clone(v [4]byte) *Snapshot {
	n := &Snapshot{vips: s.vips}
	b := vipBucket(v)
	n.vips[b] = &bucket{m: make(map[[4]byte]*service)}
	if old := s.vips[b]; old != nil {
		for k, c := range old.m {
			n.vips[b].m[k] = c
		}
	}
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
	c := &service{cfg: *in, vip: in.VIP.As4(), mac: in.MAC, affinity: int64(in.Affinity), st: &svcState{}}
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
	c.backends = make([]backend, len(in.Backends))
	for i, b := range in.Backends {
		w := int64(b.Weight)
		if w == 0 {
			w = 1
		}
		c.backends[i] = backend{ip: b.IP.As4(), mac: b.MAC, weight: w, state: b.State, st: &beState{}}
		c.backends[i].st.cfg.Store(uint32(b.State))
	}
	// Identity order, not insertion order: every host builds the same
	// Maglev table and round-robin sequence from the same backend set.
	slices.SortFunc(c.backends, func(a, b backend) int { return bytes.Compare(a.ip[:], b.ip[:]) })
	c.byIP = make(map[[4]byte]int32, len(c.backends))
	for i, b := range c.backends {
		c.byIP[b.ip] = int32(i)
		if b.state == Active {
			c.active = append(c.active, int32(i))
		}
	}
	if c.cfg.Scheduler == Maglev {
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
				if j, ok := o.byIP[b.ip]; ok {
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
		} else if _, ok := c.byIP[b.ip]; !ok {
			b.st.cfg.Store(removed)
		}
	}
}
