package metrics

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vxmesh/vxmesh/api"
)

// DefaultMaxServices is the default cap on the (service, network) series
// sets exported per scrape.
const DefaultMaxServices = 1024

// backendStates and backendHealths are the backend labels always
// exported, so that a state with no backend reads 0 rather than missing.
var (
	backendStates  = []string{"active", "draining"}
	backendHealths = []string{"healthy", "unhealthy", "starting"}
)

// serviceDescs describe the service load balancer's metrics: what
// `vxmesh service inspect` and `vxmesh stats` show, by service and
// network (this node's data plane), and the host's conntrack.
type serviceDescs struct {
	conns, active, packets, bytes, retries, rejects, ejections *prometheus.Desc
	backends, drops, omitted, healthLatency                    *prometheus.Desc
	ctEntries, ctMax, ctEvictions, fragEvictions, fragHeld     *prometheus.Desc
}

func newServiceDescs() serviceDescs {
	sn := []string{"network", "service"}
	return serviceDescs{
		conns:     desc("service_connections_total", "Connections (flows) this node's balancer created for the service's VIP.", sn...),
		active:    desc("service_active_connections", "Connections to the service's VIP in this node's conntrack.", sn...),
		packets:   desc("service_packets_total", "Packets this node's balancer translated for the service, both ways.", sn...),
		bytes:     desc("service_bytes_total", "Bytes this node's balancer translated for the service, both ways.", sn...),
		retries:   desc("service_retries_total", "Connection attempts moved to another backend (a RST or an unanswered SYN).", sn...),
		rejects:   desc("service_rejects_total", "Frames to the VIP refused with a RST or an ICMP unreachable.", sn...),
		ejections: desc("service_ejections_total", "Backends ejected after failed connection attempts.", sn...),
		backends:  desc("service_backends", "Backends of the service on the network, by state and health (cluster view).", append(sn, "state", "health")...),
		drops:     desc("balancer_drops_total", "Frames to a VIP the network's balancer dropped or refused, by reason.", "network", "reason"),
		omitted:   desc("metrics_services_omitted", "Service series sets (service, network) left out of this scrape because of the series cap."),
		healthLatency: desc("service_health_check_duration_seconds",
			"Duration of the health checks this node ran on the service's backends on the network (its own backends).", sn...),

		ctEntries:   desc("conntrack_entries", "Connections in the host's conntrack (live, or expired and not swept yet)."),
		ctMax:       desc("conntrack_max", "Size of the host's conntrack."),
		ctEvictions: desc("conntrack_evictions_total", "Live connections evicted because the conntrack was full."),
		fragEvictions: desc("conntrack_frag_evictions_total",
			"Fragmented datagrams to or from a VIP forgotten while incomplete because the fragment table was full."),
		fragHeld: desc("conntrack_frag_held_total",
			"Later fragments to or from a VIP held until their datagram's first fragment came (not drops: one given up counts in balancer_drops_total)."),
	}
}

func (d *serviceDescs) all() []*prometheus.Desc {
	return []*prometheus.Desc{d.conns, d.active, d.packets, d.bytes, d.retries, d.rejects, d.ejections,
		d.backends, d.drops, d.omitted, d.healthLatency, d.ctEntries, d.ctMax, d.ctEvictions, d.fragEvictions, d.fragHeld}
}

// svcKey is one exported (service, network) pair.
type svcKey struct{ network, service string }

// collect emits the service metrics of st (the counters) and svcs (the
// services with their backends), at most max (service, network) pairs,
// the first by network and service name.
func (d *serviceDescs) collect(e emitter, st *api.Stats, svcs []api.Service, max int) {
	e.gauge(d.ctEntries, float64(st.Conntrack.Entries))
	e.gauge(d.ctMax, float64(st.Conntrack.Max))
	e.counter(d.ctEvictions, st.Conntrack.Evictions)
	e.counter(d.fragEvictions, st.Conntrack.FragEvictions)
	e.counter(d.fragHeld, st.Conntrack.FragHeld)
	for _, ns := range st.Networks {
		e.byReason(d.drops, ns.BalancerDrops, ns.Network)
	}
	type backends = map[[2]string]int // by state and health
	pairs := map[svcKey]backends{}
	for _, s := range svcs {
		for _, v := range s.VIPs {
			pairs[svcKey{v.Network, s.Name}] = backends{}
		}
		for _, b := range s.Backends {
			if m := pairs[svcKey{b.Network, s.Name}]; m != nil {
				m[[2]string{b.State, b.Health}]++
			}
		}
	}
	counters := map[svcKey]*api.ServiceStats{}
	for i := range st.Services {
		s := &st.Services[i]
		k := svcKey{s.Network, s.Service}
		counters[k] = s
		if pairs[k] == nil {
			pairs[k] = backends{}
		}
	}
	checks := map[svcKey]api.LatencyStats{}
	for _, h := range st.HealthChecks {
		k := svcKey{h.Network, h.Service}
		checks[k] = h.Latency
		if pairs[k] == nil {
			pairs[k] = backends{}
		}
	}
	keys := make([]svcKey, 0, len(pairs))
	for k := range pairs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].network != keys[j].network {
			return keys[i].network < keys[j].network
		}
		return keys[i].service < keys[j].service
	})
	if max <= 0 {
		max = DefaultMaxServices
	}
	omitted := 0
	if len(keys) > max {
		omitted, keys = len(keys)-max, keys[:max]
	}
	e.gauge(d.omitted, float64(omitted))
	for _, k := range keys {
		l := []string{k.network, k.service}
		if c := counters[k]; c != nil {
			e.counter(d.conns, c.NewConns, l...)
			e.gauge(d.active, float64(c.Active), l...)
			e.counter(d.packets, c.Packets, l...)
			e.counter(d.bytes, c.Bytes, l...)
			e.counter(d.retries, c.Retries, l...)
			e.counter(d.rejects, c.Rejects, l...)
			e.counter(d.ejections, c.Ejections, l...)
		}
		if h, ok := checks[k]; ok {
			count, sum, buckets := Histogram(h)
			e <- prometheus.MustNewConstHistogram(d.healthLatency, count, sum, buckets, l...)
		}
		for _, state := range backendStates {
			for _, health := range backendHealths {
				e.gauge(d.backends, float64(pairs[k][[2]string{state, health}]), k.network, k.service, state, health)
			}
		}
	}
}
