package daemon

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
)

// What the data plane and the resolver get of services: serviceSet joins
// the valid service records with the accepted endpoint records (this
// node's and those inside their node's address blocks, see endpointSet)
// whose memberships name the service's ID on one of its networks.

// svcBackend is one backend of a service: an accepted endpoint record and
// its membership.
type svcBackend struct {
	rec epRecord
	m   epService
	ip  netip.Addr
}

// lbState is the balancer's state of the backend: draining while it
// leaves, ejected while its node reports it starting (its check has not
// passed yet) or unhealthy.
func (b svcBackend) lbState() lb.BackendState {
	switch {
	case b.m.State == backendDraining:
		return lb.Draining
	case b.m.Health != backendHealthy:
		return lb.Ejected
	}
	return lb.Active
}

// serves reports whether the backend takes new connections and is in
// DNS: active and healthy.
func (b svcBackend) serves() bool { return b.lbState() == lb.Active }

// serviceSet is the services as this node uses them.
type serviceSet struct {
	specs map[string]*svcSpec
	// backends by service name, sorted by node, network, container.
	backends map[string][]svcBackend
	// vips are the usable VIPs of each service by network: inside the
	// network's subnet, not its gateway, no endpoint's address and no
	// other service's VIP.
	vips map[string]map[string]netip.Addr
}

func (s serviceSet) names() []string {
	out := make([]string, 0, len(s.specs))
	for n := range s.specs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// serviceSet builds the services from the tables and the accepted
// endpoint records eps. It does not need d.mu.
func (d *Daemon) serviceSet(eps []*epRecord) serviceSet {
	set := serviceSet{specs: d.clusterServices(), backends: map[string][]svcBackend{}, vips: map[string]map[string]netip.Addr{}}
	if len(set.specs) == 0 {
		// No service: nothing to join the records with (each apply asks,
		// and a walk of every record costs O(endpoints)).
		return set
	}
	nets := d.clusterNetworks()
	taken := map[string]map[netip.Addr]string{} // network -> address -> user
	vipNets := map[string]bool{}                // networks with a VIP to check
	for _, s := range set.specs {
		for network, vip := range s.vips {
			if vip.IsValid() {
				vipNets[network] = true
			}
		}
	}
	for _, r := range eps {
		if !vipNets[r.Network] {
			continue // no VIP to check against its addresses
		}
		if taken[r.Network] == nil {
			taken[r.Network] = map[netip.Addr]string{}
		}
		if a, err := netip.ParseAddr(r.IP); err == nil {
			taken[r.Network][a] = "endpoint " + r.Name + "@" + r.Node
		}
	}
	for _, name := range set.names() {
		s := set.specs[name]
		set.vips[name] = map[string]netip.Addr{}
		for network, vip := range s.vips {
			if !vip.IsValid() {
				continue
			}
			if err := vipUsable(nets, network, vip, taken[network]); err != nil {
				d.refused.note(d.log, "service-conflict", name+"/"+network, s.rec.CreatedBy, 0, fmt.Errorf("service %q: %w", name, err))
				continue
			}
			if taken[network] == nil {
				taken[network] = map[netip.Addr]string{}
			}
			taken[network][vip] = "service " + name
			set.vips[name][network] = vip
		}
	}
	for _, r := range eps {
		for _, m := range r.Services {
			s := set.specs[m.Name]
			if s == nil || s.rec.ID != m.ID || !s.onNetwork(r.Network) {
				continue
			}
			ip, err := netip.ParseAddr(r.IP)
			if err != nil {
				continue
			}
			set.backends[m.Name] = append(set.backends[m.Name], svcBackend{rec: *r, m: m, ip: ip})
		}
	}
	return set
}

// vipUsable reports why vip cannot be a VIP on network, if so.
func vipUsable(nets map[string]netRecord, network string, vip netip.Addr, taken map[netip.Addr]string) error {
	nr, ok := nets[network]
	if !ok {
		return fmt.Errorf("network %q: not known", network)
	}
	subnet, err := netip.ParsePrefix(nr.Subnet)
	if err != nil || !usableHost(subnet, vip) || vip.String() == nr.Gateway {
		return fmt.Errorf("vip %s: not a host address of network %q (%s)", vip, network, nr.Subnet)
	}
	if user, ok := taken[vip]; ok {
		return fmt.Errorf("vip %s: also the address of %s on network %q", vip, user, network)
	}
	return nil
}

// lbServices returns the balancer's services of network: every vip-mode
// service on it with its backends there.
func (set serviceSet) lbServices(network string) []lb.Service {
	var out []lb.Service
	for _, name := range set.names() {
		s := set.specs[name]
		vip, ok := set.vips[name][network]
		if !ok || s.rec.Mode != modeVIP {
			continue
		}
		svc := lb.Service{Name: name, VIP: vip, Ports: s.ports, Scheduler: s.sched, Affinity: s.affinity}
		for _, b := range set.backends[name] {
			if b.rec.Network != network {
				continue
			}
			svc.Backends = append(svc.Backends, lb.Backend{IP: b.ip, MAC: packet.MAC(macForIP(b.ip)), Weight: b.m.Weight, State: b.lbState()})
		}
		out = append(out, svc)
	}
	return out
}

// dnsServices returns what the resolver answers for services: per
// service and network, the VIP (vip mode), the TTL, the ports and the
// addresses of the backends that are active and healthy.
func (set serviceSet) dnsServices() []dnsService {
	var out []dnsService
	for _, name := range set.names() {
		s := set.specs[name]
		for _, network := range s.networks() {
			ds := dnsService{Name: strings.ToLower(name), Network: strings.ToLower(network), TTL: s.ttl, Ports: s.ports}
			if s.rec.Mode == modeVIP {
				vip, ok := set.vips[name][network]
				if !ok {
					continue // refused: answering it would send clients nowhere
				}
				ds.VIP = vip
			}
			for _, b := range set.backends[name] {
				if b.rec.Network == network && b.serves() {
					ds.Tasks = append(ds.Tasks, b.ip)
				}
			}
			out = append(out, ds)
		}
	}
	return out
}

// lbStats returns this node's counters of network's services (none when
// the data plane does not report them).
func (d *Daemon) lbStats(network string) []lb.ServiceStats {
	return d.dp.ServiceStats().Networks[network].Services
}

// flushBackend ends the tracked connections to a backend that left
// network after its stop grace period; it returns how many.
func (d *Daemon) flushBackend(network string, ip netip.Addr) int {
	return d.dp.FlushBackend(network, ip)
}
