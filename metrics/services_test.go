package metrics

import (
	"fmt"
	"math"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vxmesh/vxmesh/api"
)

// withServices is testSource with two services on network web: "api"
// (VIP, counters on this node, three backends) and "rr" (dnsrr, no VIP,
// no counters, one starting backend).
func withServices() *fakeSource {
	src := testSource()
	src.stats.Services = []api.ServiceStats{{Service: "api", Network: "web", VIP: "10.0.1.200",
		NewConns: 9, Active: 2, Packets: 40, Bytes: 4000, Retries: 3, Rejects: 4, Ejections: 1}}
	src.stats.Conntrack = api.ConntrackStats{Max: 262144, Entries: 2, Evictions: 5, FragEvictions: 6, FragHeld: 7, Drops: map[string]uint64{"port": 4}}
	src.stats.Networks[0].BalancerDrops = map[string]uint64{"port": 4, "no-backend": 0, "no-conn": 2}
	src.stats.HealthChecks = []api.HealthCheckStats{{Service: "api", Network: "web", Latency: api.LatencyStats{Count: 4, AvgMs: 20,
		Buckets: []api.LatencyBucket{{LeMs: 1, Count: 1}, {LeMs: 5}, {LeMs: 25, Count: 2}, {LeMs: 100, Count: 1}, {LeMs: 500}, {LeMs: 1000}, {}}}}}
	src.svcs = []api.Service{
		{Name: "api", VIPs: []api.ServiceVIP{{Network: "web", VIP: "10.0.1.200"}}, Backends: []api.ServiceBackend{
			{Network: "web", State: "active", Health: "healthy"}, {Network: "web", State: "active", Health: "healthy"},
			{Network: "web", State: "draining", Health: "unhealthy"}}},
		{Name: "rr", VIPs: []api.ServiceVIP{{Network: "web"}}, Backends: []api.ServiceBackend{
			{Network: "web", State: "active", Health: "starting"}}},
	}
	return src
}

// The service metrics are what `service inspect` and `stats` show, parsed
// back with the client library's parser.
func TestServiceExposition(t *testing.T) {
	fams := scrape(t, withServices(), 0)
	C, G := dto.MetricType_COUNTER, dto.MetricType_GAUGE
	api := "network=web,service=api"
	for _, c := range []struct {
		name   string
		typ    dto.MetricType
		labels string
		want   float64
	}{
		{"vxmesh_service_connections_total", C, api, 9},
		{"vxmesh_service_active_connections", G, api, 2},
		{"vxmesh_service_packets_total", C, api, 40},
		{"vxmesh_service_bytes_total", C, api, 4000},
		{"vxmesh_service_retries_total", C, api, 3},
		{"vxmesh_service_rejects_total", C, api, 4},
		{"vxmesh_service_ejections_total", C, api, 1},
		{"vxmesh_service_backends", G, "health=healthy," + api + ",state=active", 2},
		{"vxmesh_service_backends", G, "health=unhealthy," + api + ",state=draining", 1},
		{"vxmesh_service_backends", G, "health=starting," + api + ",state=active", 0},
		{"vxmesh_service_backends", G, "health=starting,network=web,service=rr,state=active", 1},
		{"vxmesh_service_backends", G, "health=healthy,network=web,service=rr,state=active", 0},
		{"vxmesh_balancer_drops_total", C, "network=web,reason=port", 4},
		{"vxmesh_balancer_drops_total", C, "network=web,reason=no-conn", 2},
		{"vxmesh_balancer_drops_total", C, "network=web,reason=no-backend", 0},
		{"vxmesh_conntrack_entries", G, "", 2},
		{"vxmesh_conntrack_max", G, "", 262144},
		{"vxmesh_conntrack_evictions_total", C, "", 5},
		{"vxmesh_conntrack_frag_evictions_total", C, "", 6},
		{"vxmesh_conntrack_frag_held_total", C, "", 7},
		{"vxmesh_metrics_services_omitted", G, "", 0},
	} {
		if got := value(t, fams, c.name, c.typ, c.labels); got != c.want {
			t.Errorf("%s{%s} = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// rr has no VIP, so no balancer counters.
	for _, m := range fams["vxmesh_service_connections_total"].GetMetric() {
		if labelKey(m) != api {
			t.Errorf("connections of %s: a service without counters", labelKey(m))
		}
	}
	f := fams["vxmesh_service_health_check_duration_seconds"]
	if f == nil || f.GetType() != dto.MetricType_HISTOGRAM || len(f.GetMetric()) != 1 || labelKey(f.GetMetric()[0]) != api {
		t.Fatalf("health check histogram: %v", f)
	}
	h := f.GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 4 || math.Abs(h.GetSampleSum()-0.08) > 1e-9 || len(h.GetBucket()) != 7 ||
		h.GetBucket()[2].GetUpperBound() != 0.025 || h.GetBucket()[2].GetCumulativeCount() != 3 || h.GetBucket()[5].GetCumulativeCount() != 4 {
		t.Fatalf("health check histogram: %v", h)
	}
	// 2 pairs x 2 states x 3 healths.
	if n := len(fams["vxmesh_service_backends"].GetMetric()); n != 12 {
		t.Errorf("%d backend series, want 12", n)
	}
}

func TestServiceCap(t *testing.T) {
	src := withServices()
	src.svcs = nil
	for i := range 30 {
		src.svcs = append(src.svcs, api.Service{Name: fmt.Sprintf("s%02d", i), VIPs: []api.ServiceVIP{{Network: "web"}}})
	}
	c := NewCollector(src)
	c.MaxServices = 25
	fams := scrapeCollector(t, c)
	// 30 services + "api" of the counters: 31 pairs, 25 exported.
	if got := value(t, fams, "vxmesh_metrics_services_omitted", dto.MetricType_GAUGE, ""); got != 6 {
		t.Errorf("services omitted = %v, want 6", got)
	}
	svcs := map[string]bool{}
	for _, m := range fams["vxmesh_service_backends"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "service" {
				svcs[l.GetValue()] = true
			}
		}
	}
	if len(svcs) != 25 || !svcs["api"] || !svcs["s00"] || svcs["s29"] {
		t.Errorf("exported services %v, want the first 25 by name", svcs)
	}
}

// scrapeCollector serves c alone and parses the exposition with the
// client library's parser.
func scrapeCollector(t *testing.T, c *Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the exposition: %v", err)
	}
	return fams
}
