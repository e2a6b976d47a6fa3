package daemon

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/vxmesh/vxmesh/dataplane"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

// The daemon decides, the data plane applies: desiredDataplane turns the
// daemon's records and the cluster's tables into one complete
// dataplane.Config, from memory only, and applyDataplane hands it to
// dataplane.Reconfig, which diffs it against what it applied and returns
// what failed.

// applyDataplane applies the desired data-plane state and returns what
// could not be applied (joined *dataplane.Error values); callers hold d.mu.
// It first brings the health checks up to date (syncHealth).
func (d *Daemon) applyDataplane() error {
	if d.syncHealth() {
		if err := d.save(); err != nil {
			d.log.Error("saving state", "err", err)
		}
		d.refreshDNS()
	}
	cfg := d.desiredDataplane()
	err := d.dp.Reconfig(cfg)
	d.flushLeftBackends(cfg)
	d.syncGatewayDNS()
	d.syncMesh()
	return err
}

// flushLeftBackends ends this host's tracked connections to every address
// that was a backend of some service of a network in the previous desired
// state and is none now (a drained backend that left after its stop grace
// period, a removed service or membership, a backend whose node left): the
// data plane keeps a leaving backend's TCP connections until told, and
// only the backend's own host is told by the rm path. Callers hold d.mu.
func (d *Daemon) flushLeftBackends(cfg dataplane.Config) {
	now := map[string]map[netip.Addr]bool{}
	for _, n := range cfg.Networks {
		for _, svc := range n.Services {
			for _, b := range svc.Backends {
				if now[n.Name] == nil {
					now[n.Name] = map[netip.Addr]bool{}
				}
				now[n.Name][b.IP] = true
			}
		}
	}
	for network, ips := range d.lbBackends {
		for ip := range ips {
			if !now[network][ip] {
				if n := d.dp.FlushBackend(network, ip); n > 0 {
					d.log.Debug("flushed the connections of a backend that left", "network", network, "ip", ip, "connections", n)
				}
			}
		}
	}
	d.lbBackends = now
}

// desiredDataplane is the data plane this node should have: every local
// network with this node's endpoints on it (those with an open device),
// the other nodes' accepted endpoint records (endpointSet: validated, and
// inside their node's address blocks; on a member with a VTEP address) as
// remotes, the nodes that have endpoints on it and its external VTEPs as
// flooding peers, every other member's VTEP as a sender it accepts, every
// vip-mode service with its backends (serviceSet), the SAs of the key
// ring in use and the conntrack's size and timeouts. Callers hold d.mu.
func (d *Daemon) desiredDataplane() dataplane.Config {
	// Only records that passed validation and the block check enter the
	// desired state, as remotes and as service backends.
	accepted, remotes := d.desiredRemotes()
	services := d.serviceSet(accepted)
	cfg := dataplane.Config{Conntrack: lb.Config{Max: d.cfg.ConntrackMax, Timeouts: d.cfg.ConntrackTimeouts}}
	members := d.memberVTEPs()
	for _, n := range d.sortedNetworks() {
		nc := dataplane.NetworkConfig{
			Name: n.rec.Name, VNI: n.rec.VNI, MTU: n.rec.MTU, Cipher: n.cipher,
			Gateway: n.gw, GatewayMAC: macForIP(n.gw), StormLimit: n.rec.StormLimit,
			Subnet: n.subnet, Internal: n.rec.Internal,
			Remotes: remotes[n.rec.Name], Services: services.lbServices(n.rec.Name),
			Members: members,
		}
		if n.gwHost.IsValid() {
			nc.GatewayHost, nc.GatewayHostMAC = n.gwHost, macForIP(n.gwHost)
		}
		for _, v := range n.rec.VTEPs {
			if a, err := netip.ParseAddr(v); err == nil {
				nc.External = append(nc.External, a)
			}
		}
		for _, r := range nc.Remotes {
			if !slices.Contains(nc.Peers, r.VTEP) {
				nc.Peers = append(nc.Peers, r.VTEP)
			}
		}
		sort.Slice(nc.Peers, func(i, j int) bool { return nc.Peers[i].Less(nc.Peers[j]) })
		nc.Ports = d.desiredPorts(n)
		cfg.Networks = append(cfg.Networks, nc)
	}
	cfg.Outbound, cfg.Inbound = d.desiredSAs()
	return cfg
}

