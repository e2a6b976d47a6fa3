package daemon

import (
	"net/netip"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/gateway"
)

// publishedPort is one of an endpoint's published ports (`run -p`).
type publishedPort struct {
	spec gateway.Publish
	// ip is the container's address the flows go to, set once reserved,
	// ctr its container (for the fast path).
	ip  atomic.Pointer[netip.Addr]
	ctr atomic.Pointer[container]
	// port is the open listener; nil when down says why (a restore that
	// found the host port taken).
	port *gateway.Port
	down string
}

// parsePublish parses an attach request's publish specs: valid, no host
// address and port twice, and only for a new container (its first
// network gives the default route, which the replies take).
func parsePublish(req api.AttachRequest) ([]gateway.Publish, error) {
	if len(req.Publish) > 0 && !req.Create {
		return nil, invalid("container %q: published ports only when the container is created (its first network carries the replies)", req.Name)
	}
	return parseSpecs(req.Name, req.Publish)
}

// parseSpecs parses container name's publish specs: each valid, and no
// host address and port twice.
func parseSpecs(name string, specs []string) ([]gateway.Publish, error) {
	var out []gateway.Publish
	for _, s := range specs {
		p, err := gateway.ParsePublish(s)
		if err != nil {
			return nil, invalid("container %q: %s", name, err)
		}
		for _, q := range out {
			if q.HostPort == p.HostPort && q.Proto == p.Proto && (q.HostIP == p.HostIP || !q.HostIP.IsValid() || !p.HostIP.IsValid()) {
				return nil, invalid("container %q: publish %s: host port %d/%s given twice", name, p, p.HostPort, p.Proto)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// openPorts listens for each spec on this host, for network; the flows
// go to the address set later in each port's ip. If one cannot listen
// (already in use), none is left open.
func (d *Daemon) openPorts(name, network string, specs []gateway.Publish) ([]*publishedPort, error) {
	var out []*publishedPort
	for _, s := range specs {
		pp := &publishedPort{spec: s}
		p, err := d.egress.PublishFast(s, d.portTarget(network, pp), d.portFast(pp))
		if err != nil {
			closePorts(out)
			return nil, conflict("container %q: %s", name, err)
		}
		pp.port = p
		out = append(out, pp)
	}
	return out, nil
}

// portTarget finds pp's flows' destination: network's gateway on this
// host and the container's address.
func (d *Daemon) portTarget(network string, pp *publishedPort) gateway.Target {
	return func() (*gateway.Gateway, netip.Addr, bool) {
		ip := pp.ip.Load()
		if ip == nil || d.dp == nil {
			return nil, netip.Addr{}, false
		}
		g := d.dp.Gateway(network)
		return g, *ip, g != nil
	}
}

// closePorts stops listening and ends the ports' open flows.
func closePorts(ports []*publishedPort) {
	for _, pp := range ports {
		if pp.port != nil {
			pp.port.Close()
			pp.port = nil
		}
	}
}

// restorePorts reopens ep's published ports after a restart; one whose
// host port is taken now stays down, shown with the cause.
func (d *Daemon) restorePorts(ep *endpoint, specs []string) {
	for _, s := range specs {
		spec, err := gateway.ParsePublish(s)
		if err != nil {
			d.log.Warn("published port dropped", "container", ep.ctr.name, "spec", s, "err", err)
			continue
		}
		pp := &publishedPort{spec: spec}
		ip := ep.ip
		pp.ip.Store(&ip)
		pp.ctr.Store(ep.ctr)
		if ep.ctr.stopped {
			pp.down = downExited
		} else {
			d.openPort(ep, pp)
		}
		ep.ports = append(ep.ports, pp)
	}
}

// openPort listens for pp, one of ep's published ports, after a restart
// or a stop; one whose host port is taken now stays down, shown with the
// cause.
func (d *Daemon) openPort(ep *endpoint, pp *publishedPort) {
	p, err := d.egress.PublishFast(pp.spec, d.portTarget(ep.net.rec.Name, pp), d.portFast(pp))
	if err != nil {
		pp.down = "down: " + err.Error()
		d.log.Warn("published port down", "container", ep.ctr.name, "err", err)
		return
	}
	pp.port, pp.down = p, ""
}

// savedPorts returns ep's published ports as saved.
func (ep *endpoint) savedPorts() []string {
	var out []string
	for _, pp := range ep.ports {
		out = append(out, pp.spec.String())
	}
	return out
}

// portsView returns ep's published ports as shown.
func (ep *endpoint) portsView() []api.PublishedPort {
	var out []api.PublishedPort
	for _, pp := range ep.ports {
		st := "up"
		if pp.port == nil {
			st = pp.down
		}
		out = append(out, api.PublishedPort{Spec: pp.spec.String(), State: st})
	}
	return out
}

// closeAllPorts closes every published port (daemon shutdown); callers
// hold d.mu.
func (d *Daemon) closeAllPorts() {
	for _, c := range d.containers {
		for _, ep := range c.endpoints {
			closePorts(ep.ports)
		}
	}
}
