package daemon

import "github.com/vxmesh/vxmesh/api"

// egressStats are the counters of this host's egress.
func (d *Daemon) egressStats() api.EgressStats {
	if d.egress == nil {
		return api.EgressStats{}
	}
	s := d.egress.Stats()
	return api.EgressStats{
		MaxFlows: s.MaxFlows, ActiveTCP: s.ActiveTCP, ActiveUDP: s.ActiveUDP, ActiveICMP: s.ActiveICMP,
		Total: s.Total, Refused: s.Refused, BytesOut: s.BytesOut, BytesIn: s.BytesIn, ICMPErrors: s.ICMPErrors,
		TTLExceeded: s.TTLExceeded, TTLDropped: s.TTLDropped, ICMPRateLimited: s.ICMPRateLimited,
		IngressTCP: s.IngressTCP, IngressUDP: s.IngressUDP, IngressTotal: s.IngressTotal, IngressSNAT: s.IngressSNAT,
		IngressFailed: s.IngressFailed, IngressBytesIn: s.IngressBytesIn, IngressBytesOut: s.IngressBytesOut,
		IngressRefused: s.IngressRefused, IngressFast: s.IngressFast, IngressFastFallback: s.IngressFastFallback,
	}
}
