package daemon

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

var localhost = netip.MustParseAddr("127.0.0.1")

// testLog captures a daemon's log so tests can count lines.
type testLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *testLog) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

func (l *testLog) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), sub)
}

// goodNetworkRecord is a valid networks-table record that tests mutate.
func goodNetworkRecord() netRecord {
	return netRecord{Name: "evil", ID: strings.Repeat("ab", networkIDBytes), Subnet: "10.7.0.0/24", Gateway: "10.7.0.1", MTU: 1400, VNI: 5000}
}

// TestInvalidNetworkRecordsFromTheCluster: a member with the cluster key can
// write any value into the networks table. Each invalid one must be
// skipped (not panic reconcile in every daemon), counted and logged once.
func TestInvalidNetworkRecordsFromTheCluster(t *testing.T) {
	logs := &testLog{}
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", localhost, newFakeSandbox(), t.TempDir())
	cfg.Logger = logs.logger()
	d := startNode(t, cfg)
	defer d.Close()
	for _, tc := range []struct {
		name string
		mod  func(*netRecord)
	}{
		{"ipv6 gateway", func(r *netRecord) { r.Gateway = "fd00::1" }},
		{"ipv6 subnet", func(r *netRecord) { r.Subnet, r.Gateway = "fd00::/64", "fd00::1" }},
		{"gateway outside", func(r *netRecord) { r.Gateway = "10.8.0.1" }},
		{"host bits", func(r *netRecord) { r.Subnet = "10.7.0.5/24" }},
		{"loopback subnet", func(r *netRecord) { r.Subnet, r.Gateway = "127.0.0.0/24", "127.0.0.1" }},
		{"resolver inside", func(r *netRecord) { r.Subnet, r.Gateway = "0.0.0.0/1", "10.0.0.1" }},
		{"multicast subnet", func(r *netRecord) { r.Subnet, r.Gateway = "224.1.0.0/24", "224.1.0.1" }},
		{"class e subnet", func(r *netRecord) { r.Subnet, r.Gateway = "240.1.0.0/24", "240.1.0.1" }},
		{"tiny subnet", func(r *netRecord) { r.Subnet, r.Gateway = "10.7.0.0/31", "10.7.0.1" }},
		{"vni 0", func(r *netRecord) { r.VNI = 0 }},
		{"vni too big", func(r *netRecord) { r.VNI = 1 << 24 }},
		{"mtu 0", func(r *netRecord) { r.MTU = 0 }},
		{"mtu huge", func(r *netRecord) { r.MTU = 1 << 20 }},
		{"bad id", func(r *netRecord) { r.ID = "x" }},
		{"bad cipher", func(r *netRecord) { r.Encrypted, r.Cipher = true, "rot13" }},
		{"cipher in clear", func(r *netRecord) { r.Cipher = "aes128-gcm" }},
		{"multicast vtep", func(r *netRecord) { r.VTEPs = []string{"224.0.0.1"} }},
		{"broadcast vtep", func(r *netRecord) { r.VTEPs = []string{"255.255.255.255"} }},
		{"own address vtep", func(r *netRecord) { r.VTEPs = []string{localhost.String()} }},
		{"encrypted with vteps", func(r *netRecord) { r.Encrypted, r.Cipher, r.VTEPs = true, "aes128-gcm", []string{"192.0.2.7"} }},
		{"bad name", func(r *netRecord) { r.Name = "a b" }},
	} {
		rec := goodNetworkRecord()
		tc.mod(&rec)
		b, _ := json.Marshal(rec)
		if err := d.cl.Put(tblNetworks, rec.Name, b); err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		d.reconcile()
		d.reconcile()
		_, up := d.networks[rec.Name]
		d.mu.Unlock()
		if up {
			t.Errorf("%s: network from an invalid record is up", tc.name)
		}
		d.cl.Delete(tblNetworks, rec.Name)
	}
	if got := d.Stats().RefusedRecords["networks"]; got != 21 {
		t.Errorf("refused network records counted %d, want 21 (one per record version)", got)
	}
	if got := logs.count("refusing an invalid record"); got != 21 {
		t.Errorf("%d refusals logged, want 21 (once per record version)", got)
	}
	if got := d.Stats().RefusedRecords["reconcile-panic"]; got != 0 {
		t.Errorf("reconcile panicked %d times", got)
	}
	// The valid record is taken.
	rec := goodNetworkRecord()
	b, _ := json.Marshal(rec)
	d.cl.Put(tblNetworks, rec.Name, b)
	d.mu.Lock()
	d.reconcile()
	_, up := d.networks[rec.Name]
	d.mu.Unlock()
	if !up {
		t.Fatal("a valid network record was not taken")
	}
}

// TestCreateNetworkRefusesReservedAddresses: subnets that cannot work
// (loopback, multicast, class E, containing the resolver address, host bits
// set) and external VTEPs that are vxmesh nodes or not unicast are refused
// by the same rules as records from the cluster.
func TestCreateNetworkRefusesReservedAddresses(t *testing.T) {
	ds, _ := threeNodes(t)
	d := ds[0]
	// The VTEP cases need h1 to know the other nodes' addresses; until
	// then a create is taken and only reconcile refuses it.
	waitFor(t, "h1 knows every node's data address", func() bool {
		n := 0
		for _, m := range d.cl.Members() {
			if m.Meta.DataAddr.IsValid() {
				n++
			}
		}
		return n == len(ds)
	})
	for _, tc := range []struct {
		req  api.NetworkCreateRequest
		want string
	}{
		{api.NetworkCreateRequest{Name: "x", Subnet: "127.0.0.0/24"}, "reserved"},
		{api.NetworkCreateRequest{Name: "x", Subnet: "224.1.0.0/16"}, "reserved"},
		{api.NetworkCreateRequest{Name: "x", Subnet: "240.0.0.0/8"}, "reserved"},
		{api.NetworkCreateRequest{Name: "x", Subnet: "0.0.0.0/0"}, "reserved"},
		{api.NetworkCreateRequest{Name: "x", Subnet: "10.9.0.5/24"}, "host bits set"},
		{api.NetworkCreateRequest{Name: "x", VTEPs: []string{ds[0].cfg.Advertise.String()}}, "this node"},
		{api.NetworkCreateRequest{Name: "x", VTEPs: []string{ds[2].cfg.Advertise.String()}}, `node "h3"`},
		{api.NetworkCreateRequest{Name: "x", VTEPs: []string{"255.255.255.255"}}, "not a unicast"},
		{api.NetworkCreateRequest{Name: "x", VTEPs: []string{"0.0.0.0"}}, "not a unicast"},
		{api.NetworkCreateRequest{Name: "x", VTEPs: []string{"239.1.1.1"}}, "not a unicast"},
	} {
		_, err := d.CreateNetwork(tc.req)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CreateNetwork(%+v) = %v, want an error containing %q", tc.req, err, tc.want)
		}
	}
	if n := len(d.Networks()); n != 0 {
		t.Fatalf("refused creates left %d networks", n)
	}
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "ok", Subnet: "10.9.0.0/24", VTEPs: []string{"192.0.2.7"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.UpdateNetwork("ok", api.NetworkUpdateRequest{AddVTEPs: []string{ds[1].cfg.Advertise.String()}}); err == nil || !strings.Contains(err.Error(), `node "h2"`) {
		t.Fatalf("update added a member's address as a VTEP: %v", err)
	}
}
