package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"
)

// TestMetricsEndpoint: a daemon started with --metrics-addr serves, inside
// its host's namespace, a Prometheus exposition whose port counters show
// the traffic between two containers.
func TestMetricsEndpoint(t *testing.T) {
	e := newTestbed(t, 1)[0]
	const addr = "127.0.0.1:19100"
	if err := e.h.StartDaemon("--metrics-addr", addr); err != nil {
		t.Fatal(err)
	}
	e.network("web", "10.21.0.0/24")
	e.run("c1", "web")
	e.run("c2", "web")
	moveBytes(t, e, "c1", e, "c2", 1<<20, 7)

	fams := scrapeFromNetns(t, e.h.NetnsPath, addr)
	for _, port := range []string{"c1/eth0", "c2/eth0"} {
		for _, dir := range []string{"rx", "tx"} {
			if v := seriesValue(fams, "vxmesh_port_packets_total", map[string]string{"network": "web", "port": port, "direction": dir}); v <= 0 {
				t.Errorf("vxmesh_port_packets_total{network=web,port=%s,direction=%s} = %v after 1 MiB over TCP, want > 0", port, dir, v)
			}
		}
	}
	// c1 sent 1 MiB: its port received at least that many bytes.
	if v := seriesValue(fams, "vxmesh_port_bytes_total", map[string]string{"network": "web", "port": "c1/eth0", "direction": "rx"}); v < 1<<20 {
		t.Errorf("vxmesh_port_bytes_total{port=c1/eth0,direction=rx} = %v, want >= 1 MiB", v)
	}
	if v := seriesValue(fams, "vxmesh_cluster_members", map[string]string{"state": "alive"}); v != 1 {
		t.Errorf("vxmesh_cluster_members{state=alive} = %v, want 1", v)
	}

	// A second daemon (own socket and state) on the same metrics address
	// exits non-zero naming it, before it joins a cluster.
	args := []string{"nsenter", "--net=" + e.h.NetnsPath, "--", suite.bin, "daemon",
		"--node", "h1b", "--socket", filepath.Join(t.TempDir(), "b.sock"), "--state-dir", t.TempDir(),
		"--netns-prefix", e.h.ContainerPrefix + "b-", "--advertise", e.h.Addr, "--gossip-port", "17946",
		"--data-port", "14789", "--esp-port", "14500", "--metrics-addr", addr}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
		t.Fatalf("second daemon on a busy metrics address: %v, want a failure exit status; output:\n%s", err, out)
	}
	if want := "metrics address " + addr + ": "; !strings.Contains(string(out), want) || strings.Contains(string(out), "node started") {
		t.Errorf("second daemon's output, want only the refusal %q:\n%s", want, out)
	}
	if !e.h.Running() {
		t.Error("the first daemon stopped")
	}
}

// seriesValue returns the counter or gauge value of the series of family
// name whose labels include want, or -1 when there is none.
func seriesValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
next:
	for _, m := range f.GetMetric() {
		l := map[string]string{}
		for _, p := range m.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		for k, v := range want {
			if l[k] != v {
				continue next
			}
		}
		if f.GetType() == dto.MetricType_COUNTER {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	return -1
}

// scrapeFromNetns GETs http://addr/metrics over a connection made in the
// network namespace at nsPath and parses the exposition with the
// Prometheus client library's parser.
func scrapeFromNetns(t *testing.T, nsPath, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	var conn net.Conn
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if conn, err = dialFromNetns(nsPath, addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connecting to the metrics address %s in %s: %v", addr, nsPath, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       func(context.Context, string, string) (net.Conn, error) { return conn, nil },
	}}
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

// dialFromNetns connects to addr over TCP from a socket made in the
// network namespace at nsPath: the socket stays there once made, so the
// connection can be used from any thread.
func dialFromNetns(nsPath, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	res := make(chan result, 1)
	go func() {
		// The thread goes back before it is unlocked; if going back fails it
		// stays locked and exits with the goroutine.
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			res <- result{nil, err}
			return
		}
		defer self.Close()
		ns, err := os.Open(nsPath)
		if err != nil {
			res <- result{nil, err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- result{nil, fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		res <- result{c, err}
	}()
	r := <-res
	return r.c, r.err
}
