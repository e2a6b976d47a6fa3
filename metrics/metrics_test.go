package metrics

import (
	"fmt"
	"math"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vxmesh/vxmesh/api"
)

// fakeSource is a Source with fixed snapshots.
type fakeSource struct {
	stats api.Stats
	nets  map[string]api.Network
	fdb   map[string][]api.FDBEntry
	keys  api.Keys
	nodes []api.Node
	svcs  []api.Service
}

func (f *fakeSource) Stats() api.Stats { return f.stats }
func (f *fakeSource) Network(name string) (api.Network, error) {
	n, ok := f.nets[name]
	if !ok {
		return api.Network{}, fmt.Errorf("network %q: not found", name)
	}
	return n, nil
}
func (f *fakeSource) FDB(name string) ([]api.FDBEntry, error) { return f.fdb[name], nil }
func (f *fakeSource) Keys() api.Keys                          { return f.keys }
func (f *fakeSource) Nodes() []api.Node                       { return f.nodes }
func (f *fakeSource) ServicesWithBackends() []api.Service     { return f.svcs }

func testSource() *fakeSource {
	return &fakeSource{
		stats: api.Stats{
			Node:         "h1",
			KernelTunnel: &api.KernelTunnelStats{Mode: "auto", Active: true, Reason: "clear", TxSupers: 5, SuperFallbacks: 1, RxSupers: 4},
			Networks: []api.NetworkStats{{
				Network: "web", Flooded: 7, ARPSuppressed: 3, FloodNoPeers: 2, IngressReturn: 6, IngressReturnEvicted: 4,
				Drops: map[string]uint64{"storm": 5, "port-security": 1},
				Ports: []api.PortStats{
					{Name: "c2", RxPackets: 20, RxBytes: 2000, TxPackets: 21, TxBytes: 2100},
					{Name: "c1", RxPackets: 10, RxBytes: 1000, TxPackets: 11, TxBytes: 1100, Drops: map[string]uint64{"storm": 5}},
				},
			}},
			DNS: api.DNSStats{
				Queries: 100, Local: 60, Forwarded: 40, NXDomain: 4, ServFail: 3, Overloaded: 2, NoEgress: 6,
				UpstreamErrors: 1, Inflight: 6, Listeners: 2, Coalesced: 11,
				UpstreamLatency: api.LatencyStats{Count: 40, AvgMs: 10, Buckets: []api.LatencyBucket{
					{LeMs: 1, Count: 5}, {LeMs: 5, Count: 10}, {LeMs: 25, Count: 20},
					{LeMs: 100, Count: 3}, {LeMs: 500, Count: 1}, {Count: 1},
				}},
			},
			TunnelDrops: map[string]uint64{"unknown-vni": 9},
			Egress: api.EgressStats{IngressTCP: 1, IngressTotal: 3, NAT: &api.NATStats{Mode: "auto", Reason: "nftables chain", Cut: 3, Open: 2, Flows: 5, Max: 64, Total: 8, Evicted: 1,
				FramesIn: 40, FramesOut: 41, Ports: 1, Drops: map[string]uint64{"no-flow": 6}, Resets: 4}},
		},
		nets: map[string]api.Network{"web": {
			Name: "web", Encrypted: true, Drops: map[string]uint64{"no-sa": 4}, FloodNoPeers: 2,
			Peers: []api.Peer{{VTEP: "10.0.0.2", Node: "h2", RxPackets: 30, RxBytes: 3000, TxPackets: 31, TxBytes: 3100, TxDrops: 1}},
			SAs: []api.SA{
				{Node: "h2", VTEP: "10.0.0.2", Direction: "out", Key: 7, Seq: 31, Packets: 31, Bytes: 3100},
				{Node: "h2", VTEP: "10.0.0.2", Direction: "in", Key: 7, Seq: 30, Packets: 30, Bytes: 3000, Drops: map[string]uint64{"replay": 2}},
			},
		}},
		fdb: map[string][]api.FDBEntry{"web": {
			{Kind: "local"}, {Kind: "local"}, {Kind: "remote"}, {Kind: "learned"},
		}},
		keys:  api.Keys{Version: 12, Primary: 7, Keys: []api.KeyInfo{{ID: 6}, {ID: 7}}, RingsRefused: 1},
		nodes: []api.Node{{Name: "h1", State: "alive"}, {Name: "h2", State: "alive"}, {Name: "h3", State: "dead"}},
	}
}

