package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/dns"
	"github.com/vxmesh/vxmesh/lb"
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
		for {
			select {
			case <-d.ctx.Done():
				return
			case _, ok := <-ch:
				if !ok {
					return
				}
				d.refreshDNS()
			}
		}
	}()
	d.log.Info("dns: resolver ready", "listen", dns.ListenAddr, "upstreams", fmt.Sprint(ups))
}

// refreshDNS rebuilds the records from the endpoints and services tables.
func (d *Daemon) refreshDNS() {
	if d.dns == nil {
		return
	}
	d.dns.rebuild.Lock()
	defer d.dns.rebuild.Unlock()
	accepted := d.endpointSet().accepted
	d.dns.idx.index.Store(buildDNSIndex(d.cfg.Node, accepted, d.serviceSet(accepted).dnsServices()))
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
	if d.dns.listeners[c.name] != nil {
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
		ServFail: s.ServFail, Overloaded: s.Overloaded, UpstreamErrors: s.UpstreamErrors, Inflight: s.Inflight,
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
// built from the endpoints table (this node's endpoints are in it too).
type dnsIndex struct {
	// networks of each local container, the askers.
	networks map[string][]string
	// names maps network -> container name or alias -> addresses.
	names map[string]map[string][]netip.Addr
	// ptrs maps network -> address -> "container.network".
	ptrs map[string]map[netip.Addr][]string
	// answers are the lookups above precomputed in wire format.
	answers *dns.Answers
}

// dnsService is what the resolver needs of one service on one network.
type dnsService struct {
	Name    string        // service name, lower-case
	Network string        // network name, lower-case
	VIP     netip.Addr    // not valid with endpoint mode dnsrr
	TTL     time.Duration // of every answer about the service
	Ports   []lb.Port     // the service's --port entries, for SRV
	Tasks   []netip.Addr  // addresses of its healthy, active backends on Network
}

// buildDNSIndex indexes the endpoint records and services; names are
// lower-cased, as DNS names compare case-insensitively.
func buildDNSIndex(node string, recs []epRecord, svcs []dnsService) *dnsIndex {
	x := &dnsIndex{networks: map[string][]string{}, names: map[string]map[string][]netip.Addr{}, ptrs: map[string]map[netip.Addr][]string{}}
	for _, r := range recs {
		ip, err := netip.ParseAddr(r.IP)
		if err != nil {
			continue
		}
		nw := strings.ToLower(r.Network)
		if r.Node == node {
			x.networks[r.Name] = append(x.networks[r.Name], nw)
		}
		if x.names[nw] == nil {
			x.names[nw] = map[string][]netip.Addr{}
			x.ptrs[nw] = map[netip.Addr][]string{}
		}
		for _, n := range append([]string{r.Name}, r.Aliases...) {
			n = strings.ToLower(n)
			if !slices.Contains(x.names[nw][n], ip) {
				x.names[nw][n] = append(x.names[nw][n], ip)
			}
		}
		x.ptrs[nw][ip] = append(x.ptrs[nw][ip], strings.ToLower(r.Name)+"."+nw)
	}
	for _, nets := range x.networks {
		slices.Sort(nets)
	}
	x.answers = x.buildAnswers()
	return x
}

// dnsSource answers the resolver from the current index, scoped to the
// networks of the asking container.
type dnsSource struct {
	index atomic.Pointer[dnsIndex]
}

// LookupName answers from the current index.
func (s *dnsSource) LookupName(asker, name string) ([]netip.Addr, bool) {
	return s.index.Load().lookupName(asker, name)
}

// LookupAddr answers from the current index.
func (s *dnsSource) LookupAddr(asker string, addr netip.Addr) []string {
	return s.index.Load().lookupAddr(asker, addr)
}

// Answers returns the precomputed answers of the current index, so the
// fast path and the lookups always see the same snapshot.
func (s *dnsSource) Answers() *dns.Answers {
	return s.index.Load().answers
}

// lookupName finds name among the containers and aliases of the asker's
// networks, then as NAME.NETWORK for one of them. Services and
// tasks.<service> will be indexed here too.
func (x *dnsIndex) lookupName(asker, name string) ([]netip.Addr, bool) {
	nets := x.networks[asker]
	var out []netip.Addr
	found := false
	for _, n := range nets {
		if a, ok := x.names[n][name]; ok {
			found = true
			out = appendNew(out, a)
		}
	}
	if found {
		return out, true
	}
	for _, n := range nets {
		if prefix, ok := strings.CutSuffix(name, "."+n); ok {
			if a, ok := x.names[n][prefix]; ok {
				found = true
				out = appendNew(out, a)
			}
		}
	}
	return out, found
}

// lookupAddr names addr on the asker's networks.
func (x *dnsIndex) lookupAddr(asker string, addr netip.Addr) []string {
	var out []string
	for _, n := range x.networks[asker] {
		out = append(out, x.ptrs[n][addr]...)
	}
	return out
}

// buildAnswers precomputes the answers of x: one view per distinct set of
// networks, shared by the askers on exactly those networks, over every
// name (NAME and NAME.NETWORK) and address of those networks, each
// answered by x's own lookups.
func (x *dnsIndex) buildAnswers() *dns.Answers {
	a := dns.NewAnswers()
	groups := map[string][]string{}
	for asker, nets := range x.networks {
		k := strings.Join(nets, "\x00")
		groups[k] = append(groups[k], asker)
	}
	for _, askers := range groups {
		asker := askers[0]
		var names []string
		var addrs []netip.Addr
		for _, n := range x.networks[asker] {
			for name := range x.names[n] {
				names = append(names, name, name+"."+n)
			}
			for ip := range x.ptrs[n] {
				addrs = append(addrs, ip)
			}
		}
		a.Add(askers, names, addrs,
			func(name string) ([]netip.Addr, bool) { return x.lookupName(asker, name) },
			func(ip netip.Addr) []string { return x.lookupAddr(asker, ip) })
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
