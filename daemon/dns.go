package daemon

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/dns"
	"github.com/vxmesh/vxmesh/internal/cowmap"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/sandbox"
)

// hostResolvConf is where the default upstream servers come from.
const hostResolvConf = "/etc/resolv.conf"

// dnsListener is the optional Sandbox method that opens the resolver's
// sockets (UDP and TCP on dns.ListenAddr) inside a container's namespace.
// A Sandbox without it gets no per-container resolver (unit-test fakes).
type dnsListener interface {
	ListenDNS(nsPath string) (net.PacketConn, net.Listener, error)
}

// ListenDNS creates the sockets on a thread inside the namespace; they
// stay in that namespace and are served from the daemon's goroutines.
func (linuxSandbox) ListenDNS(nsPath string) (pc net.PacketConn, ln net.Listener, err error) {
	err = sandbox.RunInNetns(nsPath, func() error {
		var err error
		if pc, err = net.ListenPacket("udp4", dns.ListenAddr); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp4", dns.ListenAddr); err != nil {
			pc.Close()
			return err
		}
		return nil
	})
	return pc, ln, err
}

// resolver is the daemon's embedded DNS: one dns.Server, the record index
// it answers from, and a listener per container with an endpoint.
type resolver struct {
	srv *dns.Server
	idx dnsSource
	// rebuild serializes index rebuilds, so the last one stored is built
	// from the newest table.
	rebuild sync.Mutex
	// built says the index was built at cluster generation builtGen;
	// guarded by rebuild.
	built    bool
	builtGen uint64
	// setSeq is the endpoint set (endpointSet.seq) the index was last
	// built from; guarded by rebuild.
	setSeq uint64
	// b derives each index from the last; guarded by rebuild.
	b dnsBuilder
	// listeners by container name; guarded by Daemon.mu.
	listeners map[string]*dns.Listener
}

// startDNS makes the resolver and keeps its records in step with the
// cluster's endpoints table; callers have started the cluster.
func (d *Daemon) startDNS() {
	ups := d.cfg.DNSUpstreams
	if len(ups) == 0 {
		var err error
		if ups, err = dns.ResolvConfUpstreams(hostResolvConf); err != nil {
			d.log.Warn("dns: reading upstream servers", "file", hostResolvConf, "err", err)
		}
	}
	if len(ups) == 0 {
		d.log.Warn("dns: no upstream servers; names other than containers' will not resolve")
	}
	r := &resolver{listeners: map[string]*dns.Listener{}}
	r.idx.index.Store(&dnsIndex{})
	r.srv = dns.New(dns.Config{
		Upstreams: ups, Timeout: d.cfg.DNSTimeout, MaxInflight: d.cfg.DNSMaxInflight,
		Logger: d.log.With("component", "dns"),
	}, &r.idx)
	d.dns = r
	ch, cancel := d.cl.Subscribe()
	d.done.Add(1)
	go func() {
		defer d.done.Done()
		defer cancel()
		var p pacer
		for {
			select {
			case <-d.ctx.Done():
				return
			case _, ok := <-ch:
				if !ok {
					return
				}
				if !p.wait(d.ctx) {
					return
				}
				start := time.Now()
				d.refreshDNS()
				p.done(start)
				d.passes.dns.Add(1)
			}
		}
	}()
	d.log.Info("dns: resolver ready", "listen", dns.ListenAddr, "upstreams", fmt.Sprint(ups))
}

// refreshDNS updates the records from the endpoints and services tables,
// unless they are those of the last update: the index depends only on the
// cluster's tables (cluster.Generation), and one change calls it several
// times. An update changes only what changed (dnsBuilder).
func (d *Daemon) refreshDNS() {
	if d.dns == nil {
		return
	}
	d.dns.rebuild.Lock()
	defer d.dns.rebuild.Unlock()
	gen := d.cl.Generation() // before reading the tables
	if d.dns.built && d.dns.builtGen == gen {
		return
	}
	set, ids, known := d.endpointSetSince(d.dns.setSeq)
	var delta *dnsDelta
	if known {
		delta = &dnsDelta{ids: ids, lookup: set.lookup}
	}
	d.dns.idx.index.Store(d.dns.b.updateDelta(d.cfg.Node, set.accepted, delta, d.serviceSet(set.accepted).dnsServices()))
	d.dns.idx.internal.Store(internalNetworks(d.clusterNetworks()))
	d.dns.built, d.dns.builtGen, d.dns.setSeq = true, gen, set.seq
}

