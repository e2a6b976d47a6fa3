package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/gateway"
)

// tblMeshState is the node-scoped table of each node's published-port
// states (meshStateRecord, keyed by node name), shown by service inspect.
const tblMeshState = "publish-state"

// maxMeshStates bounds the ports of one node's record read from the table.
const maxMeshStates = 4096

// meshStateRecord is one node's entry in tblMeshState.
type meshStateRecord struct {
	Ports []meshPortState `json:"ports"`
}

// meshPortState is a node's state of one published port of a service.
type meshPortState struct {
	Service string `json:"service"`
	ID      string `json:"id"`
	Spec    string `json:"spec"`
	Network string `json:"network"`
	State   string `json:"state"`
}

// meshListener is one published port this host serves: its listener
// (nil while down says why) and where flows go now.
type meshListener struct {
	service, id string
	spec        meshPort
	network     string
	port        *gateway.Port
	down        string
	// dests are the flows' destinations on network, chosen round-robin:
	// the VIP (mode=ingress) or the local healthy backends (mode=host).
	dests atomic.Pointer[[]netip.Addr]
	next  atomic.Uint32
	// local are this host's containers among dests (mode=host) or among
	// the service's backends on network (mode=ingress): the fast path.
	local atomic.Pointer[map[netip.Addr]*container]
}

// meshWant is a published port this host should serve.
type meshWant struct {
	service, id string
	spec        meshPort
	network     string
	port        uint16 // the destination port
	dests       []netip.Addr
	// local are the service's backends on this host (mode=ingress: the
	// fast path's candidates).
	local []netip.Addr
	down  string // not opened, why
}

func (w meshWant) key() string {
	return fmt.Sprintf("%s|%s|%s|%d", w.id, w.spec, w.network, w.port)
}

// updatedPublish applies --publish-rm (PUBLISHED[/PROTO]) and then
// --publish-add to a service's published ports.
func updatedPublish(service string, cur, add, rm []string) ([]string, error) {
	out := slices.Clone(cur)
	for _, r := range rm {
		key := r
		if !strings.Contains(key, "/") {
			key += "/tcp"
		}
		i := slices.IndexFunc(out, func(s string) bool {
			m, err := parseMeshPort(s)
			return err == nil && m.portKey() == key
		})
		if i < 0 {
			return nil, notFound("service %q: --publish-rm %s: not a published port of the service", service, r)
		}
		out = slices.Delete(out, i, i+1)
	}
	return append(out, add...), nil
}

// claimMeshPorts confirms with every member that no other service
// publishes rec's new mode=ingress ports (those old does not have); the
// returned func releases the claims.
func (d *Daemon) claimMeshPorts(rec svcRecord, old *svcSpec) (func(), error) {
	var held []string
	release := func() {
		for _, r := range held {
			if err := d.cl.ReleaseClaim(tblSvcClaims, meshClaimGroup, r); err != nil {
				d.log.Warn("releasing published port claim", "service", rec.Name, "err", err)
			}
		}
	}
	for _, s := range rec.Publish {
		m, err := parseMeshPort(s)
		if err != nil || m.mode != meshIngress || (old != nil && slices.Contains(old.rec.Publish, s)) {
			continue
		}
		r := meshClaim(rec.Name, m)
		if err := d.cl.Claim(tblSvcClaims, meshClaimGroup, r); err != nil {
			var lost *cluster.ClaimConflict
			if errors.As(err, &lost) && lost.Resource == "" {
				return release, conflict("service %q: published port %s: already published by another service (node %s knows it)", rec.Name, m.portKey(), lost.Node)
			}
			if errors.As(err, &lost) {
				return release, conflict("service %q: published port %s: published concurrently on node %s", rec.Name, m.portKey(), lost.Node)
			}
			return release, fmt.Errorf("service %q: published port %s: %w", rec.Name, m.portKey(), err)
		}
		held = append(held, r)
	}
	return release, nil
}

// checkMeshPorts refuses published ports of spec that another service
// publishes too (meshConflict); callers hold d.mu.
func (d *Daemon) checkMeshPorts(spec *svcSpec) error {
	return d.checkMeshPublish(spec.rec.Name, spec.publish)
}

// checkMeshPublish refuses the published ports (canonical or not) of
// service that another service publishes too; callers hold d.mu.
func (d *Daemon) checkMeshPublish(service string, publish []meshPort) error {
	for name, o := range d.clusterServices() {
		if strings.EqualFold(name, service) {
			continue
		}
		for _, m := range publish {
			for _, om := range o.publish {
				if meshConflict(m, om) {
					return conflict("service %q: published port %s: already published by service %q (mode=%s)", service, m.portKey(), name, om.mode)
				}
			}
		}
	}
	return nil
}

