package gateway

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of EgressConfig.
const (
	DefaultMaxFlows    = 65536
	DefaultUDPIdle     = 120 * time.Second
	DefaultDialTimeout = 30 * time.Second
	// DefaultIngressKeepalive is EgressConfig.IngressKeepalive's default.
	DefaultIngressKeepalive = 30 * time.Second
)

// EgressConfig configures the host's egress.
type EgressConfig struct {
	// MaxFlows bounds the egress and published-port flows open at once
	// on this host, over all networks and protocols; 0 means
	// DefaultMaxFlows.
	MaxFlows int
	// UDPIdle is how long a UDP flow lives without a datagram either
	// way; 0 means DefaultUDPIdle.
	UDPIdle time.Duration
	// DialTimeout bounds an outside TCP connect; 0 means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// IngressKeepalive is how long a published port's connection into
	// the network may be idle before the gateway probes it (TCP
	// keepalive, every third of it after that; three unanswered probes
	// end the flow; data or a FIN unacknowledged for twice as long end
	// it too), so a flow whose other side vanished (a backend gone while
	// its FIN was lost) ends instead of waiting for a FIN or data that
	// never come; 0 means DefaultIngressKeepalive.
	IngressKeepalive time.Duration
	// TCPSecret (TCPSecret of the cluster key, the same on every host
	// of the cluster) is what every gateway's stack derives its TCP ISNs
	// and timestamp offsets from, on wall-clock time (tcpsync.go): a
	// client's connections through different hosts' gateways then agree
	// as one host's would, and the backend's TIME-WAIT takes the next
	// one. Nil: each stack has random secrets.
	TCPSecret []byte
	// Dial opens the outside socket; nil means a net.Dialer (which
	// sends a TCP connect's SYN with the container's SYN's TTL less one
	// and learns which router a TTL expired at: see dialControl). For
	// tests.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Reasons a flow is refused, the keys of Stats.Refused.
const (
	RefuseInternal = "internal" // the network has no egress
	RefuseOverlay  = "overlay"  // the destination is in an overlay network's subnet
	RefuseLocal    = "local"    // the destination is the gateway itself
	RefuseAddress  = "address"  // not a unicast destination, or a loopback one
	RefuseSource   = "source"   // the source is not in the network's subnet
	RefuseLimit    = "limit"    // MaxFlows flows are open
	RefuseConnect  = "connect"  // the outside connect failed (refused, unreachable, timeout)
	RefuseClosing  = "closing"  // the gateway is closing
	RefuseEcho     = "echo"     // the outside echo could not be sent
	// RefuseIngressLimit: a published port's flow found MaxFlows flows
	// open (egress and published flows share the bound).
	RefuseIngressLimit = "ingress-limit"
)

// Stats are the host's egress counters.
type Stats struct {
	// MaxFlows is the configured bound.
	MaxFlows int `json:"max_flows"`
	// Active are the flows open now, by protocol.
	ActiveTCP  int64 `json:"active_tcp"`
	ActiveUDP  int64 `json:"active_udp"`
	ActiveICMP int64 `json:"active_icmp"`
	// Total counts every flow admitted since start.
	Total uint64 `json:"total"`
	// Refused counts refused flows by reason (Refuse* constants).
	Refused map[string]uint64 `json:"refused,omitempty"`
	// BytesOut and BytesIn count payload bytes to and from the outside.
	BytesOut uint64 `json:"bytes_out"`
	BytesIn  uint64 `json:"bytes_in"`
	// ICMPErrors counts the ICMP destination unreachables reflected to
	// containers (see icmperr.go).
	ICMPErrors uint64 `json:"icmp_errors,omitempty"`
	// TTLExceeded counts the ICMP time exceeded the gateways sent for
	// packets to outside addresses whose TTL expired there (also in
	// ICMPErrors); TTLDropped the later fragments of such packets,
	// dropped without one; ICMPRateLimited the ICMP errors not sent
	// because a gateway's rate limit was spent (see ttl.go).
	TTLExceeded     uint64 `json:"ttl_exceeded,omitempty"`
	TTLDropped      uint64 `json:"ttl_dropped,omitempty"`
	ICMPRateLimited uint64 `json:"icmp_rate_limited,omitempty"`

	// Ingress counts published ports' flows: active TCP connections and
	// UDP flows, all accepted ones, those that entered with the
	// gateway's address instead of the client's (ingressSource), those
	// refused or failed, and bytes towards containers (in) and clients.
	IngressTCP      int64  `json:"ingress_tcp"`
	IngressUDP      int64  `json:"ingress_udp"`
	IngressTotal    uint64 `json:"ingress_total"`
	IngressSNAT     uint64 `json:"ingress_snat"`
	IngressFailed   uint64 `json:"ingress_failed"`
	IngressBytesIn  uint64 `json:"ingress_bytes_in"`
	IngressBytesOut uint64 `json:"ingress_bytes_out"`
	// IngressRefused counts routing-mesh flows refused because they
	// needed the gateway's host address and it had none (also counted
	// in IngressFailed).
	IngressRefused uint64 `json:"ingress_refused"`
	// IngressFast counts published TCP flows dialled on the fast path
	// (from inside the container's namespace, see FastPath);
	// IngressFastFallback those that took the gateway's stack because
	// the fast path could not be set up for them.
	IngressFast         uint64 `json:"ingress_fast"`
	IngressFastFallback uint64 `json:"ingress_fast_fallback"`
	// NAT are the counters of the NAT of steered published ports (nil
	// without one).
	NAT *NATStats `json:"nat,omitempty"`
}

// Egress is the host's egress state, shared by every network's gateway:
// the flow bound and counters, and the overlay subnets that are never
// egressed. Its methods are safe for concurrent use.
type Egress struct {
	cfg     EgressConfig
	overlay atomic.Pointer[[]netip.Prefix]

	active            atomic.Int64
	tcp, udp, icmp    atomic.Int64
	total             atomic.Uint64
	bytesOut, bytesIn atomic.Uint64
	icmpErrors        atomic.Uint64
	ttlExceeded       atomic.Uint64 // time exceeded sent (ttl.go)
	ttlDropped        atomic.Uint64 // later fragments whose TTL expired
	icmpLimited       atomic.Uint64 // ICMP errors the rate limit held back
	mu                sync.Mutex
	refused           map[string]uint64

	ingressTCP, ingressUDP           atomic.Int64
	ingressTotal, ingressSNAT        atomic.Uint64
	ingressFailed, ingressRefused    atomic.Uint64
	ingressBytesIn, ingressBytesOut  atomic.Uint64
	ingressFast, ingressFastFallback atomic.Uint64

	workers *workers // run TCP flows' goroutines
	// nat translates steered published ports per packet (SetNAT).
	nat atomic.Pointer[NAT]
	// dialTimers are published connections' connect timeouts (see
	// newDialTimers).
	dialTimers *sync.Pool
}

// NewEgress returns the host's egress state.
func NewEgress(cfg EgressConfig) *Egress {
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.UDPIdle <= 0 {
		cfg.UDPIdle = DefaultUDPIdle
	}
	if cfg.IngressKeepalive <= 0 {
		cfg.IngressKeepalive = DefaultIngressKeepalive
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.Dial == nil {
		d := &net.Dialer{KeepAlive: 30 * time.Second, ControlContext: dialControl}
		cfg.Dial = d.DialContext
	}
	e := &Egress{cfg: cfg, refused: map[string]uint64{}, workers: newWorkers(), dialTimers: newDialTimers()}
	e.overlay.Store(&[]netip.Prefix{})
	return e
}

// SetNAT gives e the NAT that published ports may be steered to
// (Port.SteerNAT) and that its gateways hand the replies of NAT flows to.
func (e *Egress) SetNAT(n *NAT) { e.nat.Store(n) }

// NAT returns e's NAT, nil if it has none.
func (e *Egress) NAT() *NAT { return e.nat.Load() }

// SetOverlay sets the subnets of every overlay network: destinations in
// them belong to the overlay and are never egressed.
func (e *Egress) SetOverlay(subnets []netip.Prefix) {
	s := make([]netip.Prefix, 0, len(subnets))
	for _, p := range subnets {
		if p.IsValid() {
			s = append(s, p.Masked())
		}
	}
	e.overlay.Store(&s)
}

// Stats returns a snapshot of the counters.
func (e *Egress) Stats() Stats {
	st := Stats{
		MaxFlows: e.cfg.MaxFlows, ActiveTCP: e.tcp.Load(), ActiveUDP: e.udp.Load(), ActiveICMP: e.icmp.Load(),
		Total: e.total.Load(), BytesOut: e.bytesOut.Load(), BytesIn: e.bytesIn.Load(), ICMPErrors: e.icmpErrors.Load(),
		TTLExceeded: e.ttlExceeded.Load(), TTLDropped: e.ttlDropped.Load(), ICMPRateLimited: e.icmpLimited.Load(),
		IngressTCP: e.ingressTCP.Load(), IngressUDP: e.ingressUDP.Load(), IngressTotal: e.ingressTotal.Load(),
		IngressSNAT: e.ingressSNAT.Load(), IngressFailed: e.ingressFailed.Load(),
		IngressBytesIn: e.ingressBytesIn.Load(), IngressBytesOut: e.ingressBytesOut.Load(),
		IngressRefused: e.ingressRefused.Load(),
		IngressFast:    e.ingressFast.Load(), IngressFastFallback: e.ingressFastFallback.Load(),
	}
	if n := e.nat.Load(); n != nil {
		ns := n.Stats()
		st.NAT = &ns
	}
	e.mu.Lock()
	if len(e.refused) > 0 {
		st.Refused = make(map[string]uint64, len(e.refused))
		for k, v := range e.refused {
			st.Refused[k] = v
		}
	}
	e.mu.Unlock()
	return st
}

// refuse counts a refusal.
func (e *Egress) refuse(reason string) {
	e.mu.Lock()
	e.refused[reason]++
	e.mu.Unlock()
}

// Flow is what the stack hands a forwarder: a new flow from an endpoint.
type Flow struct {
	// Proto is packet.ProtoTCP, ProtoUDP or ProtoICMP (ports 0).
	Proto uint8
	Src   netip.AddrPort
	Dst   netip.AddrPort
}

// Policy is what Decide checks a flow against.
type Policy struct {
	// Subnet is the network's subnet, Gateway its gateway address.
	Subnet  netip.Prefix
	Gateway netip.Addr
	// Internal networks egress nothing.
	Internal bool
	// Overlay are the subnets of every overlay network.
	Overlay []netip.Prefix
}

// Decide returns why flow f may not leave the overlay under p, or "" if
// it may.
func Decide(p *Policy, f Flow) string {
	src, dst := f.Src.Addr().Unmap(), f.Dst.Addr().Unmap()
	switch {
	case p.Internal:
		return RefuseInternal
	case !src.Is4() || !p.Subnet.Contains(src) || src == p.Gateway:
		return RefuseSource
	case dst == p.Gateway:
		return RefuseLocal
	case !dst.Is4() || !dst.IsGlobalUnicast() && !dst.IsPrivate() && !dst.IsLinkLocalUnicast() ||
		dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || dst.As4()[0] == 0:
		return RefuseAddress
	case (f.Proto == 6 || f.Proto == 17) && (f.Dst.Port() == 0 || f.Src.Port() == 0):
		return RefuseAddress
	case p.Subnet.Contains(dst):
		return RefuseOverlay
	}
	for _, o := range p.Overlay {
		if o.Contains(dst) {
			return RefuseOverlay
		}
	}
	return ""
}

// admit decides flow f of gateway g and, if it may leave, takes a flow
// slot (released with done). It counts refusals.
func (e *Egress) admit(g *Gateway, f Flow) string {
	p := e.policy(g)
	why := Decide(&p, f)
	if why == "" && e.active.Add(1) > int64(e.cfg.MaxFlows) {
		e.active.Add(-1)
		why = RefuseLimit
	}
	if why != "" {
		e.refuse(why)
		return why
	}
	e.total.Add(1)
	e.counter(f.Proto).Add(1)
	return ""
}

// ingressSlot takes a flow slot for a published port's new flow (released
// with ingressSlotDone); it reports false, counted, when MaxFlows flows
// are open.
func (e *Egress) ingressSlot() bool {
	if e.active.Add(1) > int64(e.cfg.MaxFlows) {
		e.active.Add(-1)
		e.refuse(RefuseIngressLimit)
		return false
	}
	return true
}

// ingressSlotDone releases a slot ingressSlot took.
func (e *Egress) ingressSlotDone() { e.active.Add(-1) }

// done releases the slot of an admitted flow.
func (e *Egress) done(f Flow) {
	e.active.Add(-1)
	e.counter(f.Proto).Add(-1)
}

func (e *Egress) counter(proto uint8) *atomic.Int64 {
	switch proto {
	case 6:
		return &e.tcp
	case 17:
		return &e.udp
	}
	return &e.icmp
}

// ingressStart counts a new published flow (active in n).
func (e *Egress) ingressStart(n *atomic.Int64, spoofed bool) {
	n.Add(1)
	e.ingressTotal.Add(1)
	if !spoofed {
		e.ingressSNAT.Add(1)
	}
}

// Close stops the egress's idle flow workers at once (they otherwise
// linger for workerIdle). Call it after closing every port and gateway
// that uses the egress; flows started later still run.
func (e *Egress) Close() { e.workers.stop() }
