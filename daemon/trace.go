package daemon

import (
	"fmt"
	"net/netip"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/dataplane"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

// traceProtos maps ParseTraceTarget's protocols to IP protocol numbers.
var traceProtos = map[string]uint8{"tcp": packet.ProtoTCP, "udp": packet.ProtoUDP, "icmp": packet.ProtoICMP}

// maxTraceSize is the largest IP packet a trace builds.
const maxTraceSize = 65535

// Trace answers what the data plane would do with the first packet of a
// flow from a local endpoint (POST /v1/trace): the frame the container
// would send, followed through the switch, the balancer, the tunnel and
// the gateway by their own decision code, changing nothing.
func (d *Daemon) Trace(req api.TraceRequest) (api.Trace, error) {
	dst, proto, dport, err := api.ParseTraceTarget(req.To)
	if err != nil {
		return api.Trace{}, invalid("%v", err)
	}
	if req.Size < 0 || req.Size > maxTraceSize {
		return api.Trace{}, invalid("size %d: want 0-%d", req.Size, maxTraceSize)
	}
	ep, err := d.traceSource(req.Network, req.From)
	if err != nil {
		return api.Trace{}, err
	}
	dt, err := d.dp.Trace(dataplane.TraceRequest{Network: req.Network, Port: ep.port, Dst: dst,
		Proto: traceProtos[proto], DPort: dport, Size: req.Size})
	if err != nil {
		return api.Trace{}, notFound("%v", err)
	}
	out := api.Trace{
		Network: req.Network, Container: ep.container, Port: ep.port, SrcMAC: dt.SrcMAC.String(), Src: dt.Src.String(),
		Dst: dst.String(), Proto: proto, DstPort: dport, NextHop: dt.NextHop.String(), Flood: []string{},
		Verdict: dt.Verdict, Drop: dt.Drop, DropIn: dt.DropIn, Out: dt.Switch.Out,
	}
	if dt.ARP {
		out.Steps = append(out.Steps, api.TraceStep{Stage: "arp", Result: fmt.Sprintf(
			"%s is not in the switch's ARP table: the container's ARP request is what it sends", dt.NextHop)})
	} else {
		out.DstMAC = dt.DstMAC.String()
		out.Steps = append(out.Steps, api.TraceStep{Stage: "arp", Result: fmt.Sprintf(
			"the container resolves %s to %s (the switch answers)", dt.NextHop, dt.DstMAC)})
	}
	for _, s := range dt.Switch.Steps {
		out.Steps = append(out.Steps, api.TraceStep{Stage: s.Stage, Result: s.Result})
	}
	out.Flood = append(out.Flood, dt.Switch.Flood...)
	if p := dt.Switch.Service; p != nil && p.Service != "" {
		out.Service = &api.TraceService{Name: p.Service, VIP: p.VIP.String(), Scheduler: p.Scheduler.String(),
			Verdict: p.Verdict.String(), Existing: p.Existing, BackendPort: p.BackendPort}
		if p.Reason != 0 {
			out.Service.Reason = p.Reason.String()
		}
		if p.Backend.IsValid() {
			out.Service.Backend = p.Backend.String()
		}
	}
	if dt.Tunnel != nil {
		out.Tunnel = d.traceTunnel(req.Network, dt.Tunnel)
		out.Steps = append(out.Steps, tunnelSteps(out.Tunnel, dt.Tunnel)...)
	}
	if dt.Switch.OutKind == "gateway" && !dt.ARP {
		out.Steps = append(out.Steps, egressStep(&dt))
		if dt.Verdict == dataplane.TraceEgress || dt.DropIn == "egress" {
			out.Egress = "allowed"
			if dt.Egress != "" {
				out.Egress = dt.Egress
			}
		}
	}
	out.Steps = append(out.Steps, api.TraceStep{Stage: "verdict", Result: verdictLine(&out)})
	return out, nil
}

// traceEndpoint is a trace's source.
type traceEndpoint struct{ container, port string }

// traceSource finds the local endpoint on network named by from: a
// container name, or the IP address of one of the host's endpoints.
func (d *Daemon) traceSource(network, from string) (traceEndpoint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case network == "":
		return traceEndpoint{}, invalid("which network? (--network)")
	case from == "":
		return traceEndpoint{}, invalid("from which container? (--from)")
	case d.networks[network] == nil:
		return traceEndpoint{}, notFound("network %q not found", network)
	}
	if ip, err := netip.ParseAddr(from); err == nil {
		for _, c := range d.containers {
			if ep := c.endpoints[network]; ep != nil && ep.ip == ip {
				return traceEndpoint{c.name, ep.portName()}, nil
			}
		}
		return traceEndpoint{}, notFound("no endpoint of this host has address %s on network %q", ip, network)
	}
	c := d.containers[from]
	if c == nil {
		return traceEndpoint{}, notFound("container %q not found on this host", from)
	}
	ep := c.endpoints[network]
	if ep == nil {
		return traceEndpoint{}, notFound("container %q has no endpoint on network %q", from, network)
	}
	return traceEndpoint{c.name, ep.portName()}, nil
}

