package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
	"github.com/vxmesh/vxmesh/vswitch"
)

// network is an applied network: what was built for it and what of its
// desired state has been applied.
type network struct {
	cfg   NetworkConfig // the shape it was built with (VNI, MTU, gateway, storm limit)
	sw    *vswitch.Switch
	tn    *tunnel.Segment
	tport *vswitch.Port
	lb    *lb.Table   // the balancer given to sw, nil before the network has services
	gw    *netGateway // nil: no gateway port

	cipher   esp.Cipher
	external []netip.Addr              // applied external VTEPs, sorted
	flood    []netip.Addr              // applied flooding peers, sorted
	members  []netip.Addr              // applied member VTEPs, sorted
	locals   []packet.MAC              // applied local MACs (tunnel.Segment.SetLocals), sorted
	statics  map[packet.MAC]netip.Addr // switch statics behind tport: MAC -> IP
	gwHosts  map[packet.MAC]bool       // the statics that are other hosts' gateways
	remotes  map[packet.MAC]netip.Addr // tunnel remotes: MAC -> VTEP
}

// sameShape reports whether w can be applied to n in place.
func (n *network) sameShape(w *NetworkConfig) bool {
	c := &n.cfg
	return c.VNI == w.VNI && c.MTU == w.MTU && c.Gateway == w.Gateway && c.GatewayMAC == w.GatewayMAC && c.StormLimit == w.StormLimit &&
		c.Subnet == w.Subnet && c.Internal == w.Internal
}

// applyNetwork builds w's network if it does not exist yet and sets its
// cipher.
func (dp *Dataplane) applyNetwork(w *NetworkConfig) (*network, error) {
	n := dp.nets[w.Name]
	if n == nil {
		var err error
		if n, err = dp.addNetwork(w); err != nil {
			return nil, &Error{Network: w.Name, Object: "network", Err: err}
		}
	}
	if n.cipher != w.Cipher {
		dp.changes++
		if err := n.tn.SetCipher(w.Cipher); err != nil {
			return n, &Error{Network: w.Name, Object: "cipher", Err: err}
		}
		n.cipher = w.Cipher
	}
	return n, nil
}

// addNetwork builds a network's switch, tunnel network and tunnel port.
func (dp *Dataplane) addNetwork(w *NetworkConfig) (*network, error) {
	dp.changes++
	sw := vswitch.New(vswitch.Config{Name: w.Name, GatewayIP: w.Gateway, GatewayMAC: w.GatewayMAC, MTU: w.MTU,
		StormLimit: w.StormLimit, BalancerEpoch: dp.epoch, Subnet: w.Subnet,
		IngressReturnMax: w.IngressReturnMax, IngressReturnTimeouts: dp.ctTimeouts})
	if b := dp.lbs[w.Name]; b != nil {
		sw.SetBalancer(b.t) // a rebuilt network's switch balances from its first frame
	}
	tn, err := dp.vtep.AddSegment(w.VNI, w.MTU)
	if err != nil {
		sw.Close()
		return nil, err
	}
	ref, err := sw.AddPort(tn, vswitch.PortConfig{Name: TunnelPortName})
	if err != nil {
		dp.vtep.RemoveSegment(w.VNI)
		sw.Close()
		return nil, err
	}
	tn.SetInput(ref.Input)
	n := &network{
		cfg: NetworkConfig{Name: w.Name, VNI: w.VNI, MTU: w.MTU, Gateway: w.Gateway, GatewayMAC: w.GatewayMAC, StormLimit: w.StormLimit, Subnet: w.Subnet, Internal: w.Internal},
		sw:  sw, tn: tn, tport: ref,
		statics: map[packet.MAC]netip.Addr{}, remotes: map[packet.MAC]netip.Addr{}, gwHosts: map[packet.MAC]bool{},
	}
	if b := dp.lbs[w.Name]; b != nil {
		n.lb = b.t
	}
	dp.nets[w.Name] = n
	dp.log.Info("network up", "network", w.Name, "vni", w.VNI, "mtu", w.MTU)
	return n, nil
}