// remotesCache is the remotes desiredRemotes derived from the endpoint
// set numbered seq with the VTEPs vteps.
type remotesCache struct {
	seq     uint64
	vteps   map[string]netip.Addr
	remotes map[string][]dataplane.Remote
}

// desiredRemotes returns the accepted endpoint records and, by network,
// the other nodes' ones as remotes at their node's VTEP (members with a
// data address). The remotes are derived again only when a record of
// another node may have changed since the last derivation
// (endpointSetSince) or a VTEP did: a run on this node changes none of
// them, and walking every record of the cluster per run costs
// O(endpoints). The lists are shared: callers only read them. Callers
// hold d.mu.
func (d *Daemon) desiredRemotes() ([]*epRecord, map[string][]dataplane.Remote) {
	vteps := d.vteps()
	c := &d.remotes
	set, ids, known := d.endpointSetSince(c.seq)
	if known && c.remotes != nil && maps.Equal(vteps, c.vteps) && !slices.ContainsFunc(ids, func(k epID) bool { return k.node != d.cfg.Node }) {
		c.seq = set.seq
		return set.accepted, c.remotes
	}
	*c = remotesCache{seq: set.seq, vteps: vteps, remotes: d.remotesOf(set.accepted, vteps)}
	return set.accepted, c.remotes
}

// vteps maps the other members to their VTEP address (those with a data
// address).
func (d *Daemon) vteps() map[string]netip.Addr {
	out := map[string]netip.Addr{}
	for _, m := range d.cl.Members() {
		if !m.Self && m.Meta.DataAddr.IsValid() {
			out[m.Name] = m.Meta.DataAddr.Addr()
		}
	}
	return out
}