// dnsAttached updates the records after c got an endpoint (or its
// endpoints were restored) and serves 127.0.0.11 in c's namespace if it is
// not served yet; callers hold d.mu. A failure is logged: the container
// keeps its network, without the resolver.
func (d *Daemon) dnsAttached(c *container) {
	if d.dns == nil {
		return
	}
	d.refreshDNS()
	if d.dns.listeners[c.name] != nil || c.hostTAP {
		// Docker serves 127.0.0.11 in its containers itself.
		return
	}
	ls, ok := d.sb.(dnsListener)
	if !ok {
		return
	}
	pc, ln, err := ls.ListenDNS(c.netns)
	if err != nil {
		d.log.Warn("dns: cannot serve 127.0.0.11 in the container", "container", c.name, "netns", c.netns, "err", err)
		return
	}
	d.dns.listeners[c.name] = d.dns.srv.Serve(c.name, pc, ln)
	d.log.Debug("dns: serving container", "container", c.name)
}

// dnsDetached updates the records after c lost an endpoint and closes
// its resolver sockets when it has none left; callers hold d.mu.
func (d *Daemon) dnsDetached(c *container) {
	if d.dns == nil {
		return
	}
	d.refreshDNS()
	if l := d.dns.listeners[c.name]; l != nil && len(c.endpoints) == 0 {
		l.Close()
		delete(d.dns.listeners, c.name)
		d.log.Debug("dns: stopped serving container", "container", c.name)
	}
}

// stopResolvers closes every container's resolver; callers hold d.mu.
func (d *Daemon) stopResolvers() {
	if d.dns == nil {
		return
	}
	for name, l := range d.dns.listeners {
		l.Close()
		delete(d.dns.listeners, name)
	}
}

// dnsStats returns the resolver's counters.
func (d *Daemon) dnsStats() api.DNSStats {
	if d.dns == nil {
		return api.DNSStats{Upstreams: []string{}}
	}
	d.mu.Lock()
	n := len(d.dns.listeners)
	d.mu.Unlock()
	s := d.dns.srv.Stats()
	out := api.DNSStats{
		Upstreams: []string{}, Listeners: n,
		Queries: s.Queries, Local: s.Local, Forwarded: s.Forwarded, NXDomain: s.NXDomain,
		ServFail: s.ServFail, Overloaded: s.Overloaded, NoEgress: s.NoEgress, UpstreamErrors: s.UpstreamErrors, Inflight: s.Inflight,
		Coalesced:       s.Coalesced,
		UpstreamLatency: api.LatencyStats{Count: s.Upstream.Count, MaxMs: ms(s.Upstream.Max.Seconds())},
	}
	for _, u := range d.dns.srv.Upstreams() {
		out.Upstreams = append(out.Upstreams, u.String())
	}
	if s.Upstream.Count > 0 {
		out.UpstreamLatency.AvgMs = ms(s.Upstream.Sum.Seconds() / float64(s.Upstream.Count))
	}
	for i, c := range s.Upstream.Buckets {
		b := api.LatencyBucket{Count: c}
		if i < len(s.Upstream.Bounds) {
			b.LeMs = ms(s.Upstream.Bounds[i].Seconds())
		}
		out.UpstreamLatency.Buckets = append(out.UpstreamLatency.Buckets, b)
	}
	return out
}

// ms converts seconds to milliseconds rounded to microseconds.
func ms(sec float64) float64 { return float64(int64(sec*1e6+0.5)) / 1e3 }

