// Package metrics exposes a vxmesh daemon's counters to Prometheus.
//
// The Collector reads the daemon's existing snapshots (api.Stats, network
// inspect views, the key ring view, the cluster members) on each scrape
// and turns them into const metrics: nothing is added to the packet path.
// Labels are bounded: network, port (a container endpoint), peer (a VTEP
// address) and node, service, direction, a fixed set of reasons, kinds,
// states and protocols, and the key ID of an SA (bounded by the ring's
// size); never anything per packet, per flow or per backend. At most
// MaxPorts port series sets are exported per scrape (the first by network
// and port name), and MaxServices (service, network) sets;
// vxmesh_metrics_ports_omitted and vxmesh_metrics_services_omitted say
// how many were left out. No key material is ever read or exported.
package metrics

import (
	"net/http"
	"sort"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vxmesh/vxmesh/api"
)

// DefaultMaxPorts is the default cap on the ports exported per scrape.
const DefaultMaxPorts = 1024

// Source is what the Collector reads on each scrape; *daemon.Daemon is one.
type Source interface {
	// Stats returns the daemon-wide counter snapshot.
	Stats() api.Stats
	// Network returns one network's inspect view (peers, SAs, drops).
	Network(name string) (api.Network, error)
	// FDB returns the forwarding database of a network's switch.
	FDB(name string) ([]api.FDBEntry, error)
	// Keys returns the key ring without key material.
	Keys() api.Keys
	// Nodes returns the cluster members.
	Nodes() []api.Node
	// ServicesWithBackends returns every service with its backends (the
	// cluster's view of their state and health).
	ServicesWithBackends() []api.Service
}

// memberStates are the cluster member states always exported, so that a
// state with no member reads 0 rather than missing.
var memberStates = []string{"alive", "suspect", "dead", "left"}

// fdbKinds are the forwarding-database kinds always exported.
var fdbKinds = []string{"local", "remote", "static", "learned"}

// Collector is a prometheus.Collector over a Source.
type Collector struct {
	src Source
	// MaxPorts caps the ports exported per scrape (DefaultMaxPorts if 0).
	MaxPorts int
	// MaxServices caps the (service, network) pairs exported per scrape
	// (DefaultMaxServices if 0).
	MaxServices int
	d           descs
	eg          egressDescs
	svc         serviceDescs
}

type descs struct {
	node, portsOmitted                                                            *prometheus.Desc
	flooded, arpSuppressed, floodNoPeers, switchDrops                             *prometheus.Desc
	ingressReturn                                                                 *prometheus.Desc
	ingressReturnEvicted                                                          *prometheus.Desc
	tunnelDrops, underlayDrops, encrypted, fdbEntries                             *prometheus.Desc
	portPackets, portBytes, portDrops                                             *prometheus.Desc
	peerPackets, peerBytes, peerTxDrops                                           *prometheus.Desc
	saPackets, saBytes, saDrops, saSeq                                            *prometheus.Desc
	dnsQueries, dnsLocal, dnsForwarded, dnsNX, dnsFail                            *prometheus.Desc
	dnsOverloaded, dnsNoEgress, dnsUpErrors, dnsInflight, dnsListen, dnsCoalesced *prometheus.Desc
	dnsLatency                                                                    *prometheus.Desc
	ringVersion, ringPrimary, ringPending, ringKeys                               *prometheus.Desc
	ringRefused, members                                                          *prometheus.Desc
	ktnlActive, ktnlSupers, ktnlFallbacks                                         *prometheus.Desc
	natActive, natCut                                                             *prometheus.Desc
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("vxmesh_"+name, help, labels, nil)
}