// removeNetwork takes a network down, its remotes and peers first. Its
// ports have been detached.
func (dp *Dataplane) removeNetwork(n *network) {
	dp.changes++
	dp.removeGateway(n)
	n.tn.SetRemotes(nil)
	for mac := range n.statics {
		n.sw.RemoveStatic(mac)
	}
	clear(n.gwHosts)
	n.tn.SetPeers(nil)
	n.tn.SetMembers(nil)
	n.tn.SetInput(nil)
	n.sw.RemovePort(n.tport)
	dp.vtep.RemoveSegment(n.cfg.VNI)
	n.sw.Close()
	delete(dp.nets, n.cfg.Name)
	dp.log.Info("network down", "network", n.cfg.Name)
}

// applyRemotes makes n's remote endpoints, flooding peers, member and
// external VTEPs match w. A tunnel remote is installed only after its switch
// static, and removed before it, so the switch never floods a frame the
// tunnel would send to one VTEP.
func (dp *Dataplane) applyRemotes(n *network, w *NetworkConfig, errs *[]error) {
	fail := func(obj string, err error) { *errs = append(*errs, &Error{Network: w.Name, Object: obj, Err: err}) }
	want := wantedRemotes(w.Remotes, fail)
	dp.dropRemotes(n, want, fail)
	dp.applyVTEPs(n, w, want, fail)
	dp.addRemotes(n, want, fail)
}

// dropRemotes is applyRemotes' first step: the tunnel remotes that go or
// change, then their switch statics.
func (dp *Dataplane) dropRemotes(n *network, want map[packet.MAC]Remote, fail func(string, error)) {
	keep := make(map[packet.MAC]netip.Addr, len(n.remotes))
	for mac, vtep := range n.remotes {
		if r, ok := want[mac]; ok && r.VTEP == vtep && r.IP == n.statics[mac] && r.Gateway == n.gwHosts[mac] {
			keep[mac] = vtep
		}
	}
	dp.setRemotes(n, keep, fail)
	for mac, ip := range n.statics {
		if r, ok := want[mac]; !ok || r.IP != ip || r.Gateway != n.gwHosts[mac] {
			dp.changes++
			n.sw.RemoveStatic(mac)
			delete(n.statics, mac)
			delete(n.gwHosts, mac)
		}
	}
}

// applyVTEPs is applyRemotes' second step: this host's own MACs, which no
// VTEP may send from; flooding peers, member and external VTEPs.
func (dp *Dataplane) applyVTEPs(n *network, w *NetworkConfig, want map[packet.MAC]Remote, fail func(string, error)) {
	if locals := localMACs(w); !slices.Equal(locals, n.locals) {
		dp.changes++
		if err := n.tn.SetLocals(locals); err != nil {
			fail("local MACs", err)
		} else {
			n.locals = locals
		}
	}
	ext := validSet(w.External, "external VTEP", fail)
	flood := validSet(w.Peers, "peer", fail)
	flood = append(flood, ext...)
	for _, r := range want {
		flood = append(flood, r.VTEP)
	}
	slices.SortFunc(flood, netip.Addr.Compare)
	flood = slices.Compact(flood)
	if !slices.Equal(flood, n.flood) {
		dp.changes++
		if err := n.tn.SetPeers(flood); err != nil {
			fail("peers", err)
		} else {
			n.flood = flood
		}
	}
	if members := validSet(w.Members, "member VTEP", fail); !slices.Equal(members, n.members) {
		dp.changes++
		if err := n.tn.SetMembers(members); err != nil {
			fail("member VTEPs", err)
		} else {
			n.members = members
		}
	}
	if !slices.Equal(ext, n.external) {
		dp.changes++
		if err := n.tn.SetExternal(ext); err != nil {
			fail("external VTEPs", err)
		} else {
			n.external = ext
		}
	}
}