// dnsIndex is an immutable snapshot of the names the resolver answers,
// built from the endpoints table (this node's endpoints are in it too) and
// the services.
type dnsIndex struct {
	// networks of each local container, the askers.
	networks *askerNets
	// names maps network -> container name or alias -> addresses.
	names map[string]*nameAddrs
	// ptrs maps network -> address -> "container.network".
	ptrs map[string]*addrNames
	// services maps network -> service name (NAME, tasks.NAME, _tcp.NAME,
	// _udp.NAME, _tcp.tasks.NAME, _udp.tasks.NAME) -> its records.
	services map[string]map[string]dns.Records
	// vips maps network -> VIP -> "service.network" with the service's TTL.
	vips map[string]map[netip.Addr]vipName
	// answers are the lookups above precomputed in wire format.
	answers *dns.Answers
}

// The per-name maps of the index are copy-on-write maps (cowmap): a run
// changes a few names of one network, and a copy of the network's maps
// per change would cost O(containers).
type (
	askerNets = cowmap.Map[string, []string, cowmap.Strings]
	nameAddrs = cowmap.Map[string, []netip.Addr, cowmap.Strings]
	addrNames = cowmap.Map[netip.Addr, []string, cowmap.Addrs]
)

// vipName is the PTR record of a service's VIP.
type vipName struct {
	name string
	ttl  uint32
}

// dnsService is what the resolver needs of one service on one network:
// one per service and network, also while the service has no task.
type dnsService struct {
	Name    string        // service name, lower-case
	Network string        // network name, lower-case
	VIP     netip.Addr    // not valid with endpoint mode dnsrr
	TTL     time.Duration // of every answer about the service (--dns-ttl); 0: not to be cached
	Ports   []lb.Port     // the service's --port entries, for SRV
	Tasks   []netip.Addr  // addresses of its healthy, active backends on Network
}

// buildDNSIndex indexes the endpoint records and services; names are
// lower-cased, as DNS names compare case-insensitively.
func buildDNSIndex(node string, recs []epRecord, svcs []dnsService) *dnsIndex {
	x := &dnsIndex{names: map[string]*nameAddrs{}, ptrs: map[string]*addrNames{},
		services: map[string]map[string]dns.Records{}, vips: map[string]map[netip.Addr]vipName{}}
	networks := map[string][]string{}
	names := map[string]map[string][]netip.Addr{}
	ptrs := map[string]map[netip.Addr][]string{}
	for _, r := range recs {
		ip, err := netip.ParseAddr(r.IP)
		if err != nil || r.isGateway() {
			continue
		}
		nw := strings.ToLower(r.Network)
		if r.Node == node {
			networks[r.Name] = append(networks[r.Name], nw)
		}
		if names[nw] == nil {
			names[nw] = map[string][]netip.Addr{}
			ptrs[nw] = map[netip.Addr][]string{}
		}
		for _, n := range append([]string{r.Name}, r.Aliases...) {
			n = strings.ToLower(n)
			if !slices.Contains(names[nw][n], ip) {
				names[nw][n] = append(names[nw][n], ip)
			}
		}
		ptrs[nw][ip] = append(ptrs[nw][ip], strings.ToLower(r.Name)+"."+nw)
	}
	// Addresses and PTR names in a fixed order, not the records' (so
	// that the incremental dnsBuilder makes the same index).
	nw := cowmap.NewWriter[string, []string, cowmap.Strings](nil)
	for asker, nets := range networks {
		slices.Sort(nets)
		nw.Set(asker, nets)
	}
	if nw.Map().Len() > 0 {
		x.networks = nw.Map()
	}
	for n, m := range names {
		w := cowmap.NewWriter[string, []netip.Addr, cowmap.Strings](nil)
		for name, l := range m {
			slices.SortFunc(l, netip.Addr.Compare)
			w.Set(name, l)
		}
		x.names[n] = w.Map()
	}
	for n, m := range ptrs {
		w := cowmap.NewWriter[netip.Addr, []string, cowmap.Addrs](nil)
		for ip, l := range m {
			slices.Sort(l)
			w.Set(ip, l)
		}
		x.ptrs[n] = w.Map()
	}
	for _, s := range svcs {
		x.addService(s) // after the containers: SRV targets are their names
	}
	x.answers = x.buildAnswers()
	return x
}

