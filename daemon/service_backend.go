package daemon

import (
	"errors"
	"net/netip"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/lb"
)

// attachMembers checks the services req joins on network n and returns
// the memberships: each service must exist and be on n, with a weight of
// 1-lb.MaxWeight (0 means 1). A new container's name and every alias must
// not be a service's name. Callers hold d.mu.
func (d *Daemon) attachMembers(req api.AttachRequest, n *localNetwork) ([]svcMember, error) {
	names := req.Aliases
	if d.containers[req.Name] == nil {
		names = append([]string{req.Name}, names...)
	}
	for _, nm := range names {
		if s := d.findService(nm); s != nil {
			return nil, conflict("container %q: %q is the name of service %q (DNS names of containers and services must differ)", req.Name, nm, s.rec.Name)
		}
	}
	if len(req.Services) > maxServiceMemberships {
		return nil, invalid("container %q: %d services, at most %d", req.Name, len(req.Services), maxServiceMemberships)
	}
	var out []svcMember
	for _, m := range req.Services {
		if err := checkServiceName(m.Name); err != nil {
			return nil, invalid("container %q: --service: %w", req.Name, err)
		}
		w := m.Weight
		if w == 0 {
			w = 1
		}
		if w < 1 || w > lb.MaxWeight {
			return nil, invalid("container %q: --service %s:%d: weight out of range 1-%d", req.Name, m.Name, m.Weight, lb.MaxWeight)
		}
		s := d.findService(m.Name)
		if s == nil {
			return nil, notFound("container %q: --service %s: service not found", req.Name, m.Name)
		}
		if !s.onNetwork(n.rec.Name) {
			return nil, invalid("container %q: --service %s: the service is not on network %q (its networks: %s)", req.Name, m.Name, n.rec.Name, strings.Join(s.networks(), ", "))
		}
		for _, o := range out {
			if o.name == s.rec.Name {
				return nil, invalid("container %q: --service %s given twice", req.Name, m.Name)
			}
		}
		h := backendHealthy
		if !s.health.IsZero() {
			h = backendStarting // not ready before its first check passes
		}
		out = append(out, svcMember{name: s.rec.Name, id: s.rec.ID, weight: w, health: h})
	}
	return out, nil
}

// drained is what drainBackends did to a container: its backends that
// drained, to flush once they are gone.
type drained struct {
	container string
	netns     string
	backends  []drainedBackend
}

// A drain ends before the stop grace period once the drained endpoints
// have served no TCP connection for drainQuiet, checked every drainPoll.
// drainQuiet also gives every host the time to learn that the backend is
// draining (gossip takes well under a second), so that none is still
// sending it new connections when it goes.
const (
	drainQuiet = time.Second
	drainPoll  = 100 * time.Millisecond
)

type drainedBackend struct {
	network string
	ip      netip.Addr
}

// drainBackends takes the endpoints of container name that are backends
// of services (network "*": all; "": its only one; else that network's)
// out of balancing and DNS first: their memberships become draining and
// are published, so no host gives them new connections while their
// connections go on. It then waits, without d.mu, for the longest stop
// grace period of those services, or less if they serve no connection
// (waitDrained), and returns what it drained; the caller removes the
// endpoints and calls flushDrained. Nil means nothing to drain (or
// nothing drainable: the caller reports why).
func (d *Daemon) drainBackends(name, network string) (*drained, error) {
	d.mu.Lock()
	c := d.containers[name]
	_, busy := d.attaching[name]
	// A container whose namespace is gone, or that is stopped, was
	// withdrawn already, and serves nothing: no drain.
	if c == nil || busy || d.leaving[name] || d.tearingDown[name] || c.withdrawn() {
		d.mu.Unlock()
		return nil, nil
	}
	var eps []*endpoint
	switch {
	case network == "*":
		eps = c.sortedEndpoints()
	case network == "" && len(c.endpoints) == 1:
		eps = c.sortedEndpoints()
	case c.endpoints[network] != nil:
		eps = []*endpoint{c.endpoints[network]}
	}
	dr := &drained{container: name, netns: c.netns}
	var grace time.Duration
	specs := d.clusterServices()
	for _, ep := range eps {
		member := false
		for i, m := range ep.services {
			s := specs[m.name]
			if s == nil || s.rec.ID != m.id {
				continue
			}
			member = true
			grace = max(grace, s.stopGrace)
			ep.services[i].draining = true
		}
		if member {
			dr.backends = append(dr.backends, drainedBackend{network: ep.net.rec.Name, ip: ep.ip})
			d.publishEndpoint(ep)
		}
	}
	if len(dr.backends) == 0 {
		d.mu.Unlock()
		return nil, nil
	}
	d.leaving[name] = true
	if err := d.applyDataplane(); err != nil {
		d.log.Error("data plane", "err", err)
	}
	d.refreshDNS()
	d.mu.Unlock()
	d.log.Info("backend draining", "container", name, "grace", grace)
	start := time.Now()
	if !d.waitDrained(dr, grace) {
		d.mu.Lock()
		d.flushDrained(dr)
		d.mu.Unlock()
		return nil, errors.New("container " + name + ": the daemon is stopping; its backends stay until it is removed")
	}
	d.log.Info("backend drained", "container", name, "after", time.Since(start).Round(time.Millisecond), "grace", grace)
	return dr, nil
}

