package daemon

import (
	"runtime"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/crypto/aesgcm"
	"github.com/vxmesh/vxmesh/dataplane"
	"github.com/vxmesh/vxmesh/internal/fdlimit"
	"github.com/vxmesh/vxmesh/packet"
)

// FDB returns the forwarding database of a network's switch.
func (d *Daemon) FDB(name string) ([]api.FDBEntry, error) {
	d.mu.Lock()
	_, ok := d.networks[name]
	d.mu.Unlock()
	if !ok {
		return nil, notFound("network %q: not found", name)
	}
	swFDB, tnFDB, _ := d.dp.FDB(name)
	vtepOf := map[packet.MAC]string{}
	for _, e := range tnFDB {
		vtepOf[e.MAC] = e.VTEP.String()
	}
	out := []api.FDBEntry{}
	for _, e := range swFDB {
		v := api.FDBEntry{MAC: e.MAC.String(), Port: e.Port, Kind: e.Kind}
		if e.Port == dataplane.TunnelPortName {
			v.VTEP = vtepOf[e.MAC]
			if e.Kind == "static" {
				v.Kind = "remote"
			}
		}
		if e.IP.IsValid() {
			v.IP = e.IP.String()
		}
		if e.Kind == "learned" {
			v.AgeSeconds = e.Age.Seconds()
		}
		out = append(out, v)
	}
	return out, nil
}

// Stats returns the counters of every network's switch.
func (d *Daemon) Stats() api.Stats {
	d.mu.Lock()
	nets := d.sortedNetworks()
	d.mu.Unlock()
	out := api.Stats{Node: d.cfg.Node, Networks: []api.NetworkStats{}}
	lbs := d.dp.ServiceStats()
	for _, n := range nets {
		s, ts, _ := d.dp.NetworkStats(n.rec.Name)
		ns := api.NetworkStats{Network: n.rec.Name, Flooded: s.Flooded, ARPSuppressed: s.ARPSuppressed, Drops: s.Drops, Ports: []api.PortStats{},
			FloodNoPeers: ts.FloodNoPeers, IngressReturn: s.IngressReturn, IngressReturnMax: s.IngressReturnMax, IngressReturnEvicted: s.IngressReturnEvicted,
			BalancerDrops: lbs.Networks[n.rec.Name].Reasons}
		for _, p := range s.Ports {
			ns.Ports = append(ns.Ports, api.PortStats{
				Name: p.Name, RxPackets: p.RxPackets, RxBytes: p.RxBytes,
				TxPackets: p.TxPackets, TxBytes: p.TxBytes, Drops: p.Drops,
			})
		}
		out.Networks = append(out.Networks, ns)
	}
	out.DNS = d.dnsStats()
	ts := d.dp.TunnelStats()
	if len(ts.Drops) > 0 {
		out.TunnelDrops = ts.Drops
	}
	out.KernelTunnel = d.kernelTunnelStats(ts)
	out.ESPHelperSealed = ts.HelperSealed
	out.ESPAESGCM = aesgcm.Implementation()
	for _, n := range nets {
		for _, st := range lbs.Networks[n.rec.Name].Services {
			out.Services = append(out.Services, serviceStatsView(n.rec.Name, st))
		}
	}
	out.Conntrack = api.ConntrackStats{Max: d.cfg.ConntrackMax, Entries: lbs.ConntrackEntries, Evictions: lbs.ConntrackEvictions, FragEvictions: lbs.FragEvictions, FragHeld: lbs.FragHeld}
	for _, ns := range lbs.Networks {
		for reason, n := range ns.Reasons {
			if out.Conntrack.Drops == nil {
				out.Conntrack.Drops = map[string]uint64{}
			}
			out.Conntrack.Drops[reason] += n
		}
	}
	out.HealthChecks = d.healthLatencies()
	out.Egress = d.egressStats()
	out.RefusedRecords = d.refused.snapshot()
	if drops := d.cl.Drops(); len(drops) > 0 {
		out.GossipDrops = drops
	}
	// Zero when unknown: the rest of the counters are still worth showing.
	out.OpenFDs, _ = fdlimit.Open()
	if l, err := fdlimit.Get(); err == nil {
		out.FDLimit = l.Soft
	}
	out.Goroutines = runtime.NumGoroutine()
	return out
}
