package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
)

// FuzzReconcile has another cluster member write arbitrary values into
// the tables the daemon reads (networks, endpoints, IPAM blocks, services) and runs
// them through decoding, validation and reconcile: the daemon must never
// panic (reconcile's safety net counts "reconcile-panic"), and every
// network it sets up must pass the API's validation.
func FuzzReconcile(f *testing.F) {
	f.Add(uint8(0), "evil", []byte(`{"name":"evil","id":"abababababababababababababababab","subnet":"10.7.0.0/24","gateway":"fd00::1","mtu":1400,"vni":5000}`))
	f.Add(uint8(0), "good", []byte(`{"name":"good","id":"abababababababababababababababab","subnet":"10.7.0.0/24","gateway":"10.7.0.1","mtu":1400,"vni":5000}`))
	f.Add(uint8(0), "base", []byte(`{"name":"base","id":"abababababababababababababababab","subnet":"10.7.0.0/24","gateway":"10.7.0.1","mtu":1400,"vni":4096,"vteps":["127.0.0.1"]}`))
	f.Add(uint8(1), "peer/base/x", []byte(`{"name":"x","network":"base","ip":"10.0.0.2","mac":"02:42:0a:00:00:02","node":"peer"}`))
	f.Add(uint8(1), "peer/base/y", []byte(`{"name":"y","network":"base","ip":"10.0.0.40","mac":"02:42:0a:00:00:28","node":"peer","aliases":["a","b"]}`))
	f.Add(uint8(1), "peer/base/z", []byte(`{"name":"z","network":"base","ip":"::1","mac":"zz","node":"peer"}`))
	f.Add(uint8(2), "base|10.0.0.0/28|peer", []byte(nil))
	f.Add(uint8(2), "base|::/0|peer", []byte(nil))
	f.Add(uint8(3), "api", []byte(`{"name":"api","id":"abababababababababababababababab","endpoint_mode":"vip","vips":[{"network":"base","vip":"10.0.0.200"}],"scheduler":"rr","stop_grace_period":"10s","dns_ttl":"10s","created":"2026-01-01T00:00:00Z","created_by":"peer"}`))
	f.Add(uint8(3), "api", []byte(`{"name":"api","id":"abababababababababababababababab","endpoint_mode":"vip","vips":[{"network":"base","vip":"10.0.0.1"}],"scheduler":"maglev","affinity":"client-ip:5m0s","ports":["80/tcp"],"health":"http::80/h","stop_grace_period":"0s","dns_ttl":"0s","created":"2026-01-01T00:00:00Z","created_by":"peer"}`))
	f.Add(uint8(3), "rr", []byte(`{"name":"rr","id":"abababababababababababababababab","endpoint_mode":"dnsrr","vips":[{"network":"base"}],"scheduler":"rr","stop_grace_period":"10s","dns_ttl":"10s","created":"2026-01-01T00:00:00Z","created_by":"peer"}`))
	f.Add(uint8(1), "peer/base/w", []byte(`{"name":"w","network":"base","ip":"10.0.0.2","mac":"02:42:0a:00:00:02","node":"peer","services":[{"name":"api","id":"abababababababababababababababab","weight":1000,"state":"draining","health":"unhealthy"}]}`))
	// Gateway identities (the routing mesh) and a publishing service.
	f.Add(uint8(1), "peer/base/.gateway", []byte(`{"name":".gateway","network":"base","ip":"10.0.0.3","mac":"02:42:0a:00:00:03","node":"peer","gateway":true}`))
	f.Add(uint8(1), "peer/base/.gateway", []byte(`{"name":".gateway","network":"base","ip":"10.0.0.3","mac":"02:42:0a:00:00:03","node":"peer","gateway":true,"aliases":["x"]}`))
	f.Add(uint8(1), "peer/base/g", []byte(`{"name":"g","network":"base","ip":"10.0.0.1","mac":"02:42:0a:00:00:01","node":"peer","gateway":true}`))
	f.Add(uint8(3), "pub", []byte(`{"name":"pub","id":"abababababababababababababababab","endpoint_mode":"vip","vips":[{"network":"base","vip":"10.0.0.201"}],"scheduler":"rr","stop_grace_period":"10s","dns_ttl":"10s","created":"2026-01-01T00:00:00Z","created_by":"peer","publish":["published=8080,target=80,protocol=tcp,mode=ingress,client-ip=preserve"]}`))

	d := newTestDaemon(f, newFakeSandbox(), f.TempDir())
	f.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "base"}); err != nil {
		f.Fatal(err)
	}
	if _, err := d.Attach(api.AttachRequest{Network: "base", Name: "c1", Create: true}); err != nil {
		f.Fatal(err)
	}
	peer := fuzzPeer(f, d)

	tables := []string{tblNetworks, tblEndpoints, "ipam-blocks", tblServices}
	f.Fuzz(func(t *testing.T, table uint8, key string, value []byte) {
		tbl := tables[int(table)%len(tables)]
		if err := peer.Put(tbl, key, value); err != nil {
			return // refused by the writer already (key or value too long)
		}
		defer peer.Delete(tbl, key)
		want, _ := peer.Get(tbl, key)
		deadline := time.Now().Add(5 * time.Second)
		for {
			if e, ok := d.cl.Get(tbl, key); ok && e.Version >= want.Version {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the entry %s/%q never reached the daemon", tbl, key)
			}
			time.Sleep(5 * time.Millisecond)
		}
		d.mu.Lock()
		d.reconcile()
		for _, n := range d.networks {
			if err := validateNetwork(&n.rec, nil); err != nil {
				d.mu.Unlock()
				t.Fatalf("network set up from an invalid record: %v", err)
			}
		}
		d.mu.Unlock()
		for _, n := range d.Networks() {
			d.Network(n.Name)
		}
		d.Nodes()
		d.refreshDNS()
		for _, s := range d.Services() {
			d.Service(s.Name)
		}
		d.mu.Lock()
		for _, nc := range d.desiredDataplane().Networks {
			for _, s := range nc.Services {
				if err := s.Validate(); err != nil {
					d.mu.Unlock()
					t.Fatalf("a service the balancer would refuse: %v", err)
				}
			}
		}
		d.mu.Unlock()
		if n := d.Stats().RefusedRecords["reconcile-panic"]; n > 0 {
			t.Fatalf("reconcile panicked (%d times)", n)
		}
	})
}

// fuzzPeer starts a bare cluster member with d's key, joined to d, that
// writes the tables as another node would.
func fuzzPeer(f testing.TB, d *Daemon) *cluster.Cluster {
	key, err := cluster.LoadKeyFile(d.cfg.StateDir + "/cluster.key")
	if err != nil {
		f.Fatal(err)
	}
	c, err := cluster.Start(cluster.Config{
		NodeName: "peer", BindAddr: d.cfg.Advertise, GossipPort: freePort(f, d.cfg.Advertise), Key: key,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), GossipInterval: 5 * time.Millisecond,
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	for _, tb := range []struct {
		name string
		opt  cluster.TableOptions
	}{{tblNetworks, cluster.TableOptions{}}, {tblEndpoints, cluster.TableOptions{NodeScoped: true}}, {tblServices, cluster.TableOptions{}}} {
		if err := c.DefineTable(tb.name, tb.opt); err != nil {
			f.Fatal(err)
		}
	}
	if _, err := c.Join([]string{fmt.Sprintf("%s:%d", d.cfg.Advertise, d.cfg.GossipPort)}); err != nil {
		f.Fatal(err)
	}
	return c
}
