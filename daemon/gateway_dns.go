package daemon

import (
	"net/netip"
	"sync"

	"github.com/vxmesh/vxmesh/dns"
	"github.com/vxmesh/vxmesh/gateway"
)

// gatewayResolver is the resolver at one network's gateway address on
// this host (port 53, UDP and TCP in the gateway's stack), for engines
// that cannot use 127.0.0.11.
type gatewayResolver struct {
	gw *gateway.Gateway
	l  *dns.Listener
	// askers maps the addresses of this host's endpoints on the network
	// to their container names, patched on every sync with the endpoints
	// that came and went (a copy of the whole map per run would cost
	// O(containers)); guarded by mu.
	mu     sync.RWMutex
	askers map[netip.Addr]string
	// from is the endpointsOf list askers was made from: while that list
	// is the same, so are the askers (guarded by d.mu).
	from []*endpoint
}

// askerOf is the container whose address on the network is src, or ""
// (only forwarding) for any other source.
func (r *gatewayResolver) askerOf(src netip.Addr) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.askers[src]
}

// setAskers brings the askers from the endpoints list r.from to eps: the
// entries of the endpoints gone are taken out, those of the endpoints
// added put in. Callers hold d.mu.
func (r *gatewayResolver) setAskers(eps []*endpoint) {
	gone, added := diffEndpoints(r.from, eps)
	r.mu.Lock()
	for _, ep := range gone {
		if r.askers[ep.ip] == ep.ctr.name {
			delete(r.askers, ep.ip)
		}
	}
	for _, ep := range added {
		r.askers[ep.ip] = ep.ctr.name
	}
	r.mu.Unlock()
	r.from = eps
	if r.from == nil {
		r.from = []*endpoint{}
	}
}

// syncGatewayDNS serves DNS at every local network's gateway (again,
// when the data plane rebuilt it) and refreshes who asks from which
// address; callers hold d.mu, after applying the data plane.
func (d *Daemon) syncGatewayDNS() {
	if d.dns == nil || d.dp == nil {
		return
	}
	if d.gwDNS == nil {
		d.gwDNS = map[string]*gatewayResolver{}
	}
	for name, r := range d.gwDNS {
		if _, ok := d.networks[name]; !ok || d.dp.Gateway(name) != r.gw {
			r.l.Close()
			delete(d.gwDNS, name)
		}
	}
	for name := range d.networks {
		g := d.dp.Gateway(name)
		if g == nil {
			continue
		}
		r := d.gwDNS[name]
		if r == nil {
			if r = d.serveGatewayDNS(name, g); r == nil {
				continue
			}
		}
		eps := d.endpointsOf(d.networks[name])
		if r.from != nil && sameEndpoints(r.from, eps) {
			continue
		}
		r.setAskers(eps)
	}
}

// sameEndpoints reports whether a and b are the same endpointsOf list:
// the same array and length (endpointsOf makes a new list for a change).
func sameEndpoints(a, b []*endpoint) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// serveGatewayDNS opens port 53 at g's address; nil (logged) if it
// cannot.
func (d *Daemon) serveGatewayDNS(network string, g *gateway.Gateway) *gatewayResolver {
	pc, err := g.ListenUDP(53)
	if err != nil {
		d.log.Warn("dns: cannot serve the gateway address", "network", network, "err", err)
		return nil
	}
	ln, err := g.ListenTCP(53)
	if err != nil {
		pc.Close()
		d.log.Warn("dns: cannot serve the gateway address", "network", network, "err", err)
		return nil
	}
	r := &gatewayResolver{gw: g, askers: map[netip.Addr]string{}}
	r.l = d.dns.srv.ServeFunc(r.askerOf, pc, ln)
	d.gwDNS[network] = r
	d.log.Debug("dns: serving the gateway address", "network", network, "addr", g.Addr())
	return r
}

// closeGatewayDNS stops every gateway resolver; callers hold d.mu.
func (d *Daemon) closeGatewayDNS() {
	for name, r := range d.gwDNS {
		r.l.Close()
		delete(d.gwDNS, name)
	}
}