// NewCollector returns a Collector reading src.
func NewCollector(src Source) *Collector {
	net, port, peer := "network", "port", "peer"
	sa := []string{net, peer, "node", "direction", "key"}
	return &Collector{src: src, eg: newEgressDescs(), svc: newServiceDescs(), d: descs{
		node:                 desc("node_info", "The node this daemon runs as (always 1).", "node"),
		portsOmitted:         desc("metrics_ports_omitted", "Ports left out of this scrape because of the series cap."),
		flooded:              desc("network_flooded_frames_total", "Frames the network's switch flooded.", net),
		arpSuppressed:        desc("network_arp_suppressed_total", "ARP requests the switch answered itself.", net),
		floodNoPeers:         desc("network_flood_no_peers_total", "Frames to flood to other hosts while there was none (not a drop).", net),
		ingressReturn:        desc("network_ingress_return_flows", "Routing-mesh flows whose replies the network's switch sends back to the host they came in through.", net),
		ingressReturnEvicted: desc("network_ingress_return_evicted_total", "Closed routing-mesh flows (FIN or RST seen) the ingress-return table freed before their timeout to take a new flow.", net),
		switchDrops:          desc("network_switch_drops_total", "Frames the network's switch dropped, by reason (all ports, including removed ones).", net, "reason"),
		tunnelDrops:          desc("network_tunnel_drops_total", "Frames the network's tunnel dropped, by reason.", net, "reason"),
		underlayDrops:        desc("underlay_drops_total", "Datagrams dropped before their network was known, by reason.", "reason"),
		encrypted:            desc("network_encrypted", "1 if the network's frames are carried in ESP.", net),
		fdbEntries:           desc("network_fdb_entries", "Forwarding-database entries of the network's switch, by kind.", net, "kind"),
		portPackets:          desc("port_packets_total", "Frames through a container's switch port (rx: from the container).", net, port, "direction"),
		portBytes:            desc("port_bytes_total", "Bytes through a container's switch port (rx: from the container).", net, port, "direction"),
		portDrops:            desc("port_drops_total", "Frames dropped at a switch port, by reason.", net, port, "reason"),
		peerPackets:          desc("peer_packets_total", "Frames exchanged with a remote VTEP.", net, peer, "node", "direction"),
		peerBytes:            desc("peer_bytes_total", "Bytes exchanged with a remote VTEP.", net, peer, "node", "direction"),
		peerTxDrops:          desc("peer_tx_drops_total", "Frames to a remote VTEP that could not be sent.", net, peer, "node"),
		saPackets:            desc("sa_packets_total", "Packets sealed (out) or opened (in) with an ESP SA.", sa...),
		saBytes:              desc("sa_bytes_total", "Bytes sealed (out) or opened (in) with an ESP SA.", sa...),
		saDrops:              desc("sa_drops_total", "Packets an ESP SA refused, by reason.", append(sa, "reason")...),
		saSeq:                desc("sa_sequence_number", "Last sequence number sent (out) or highest authenticated (in).", sa...),
		dnsQueries:           desc("dns_queries_total", "DNS queries received by the embedded resolver."),
		dnsLocal:             desc("dns_local_answers_total", "DNS queries answered from container names and aliases."),
		dnsForwarded:         desc("dns_forwarded_total", "DNS queries forwarded upstream."),
		dnsNX:                desc("dns_nxdomain_total", "DNS answers with rcode NXDOMAIN."),
		dnsFail:              desc("dns_servfail_total", "DNS answers with rcode SERVFAIL."),
		dnsOverloaded:        desc("dns_overloaded_total", "DNS queries refused because too many forwarded queries were in flight."),
		dnsNoEgress:          desc("dns_no_egress_total", "DNS queries for outside names refused because the container is only on internal networks."),
		dnsUpErrors:          desc("dns_upstream_errors_total", "Failed tries at an upstream DNS server."),
		dnsCoalesced:         desc("dns_answers_coalesced_total", "Local DNS answers sent in one UDP_SEGMENT send with an earlier answer to the same client."),
		dnsInflight:          desc("dns_inflight", "Forwarded DNS queries in flight."),
		dnsListen:            desc("dns_listeners", "Containers the embedded resolver serves."),
		dnsLatency:           desc("dns_upstream_latency_seconds", "Round trip of the upstream DNS servers' answers."),
		ringVersion:          desc("keyring_version", "Version of the key ring (0: no ring)."),
		ringPrimary:          desc("keyring_primary_key_id", "ID of the data key SAs seal with."),
		ringPending:          desc("keyring_pending_key_id", "ID of the key being rotated in (0: none)."),
		ringKeys:             desc("keyring_keys", "Keys in the ring."),
		ringRefused:          desc("keyring_rings_refused_total", "Rings from the cluster this node refused in this run."),
		members:              desc("cluster_members", "Cluster members by state.", "state"),
		ktnlActive:           desc("kernel_tunnel_active", "1 while TCP super-segments to one peer go to the kernel whole (daemon --kernel-tunnel; auto follows the host's forward firewall).", "state"),
		ktnlSupers:           desc("kernel_tunnel_super_packets_total", "TCP super-segments sent through the kernel whole (tx) and received whole (rx).", "direction"),
		ktnlFallbacks:        desc("kernel_tunnel_fallbacks_total", "TCP super-segments the kernel path refused, split by the daemon instead."),
		natActive:            desc("published_nat_active", "1 while the routing mesh's per-packet NAT steers published ports at the uplinks (daemon --mesh-nat; auto follows the host's input firewall).", "state"),
		natCut:               desc("published_nat_cut_total", "Connections open through the per-packet NAT when its steering stopped (a firewall appeared); the kernel resets them."),
	}}
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	d := &c.d
	for _, x := range []*prometheus.Desc{
		d.node, d.portsOmitted, d.flooded, d.arpSuppressed, d.floodNoPeers, d.switchDrops,
		d.tunnelDrops, d.underlayDrops, d.encrypted, d.fdbEntries, d.portPackets, d.portBytes,
		d.portDrops, d.peerPackets, d.peerBytes, d.peerTxDrops, d.saPackets, d.saBytes, d.saDrops,
		d.saSeq, d.dnsQueries, d.dnsLocal, d.dnsForwarded, d.dnsNX, d.dnsFail, d.dnsOverloaded, d.dnsNoEgress,
		d.dnsUpErrors, d.dnsCoalesced, d.dnsInflight, d.dnsListen, d.dnsLatency, d.ringVersion, d.ringPrimary,
		d.ringPending, d.ringKeys, d.ringRefused, d.members, d.ktnlActive, d.ktnlSupers, d.ktnlFallbacks,
		d.natActive, d.natCut,
	} {
		ch <- x
	}
	for _, x := range c.eg.all() {
		ch <- x
	}
	for _, x := range c.svc.all() {
		ch <- x
	}
}