// addService indexes the names of s on its network: NAME answers the VIP
// (without one, the tasks), tasks.NAME the tasks, _PROTO.NAME one SRV
// record per --port of PROTO targeting NAME.NETWORK (without a VIP, like
// _PROTO.tasks.NAME), _PROTO.tasks.NAME one per port and task targeting
// the task's container name with the backend's port; and the VIP's PTR.
func (x *dnsIndex) addService(s dnsService) {
	name, nw := strings.ToLower(s.Name), strings.ToLower(s.Network)
	if name == "" || nw == "" {
		return
	}
	ttl := ttlSeconds(s.TTL)
	var tasks []netip.Addr
	for _, t := range s.Tasks {
		if t.Is4() && !slices.Contains(tasks, t) {
			tasks = append(tasks, t)
		}
	}
	if x.services[nw] == nil {
		x.services[nw] = map[string]dns.Records{}
		x.vips[nw] = map[netip.Addr]vipName{}
	}
	m := x.services[nw]
	add := func(key string, r dns.Records) {
		old, ok := m[key]
		m[key] = mergeRecords(old, r, ok)
	}
	front := tasks
	if s.VIP.Is4() {
		front = []netip.Addr{s.VIP}
		x.vips[nw][s.VIP] = vipName{name + "." + nw, ttl}
	}
	add(name, dns.Records{Addrs: front, TTL: ttl})
	add("tasks."+name, dns.Records{Addrs: tasks, TTL: ttl})
	for _, proto := range []struct {
		label string
		num   uint8
	}{{"_tcp.", packet.ProtoTCP}, {"_udp.", packet.ProtoUDP}} {
		var vip, each []dns.SRV
		for _, p := range s.Ports {
			if p.Proto != proto.num {
				continue
			}
			port := p.Target
			if port == 0 {
				port = p.Port
			}
			for _, t := range tasks {
				if names, _ := x.ptrs[nw].Get(t); len(names) > 0 {
					each = append(each, dns.SRV{Weight: 1, Port: port, Target: names[0]})
				}
			}
			if s.VIP.Is4() {
				vip = append(vip, dns.SRV{Weight: 1, Port: p.Port, Target: name + "." + nw})
			}
		}
		if !s.VIP.Is4() {
			vip = each
		}
		add(proto.label+name, dns.Records{SRV: vip, TTL: ttl})
		add(proto.label+"tasks."+name, dns.Records{SRV: each, TTL: ttl})
	}
}

// ttlSeconds is d in whole seconds, rounded up, within the TTLs DNS allows
// (RFC 2181 §8).
func ttlSeconds(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	return uint32(min((d+time.Second-1)/time.Second, math.MaxInt32))
}

// mergeRecords adds b to a (found: a holds records): the addresses of
// both, each once, their SRV records, and the smaller TTL, as one answer
// has one TTL per record set. It never writes into a's or b's slices.
func mergeRecords(a, b dns.Records, found bool) dns.Records {
	if !found {
		return b
	}
	a.Addrs = appendNew(slices.Clip(a.Addrs), b.Addrs)
	a.SRV = append(slices.Clip(a.SRV), b.SRV...)
	a.TTL = min(a.TTL, b.TTL)
	return a
}

// dnsSource answers the resolver from the current index, scoped to the
// networks of the asking container.
type dnsSource struct {
	index atomic.Pointer[dnsIndex]
	// internal says which networks (lower-cased) are internal (no
	// egress), replaced whole at every refresh.
	internal atomic.Pointer[map[string]bool]
}

// internalNetworks returns the lower-cased names (as the index keeps
// them) of the internal networks of nets; a name shared, but for case, by
// a network with egress is not one.
func internalNetworks(nets map[string]netRecord) *map[string]bool {
	internal := map[string]bool{}
	for name, rec := range nets {
		n := strings.ToLower(name)
		if v, seen := internal[n]; !seen || v {
			internal[n] = rec.Internal
		}
	}
	return &internal
}