// memberVTEPs returns the other members' VTEP addresses, sorted: every
// network accepts their frames (dataplane.NetworkConfig.Members). The
// list is shared by the networks: callers only read it.
func (d *Daemon) memberVTEPs() []netip.Addr {
	vteps := d.vteps()
	out := make([]netip.Addr, 0, len(vteps))
	for _, a := range vteps {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// remotesOf derives the remotes of every network from the accepted
// records: the other nodes' records whose node has a VTEP.
func (d *Daemon) remotesOf(accepted []*epRecord, vtepOf map[string]netip.Addr) map[string][]dataplane.Remote {
	remotes := map[string][]dataplane.Remote{}
	for _, rec := range accepted {
		vtep, ok := vtepOf[rec.Node]
		if rec.Node == d.cfg.Node || !ok {
			continue
		}
		mac, err1 := packet.ParseMAC(rec.MAC)
		ip, err2 := netip.ParseAddr(rec.IP)
		if err1 != nil || err2 != nil {
			continue
		}
		remotes[rec.Network] = append(remotes[rec.Network], dataplane.Remote{MAC: mac, IP: ip, VTEP: vtep, Gateway: rec.isGateway()})
	}
	return remotes
}

// portsCache is the port list desiredPorts made of one endpointsOf list;
// with is the endpoints of from that have a port, in the order of ports.
type portsCache struct {
	from  []*endpoint
	with  []*endpoint
	ports []dataplane.PortConfig
}

// maxPortsPatch is the most endpoints come and gone for which desiredPorts
// patches its last list rather than making it again.
const maxPortsPatch = 16

// desiredPorts lists the ports of n's endpoints that have an open device.
// The list is made again only when endpointsOf(n) is another list (an
// endpoint's device is set before its container is recorded, and not
// changed after), so an apply after one run makes one list, not one per
// apply; and then, for a few endpoints come or gone, as a copy of the
// last list with their ports taken out and put in (diffEndpoints), not
// one derivation per endpoint. The data plane does not change the lists
// it is given. Callers hold d.mu.
func (d *Daemon) desiredPorts(n *localNetwork) []dataplane.PortConfig {
	eps := d.endpointsOf(n)
	c, ok := d.portsOf[n.rec.Name]
	if ok && c.from != nil && sameEndpoints(c.from, eps) {
		return c.ports
	}
	if !ok || c.from == nil || !c.patch(eps) {
		c = portsCache{}
		for _, ep := range eps {
			if ep.dev != nil {
				c.with = append(c.with, ep)
				c.ports = append(c.ports, ep.portConfig())
			}
		}
	}
	if d.portsOf == nil {
		d.portsOf = map[string]portsCache{}
	}
	c.from = eps
	if c.from == nil {
		c.from = []*endpoint{}
	}
	d.portsOf[n.rec.Name] = c
	return c.ports
}

// portConfig is the data plane's port of ep.
func (ep *endpoint) portConfig() dataplane.PortConfig {
	return dataplane.PortConfig{Name: ep.portName(), Device: ep.dev, MAC: ep.mac, IP: ep.ip}
}

// patch makes c's lists those of eps from those of c.from, when few
// endpoints came or went (false: make them again). The new lists are
// copies: the old ones may be in use.
func (c *portsCache) patch(eps []*endpoint) bool {
	gone, added := diffEndpoints(c.from, eps)
	if len(gone)+len(added) > maxPortsPatch {
		return false
	}
	with, ports := slices.Clone(c.with), slices.Clone(c.ports)
	find := func(name string) (int, bool) {
		return slices.BinarySearchFunc(with, name, func(ep *endpoint, n string) int { return strings.Compare(ep.ctr.name, n) })
	}
	for _, ep := range gone {
		if i, found := find(ep.ctr.name); found && with[i] == ep {
			with, ports = slices.Delete(with, i, i+1), slices.Delete(ports, i, i+1)
		}
	}
	for _, ep := range added {
		if ep.dev == nil {
			continue
		}
		i, found := find(ep.ctr.name)
		if found { // two endpoints of one name: make the lists again
			return false
		}
		with, ports = slices.Insert(with, i, ep), slices.Insert(ports, i, ep.portConfig())
	}
	if len(ports) == 0 {
		with, ports = nil, nil
	}
	c.with, c.ports = with, ports
	return true
}

// desiredSAs lists the SAs of keyState.installed for the VTEP: per peer,
// the outbound SA of each cipher and the inbound SAs of every key.
func (d *Daemon) desiredSAs() ([]tunnel.OutboundSA, []tunnel.InboundSA) {
	var out []tunnel.OutboundSA
	var in []tunnel.InboundSA
	for _, c := range d.encryptedCiphers() {
		for _, ps := range d.keys.installed[c] {
			if ps.out != nil {
				out = append(out, tunnel.OutboundSA{Peer: ps.addr, SA: ps.out.out})
			}
			for _, o := range ps.in {
				in = append(in, tunnel.InboundSA{Peer: ps.addr, SA: o.in})
			}
		}
	}
	// A stable order: the same SAs make the same lists, which the data
	// plane then leaves alone.
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Peer.Compare(out[j].Peer); c != 0 {
			return c < 0
		}
		return out[i].SA.SPI() < out[j].SA.SPI()
	})
	sort.Slice(in, func(i, j int) bool { return in[i].SA.SPI() < in[j].SA.SPI() })
	return out, in
}

// dataplaneErrors returns the failures in err (from applyDataplane) that
// match: those of network (any object) when object is "", else those of
// that object of network.
func dataplaneErrors(err error, network, object string) error {
	var out []error
	for _, e := range flatten(err) {
		var de *dataplane.Error
		if errors.As(e, &de) && de.Network == network && (object == "" || de.Object == object) {
			out = append(out, de)
		}
	}
	return errors.Join(out...)
}

// networkError returns the failures of network in err.
func networkError(err error, network string) error { return dataplaneErrors(err, network, "") }

// flatten lists the errors joined in err.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}