// emitter sends const metrics to a channel.
type emitter chan<- prometheus.Metric

func (e emitter) counter(d *prometheus.Desc, v uint64, labels ...string) {
	e <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func (e emitter) gauge(d *prometheus.Desc, v float64, labels ...string) {
	e <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

// byReason emits one counter per reason of m, in a stable order.
func (e emitter) byReason(d *prometheus.Desc, m map[string]uint64, labels ...string) {
	reasons := make([]string, 0, len(m))
	for r := range m {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		e.counter(d, m[r], append(labels, r)...)
	}
}

// Collect reads the Source once and emits every metric.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	e := emitter(ch)
	st := c.src.Stats()
	e.gauge(c.d.node, 1, st.Node)
	e.byReason(c.d.underlayDrops, st.TunnelDrops)
	c.collectPorts(e, st.Networks)
	for _, ns := range st.Networks {
		c.collectNetwork(e, ns)
	}
	c.collectDNS(e, st.DNS)
	c.eg.collect(e, st.Egress)
	c.svc.collect(e, &st, c.src.ServicesWithBackends(), c.MaxServices)
	c.collectKeys(e, c.src.Keys())
	c.collectMembers(e, c.src.Nodes())
	if k := st.KernelTunnel; k != nil {
		// state is the mode (auto, on, off): one series, bounded.
		e.gauge(c.d.ktnlActive, b2f(k.Active), k.Mode)
		e.counter(c.d.ktnlSupers, k.TxSupers, "tx")
		e.counter(c.d.ktnlSupers, k.RxSupers, "rx")
		e.counter(c.d.ktnlFallbacks, k.SuperFallbacks)
	}
	if n := st.Egress.NAT; n != nil && n.Mode != "" {
		// state is the mode (auto, on): one series, bounded.
		e.gauge(c.d.natActive, b2f(n.Active), n.Mode)
		e.counter(c.d.natCut, n.Cut)
	}
}

// collectNetwork emits a network's switch, tunnel, peer and SA metrics.
func (c *Collector) collectNetwork(e emitter, ns api.NetworkStats) {
	d, name := &c.d, ns.Network
	e.counter(d.flooded, ns.Flooded, name)
	e.counter(d.arpSuppressed, ns.ARPSuppressed, name)
	e.counter(d.floodNoPeers, ns.FloodNoPeers, name)
	e.byReason(d.switchDrops, ns.Drops, name)
	e.gauge(d.ingressReturn, float64(ns.IngressReturn), name)
	e.counter(d.ingressReturnEvicted, ns.IngressReturnEvicted, name)
	if fdb, err := c.src.FDB(name); err == nil {
		kinds := map[string]int{}
		for _, f := range fdb {
			kinds[f.Kind]++
		}
		for _, k := range fdbKinds {
			e.gauge(d.fdbEntries, float64(kinds[k]), name, k)
		}
	}
	v, err := c.src.Network(name)
	if err != nil {
		return // removed since Stats: its switch counters are enough
	}
	e.gauge(d.encrypted, b2f(v.Encrypted), name)
	e.byReason(d.tunnelDrops, v.Drops, name)
	for _, p := range v.Peers {
		e.counter(d.peerPackets, p.RxPackets, name, p.VTEP, p.Node, "rx")
		e.counter(d.peerPackets, p.TxPackets, name, p.VTEP, p.Node, "tx")
		e.counter(d.peerBytes, p.RxBytes, name, p.VTEP, p.Node, "rx")
		e.counter(d.peerBytes, p.TxBytes, name, p.VTEP, p.Node, "tx")
		e.counter(d.peerTxDrops, p.TxDrops, name, p.VTEP, p.Node)
	}
	for _, sa := range v.SAs {
		l := []string{name, sa.VTEP, sa.Node, sa.Direction, strconv.FormatUint(uint64(sa.Key), 10)}
		e.counter(d.saPackets, sa.Packets, l...)
		e.counter(d.saBytes, sa.Bytes, l...)
		e.gauge(d.saSeq, float64(sa.Seq), l...)
		e.byReason(d.saDrops, sa.Drops, l...)
	}
}

// collectPorts emits the port series of the first MaxPorts ports by
// network and port name, and how many ports were left out.
func (c *Collector) collectPorts(e emitter, nets []api.NetworkStats) {
	type np struct {
		net string
		p   *api.PortStats
	}
	var all []np
	for i := range nets {
		for j := range nets[i].Ports {
			all = append(all, np{nets[i].Network, &nets[i].Ports[j]})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].net != all[j].net {
			return all[i].net < all[j].net
		}
		return all[i].p.Name < all[j].p.Name
	})
	max := c.MaxPorts
	if max <= 0 {
		max = DefaultMaxPorts
	}
	omitted := 0
	if len(all) > max {
		omitted, all = len(all)-max, all[:max]
	}
	e.gauge(c.d.portsOmitted, float64(omitted))
	d := &c.d
	for _, x := range all {
		p := x.p
		e.counter(d.portPackets, p.RxPackets, x.net, p.Name, "rx")
		e.counter(d.portPackets, p.TxPackets, x.net, p.Name, "tx")
		e.counter(d.portBytes, p.RxBytes, x.net, p.Name, "rx")
		e.counter(d.portBytes, p.TxBytes, x.net, p.Name, "tx")
		e.byReason(d.portDrops, p.Drops, x.net, p.Name)
	}
}

