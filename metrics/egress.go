package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vxmesh/vxmesh/api"
)

// egressDescs describe the host's egress metrics (the networks' gateways).
type egressDescs struct {
	active, max, total, refused, bytes *prometheus.Desc
}

func newEgressDescs() egressDescs {
	return egressDescs{
		active:  desc("egress_flows", "Egress flows open now, by protocol.", "proto"),
		max:     desc("egress_max_flows", "Bound on the egress flows open at once (--egress-max-flows)."),
		total:   desc("egress_flows_total", "Egress flows admitted."),
		refused: desc("egress_refused_total", "Egress flows refused, by reason.", "reason"),
		bytes:   desc("egress_bytes_total", "Payload bytes egressed (out: to the outside).", "direction"),
	}
}

func (d *egressDescs) all() []*prometheus.Desc {
	return []*prometheus.Desc{d.active, d.max, d.total, d.refused, d.bytes}
}

// collectEgress emits the egress metrics.
func (d *egressDescs) collect(e emitter, s api.EgressStats) {
	e.gauge(d.active, float64(s.ActiveTCP), "tcp")
	e.gauge(d.active, float64(s.ActiveUDP), "udp")
	e.gauge(d.active, float64(s.ActiveICMP), "icmp")
	e.gauge(d.max, float64(s.MaxFlows))
	e.counter(d.total, s.Total)
	e.byReason(d.refused, s.Refused)
	e.counter(d.bytes, s.BytesOut, "out")
	e.counter(d.bytes, s.BytesIn, "in")
}
