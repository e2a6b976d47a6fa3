package daemon

import (
	"encoding/json"
	"errors"
	"net/netip"

	"github.com/vxmesh/vxmesh/packet"
)

// The routing mesh needs, on every host, a gateway identity of its own on
// each network that has a service with published ports: an address from
// the host's IPAM blocks and the MAC derived from it (macForIP), beside
// the anycast gateway address and MAC every host shares
// (dataplane.NetworkConfig.GatewayHost). The other hosts learn it from
// the endpoints table, as a record named gatewayRecordName with Gateway
// set: it is validated (its node's blocks, its MAC, a unique address) and
// turned into a dataplane.Remote like an endpoint record, with Gateway set
// (the switches send the replies of the flows it brings in back to it),
// and makes its host a flooding peer of the network, also when that host
// has no endpoint there. It is never a DNS name nor a backend.

// gatewayRecordName is the name of a gateway identity's endpoint record:
// not a valid container name, so its key never collides with one.
const gatewayRecordName = ".gateway"

// gatewayHostOwner is the owner of the address reservation an allocation
// of the gateway identity holds until it is recorded.
const gatewayHostOwner = " gateway"

// isGateway reports whether rec is a host's gateway identity.
func (rec *epRecord) isGateway() bool { return rec.Gateway }

// publishingNetworks returns the networks that have a service with
// published ports.
func (d *Daemon) publishingNetworks() map[string]bool {
	want := map[string]bool{}
	for _, s := range d.clusterServices() {
		if s.publishes() {
			for _, nw := range s.networks() {
				want[nw] = true
			}
		}
	}
	return want
}

// syncGatewayHosts gives this host a gateway identity on every local
// network with a publishing service (allocated in the background: a new
// address block is a cluster round trip), publishes it, and releases it
// where no such service remains. Callers hold d.mu; it reports whether
// it changed the saved state.
func (d *Daemon) syncGatewayHosts() bool {
	want := d.publishingNetworks()
	changed := false
	for name, n := range d.networks {
		switch {
		case want[name] && !n.gwHost.IsValid():
			if !n.gwHostPending && d.ctx != nil && d.ctx.Err() == nil {
				n.gwHostPending = true
				d.done.Add(1)
				go func() {
					defer d.done.Done()
					d.allocGatewayHost(name, n)
				}()
			}
		case !want[name] && n.gwHost.IsValid():
			d.log.Info("gateway host address released", "network", name, "ip", n.gwHost)
			if err := d.cl.Delete(tblEndpoints, epKey(d.cfg.Node, name, gatewayRecordName)); err != nil {
				d.log.Error("withdrawing the gateway host address", "network", name, "err", err)
			}
			n.gwHost, n.gwHostPublished = netip.Addr{}, false
			changed = true
		case n.gwHost.IsValid() && !n.gwHostPublished:
			d.publishGatewayHost(n)
		}
	}
	return changed
}

// allocGatewayHost allocates n's gateway host address, records it, and
// applies it.
func (d *Daemon) allocGatewayHost(name string, n *localNetwork) {
	a, err := d.allocateIP(gatewayHostOwner, n)
	d.mu.Lock()
	defer d.mu.Unlock()
	n.gwHostPending = false
	if err != nil {
		d.log.Error("gateway host address", "network", name, "err", err)
		return
	}
	delete(d.reservedIPs[name], a) // it becomes n.gwHost, or is free again
	if d.networks[name] != n || n.gwHost.IsValid() || !d.publishingNetworks()[name] {
		return
	}
	n.gwHost = a
	d.log.Info("gateway host address", "network", name, "ip", a)
	if err := d.save(); err != nil {
		d.log.Error("saving state", "err", err)
	}
	d.publishGatewayHost(n)
	if err := d.applyDataplane(); err != nil {
		d.log.Error("data plane", "err", err)
	}
}

// publishGatewayHost announces n's gateway identity. Callers hold d.mu.
func (d *Daemon) publishGatewayHost(n *localNetwork) {
	rec := epRecord{Name: gatewayRecordName, Network: n.rec.Name, IP: n.gwHost.String(),
		MAC: packet.MAC(macForIP(n.gwHost)).String(), Node: d.cfg.Node, Gateway: true}
	b, _ := json.Marshal(rec)
	if err := d.cl.Put(tblEndpoints, epKey(d.cfg.Node, rec.Network, rec.Name), b); err != nil {
		d.log.Error("publishing the gateway host address", "network", rec.Network, "err", err)
		return
	}
	n.gwHostPublished = true
}

// checkGatewayRecord validates the fields of a gateway identity's record
// that an endpoint record has and it must not.
func checkGatewayRecord(key string, rec *epRecord) error {
	if rec.Name != gatewayRecordName || len(rec.Aliases) > 0 || len(rec.Services) > 0 {
		return errors.New("endpoint " + key + ": a gateway record is named " + gatewayRecordName + " and has no aliases nor services")
	}
	return nil
}
