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
	// The routing mesh's per-packet NAT (its flows are not the
	// gateway's: published_* above does not count them).
	natOpen, natFlows, natMax, natTotal, natEvicted, natFrames, natDrops, natResets, natPorts *prometheus.Desc
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

		natOpen:    desc("published_nat_connections", "Connections of published ports the per-packet NAT carries now (not in published_flows)."),
		natFlows:   desc("published_nat_flows", "Flows in the per-packet NAT's table (closing ones too)."),
		natMax:     desc("published_nat_max_flows", "Bound on the per-packet NAT's flows."),
		natTotal:   desc("published_nat_flows_total", "Flows of published ports the per-packet NAT started (not in published_flows_total)."),
		natEvicted: desc("published_nat_evicted_total", "Closing flows the per-packet NAT freed early to make room."),
		natFrames:  desc("published_nat_frames_total", "Frames the per-packet NAT translated (in: to containers).", "direction"),
		natDrops:   desc("published_nat_drops_total", "Frames the per-packet NAT dropped, by reason.", "reason"),
		natResets:  desc("published_nat_resets_total", "RSTs the per-packet NAT sent to clients for segments of no flow."),
		natPorts:   desc("published_nat_ports", "Published ports steered to the per-packet NAT."),
	}
}

func (d *egressDescs) all() []*prometheus.Desc {
	return []*prometheus.Desc{d.active, d.max, d.total, d.refused, d.bytes, d.inActive, d.inTotal, d.inSNAT, d.inFailed, d.inRefused, d.inBytes,
		d.natOpen, d.natFlows, d.natMax, d.natTotal, d.natEvicted, d.natFrames, d.natDrops, d.natResets, d.natPorts}
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
	if n := s.NAT; n != nil {
		e.gauge(d.natOpen, float64(n.Open))
		e.gauge(d.natFlows, float64(n.Flows))
		e.gauge(d.natMax, float64(n.Max))
		e.counter(d.natTotal, n.Total)
		e.counter(d.natEvicted, n.Evicted)
		e.counter(d.natFrames, n.FramesIn, "in")
		e.counter(d.natFrames, n.FramesOut, "out")
		e.byReason(d.natDrops, n.Drops)
		e.counter(d.natResets, n.Resets)
		e.gauge(d.natPorts, float64(n.Ports))
	}
}