// collectDNS emits the resolver's counters and its latency histogram.
func (c *Collector) collectDNS(e emitter, s api.DNSStats) {
	d := &c.d
	e.counter(d.dnsQueries, s.Queries)
	e.counter(d.dnsLocal, s.Local)
	e.counter(d.dnsForwarded, s.Forwarded)
	e.counter(d.dnsNX, s.NXDomain)
	e.counter(d.dnsFail, s.ServFail)
	e.counter(d.dnsOverloaded, s.Overloaded)
	e.counter(d.dnsNoEgress, s.NoEgress)
	e.counter(d.dnsUpErrors, s.UpstreamErrors)
	e.counter(d.dnsCoalesced, s.Coalesced)
	e.gauge(d.dnsInflight, float64(s.Inflight))
	e.gauge(d.dnsListen, float64(s.Listeners))
	count, sum, buckets := Histogram(s.UpstreamLatency)
	e <- prometheus.MustNewConstHistogram(d.dnsLatency, count, sum, buckets)
}

// Histogram converts the daemon's latency histogram (per-bucket counts in
// milliseconds, the last bucket unbounded) to Prometheus's form: the
// total count, the sum in seconds (from the average, so rounded to
// microseconds) and cumulative counts by upper bound in seconds.
func Histogram(l api.LatencyStats) (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = map[float64]uint64{}
	var cum uint64
	for _, b := range l.Buckets {
		cum += b.Count
		if b.LeMs > 0 {
			buckets[b.LeMs/1e3] = cum
		}
	}
	return l.Count, l.AvgMs * float64(l.Count) / 1e3, buckets
}

// collectKeys emits the key ring's version, key IDs and refusals.
func (c *Collector) collectKeys(e emitter, k api.Keys) {
	d := &c.d
	e.gauge(d.ringVersion, float64(k.Version))
	e.gauge(d.ringPrimary, float64(k.Primary))
	e.gauge(d.ringPending, float64(k.Pending))
	e.gauge(d.ringKeys, float64(len(k.Keys)))
	e.counter(d.ringRefused, k.RingsRefused)
}

// collectMembers emits the cluster members by state.
func (c *Collector) collectMembers(e emitter, nodes []api.Node) {
	n := map[string]int{}
	for _, m := range nodes {
		n[m.State]++
	}
	for _, s := range memberStates {
		e.gauge(c.d.members, float64(n[s]), s)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Handler serves the exposition of src's metrics, with the Go runtime's
// and the process's, on any path (mount it at /metrics).
func Handler(src Source, maxPorts int) http.Handler {
	reg := prometheus.NewRegistry()
	c := NewCollector(src)
	c.MaxPorts = maxPorts
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
