package e2e

import (
	"strconv"
	"testing"
)

// TestServiceMetrics: after connections to a service's VIP (and one to a
// port it does not list), the metrics endpoint shows the service's
// connections, its backend by state and health, and the refusal by
// reason, as the client library's parser reads them.
func TestServiceMetrics(t *testing.T) {
	e := newTestbed(t, 1)[0]
	const addr = "127.0.0.1:19101"
	if err := e.h.StartDaemon("--metrics-addr", addr); err != nil {
		t.Fatal(err)
	}
	e.network("web", "10.22.0.0/24")
	e.cli("service", "create", "api", "--network", "web", "--port", strconv.Itoa(svcPort)+"/tcp")
	e.runBackend("b1", "web", "--service", "api")
	e.run("client", "web")
	e.waitBackends("api", "b1")
	vip := e.vip("api", "web")
	if r := e.conns("client", vip+":"+strconv.Itoa(svcPort), 10, 2, 0); r.Errors != 0 || r.Counts["b1"] != 10 {
		t.Fatalf("10 connections to the VIP: %+v", r)
	}
	if r := e.conns("client", vip+":9090", 1, 1, 0); r.Errors != 1 {
		t.Fatalf("a connection to a port the service lacks: %+v, want refused", r)
	}

	fams := scrapeFromNetns(t, e.h.NetnsPath, addr)
	sn := map[string]string{"network": "web", "service": "api"}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"vxmesh_service_connections_total", sn, 10},
		{"vxmesh_service_rejects_total", sn, 1},
		{"vxmesh_service_backends", map[string]string{"network": "web", "service": "api", "state": "active", "health": "healthy"}, 1},
		{"vxmesh_service_backends", map[string]string{"network": "web", "service": "api", "state": "draining", "health": "healthy"}, 0},
		{"vxmesh_balancer_drops_total", map[string]string{"network": "web", "reason": "port"}, 1},
	} {
		if v := seriesValue(fams, c.name, c.labels); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	if v := seriesValue(fams, "vxmesh_service_packets_total", sn); v < 10*3 {
		t.Errorf("vxmesh_service_packets_total = %v after 10 connections, want at least 30", v)
	}
}