// waitDrained waits until grace has passed, or until the drained
// endpoints have served no TCP connection for drainQuiet since the drain
// began, whichever comes first. Connections are counted in the
// container's own namespace, where every client's connection ends
// whichever host it comes from (this host's balancer tracks only its own
// clients'); a count that fails counts as busy. It reports false if the
// daemon is stopping.
func (d *Daemon) waitDrained(dr *drained, grace time.Duration) bool {
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	listening := make([]map[uint16]bool, len(dr.backends))
	for i := range listening {
		listening[i] = map[uint16]bool{}
	}
	idleSince := time.Now()
	for {
		select {
		case <-deadline.C:
			return true
		case <-d.ctx.Done():
			return false
		case now := <-tick.C:
			if d.drainedBusy(dr, listening) {
				idleSince = now
			} else if now.Sub(idleSince) >= drainQuiet {
				return true
			}
		}
	}
}

// drainedBusy reports whether any endpoint of dr serves a TCP connection
// (or cannot be checked).
func (d *Daemon) drainedBusy(dr *drained, listening []map[uint16]bool) bool {
	for i, b := range dr.backends {
		n, err := d.sb.InboundTCPConns(dr.netns, b.ip, listening[i])
		if err != nil {
			d.log.Debug("draining backend: counting its connections", "container", dr.container, "ip", b.ip, "err", err)
			return true
		}
		if n > 0 {
			return true
		}
	}
	return false
}

// flushDrained ends what drainBackends started: the connections to
// backends that are gone are flushed from the conntrack; a backend still
// there (its removal failed) is active again. Callers hold d.mu; dr may
// be nil.
func (d *Daemon) flushDrained(dr *drained) {
	if dr == nil {
		return
	}
	delete(d.leaving, dr.container)
	c := d.containers[dr.container]
	changed := false
	for _, b := range dr.backends {
		if c != nil && c.endpoints[b.network] != nil && c.endpoints[b.network].ip == b.ip {
			ep := c.endpoints[b.network]
			for i := range ep.services {
				ep.services[i].draining = false
			}
			d.publishEndpoint(ep)
			changed = true
			continue
		}
		n := d.flushBackend(b.network, b.ip)
		d.log.Info("backend gone after draining", "container", dr.container, "network", b.network, "ip", b.ip, "flushed", n)
	}
	if changed {
		if err := d.applyDataplane(); err != nil {
			d.log.Error("data plane", "err", err)
		}
		d.refreshDNS()
	}
}

// setBackendHealth records the result of an active health check of a
// local backend: container's endpoint on network, as a backend of
// service, is now health (backendStarting, -Healthy or -Unhealthy). A
// change is published (every host's balancer and DNS follow) and applied
// here. It reports whether the backend exists.
func (d *Daemon) setBackendHealth(container, network, service, health string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.setBackendHealthLocked(container, network, service, health)
}

// setBackendHealthLocked is setBackendHealth; callers hold d.mu.
func (d *Daemon) setBackendHealthLocked(container, network, service, health string) bool {
	c := d.containers[container]
	if c == nil || c.endpoints[network] == nil {
		return false
	}
	ep := c.endpoints[network]
	for i, m := range ep.services {
		if m.name != service {
			continue
		}
		if m.health != health {
			ep.services[i].health = health
			d.publishEndpoint(ep)
			// Persisted, so a restarted daemon publishes it again.
			if err := d.saveContainer(container); err != nil {
				d.log.Error("saving state", "err", err)
			}
			if err := d.applyDataplane(); err != nil {
				d.log.Error("data plane", "err", err)
			}
			d.refreshDNS()
		}
		return true
	}
	return false
}