// checkMeshRecord is checkMeshPublish for rec's canonical ports.
func (d *Daemon) checkMeshRecord(rec svcRecord) error {
	var ms []meshPort
	for _, s := range rec.Publish {
		if m, err := parseMeshPort(s); err == nil {
			ms = append(ms, m)
		}
	}
	return d.checkMeshPublish(rec.Name, ms)
}

// meshWinners decides, among services whose published ports conflict
// (records met across a partition, or written before this check), which
// one is served: the earliest created, then the first by name. It returns
// the loser's published ports with the service they lose to.
func meshWinners(set serviceSet) map[string]map[string]string {
	lost := map[string]map[string]string{}
	names := set.names()
	sort.SliceStable(names, func(i, j int) bool {
		return set.specs[names[i]].rec.Created.Before(set.specs[names[j]].rec.Created)
	})
	for i, n := range names {
		for _, m := range set.specs[n].publish {
			for _, w := range names[:i] {
				if lost[w][m.String()] != "" {
					continue
				}
				if slices.ContainsFunc(set.specs[w].publish, func(o meshPort) bool { return meshConflict(m, o) }) {
					if lost[n] == nil {
						lost[n] = map[string]string{}
					}
					lost[n][m.String()] = w
					break
				}
			}
		}
	}
	return lost
}

// wantedMesh lists the published ports this host should serve: each
// service's on its first network (by name), every mode=ingress port, and
// the mode=host ports of services with a local healthy backend there.
func (d *Daemon) wantedMesh(set serviceSet) []meshWant {
	lost := meshWinners(set)
	var out []meshWant
	for _, name := range set.names() {
		s := set.specs[name]
		if len(s.publish) == 0 {
			continue
		}
		network := s.rec.VIPs[0].Network
		for _, m := range s.publish {
			w := meshWant{service: name, id: s.rec.ID, spec: m, network: network, port: m.target}
			switch {
			case lost[name][m.String()] != "":
				w.down = fmt.Sprintf("down: port %s is published by service %q too (created first)", m.portKey(), lost[name][m.String()])
			case m.mode == meshIngress:
				vip, ok := set.vips[name][network]
				if !ok {
					w.down = fmt.Sprintf("down: no usable VIP on network %q", network)
				}
				w.dests = []netip.Addr{vip}
				w.local = localBackends(set, name, network, d.cfg.Node)
			default:
				w.port = backendPort(s, m)
				w.dests = localBackends(set, name, network, d.cfg.Node)
				if len(w.dests) == 0 {
					continue // mode=host: only hosts with a local backend
				}
			}
			out = append(out, w)
		}
	}
	return out
}

// localBackends are the addresses of service's active and healthy
// backends on network on node.
func localBackends(set serviceSet, service, network, node string) []netip.Addr {
	var out []netip.Addr
	for _, b := range set.backends[service] {
		if b.rec.Node == node && b.rec.Network == network && b.serves() {
			out = append(out, b.ip)
		}
	}
	return out
}

// backendPort is the port a mode=host published port's flows reach on a
// backend: the target, mapped as the service's VIP port maps it.
func backendPort(s *svcSpec, m meshPort) uint16 {
	for _, p := range s.ports {
		if p.Port == m.target && p.Proto == m.lbProto() && p.Target != 0 {
			return p.Target
		}
	}
	return m.target
}

// syncMesh opens the published ports this host should serve, closes
// those it should not (ending their flows), retries those down and
// publishes the states; callers hold d.mu, after applying the data plane
// (every reconcile, so a port down is retried at least every
// reconcileInterval).
func (d *Daemon) syncMesh() {
	if d.dp == nil || d.egress == nil || d.cl == nil {
		return
	}
	if d.mesh == nil {
		d.mesh = map[string]*meshListener{}
	}
	want := map[string]meshWant{}
	for _, w := range d.wantedMesh(d.serviceSet(d.endpointSet().accepted)) {
		want[w.key()] = w
	}
	for k, l := range d.mesh {
		if _, ok := want[k]; !ok {
			l.close()
			delete(d.mesh, k)
			d.log.Info("published port closed", "service", l.service, "publish", l.spec.String())
		}
	}
	var ctrs map[string]map[netip.Addr]*container
	for k, w := range want {
		l := d.mesh[k]
		if l == nil {
			l = &meshListener{service: w.service, id: w.id, spec: w.spec, network: w.network}
			d.mesh[k] = l
		}
		l.dests.Store(&w.dests)
		locals := w.dests
		if w.spec.mode == meshIngress {
			locals = w.local
		}
		if ctrs == nil && len(locals) > 0 {
			ctrs = d.localContainers()
		}
		local := map[netip.Addr]*container{}
		for _, ip := range locals {
			if c := ctrs[w.network][ip]; c != nil {
				local[ip] = c
			}
		}
		l.local.Store(&local)
		if w.down != "" {
			l.close()
			d.setMeshDown(l, w.down)
			continue
		}
		if l.port != nil {
			continue
		}
		spec := gateway.Publish{HostPort: w.spec.published, Port: w.port, Proto: w.spec.proto, ClientIP: clientIPMode(w.spec.clientIP)}
		p, err := d.egress.PublishMesh(spec, d.meshTarget(l), d.meshFast(l), d.meshPick(l))
		if err != nil {
			d.setMeshDown(l, "down: "+strings.TrimPrefix(err.Error(), "publish "+spec.String()+": "))
			continue
		}
		l.port, l.down = p, ""
		d.steerMesh(l)
		d.log.Info("published port open", "service", l.service, "publish", l.spec.String(), "network", l.network, "nat", p.Steered())
	}
	d.resyncMeshNAT()
	d.publishMeshState()
}

