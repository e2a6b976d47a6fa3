package daemon

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/metrics"
	"github.com/vxmesh/vxmesh/tunnel"
)

// scrapeMetrics GETs http://addr/metrics and parses it with the
// Prometheus client library's own parser.
func scrapeMetrics(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// portCounter returns the value of vxmesh_port_packets_total for a port
// and direction, or -1 when there is no such series.
func portCounter(fams map[string]*dto.MetricFamily, network, port, dir string) float64 {
	for _, m := range fams["vxmesh_port_packets_total"].GetMetric() {
		l := map[string]string{}
		for _, p := range m.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		if l["network"] == network && l["port"] == port && l["direction"] == dir {
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// TestMetricsScrape: a daemon started with a metrics address serves the
// port counters of traffic between two of its containers on /metrics,
// and stops listening when it shuts down.
func TestMetricsScrape(t *testing.T) {
	sb := newFakeSandbox()
	sb.useNetstack = true
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, t.TempDir())
	cfg.Socket = filepath.Join(t.TempDir(), "vxmesh.sock")
	cfg.MetricsAddr = "127.0.0.1:0"
	d := startNode(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx) }()
	defer func() { cancel(); <-served }()
	addr := d.MetricsAddr().String()

	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.7.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	ep2 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c2", Create: true})
	tcpOnce(t, sb, sb, "/run/netns/c1", "/run/netns/c2", netip.MustParseAddr(ep2.IP), 5001, 64<<10)

	fams := scrapeMetrics(t, addr)
	for _, port := range []string{"c1/eth0", "c2/eth0"} {
		for _, dir := range []string{"rx", "tx"} {
			if v := portCounter(fams, "web", port, dir); v <= 0 {
				t.Errorf("vxmesh_port_packets_total{network=web,port=%s,direction=%s} = %v after a TCP transfer, want > 0", port, dir, v)
			}
		}
	}
	if f := fams["vxmesh_cluster_members"]; f == nil {
		t.Error("vxmesh_cluster_members missing")
	}

	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	served <- nil
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("metrics address %s still accepts connections after shutdown", addr)
	}
}

// TestMetricsAddrBusy: a daemon whose metrics address is taken fails with
// an error naming it, before it takes the gossip port.
func TestMetricsAddrBusy(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := netip.MustParseAddr("127.0.0.1")
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", addr, newFakeSandbox(), t.TempDir())
	cfg.MetricsAddr = busy.Addr().String()
	var log bytes.Buffer
	cfg.Logger = slog.New(slog.NewTextHandler(&log, nil))
	d, err := New(cfg)
	if err == nil {
		d.Close()
		t.Fatal("a daemon started on a busy metrics address")
	}
	if !strings.HasPrefix(err.Error(), "metrics address "+cfg.MetricsAddr+": ") {
		t.Fatalf("error %q does not name the busy metrics address", err)
	}
	if strings.Contains(log.String(), "node started") {
		t.Errorf("the refused daemon started its node before failing:\n%s", log.String())
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(addr, uint16(cfg.GossipPort)).String())
	if err != nil {
		t.Fatalf("the refused daemon took the gossip port: %v", err)
	}
	l.Close()
	// The state directory is free again.
	cfg.MetricsAddr = ""
	startNode(t, cfg).Close()
}

// TestMetricsEncryptedNetworkNoSecrets: the exposition of a node of an
// encrypted network shows its SAs' counters and the key ring's version
// and primary key, and none of the keys.
func TestMetricsEncryptedNetworkNoSecrets(t *testing.T) {
	ds, sbs := threeNodes(t)
	if _, err := ds[1].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Subnet: "10.5.0.0/24", Encrypted: true}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "key 1 everywhere", func() bool { _, err := d.Network("sec"); return err == nil && d.Keys().Primary == 1 })
	}
	mustAttach(t, ds[0], api.AttachRequest{Network: "sec", Name: "c1", Create: true})
	ep3 := mustAttach(t, ds[2], api.AttachRequest{Network: "sec", Name: "c3", Create: true})
	waitFor(t, "SAs and remotes", func() bool {
		n1, _ := ds[0].Network("sec")
		return len(n1.Endpoints) == 2 && len(n1.SAs) == 4
	})
	tcpOnce(t, sbs[0], sbs[2], "/run/netns/c1", "/run/netns/c3", netip.MustParseAddr(ep3.IP), 5001, 64<<10)

	srv := httptest.NewServer(metrics.Handler(ds[0], metrics.DefaultMaxPorts))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	sent := 0.0
	for _, m := range fams["vxmesh_sa_packets_total"].GetMetric() {
		l := map[string]string{}
		for _, p := range m.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		if l["network"] == "sec" && l["node"] == "h3" && l["direction"] == "out" && l["key"] == "1" {
			sent += m.GetCounter().GetValue()
		}
	}
	if sent <= 0 {
		t.Errorf("vxmesh_sa_packets_total{network=sec,node=h3,direction=out,key=1} = %v after a TCP transfer, want > 0", sent)
	}
	for name, want := range map[string]float64{"vxmesh_keyring_primary_key_id": 1, "vxmesh_network_encrypted": 1} {
		f := fams[name]
		if f == nil || len(f.GetMetric()) != 1 || f.GetMetric()[0].GetGauge().GetValue() != want {
			t.Errorf("%s: %v, want one series = %v", name, f, want)
		}
	}
	secrets := secretsOf(ds[0])
	if len(secrets) == 0 {
		t.Fatal("no secrets to look for")
	}
	text := strings.ToLower(string(body))
	for _, s := range secrets {
		for _, frag := range []string{s, s[:16], s[len(s)-16:]} {
			if strings.Contains(text, frag) {
				t.Fatalf("the exposition holds key material %s...", frag[:8])
			}
		}
	}
}
