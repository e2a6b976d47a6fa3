package daemon

import "github.com/vxmesh/vxmesh/api"

// egressStats are the counters of this host's egress.
func (d *Daemon) egressStats() api.EgressStats {
	if d.egress == nil {
		return api.EgressStats{}
	}
	s := d.egress.Stats()
	var nat *api.NATStats
	if n := s.NAT; n != nil {
		nat = &api.NATStats{Flows: n.Flows, Open: n.Open, Max: n.Max, Total: n.Total, Evicted: n.Evicted, FramesIn: n.In, FramesOut: n.Out, Ports: n.Ports, Drops: n.Drops, Resets: n.Resets}
	}
	if m := d.meshNAT.Load(); m != nil && m.mode != MeshNATOff {
		if nat == nil {
			nat = &api.NATStats{} // the steering failed at start
		}
		nat.Mode, nat.Active, nat.Reason, nat.Cut = string(m.mode), m.active, m.reason, m.cut
	}
	return api.EgressStats{
		NAT:      nat,
		MaxFlows: s.MaxFlows, ActiveTCP: s.ActiveTCP, ActiveUDP: s.ActiveUDP, ActiveICMP: s.ActiveICMP,
		Total: s.Total, Refused: s.Refused, BytesOut: s.BytesOut, BytesIn: s.BytesIn, ICMPErrors: s.ICMPErrors,
		TTLExceeded: s.TTLExceeded, TTLDropped: s.TTLDropped, ICMPRateLimited: s.ICMPRateLimited,
		IngressTCP: s.IngressTCP, IngressUDP: s.IngressUDP, IngressTotal: s.IngressTotal, IngressSNAT: s.IngressSNAT,
		IngressFailed: s.IngressFailed, IngressBytesIn: s.IngressBytesIn, IngressBytesOut: s.IngressBytesOut,
		IngressRefused: s.IngressRefused, IngressFast: s.IngressFast, IngressFastFallback: s.IngressFastFallback,
	}
}
