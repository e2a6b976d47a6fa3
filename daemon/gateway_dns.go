package daemon

import (
	"net/netip"
	"sync/atomic"

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
	// to their container names; replaced whole on every sync.
	askers atomic.Pointer[map[netip.Addr]string]
	// from is the endpointsOf list askers was made from: while that list
	// is the same, so are the askers (guarded by d.mu).
	from []*endpoint
}

// askerOf is the container whose address on the network is src, or ""
// (only forwarding) for any other source.
func (r *gatewayResolver) askerOf(src netip.Addr) string {
	return (*r.askers.Load())[src]
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
		askers := make(map[netip.Addr]string, len(eps))
		for _, ep := range eps {
			askers[ep.ip] = ep.ctr.name
		}
		r.askers.Store(&askers)
		r.from = eps
		if r.from == nil {
			r.from = []*endpoint{}
		}
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
	r := &gatewayResolver{gw: g}
	r.askers.Store(&map[netip.Addr]string{})
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