// traceTunnel describes the tunnel's part of a trace: each peer's node
// and, on an encrypted network, the SA sealing its datagrams and the data
// key it is derived from.
func (d *Daemon) traceTunnel(network string, t *tunnel.Trace) *api.TraceTunnel {
	d.mu.Lock()
	defer d.mu.Unlock()
	tt := &api.TraceTunnel{MTU: t.MTU, Flood: t.Flood, Encrypted: t.Cipher != 0, Peers: []api.TracePeer{}}
	if n := d.networks[network]; n != nil {
		tt.VNI = n.rec.VNI
	}
	if t.Cipher != 0 {
		tt.Cipher = t.Cipher.String()
	}
	nodeOf := map[netip.Addr]string{}
	for _, m := range d.cl.Members() {
		if m.Meta.DataAddr.IsValid() {
			nodeOf[m.Meta.DataAddr.Addr()] = m.Name
		}
	}
	type outSA struct {
		key   uint32
		state string
	}
	sas := map[string]outSA{} // by VTEP and SPI
	if t.Cipher != 0 {
		for _, sa := range d.saViews(t.Cipher) {
			if sa.Direction == "out" {
				sas[sa.VTEP+"/"+sa.SPI] = outSA{sa.Key, sa.State}
			}
		}
	}
	for i, addr := range t.Peers {
		p := api.TracePeer{VTEP: addr.String(), Node: nodeOf[addr]}
		if t.Cipher != 0 && i < len(t.SAs) && t.SAs[i].Found {
			p.SPI = fmt.Sprintf("0x%08x", t.SAs[i].SPI)
			if o, ok := sas[p.VTEP+"/"+p.SPI]; ok {
				p.Key, p.KeyState = o.key, o.state
			}
		}
		tt.Peers = append(tt.Peers, p)
	}
	return tt
}

// tunnelSteps describes the tunnel's decisions.
func tunnelSteps(tt *api.TraceTunnel, t *tunnel.Trace) []api.TraceStep {
	var steps []api.TraceStep
	add := func(format string, args ...any) {
		steps = append(steps, api.TraceStep{Stage: "tunnel", Result: fmt.Sprintf(format, args...)})
	}
	if t.Drop == "mtu" || t.Drop == "gso-invalid" || t.Drop == "down" {
		add("dropped: %s (network MTU %d)", t.Drop, t.MTU)
		return steps
	}
	how := "to the VTEP that has the destination MAC"
	if t.Flood {
		how = "flooded to every peer"
	}
	if len(tt.Peers) == 0 {
		add("VNI %d: %s, but the network has no peer (nothing sent, counted as flood-no-peers)", tt.VNI, how)
	}
	for _, p := range tt.Peers {
		who := p.VTEP
		if p.Node != "" {
			who += " (node " + p.Node + ")"
		}
		switch {
		case !tt.Encrypted:
			add("VNI %d, MTU %d: %s %s, VXLAN in the clear", tt.VNI, tt.MTU, how, who)
		case p.SPI == "":
			add("VNI %d, MTU %d: %s %s: encrypted (%s) but no SA to it yet: dropped (no-sa)", tt.VNI, tt.MTU, how, who, tt.Cipher)
		default:
			add("VNI %d, MTU %d: %s %s, sealed with ESP %s, SA SPI %s, data key %d (%s)", tt.VNI, tt.MTU, how, who, tt.Cipher, p.SPI, p.Key, p.KeyState)
		}
	}
	return steps
}

// egressStep describes the gateway's decision.
func egressStep(dt *dataplane.Trace) api.TraceStep {
	s := api.TraceStep{Stage: "gateway"}
	switch {
	case dt.Verdict == dataplane.TraceGateway:
		s.Result = "to the gateway's own address: answered by its stack (ping, DNS)"
	case dt.Egress == "":
		s.Result = "egress allowed: the gateway's forwarder re-originates the flow from the host's address"
	case dt.Internal:
		s.Result = "egress refused: " + dt.Egress + " (the network is internal): the container gets a reset or port unreachable"
	default:
		s.Result = "egress refused: " + dt.Egress + ": the container gets a reset or port unreachable"
	}
	return s
}

// verdictLine is a trace's last step.
func verdictLine(t *api.Trace) string {
	switch t.Verdict {
	case "drop":
		return fmt.Sprintf("drop: %s (counted in the %s stats)", t.Drop, t.DropIn)
	case "deliver":
		return "deliver to local port " + t.Out
	case "tunnel":
		peers := ""
		for _, p := range t.Tunnel.Peers {
			peers += " " + p.VTEP
		}
		return "tunnel to" + peers
	case "flood":
		return fmt.Sprintf("flood to %v", t.Flood)
	}
	return t.Verdict
}