// scrape serves src's metrics over HTTP and parses the exposition with
// the client library's own parser.
func scrape(t testing.TB, src Source, maxPorts int) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(Handler(src, maxPorts))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the exposition: %v", err)
	}
	return fams
}

// labelKey renders a metric's labels as "k=v,k=v" sorted by name.
func labelKey(m *dto.Metric) string {
	var s []string
	for _, l := range m.GetLabel() {
		s = append(s, l.GetName()+"="+l.GetValue())
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

// value returns the value of the series of family name with exactly the
// given labels, checking the family's type.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, labels string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("%s: missing from the exposition", name)
	}
	if f.GetType() != typ {
		t.Fatalf("%s: type %s, want %s", name, f.GetType(), typ)
	}
	for _, m := range f.GetMetric() {
		if labelKey(m) != labels {
			continue
		}
		switch typ {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		}
		t.Fatalf("%s: unexpected type", name)
	}
	var have []string
	for _, m := range f.GetMetric() {
		have = append(have, "{"+labelKey(m)+"}")
	}
	t.Fatalf("%s{%s}: missing; have %v", name, labels, have)
	return 0
}

func TestExposition(t *testing.T) {
	fams := scrape(t, testSource(), 0)
	C, G := dto.MetricType_COUNTER, dto.MetricType_GAUGE
	for _, c := range []struct {
		name   string
		typ    dto.MetricType
		labels string
		want   float64
	}{
		{"vxmesh_node_info", G, "node=h1", 1},
		{"vxmesh_metrics_ports_omitted", G, "", 0},
		{"vxmesh_underlay_drops_total", C, "reason=unknown-vni", 9},
		{"vxmesh_network_flooded_frames_total", C, "network=web", 7},
		{"vxmesh_network_arp_suppressed_total", C, "network=web", 3},
		{"vxmesh_network_flood_no_peers_total", C, "network=web", 2},
		{"vxmesh_network_ingress_return_flows", G, "network=web", 6},
		{"vxmesh_network_ingress_return_evicted_total", C, "network=web", 4},
		{"vxmesh_network_switch_drops_total", C, "network=web,reason=storm", 5},
		{"vxmesh_network_switch_drops_total", C, "network=web,reason=port-security", 1},
		{"vxmesh_network_tunnel_drops_total", C, "network=web,reason=no-sa", 4},
		{"vxmesh_network_encrypted", G, "network=web", 1},
		{"vxmesh_network_fdb_entries", G, "kind=local,network=web", 2},
		{"vxmesh_network_fdb_entries", G, "kind=learned,network=web", 1},
		{"vxmesh_network_fdb_entries", G, "kind=static,network=web", 0},
		{"vxmesh_port_packets_total", C, "direction=rx,network=web,port=c1", 10},
		{"vxmesh_port_packets_total", C, "direction=tx,network=web,port=c1", 11},
		{"vxmesh_port_bytes_total", C, "direction=rx,network=web,port=c2", 2000},
		{"vxmesh_port_bytes_total", C, "direction=tx,network=web,port=c2", 2100},
		{"vxmesh_port_drops_total", C, "network=web,port=c1,reason=storm", 5},
		{"vxmesh_peer_packets_total", C, "direction=rx,network=web,node=h2,peer=10.0.0.2", 30},
		{"vxmesh_peer_bytes_total", C, "direction=tx,network=web,node=h2,peer=10.0.0.2", 3100},
		{"vxmesh_peer_tx_drops_total", C, "network=web,node=h2,peer=10.0.0.2", 1},
		{"vxmesh_sa_packets_total", C, "direction=out,key=7,network=web,node=h2,peer=10.0.0.2", 31},
		{"vxmesh_sa_bytes_total", C, "direction=in,key=7,network=web,node=h2,peer=10.0.0.2", 3000},
		{"vxmesh_sa_drops_total", C, "direction=in,key=7,network=web,node=h2,peer=10.0.0.2,reason=replay", 2},
		{"vxmesh_sa_sequence_number", G, "direction=out,key=7,network=web,node=h2,peer=10.0.0.2", 31},
		{"vxmesh_dns_queries_total", C, "", 100},
		{"vxmesh_dns_local_answers_total", C, "", 60},
		{"vxmesh_dns_forwarded_total", C, "", 40},
		{"vxmesh_dns_nxdomain_total", C, "", 4},
		{"vxmesh_dns_servfail_total", C, "", 3},
		{"vxmesh_dns_overloaded_total", C, "", 2},
		{"vxmesh_dns_no_egress_total", C, "", 6},
		{"vxmesh_dns_upstream_errors_total", C, "", 1},
		{"vxmesh_dns_answers_coalesced_total", C, "", 11},
		{"vxmesh_dns_inflight", G, "", 6},
		{"vxmesh_dns_listeners", G, "", 2},
		{"vxmesh_keyring_version", G, "", 12},
		{"vxmesh_keyring_primary_key_id", G, "", 7},
		{"vxmesh_keyring_pending_key_id", G, "", 0},
		{"vxmesh_keyring_keys", G, "", 2},
		{"vxmesh_keyring_rings_refused_total", C, "", 1},
		{"vxmesh_cluster_members", G, "state=alive", 2},
		{"vxmesh_cluster_members", G, "state=dead", 1},
		{"vxmesh_cluster_members", G, "state=suspect", 0},
		{"vxmesh_kernel_tunnel_active", G, "state=auto", 1},
		{"vxmesh_kernel_tunnel_super_packets_total", C, "direction=tx", 5},
		{"vxmesh_kernel_tunnel_super_packets_total", C, "direction=rx", 4},
		{"vxmesh_kernel_tunnel_fallbacks_total", C, "", 1},
		{"vxmesh_published_nat_active", G, "state=auto", 0},
		{"vxmesh_published_nat_cut_total", C, "", 3},
		{"vxmesh_published_flows", G, "proto=tcp", 1},
		{"vxmesh_published_flows_total", C, "", 3},
		{"vxmesh_published_nat_connections", G, "", 2},
		{"vxmesh_published_nat_flows", G, "", 5},
		{"vxmesh_published_nat_max_flows", G, "", 64},
		{"vxmesh_published_nat_flows_total", C, "", 8},
		{"vxmesh_published_nat_evicted_total", C, "", 1},
		{"vxmesh_published_nat_frames_total", C, "direction=in", 40},
		{"vxmesh_published_nat_frames_total", C, "direction=out", 41},
		{"vxmesh_published_nat_drops_total", C, "reason=no-flow", 6},
		{"vxmesh_published_nat_resets_total", C, "", 4},
		{"vxmesh_published_nat_ports", G, "", 1},
	} {
		if got := value(t, fams, c.name, c.typ, c.labels); got != c.want {
			t.Errorf("%s{%s} = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// No series carries a label outside the documented, bounded set.
	allowed := map[string]bool{"network": true, "port": true, "peer": true, "node": true, "direction": true,
		"reason": true, "kind": true, "key": true, "state": true, "le": true, "proto": true, "service": true, "health": true}
	for name, f := range fams {
		if !strings.HasPrefix(name, "vxmesh_") {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if !allowed[l.GetName()] {
					t.Errorf("%s: unexpected label %q", name, l.GetName())
				}
			}
		}
	}
}

func TestDNSLatencyHistogram(t *testing.T) {
	src := testSource()
	fams := scrape(t, src, 0)
	f := fams["vxmesh_dns_upstream_latency_seconds"]
	if f == nil || f.GetType() != dto.MetricType_HISTOGRAM || len(f.GetMetric()) != 1 {
		t.Fatalf("vxmesh_dns_upstream_latency_seconds: %v, want one histogram", f)
	}
	h := f.GetMetric()[0].GetHistogram()
	lat := src.stats.DNS.UpstreamLatency
	if h.GetSampleCount() != lat.Count {
		t.Errorf("count %d, want %d", h.GetSampleCount(), lat.Count)
	}
	if want := lat.AvgMs * float64(lat.Count) / 1e3; h.GetSampleSum() != want {
		t.Errorf("sum %v s, want %v s", h.GetSampleSum(), want)
	}
	// The same bounds as the daemon's histogram, in seconds, cumulative,
	// and the exposition's +Inf bucket for the daemon's unbounded one.
	bs := h.GetBucket()
	if len(bs) != len(lat.Buckets) {
		t.Fatalf("%d buckets, want %d", len(bs), len(lat.Buckets))
	}
	var cum uint64
	for i, b := range bs {
		cum += lat.Buckets[i].Count
		want := math.Inf(1)
		if i < len(lat.Buckets)-1 {
			want = lat.Buckets[i].LeMs / 1e3
		}
		if b.GetUpperBound() != want {
			t.Errorf("bucket %d: le %v, want %v", i, b.GetUpperBound(), want)
		}
		if b.GetCumulativeCount() != cum {
			t.Errorf("bucket le=%v: %d, want cumulative %d", b.GetUpperBound(), b.GetCumulativeCount(), cum)
		}
	}
	if cum != h.GetSampleCount() {
		t.Errorf("+Inf bucket %d != count %d", cum, h.GetSampleCount())
	}
}

// manyPorts is a source with n ports on one network.
func manyPorts(n int) *fakeSource {
	src := testSource()
	ports := make([]api.PortStats, n)
	for i := range ports {
		ports[i] = api.PortStats{Name: fmt.Sprintf("c%04d", i), RxPackets: uint64(i), TxPackets: uint64(i), RxBytes: 100, TxBytes: 100,
			Drops: map[string]uint64{"storm": 1}}
	}
	src.stats.Networks[0].Ports = ports
	return src
}

func TestPortCap(t *testing.T) {
	fams := scrape(t, manyPorts(30), 25)
	if got := value(t, fams, "vxmesh_metrics_ports_omitted", dto.MetricType_GAUGE, ""); got != 5 {
		t.Errorf("ports omitted = %v, want 5", got)
	}
	ports := map[string]bool{}
	for _, m := range fams["vxmesh_port_packets_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "port" {
				ports[l.GetValue()] = true
			}
		}
	}
	if len(ports) != 25 || !ports["c0000"] || !ports["c0024"] || ports["c0025"] {
		t.Errorf("exported ports %d (c0000 %v, c0024 %v, c0025 %v), want the first 25 by name",
			len(ports), ports["c0000"], ports["c0024"], ports["c0025"])
	}
}

// BenchmarkScrape measures one scrape (collect, encode, parse excluded) of
// a daemon with 500 ports.
func BenchmarkScrape(b *testing.B) {
	h := Handler(manyPorts(500), 0)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

// BenchmarkCollect measures the collector alone (no encoding, no runtime
// metrics) over a daemon with 500 ports.
func BenchmarkCollect(b *testing.B) {
	c := NewCollector(manyPorts(500))
	b.ReportAllocs()
	for b.Loop() {
		ch := make(chan prometheus.Metric, 4096)
		c.Collect(ch)
		close(ch)
		n := 0
		for range ch {
			n++
		}
		if n < 500*5 {
			b.Fatalf("%d metrics, want at least %d", n, 500*5)
		}
	}
}