// addRemotes is applyRemotes' third step: the switch statics, in MAC
// order, then the tunnel remotes of those that made it and are flooded.
func (dp *Dataplane) addRemotes(n *network, want map[packet.MAC]Remote, fail func(string, error)) {
	macs := make([]packet.MAC, 0, len(want))
	for mac := range want {
		macs = append(macs, mac)
	}
	slices.SortFunc(macs, func(a, b packet.MAC) int { return slices.Compare(a[:], b[:]) })
	next := make(map[packet.MAC]netip.Addr, len(want))
	for _, mac := range macs {
		r := want[mac]
		if _, ok := n.statics[mac]; !ok {
			dp.changes++
			add := n.sw.AddStatic
			if r.Gateway {
				add = n.sw.AddRemoteGateway
			}
			if err := add(mac, r.IP, n.tport); err != nil {
				fail("remote "+mac.String(), err)
				continue
			}
			n.statics[mac] = r.IP
			if r.Gateway {
				n.gwHosts[mac] = true
			}
		}
		if slices.Contains(n.flood, r.VTEP) {
			next[mac] = r.VTEP
		}
	}
	dp.setRemotes(n, next, fail)
}

// localMACs returns the unicast MACs of w's ports and of this host's
// gateway identity, sorted and without repeats (a port with an invalid MAC
// fails to attach and is reported there).
func localMACs(w *NetworkConfig) []packet.MAC {
	macs := make([]packet.MAC, 0, len(w.Ports)+1)
	for _, pc := range w.Ports {
		macs = append(macs, pc.MAC)
	}
	macs = append(macs, w.GatewayHostMAC)
	macs = slices.DeleteFunc(macs, func(m packet.MAC) bool { return m.IsZero() || m.IsMulticast() })
	slices.SortFunc(macs, func(a, b packet.MAC) int { return slices.Compare(a[:], b[:]) })
	return slices.Compact(macs)
}

// wantedRemotes maps the valid remotes by MAC, reporting the others.
func wantedRemotes(remotes []Remote, fail func(string, error)) map[packet.MAC]Remote {
	want := make(map[packet.MAC]Remote, len(remotes))
	for _, r := range remotes {
		switch {
		case r.MAC.IsZero() || r.MAC.IsMulticast():
			fail("remote "+r.MAC.String(), errors.New("not a unicast MAC"))
		case !validVTEP(r.VTEP):
			fail("remote "+r.MAC.String(), fmt.Errorf("VTEP %s: not a unicast address", r.VTEP))
		case want[r.MAC] != (Remote{}):
			fail("remote "+r.MAC.String(), errors.New("named twice in the desired state"))
		default:
			r.VTEP = r.VTEP.Unmap()
			want[r.MAC] = r
		}
	}
	return want
}

// setRemotes replaces n's tunnel remotes with m if they differ.
func (dp *Dataplane) setRemotes(n *network, m map[packet.MAC]netip.Addr, fail func(string, error)) {
	if mapsEqual(m, n.remotes) {
		return
	}
	dp.changes++
	if err := n.tn.SetRemotes(m); err != nil {
		fail("remotes", err)
		return
	}
	n.remotes = m
}

func mapsEqual(a, b map[packet.MAC]netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func validVTEP(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast()
}

// validSet returns the valid addresses of in, sorted and de-duplicated,
// reporting the others.
func validSet(in []netip.Addr, what string, fail func(string, error)) []netip.Addr {
	out := make([]netip.Addr, 0, len(in))
	for _, a := range in {
		if !validVTEP(a) {
			fail(what+" "+a.String(), errors.New("not a unicast address"))
			continue
		}
		out = append(out, a.Unmap())
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// sameSAs reports whether the SA lists name the same SA objects.
func sameSAs(out []tunnel.OutboundSA, in []tunnel.InboundSA, wout []tunnel.OutboundSA, win []tunnel.InboundSA) bool {
	return slices.Equal(out, wout) && slices.Equal(in, win)
}
