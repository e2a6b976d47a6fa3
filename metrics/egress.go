package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vxmesh/vxmesh/api"
)

// egressDescs describe the host's egress metrics (the networks' gateways).
type egressDescs struct {
	active, max, total, refused, bytes *prometheus.Desc
	// Published ports' flows (ingress).
	inActive, inTotal, inSNAT, inFailed, inRefused, inBytes *prometheus.Desc
}

func newEgressDescs() egressDescs {
	return egressDescs{
		active:  desc("egress_flows", "Egress flows open now, by protocol.", "proto"),
		max:     desc("egress_max_flows", "Bound on the egress flows open at once (--egress-max-flows)."),
		total:   desc("egress_flows_total", "Egress flows admitted."),
		refused: desc("egress_refused_total", "Egress flows refused, by reason.", "reason"),
		bytes:   desc("egress_bytes_total", "Payload bytes egressed (out: to the outside).", "direction"),

		inActive:  desc("published_flows", "Flows of published ports open now, by protocol.", "proto"),
		inTotal:   desc("published_flows_total", "Flows of published ports accepted."),
		inSNAT:    desc("published_snat_flows_total", "Flows of published ports that entered from the gateway's address (overlay or loopback client)."),
		inFailed:  desc("published_failed_total", "Flows of published ports that could not reach their container."),
		inRefused: desc("published_refused_total", "Flows of the routing mesh's published ports refused: the gateway had no host address to enter from."),
		inBytes:   desc("published_bytes_total", "Payload bytes of published ports (in: to containers).", "direction"),
	}
}

func (d *egressDescs) all() []*prometheus.Desc {
	return []*prometheus.Desc{d.active, d.max, d.total, d.refused, d.bytes, d.inActive, d.inTotal, d.inSNAT, d.inFailed, d.inRefused, d.inBytes}
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
	e.gauge(d.inActive, float64(s.IngressTCP), "tcp")
	e.gauge(d.inActive, float64(s.IngressUDP), "udp")
	e.counter(d.inTotal, s.IngressTotal)
	e.counter(d.inSNAT, s.IngressSNAT)
	e.counter(d.inFailed, s.IngressFailed)
	e.counter(d.inRefused, s.IngressRefused)
	e.counter(d.inBytes, s.IngressBytesIn, "in")
	e.counter(d.inBytes, s.IngressBytesOut, "out")
}
