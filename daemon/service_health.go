package daemon

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/lb/health"
	"github.com/vxmesh/vxmesh/sandbox"
)

// Active health checks (lb/health). One Prober per daemon checks every
// local backend of a service that has a check, from inside the backend's
// own namespace to its own address: syncHealth rebuilds its targets
// whenever endpoints, memberships or services change (from
// applyDataplane), and onHealth publishes what the checks find in the
// backend's endpoint record, which every host maps to its balancer
// (starting and unhealthy: lb.Ejected) and DNS (only healthy backends).

// healthDialer is the optional Sandbox method that gives the checks of a
// container's backends a dial from inside its namespace. Without it
// (unit-test fakes) checks dial from the daemon's namespace.
type healthDialer interface {
	HealthDialer(nsPath string) health.DialFunc
}

// HealthDialer dials from inside the namespace at nsPath.
func (linuxSandbox) HealthDialer(nsPath string) health.DialFunc {
	return sandbox.NetnsDialer(nsPath)
}

// healthRef is the backend a Prober target checks.
type healthRef struct {
	container, network, service, id string
}

// healthKey names a target: the backend and the namespace's identity, so
// a container restarted in a new namespace gets a new target (a target
// given again with its key keeps its old dialer).
func healthKey(c *container, network, service string) string {
	return c.name + "/" + network + "/" + service + "/" + strconv.FormatUint(c.nsDev, 10) + ":" + strconv.FormatUint(c.nsIno, 10)
}

// syncHealth gives the Prober a target for every local backend (an
// endpoint that is up, of a service with a check) and sets the
// memberships of services without a check back to healthy (a check
// removed by `service update --no-health` leaves none ejected). It
// reports whether it changed a membership (published already). Callers
// hold d.mu.
func (d *Daemon) syncHealth() bool {
	if d.prober == nil {
		return false
	}
	specs := d.clusterServices()
	refs := map[string]healthRef{}
	var ts []health.Target
	changed := false
	for c := range d.backendContainers() {
		var dial health.DialFunc
		if hd, ok := d.sb.(healthDialer); ok {
			dial = hd.HealthDialer(c.netns)
		}
		for _, ep := range c.endpoints {
			published := false
			for i, m := range ep.services {
				s := specs[m.name]
				if s == nil || s.rec.ID != m.id || !s.onNetwork(ep.net.rec.Name) {
					continue // not (or no longer) a service: no backend
				}
				if s.health.IsZero() {
					if m.health != backendHealthy {
						ep.services[i].health = backendHealthy
						published = true
					}
					continue
				}
				if ep.down != "" || c.stopped {
					continue // nothing to check: no backend until it runs
				}
				key := healthKey(c, ep.net.rec.Name, m.name)
				refs[key] = healthRef{container: c.name, network: ep.net.rec.Name, service: m.name, id: m.id}
				ts = append(ts, health.Target{Key: key, Addr: ep.ip, Spec: s.health, Dial: dial, Group: healthGroup(m.name, ep.net.rec.Name)})
			}
			if published {
				d.publishEndpoint(ep)
				changed = true
			}
		}
	}
	if err := d.prober.SetTargets(ts); err != nil {
		d.log.Error("health checks", "err", err)
		return changed
	}
	d.healthRefs = refs
	return changed
}

// isBackend reports whether an endpoint of c joined a service.
func (c *container) isBackend() bool {
	for _, ep := range c.endpoints {
		if len(ep.services) > 0 {
			return true
		}
	}
	return false
}

// backendContainers returns the containers with an endpoint that joined a
// service: a set kept up to date by containerChanged and made again after
// endpointsChanged, so that syncHealth does not walk every container on
// every apply. An endpoint's services are set before it is recorded
// (attach, restore) and not changed after, but for their health and
// draining. Callers hold d.mu.
func (d *Daemon) backendContainers() map[*container]bool {
	if d.backendCtrs == nil {
		d.backendCtrs = map[*container]bool{}
		for _, c := range d.containers {
			if c.isBackend() {
				d.backendCtrs[c] = true
			}
		}
	}
	return d.backendCtrs
}

// onHealth is the Prober's callback: it publishes a backend's new
// health. It takes d.mu; the Prober is closed without it.
func (d *Daemon) onHealth(ev health.Event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ref, ok := d.healthRefs[ev.Key]
	if !ok {
		return // removed meanwhile
	}
	h := ev.State.String()
	if d.setBackendHealthLocked(ref.container, ref.network, ref.service, h) {
		d.log.Info("backend health", "container", ref.container, "network", ref.network, "service", ref.service, "health", h, "reason", ev.Reason)
	}
}

// localHealth is the health of this node's checked backends as
// `service ps` shows it: by container, network and service.
type localHealth struct {
	reason string
	since  time.Time
}

// healthStatus returns the Prober's view of the local backends, keyed
// like healthRef without the id. Callers hold d.mu.
func (d *Daemon) healthStatus() map[healthRef]localHealth {
	out := map[healthRef]localHealth{}
	if d.prober == nil {
		return out
	}
	for _, st := range d.prober.Status() {
		ref, ok := d.healthRefs[st.Key]
		if !ok {
			continue
		}
		ref.id = ""
		out[ref] = localHealth{reason: st.Reason, since: st.Since}
	}
	return out
}

// healthGroup names the prober's histogram of a service's checks on a
// network (health.Target.Group).
func healthGroup(service, network string) string { return service + "\x00" + network }

// healthLatencies returns the durations of this node's health checks by
// service and network, sorted.
func (d *Daemon) healthLatencies() []api.HealthCheckStats {
	if d.prober == nil {
		return nil
	}
	var out []api.HealthCheckStats
	for g, l := range d.prober.Latencies() {
		service, network, _ := strings.Cut(g, "\x00")
		s := api.HealthCheckStats{Service: service, Network: network,
			Latency: api.LatencyStats{Count: l.Count, MaxMs: ms(l.Max.Seconds()), Buckets: []api.LatencyBucket{}}}
		if l.Count > 0 {
			s.Latency.AvgMs = ms(l.Sum.Seconds() / float64(l.Count))
		}
		for i, c := range l.Buckets {
			b := api.LatencyBucket{Count: c}
			if i < len(health.LatencyBounds) {
				b.LeMs = ms(health.LatencyBounds[i].Seconds())
			}
			s.Latency.Buckets = append(s.Latency.Buckets, b)
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b api.HealthCheckStats) int {
		return cmp.Or(strings.Compare(a.Network, b.Network), strings.Compare(a.Service, b.Service))
	})
	return out
}
