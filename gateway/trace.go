package gateway

// NoEgress is EgressVerdict's answer when the host has no egress at all.
const NoEgress = "no-egress"

// policy is the Policy g's flows are decided under.
func (e *Egress) policy(g *Gateway) Policy {
	return Policy{Subnet: g.cfg.Addr.Masked(), Gateway: g.cfg.Addr.Addr(), Internal: g.cfg.Internal, Overlay: *e.overlay.Load()}
}

// EgressVerdict reports how g's forwarders would decide a new flow f to
// an outside address: "" if it leaves the overlay, else the Refuse*
// reason (as Stats.Refused counts it), NoEgress if the host has no
// egress. The policy and Decide are the forwarders' own; no flow slot is
// taken and nothing is counted (MaxFlows is not checked).
func (g *Gateway) EgressVerdict(f Flow) string {
	e := g.cfg.Egress
	if e == nil {
		return NoEgress
	}
	p := e.policy(g)
	return Decide(&p, f)
}

// Internal reports whether g's network is internal (no egress).
func (g *Gateway) Internal() bool { return g.cfg.Internal }
