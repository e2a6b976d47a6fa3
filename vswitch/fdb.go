package vswitch

import (
	"bytes"
	"net/netip"
	"sort"
	"time"

	"github.com/vxmesh/vxmesh/internal/aging"
	"github.com/vxmesh/vxmesh/packet"
)

// FDB entry kinds.
const (
	KindLocal   = "local"   // a port's own MAC
	KindStatic  = "static"  // installed with AddStatic
	KindLearned = "learned" // learned from traffic, subject to aging
)

// FDBEntry is one forwarding entry as reported by FDB.
type FDBEntry struct {
	MAC  packet.MAC
	IP   netip.Addr // invalid when not known
	Port string
	Kind string
	Age  time.Duration // time since last seen; 0 for local and static
}

type staticEntry struct {
	ip     netip.Addr
	port   *Port
	kind   string
	gwHost bool // another host's gateway identity (AddRemoteGateway)
}

// live reports whether learned entry e may be used for forwarding at
// time now.
func (s *Switch) live(e *aging.Entry[*Port], now int64) bool {
	return s.learned.Live(e, now) && !e.Value.removed.Load()
}

// lookup returns the port for unicast dst, or nil if unknown.
func (s *Switch) lookup(v *view, dst packet.MAC, now int64) *Port {
	if p := v.port(dst); p != nil {
		return p
	}
	if e := s.learned.Lookup(dst); e != nil && s.live(e, now) {
		return e.Value
	}
	return nil
}

// learn records that src, which has no local or static entry (those do
// not move), was seen on r. A MAC already learned on r only has its
// timestamp refreshed, lock-free; new and moved MACs are queued in r's
// scratch and installed once per batch by commitLearned.
func (r *Port) learn(src packet.MAC, now int64) {
	if e := r.sw.learned.Lookup(src); e != nil && e.Value == r {
		e.Touch(now)
		return
	}
	for _, m := range r.sc.learn {
		if m == src {
			return
		}
	}
	r.sc.learn = append(r.sc.learn, src)
}

// commitLearned installs the MACs queued by learn, each in O(1).
func (s *Switch) commitLearned(r *Port, now int64) {
	s.learnMu.Lock()
	defer s.learnMu.Unlock()
	if r.removed.Load() {
		return // RemovePort already pruned; do not resurrect
	}
	var limited uint64
	for _, mac := range r.sc.learn {
		if !s.learned.Learn(mac, r, now) {
			limited++
		}
	}
	if limited > 0 {
		s.c.learnLimited.Add(limited)
	}
}

// pruneLearned drops expired entries and entries of removed ports.
func (s *Switch) pruneLearned(now int64) {
	s.learnMu.Lock()
	defer s.learnMu.Unlock()
	s.learned.Filter(func(e *aging.Entry[*Port]) bool { return s.live(e, now) })
}

// forgetLearned drops what was learned for mac, which now has a static
// entry or just lost one: hidden under the static entry, it would come
// back into use when that goes (an endpoint's first frames can arrive
// from its host before its record does, and be learned behind the tunnel
// port). Called after publish, so frames screened from then on do not
// learn mac; at RemoveStatic it also drops what a batch screened before
// AddStatic's publish committed after it. s.mu is held.
func (s *Switch) forgetLearned(mac packet.MAC) {
	if s.learned.Lookup(mac) == nil {
		return
	}
	s.learnMu.Lock()
	defer s.learnMu.Unlock()
	s.learned.Filter(func(e *aging.Entry[*Port]) bool { return e.MAC != mac })
}

// AddStatic installs (or replaces) a static entry sending mac to r, with an
// ARP suppression entry if ip is valid. It is how the control plane
// announces endpoints behind a tunnel port.
func (s *Switch) AddStatic(mac packet.MAC, ip netip.Addr, r *Port) error {
	return s.addStatic(mac, ip, r, false)
}

// AddRemoteGateway is AddStatic for another host's gateway identity on
// the network (its gateway.Config.HostAddr and HostMAC) behind r, the
// tunnel port. Frames from r with source mac are the other host's
// gateway's routing-mesh flows (package doc of gateway: a published
// port's connection dialled into a service VIP and balanced to a backend
// here): for those from an address outside the network's subnet (the
// outside client's own, kept), or from the gateway address, to a local
// port, the switch remembers per flow that its replies go back to mac
// (the ingress-return table), and sends the backend's replies to the
// gateway MAC there instead of to this host's gateway port. The first
// call allocates the table (Config.IngressReturnMax). RemoveStatic
// removes the entry and forgets the flows whose replies went to it.
func (s *Switch) AddRemoteGateway(mac packet.MAC, ip netip.Addr, r *Port) error {
	return s.addStatic(mac, ip, r, true)
}

func (s *Switch) addStatic(mac packet.MAC, ip netip.Addr, r *Port, gwHost bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r == nil || r.sw != s || r.removed.Load() {
		return s.errorf("static %s: port not attached", mac)
	}
	old, had := s.statics[mac]
	if had && old.kind == KindLocal {
		return s.errorf("static %s: MAC is local to port %q", mac, old.port.name)
	}
	s.dropStatic(mac)
	if err := s.checkEntry(mac, ip); err != nil {
		if had {
			s.putStatic(mac, old)
		}
		return s.errorf("static: %w", err)
	}
	s.putStatic(mac, staticEntry{ip: ip, port: r, kind: KindStatic, gwHost: gwHost})
	if gwHost && s.mesh.Load() == nil {
		s.mesh.Store(newMeshTable(s.meshMax, s.meshTO))
	}
	s.publish()
	s.forgetLearned(mac)
	if had && old.gwHost && !gwHost {
		s.mesh.Load().forget(mac)
	}
	return nil
}

// RemoveStatic removes the static entry for mac, if any; local entries stay.
func (s *Switch) RemoveStatic(mac packet.MAC) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.statics[mac]; ok && e.kind == KindStatic {
		s.dropStatic(mac)
		s.publish()
		s.forgetLearned(mac)
		if e.gwHost {
			s.mesh.Load().forget(mac)
		}
	}
}

// FDB returns the forwarding entries sorted by MAC: local, static and the
// learned entries that have not aged out.
func (s *Switch) FDB() []FDBEntry {
	s.mu.Lock()
	var out []FDBEntry
	for mac, e := range s.statics {
		out = append(out, FDBEntry{MAC: mac, IP: e.ip, Port: e.port.name, Kind: e.kind})
	}
	v := s.view.Load()
	s.mu.Unlock()
	now := s.clock()
	s.learned.Range(func(e *aging.Entry[*Port]) {
		if v.port(e.MAC) == nil && s.live(e, now) {
			out = append(out, FDBEntry{MAC: e.MAC, Port: e.Value.name, Kind: KindLearned, Age: time.Duration(now - e.Seen())})
		}
	})
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].MAC[:], out[j].MAC[:]) < 0 })
	return out
}