// setMeshDown records why l is down, logged when it changes.
func (d *Daemon) setMeshDown(l *meshListener, why string) {
	if l.down != why {
		d.log.Warn("published port refused on this host", "service", l.service, "publish", l.spec.String(), "reason", why)
	}
	l.down = why
}

func clientIPMode(s string) gateway.ClientIP {
	switch s {
	case clientSNAT:
		return gateway.ClientIPSNAT
	case clientProxyV2:
		return gateway.ClientIPProxyV2
	}
	return gateway.ClientIPPreserve
}

// meshTarget is l's flows' destination: the gateway of l's network on
// this host and the next of l's destinations.
func (d *Daemon) meshTarget(l *meshListener) gateway.Target {
	return func() (*gateway.Gateway, netip.Addr, bool) {
		dests := *l.dests.Load()
		if len(dests) == 0 {
			return nil, netip.Addr{}, false
		}
		g := d.dp.Gateway(l.network)
		n := l.next.Add(1)
		return g, dests[int(n)%len(dests)], g != nil
	}
}

// close stops l's listener and ends its flows.
func (l *meshListener) close() {
	if l.port != nil {
		l.port.Close()
		l.port = nil
	}
}

func (l *meshListener) state() string {
	if l.port != nil {
		return "up"
	}
	return l.down
}

// publishMeshState writes this node's published-port states when they
// changed; callers hold d.mu.
func (d *Daemon) publishMeshState() {
	rec := meshStateRecord{Ports: []meshPortState{}}
	for _, l := range d.mesh {
		rec.Ports = append(rec.Ports, meshPortState{Service: l.service, ID: l.id, Spec: l.spec.String(), Network: l.network, State: l.state()})
	}
	slices.SortFunc(rec.Ports, func(a, b meshPortState) int {
		return strings.Compare(a.Service+"|"+a.Spec, b.Service+"|"+b.Spec)
	})
	b, err := json.Marshal(rec)
	if err != nil || string(b) == d.meshPublished {
		return
	}
	if err := d.cl.Put(tblMeshState, d.cfg.Node, b); err != nil {
		d.log.Warn("publishing published-port states", "err", err)
		return
	}
	d.meshPublished = string(b)
}

// meshStateView is every node's state of s's published ports, with this
// node's counters; callers hold d.mu.
func (d *Daemon) meshStateView(s *svcSpec) []api.ServicePublishState {
	var out []api.ServicePublishState
	for _, e := range d.cl.List(tblMeshState) {
		var rec meshStateRecord
		if e.Key != e.Owner || json.Unmarshal(e.Value, &rec) != nil || len(rec.Ports) > maxMeshStates {
			continue
		}
		for _, p := range rec.Ports {
			if p.Service != s.rec.Name || p.ID != s.rec.ID || !slices.Contains(s.rec.Publish, p.Spec) {
				continue
			}
			v := api.ServicePublishState{Node: e.Owner, Published: p.Spec, State: p.State, Network: p.Network}
			if e.Owner == d.cfg.Node {
				v.Local = true
				for _, l := range d.mesh {
					if l.id == p.ID && l.spec.String() == p.Spec && l.port != nil {
						st := l.port.Stats()
						v.Active, v.Total, v.Failed, v.BytesIn, v.BytesOut = st.Active, st.Total, st.Failed, st.BytesIn, st.BytesOut
					}
				}
			}
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(a, b api.ServicePublishState) int {
		return strings.Compare(a.Published+"|"+a.Node, b.Published+"|"+b.Node)
	})
	return out
}

// closeMesh closes every published port (daemon shutdown); callers hold
// d.mu.
func (d *Daemon) closeMesh() {
	for k, l := range d.mesh {
		l.close()
		delete(d.mesh, k)
	}
	d.stopMeshNAT()
}