// Forwards reports whether asker is on a network with egress: a
// container only on internal networks (Docker's --internal, which has no
// egress) gets no upstream DNS either, as Docker's resolver does since
// 26.0, so DNS is no way out of the network.
func (s *dnsSource) Forwards(asker string) bool {
	nets, _ := s.index.Load().networks.Get(asker)
	internal := s.internal.Load()
	if len(nets) == 0 || internal == nil {
		return true
	}
	for _, n := range nets {
		if !(*internal)[n] {
			return true
		}
	}
	return false
}

// LookupName answers from the current index.
func (s *dnsSource) LookupName(asker, name string) (dns.Records, bool) {
	return s.index.Load().lookupName(asker, name)
}

// LookupAddr answers from the current index.
func (s *dnsSource) LookupAddr(asker string, addr netip.Addr) ([]string, uint32) {
	return s.index.Load().lookupAddr(asker, addr)
}

// Answers returns the precomputed answers of the current index, so the
// fast path and the lookups always see the same snapshot.
func (s *dnsSource) Answers() *dns.Answers {
	return s.index.Load().answers
}

// lookupName finds name among the containers, aliases and services of the
// asker's networks, then as NAME.NETWORK for one of them. A name that is
// both a container's (or alias) and a service's answers the records of
// both, as Docker's resolver does (one name table per network).
func (x *dnsIndex) lookupName(asker, name string) (dns.Records, bool) {
	nets, _ := x.networks.Get(asker)
	var out dns.Records
	found := false
	for _, n := range nets {
		out, found = x.addName(out, found, n, name)
	}
	if found {
		return out, true
	}
	for _, n := range nets {
		if prefix, ok := strings.CutSuffix(name, "."+n); ok {
			out, found = x.addName(out, found, n, prefix)
		}
	}
	return out, found
}

// addName merges into out the records of name on network n and reports
// whether out holds any.
func (x *dnsIndex) addName(out dns.Records, found bool, n, name string) (dns.Records, bool) {
	if a, ok := x.names[n].Get(name); ok {
		out = mergeRecords(out, dns.Records{Addrs: a, TTL: dns.LocalTTL}, found)
		found = true
	}
	if r, ok := x.services[n][name]; ok {
		out = mergeRecords(out, r, found)
		found = true
	}
	return out, found
}

// lookupAddr names addr on the asker's networks: containers and service
// VIPs, with the smallest of their TTLs.
func (x *dnsIndex) lookupAddr(asker string, addr netip.Addr) ([]string, uint32) {
	var out []string
	var ttl uint32
	nets, _ := x.networks.Get(asker)
	for _, n := range nets {
		if names, _ := x.ptrs[n].Get(addr); len(names) > 0 {
			ttl = smallerTTL(len(out) > 0, ttl, dns.LocalTTL)
			out = append(out, names...)
		}
		if v, ok := x.vips[n][addr]; ok {
			ttl = smallerTTL(len(out) > 0, ttl, v.ttl)
			out = append(out, v.name)
		}
	}
	return out, ttl
}

// smallerTTL is the smaller of ttl and next, or next when there is no ttl
// yet.
func smallerTTL(have bool, ttl, next uint32) uint32 {
	if !have {
		return next
	}
	return min(ttl, next)
}

// buildAnswers precomputes the answers of x: one view per distinct set of
// networks, shared by the askers on exactly those networks, over every
// name (NAME and NAME.NETWORK, containers' and services') and address of
// those networks (containers' and VIPs), each
// answered by x's own lookups.
func (x *dnsIndex) buildAnswers() *dns.Answers {
	a := dns.NewAnswers()
	groups := map[string][]string{}
	for asker, nets := range x.networks.All() {
		k := strings.Join(nets, "\x00")
		groups[k] = append(groups[k], asker)
	}
	for _, askers := range groups {
		asker := askers[0]
		nets, _ := x.networks.Get(asker)
		names, addrs := x.groupNames(nets)
		a.Add(askers, names, addrs,
			func(name string) (dns.Records, bool) { return x.lookupName(asker, name) },
			func(ip netip.Addr) ([]string, uint32) { return x.lookupAddr(asker, ip) })
	}
	return a
}

func appendNew(dst, src []netip.Addr) []netip.Addr {
	for _, a := range src {
		if !slices.Contains(dst, a) {
			dst = append(dst, a)
		}
	}
	return dst
}
