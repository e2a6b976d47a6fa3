package dataplane

import (
	"errors"
	"net/netip"

	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/vswitch"
)

// GatewayPortName is the name of each switch's gateway port.
const GatewayPortName = "gateway"

// netGateway is a network's applied gateway: the stack and its switch
// port, which takes the stack's frames (gateway.Attach).
type netGateway struct {
	gw   *gateway.Gateway
	ref  *vswitch.Port
	host bool // gw has n.cfg's host identity
}

// wantsGateway reports whether w asks for a gateway port: it has a
// gateway address, MAC and subnet.
func wantsGateway(w *NetworkConfig) bool {
	return w.Gateway.Is4() && !w.GatewayMAC.IsZero() && w.Subnet.IsValid()
}

// applyGateway gives n its gateway port if w wants one and it has none
// (a network whose gateway settings change is rebuilt, see sameShape).
func (dp *Dataplane) applyGateway(n *network, w *NetworkConfig, errs *[]error) {
	if n.gw != nil || !wantsGateway(w) {
		return
	}
	dp.changes++
	fail := func(err error) { *errs = append(*errs, &Error{Network: w.Name, Object: "gateway", Err: err}) }
	if !w.Subnet.Contains(w.Gateway) {
		fail(errors.New("gateway " + w.Gateway.String() + " is not in subnet " + w.Subnet.String()))
		return
	}
	g, err := gateway.New(gateway.Config{
		Name: w.Name, Addr: netip.PrefixFrom(w.Gateway, w.Subnet.Bits()), MAC: w.GatewayMAC,
		MTU: w.MTU, Internal: w.Internal, Egress: dp.egress,
		HostAddr: n.cfg.GatewayHost, HostMAC: n.cfg.GatewayHostMAC,
	})
	if err != nil {
		fail(err)
		return
	}
	ref, err := n.sw.AddGateway(g.Device(), GatewayPortName)
	if err != nil {
		g.Close()
		fail(err)
		return
	}
	ng := &netGateway{gw: g, ref: ref, host: true}
	// The stack's frames go to the switch in the goroutine that sends
	// them (gateway.Attach).
	g.Attach(ref)
	n.gw = ng
	dp.log.Info("gateway up", "network", w.Name, "address", w.Gateway, "internal", w.Internal)
}

// applyGatewayHost gives n's switch and gateway the host identity of w
// (GatewayHost, GatewayHostMAC), in place, if it changed.
func (dp *Dataplane) applyGatewayHost(n *network, w *NetworkConfig, errs *[]error) {
	if n.cfg.GatewayHost == w.GatewayHost && n.cfg.GatewayHostMAC == w.GatewayHostMAC && (n.gw == nil || n.gw.host) {
		return
	}
	dp.changes++
	fail := func(err error) { *errs = append(*errs, &Error{Network: w.Name, Object: "gateway host", Err: err}) }
	if w.GatewayHost.IsValid() && !w.Subnet.Contains(w.GatewayHost) {
		fail(errors.New("address " + w.GatewayHost.String() + " is not in subnet " + w.Subnet.String()))
		return
	}
	if err := n.sw.SetGatewayHost(w.GatewayHost, w.GatewayHostMAC); err != nil {
		fail(err)
		return
	}
	n.cfg.GatewayHost, n.cfg.GatewayHostMAC = w.GatewayHost, w.GatewayHostMAC
	if n.gw != nil {
		if err := n.gw.gw.SetHost(w.GatewayHost, w.GatewayHostMAC); err != nil {
			fail(err)
			return
		}
		n.gw.host = true
	}
}

// removeGateway takes n's gateway port down: its flows are aborted. The
// port leaves the switch only after the gateway closed, so that the
// resets of its flows still reach the containers.
func (dp *Dataplane) removeGateway(n *network) {
	ng := n.gw
	if ng == nil {
		return
	}
	dp.changes++
	ng.gw.Close()
	n.sw.RemovePort(ng.ref)
	n.gw = nil
}

// setOverlay tells the egress every overlay subnet of the desired state:
// destinations in them are never egressed.
func (dp *Dataplane) setOverlay(order []*NetworkConfig) {
	if dp.egress == nil {
		return
	}
	subnets := make([]netip.Prefix, 0, len(order))
	for _, w := range order {
		if w.Subnet.IsValid() {
			subnets = append(subnets, w.Subnet)
		}
	}
	dp.egress.SetOverlay(subnets)
}

// Gateway returns a network's gateway (nil if it has none), for the
// resolver at its address and its stats.
func (dp *Dataplane) Gateway(network string) *gateway.Gateway {
	dp.mu.Lock()
	defer dp.mu.Unlock()
	if n := dp.nets[network]; n != nil && n.gw != nil {
		return n.gw.gw
	}
	return nil
}
