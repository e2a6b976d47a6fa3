package dockerplugin

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

const (
	netID = "61804b9348aaa17d3d6df4c9f4549abfe5cc4efa99a6ab22dd282d1021df0a7c"
	epID  = "336362ad5e76fcb3cef3f7d635ca8b27e158ea2c2f5f2cfb1c430e2707546242"
)

// testPlugin serves a plugin over an in-process HTTP server.
type testPlugin struct {
	t   *testing.T
	p   *Plugin
	srv *httptest.Server
	b   *fakeBackend
	e   *fakeEngine
}

func newTestPlugin(t *testing.T, b *fakeBackend, e *fakeEngine) *testPlugin {
	t.Helper()
	p := New(Config{Backend: b, Engine: e, Driver: "vxmesh", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	srv := httptest.NewServer(p.Handler())
	t.Cleanup(func() {
		srv.Close()
		p.Close()
	})
	return &testPlugin{t: t, p: p, srv: srv, b: b, e: e}
}

// call posts body to method and decodes the answer; status is the HTTP
// status, errMsg the answer's Err.
func (tp *testPlugin) call(method string, body any) (status int, resp map[string]any, errMsg string) {
	tp.t.Helper()
	var rd io.Reader = strings.NewReader("")
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			tp.t.Fatal(err)
		}
		rd = strings.NewReader(string(j))
	}
	r, err := http.Post(tp.srv.URL+"/"+method, "application/json", rd)
	if err != nil {
		tp.t.Fatal(err)
	}
	defer r.Body.Close()
	raw, _ := io.ReadAll(r.Body)
	resp = map[string]any{}
	if r.StatusCode != http.StatusNotFound {
		if err := json.Unmarshal(raw, &resp); err != nil {
			tp.t.Fatalf("%s: answer %q is not a JSON object: %v", method, raw, err)
		}
	}
	errMsg, _ = resp["Err"].(string)
	return r.StatusCode, resp, errMsg
}

// ok calls method and fails the test unless it succeeds.
func (tp *testPlugin) ok(method string, body any) map[string]any {
	tp.t.Helper()
	status, resp, msg := tp.call(method, body)
	if status != http.StatusOK || msg != "" {
		tp.t.Fatalf("%s: status %d, Err %q", method, status, msg)
	}
	return resp
}

// refused calls method and fails the test unless it fails with an Err
// containing want.
func (tp *testPlugin) refused(method string, body any, want string) {
	tp.t.Helper()
	status, _, msg := tp.call(method, body)
	if status != http.StatusInternalServerError || !strings.Contains(msg, want) {
		tp.t.Fatalf("%s: status %d, Err %q; want a refusal containing %q", method, status, msg, want)
	}
}

func TestActivateAndCapabilities(t *testing.T) {
	tp := newTestPlugin(t, newFakeBackend(), &fakeEngine{})
	impl, _ := json.Marshal(tp.ok("Plugin.Activate", nil)["Implements"])
	if string(impl) != `["NetworkDriver","IpamDriver"]` {
		t.Fatalf("Implements = %s", impl)
	}
	caps := tp.ok("NetworkDriver.GetCapabilities", nil)
	if caps["Scope"] != "local" || caps["ConnectivityScope"] != "global" {
		t.Fatalf("network capabilities = %v", caps)
	}
	spaces := tp.ok("IpamDriver.GetDefaultAddressSpaces", nil)
	if spaces["LocalDefaultAddressSpace"] != "vxmesh" || spaces["GlobalDefaultAddressSpace"] != "vxmesh" {
		t.Fatalf("address spaces = %v", spaces)
	}
	if caps := tp.ok("IpamDriver.GetCapabilities", nil); caps["RequiresMACAddress"] != false {
		t.Fatalf("IPAM capabilities = %v", caps)
	}
	if status, _, _ := tp.call("NetworkDriver.AllocateNetwork", "{}"); status != http.StatusNotFound {
		t.Fatalf("an unimplemented method answered %d, want 404", status)
	}
}

// createWeb runs what `docker network create -d vxmesh --ipam-driver
// vxmesh --subnet 10.1.0.0/24 web` sends, the Engine listing the network
// from then on.
func (tp *testPlugin) createWeb() {
	tp.t.Helper()
	pool := tp.ok("IpamDriver.RequestPool", map[string]any{"AddressSpace": "vxmesh", "Pool": "10.1.0.0/24", "Options": map[string]string{}})
	if pool["PoolID"] != "10.1.0.0/24" || pool["Pool"] != "10.1.0.0/24" {
		tp.t.Fatalf("RequestPool = %v", pool)
	}
	gw := tp.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": "10.1.0.0/24", "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}})
	if gw["Address"] != "10.1.0.1/24" {
		tp.t.Fatalf("gateway = %v", gw)
	}
	tp.ok("NetworkDriver.CreateNetwork", map[string]any{
		"NetworkID": netID, "Options": map[string]any{"com.docker.network.generic": map[string]any{}},
		"IPv4Data": []map[string]any{{"AddressSpace": "vxmesh", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}},
	})
	tp.e.add(EngineNetwork{ID: netID, Name: "web", Driver: "vxmesh", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"})
}

// waitNetwork polls until the backend has network name.
func waitNetwork(t *testing.T, b *fakeBackend, name string) api.Network {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.mu.Lock()
		n, ok := b.network(name)
		b.mu.Unlock()
		if ok {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster network %q never made", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestEndpointLifecycle: a Docker network becomes the cluster network of
// its name; an endpoint gets a held address, vxmesh's MAC, a host TAP at
// Join (moved as ethN, with the network's gateway) and is detached at
// Leave.
func TestEndpointLifecycle(t *testing.T) {
	tp := newTestPlugin(t, newFakeBackend(), &fakeEngine{})
	tp.createWeb()
	n := waitNetwork(t, tp.b, "web")
	if n.Subnet != "10.1.0.0/24" || n.Gateway != "10.1.0.1" {
		t.Fatalf("cluster network = %+v", n)
	}
	addr := tp.ok("IpamDriver.RequestAddress", map[string]any{"PoolID": "10.1.0.0/24", "Options": map[string]string{}})
	if addr["Address"] != "10.1.0.2/24" {
		t.Fatalf("RequestAddress = %v", addr)
	}
	if _, err := tp.b.ReserveAddress("web", netip.MustParseAddr("10.1.0.2")); err == nil {
		t.Fatal("the address Docker got is not held")
	}
	ep := tp.ok("NetworkDriver.CreateEndpoint", map[string]any{
		"NetworkID": netID, "EndpointID": epID, "Interface": map[string]string{"Address": "10.1.0.2/24"},
		"Options": map[string]any{"com.docker.network.endpoint.exposedports": []any{}},
	})
	iface, _ := json.Marshal(ep["Interface"])
	if string(iface) != `{"MacAddress":"02:42:0a:01:00:02"}` {
		t.Fatalf("CreateEndpoint Interface = %s; want only the MAC (Docker gave the address)", iface)
	}
	join := tp.ok("NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID, "SandboxKey": "/var/run/docker/netns/1b5f14270aa9"})
	in, _ := join["InterfaceName"].(map[string]any)
	if in["SrcName"] != "vxd336362ad5e76" || in["DstPrefix"] != "eth" || join["Gateway"] != "10.1.0.1" {
		t.Fatalf("Join = %v", join)
	}
	eps := tp.b.Endpoints()
	if len(eps) != 1 || eps[0].Name != "docker-336362ad5e76" || eps[0].IP != "10.1.0.2" || eps[0].Netns != "/var/run/docker/netns/1b5f14270aa9" || eps[0].IfName != "vxd336362ad5e76" {
		t.Fatalf("vxmesh endpoints after Join: %+v", eps)
	}
	info := tp.ok("NetworkDriver.EndpointOperInfo", map[string]any{"NetworkID": netID, "EndpointID": epID})
	if v, _ := info["Value"].(map[string]any); v["vxmesh.container"] != "docker-336362ad5e76" || v["vxmesh.state"] != "up" {
		t.Fatalf("EndpointOperInfo = %v", info)
	}
	tp.ok("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": netID, "EndpointID": epID, "Options": map[string]any{"com.docker.network.portmap": []any{}}})
	tp.ok("NetworkDriver.Leave", map[string]any{"NetworkID": netID, "EndpointID": epID})
	if eps := tp.b.Endpoints(); len(eps) != 0 {
		t.Fatalf("endpoints after Leave: %+v", eps)
	}
	tp.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID})
	tp.ok("IpamDriver.ReleaseAddress", map[string]any{"PoolID": "10.1.0.0/24", "Address": "10.1.0.2"})
	tp.ok("NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": netID})
	tp.ok("IpamDriver.ReleasePool", map[string]any{"PoolID": "10.1.0.0/24"})
	if _, ok := tp.b.network("web"); !ok {
		t.Fatal("DeleteNetwork removed the cluster network (other hosts may use it)")
	}
	if tp.b.creates != 1 {
		t.Fatalf("cluster network created %d times", tp.b.creates)
	}
}

// TestEndpointWithoutIPAM: under Docker's default IPAM an endpoint may
// come without an address; the plugin holds one and answers it.
func TestEndpointWithoutIPAM(t *testing.T) {
	tp := newTestPlugin(t, newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"}), &fakeEngine{})
	tp.e.add(EngineNetwork{ID: netID, Name: "web", Driver: "vxmesh", Subnet: "10.1.0.0/24"})
	ep := tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID})
	iface, _ := json.Marshal(ep["Interface"])
	if string(iface) != `{"Address":"10.1.0.2/24","MacAddress":"02:42:0a:01:00:02"}` {
		t.Fatalf("CreateEndpoint Interface = %s", iface)
	}
	// Deleted without a Join: the hold goes.
	tp.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID})
	if len(tp.b.held) != 0 {
		t.Fatalf("addresses held after DeleteEndpoint: %v", tp.b.held)
	}
	// Docker's default IPAM may give an address outside the network.
	tp.refused("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID, "Interface": map[string]string{"Address": "172.18.0.2/16"}},
		`address "172.18.0.2/16": not an address of network "web" (10.1.0.0/24)`)
}

// TestAdoptAndMismatch: an existing cluster network of the same name and
// subnet is adopted; another subnet under that name, or one overlapping
// another network, is refused with a message naming both.
func TestAdoptAndMismatch(t *testing.T) {
	b := newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"})
	tp := newTestPlugin(t, b, &fakeEngine{})
	tp.createWeb()
	tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID, "Interface": map[string]string{"Address": "10.1.0.7/24"}})
	if b.creates != 0 {
		t.Fatal("an existing network of the same name and subnet was created again")
	}

	other := strings.Repeat("b", 64)
	tp.e.add(EngineNetwork{ID: other, Name: "web", Driver: "vxmesh", Subnet: "10.2.0.0/24"})
	tp.refused("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": other, "EndpointID": epID, "Interface": map[string]string{"Address": "10.2.0.7/24"}},
		`network "web": the cluster network of that name has subnet 10.1.0.0/24, not 10.2.0.0/24`)
	// With -o vxmesh.network=web the mismatch is refused at create.
	tp.refused("NetworkDriver.CreateNetwork", map[string]any{
		"NetworkID": other, "Options": map[string]any{"com.docker.network.generic": map[string]any{"vxmesh.network": "web"}},
		"IPv4Data": []map[string]any{{"Pool": "10.2.0.0/24", "Gateway": "10.2.0.1/24"}},
	}, "has subnet 10.1.0.0/24, not 10.2.0.0/24")
	tp.refused("IpamDriver.RequestPool", map[string]any{"Pool": "10.1.0.128/25"}, `subnet 10.1.0.128/25: overlaps the cluster network "web" (10.1.0.0/24)`)
	tp.refused("IpamDriver.RequestAddress", map[string]any{"PoolID": "10.1.0.0/24", "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}, "Address": "10.1.0.9"},
		`the cluster network "web" has gateway 10.1.0.1`)
	if len(b.Networks()) != 1 {
		t.Fatalf("refusals changed the networks: %+v", b.Networks())
	}
}

// TestNetworkOptionNamesTheClusterNetwork: -o vxmesh.network=NAME maps a
// Docker network of any name to the cluster network NAME, at once.
func TestNetworkOptionNamesTheClusterNetwork(t *testing.T) {
	tp := newTestPlugin(t, newFakeBackend(), &fakeEngine{})
	tp.ok("NetworkDriver.CreateNetwork", map[string]any{
		"NetworkID": netID, "Options": map[string]any{"com.docker.network.generic": map[string]any{"vxmesh.network": "backend"}},
		"IPv4Data": []map[string]any{{"Pool": "10.3.0.0/24", "Gateway": "10.3.0.1/24"}},
	})
	if _, ok := tp.b.network("backend"); !ok {
		t.Fatal("-o vxmesh.network=backend did not make the cluster network at create")
	}
	tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID, "Interface": map[string]string{"Address": "10.3.0.5/24"}})
	if tp.e.calls != 0 {
		t.Fatalf("the Engine was asked %d times for a network named by option", tp.e.calls)
	}
}

// TestInternalNetworkStaysInternal: docker network create --internal
// makes an internal cluster network (no egress), with or without -o
// vxmesh.network, and adopts an existing one only when both agree.
func TestInternalNetworkStaysInternal(t *testing.T) {
	b := newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"})
	tp := newTestPlugin(t, b, &fakeEngine{})
	internal := func(id string, generic map[string]any, pool string) map[string]any {
		return map[string]any{
			"NetworkID": id, "Options": map[string]any{"com.docker.network.generic": generic, "com.docker.network.internal": true},
			"IPv4Data": []map[string]any{{"Pool": pool, "Gateway": strings.Replace(pool, ".0/24", ".1/24", 1)}},
		}
	}
	// Named by Docker: made once the Engine lists it, internal.
	tp.ok("NetworkDriver.CreateNetwork", internal(netID, map[string]any{}, "10.4.0.0/24"))
	tp.e.add(EngineNetwork{ID: netID, Name: "priv", Driver: "vxmesh", Subnet: "10.4.0.0/24", Gateway: "10.4.0.1", Internal: true})
	if n := waitNetwork(t, b, "priv"); !n.Internal {
		t.Fatalf("docker network create --internal made %+v, not internal", n)
	}
	// Named by option: made at create, internal.
	other := strings.Repeat("c", 64)
	tp.ok("NetworkDriver.CreateNetwork", internal(strings.Repeat("d", 64), map[string]any{"vxmesh.network": "back"}, "10.5.0.0/24"))
	if n, _ := tp.b.network("back"); !n.Internal {
		t.Fatalf("--internal -o vxmesh.network=back made %+v, not internal", n)
	}
	// An existing network is adopted only when both are internal or neither.
	tp.refused("NetworkDriver.CreateNetwork", map[string]any{
		"NetworkID": other, "Options": map[string]any{"com.docker.network.generic": map[string]any{"vxmesh.network": "web"}, "com.docker.network.internal": true},
		"IPv4Data": []map[string]any{{"Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}},
	}, `network "web": the cluster network of that name is not internal`)
	tp.e.add(EngineNetwork{ID: other, Name: "back", Driver: "vxmesh", Subnet: "10.5.0.0/24", Gateway: "10.5.0.1"})
	tp.refused("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": other, "EndpointID": epID, "Interface": map[string]string{"Address": "10.5.0.7/24"}},
		`network "back": the cluster network of that name is internal (no egress): create the Docker network with --internal`)
}

// TestDriverOptions: -o encrypted and -o com.docker.network.driver.mtu
// make the cluster network so, whether Docker or -o vxmesh.network names
// it; an existing one that differs, and an option vxmesh does not
// implement, are refused rather than ignored.
func TestDriverOptions(t *testing.T) {
	b := newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1", MTU: 1450})
	tp := newTestPlugin(t, b, &fakeEngine{})
	create := func(id string, generic map[string]any, pool string) map[string]any {
		return map[string]any{
			"NetworkID": id, "Options": map[string]any{"com.docker.network.generic": generic},
			"IPv4Data": []map[string]any{{"Pool": pool, "Gateway": strings.Replace(pool, ".0/24", ".1/24", 1)}},
		}
	}
	opts := map[string]any{"encrypted": "", "com.docker.network.driver.mtu": "1300"}
	tp.ok("NetworkDriver.CreateNetwork", create(netID, opts, "10.4.0.0/24"))
	tp.e.add(EngineNetwork{ID: netID, Name: "sec", Driver: "vxmesh", Subnet: "10.4.0.0/24", Gateway: "10.4.0.1",
		Options: map[string]string{"encrypted": "", "com.docker.network.driver.mtu": "1300"}})
	if n := waitNetwork(t, b, "sec"); !n.Encrypted || n.MTU != 1300 {
		t.Fatalf("-o encrypted -o com.docker.network.driver.mtu=1300 made %+v", n)
	}
	tp.ok("NetworkDriver.CreateNetwork", create(strings.Repeat("c", 64), map[string]any{"vxmesh.network": "sec2", "encrypted": "true"}, "10.5.0.0/24"))
	if n, _ := tp.b.network("sec2"); !n.Encrypted {
		t.Fatalf("-o encrypted -o vxmesh.network=sec2 made %+v", n)
	}
	other := strings.Repeat("d", 64)
	for _, c := range []struct {
		generic map[string]any
		want    string
	}{
		{map[string]any{"vxmesh.network": "web", "encrypted": ""}, `network "web": the cluster network of that name is not encrypted`},
		{map[string]any{"vxmesh.network": "sec2"}, `network "sec2": the cluster network of that name is encrypted: create the Docker network with -o encrypted`},
		{map[string]any{"vxmesh.network": "web", "com.docker.network.driver.mtu": "9000"}, `network "web": the cluster network of that name has MTU 1450, not 9000`},
		{map[string]any{"com.docker.network.driver.mtu": "big"}, `option com.docker.network.driver.mtu="big": want a number of bytes`},
		{map[string]any{"foo": "bar"}, `option "foo": not supported (vxmesh takes vxmesh.network, encrypted and com.docker.network.driver.mtu)`},
		{map[string]any{"vxmesh.network": 7}, `option vxmesh.network: want a string`},
	} {
		pool := "10.1.0.0/24"
		if c.generic["vxmesh.network"] == "sec2" {
			pool = "10.5.0.0/24"
		} else if c.generic["vxmesh.network"] == nil {
			pool = "10.6.0.0/24"
		}
		tp.refused("NetworkDriver.CreateNetwork", create(other, c.generic, pool), c.want)
	}
	if len(b.Networks()) != 3 {
		t.Fatalf("refusals changed the networks: %+v", b.Networks())
	}
}

// TestBadRequestsRefused: malformed or unsupported requests get one clear
// Err and change nothing.
func TestBadRequestsRefused(t *testing.T) {
	b := newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"})
	tp := newTestPlugin(t, b, &fakeEngine{})
	tp.e.add(EngineNetwork{ID: netID, Name: "web", Driver: "vxmesh", Subnet: "10.1.0.0/24"})
	for _, tc := range []struct {
		method string
		body   any
		want   string
	}{
		{"NetworkDriver.CreateNetwork", "{", "request body"},
		{"NetworkDriver.CreateNetwork", `{}{}`, "more than one JSON value"},
		{"NetworkDriver.CreateNetwork", map[string]any{"NetworkID": netID, "IPv4Data": []map[string]any{{"Pool": "10.9.0.0/24"}}, "IPv6Data": []map[string]any{{"Pool": "fd00::/64"}}}, "IPv6 is not supported"},
		{"NetworkDriver.CreateNetwork", map[string]any{"NetworkID": netID}, "want one IPv4 subnet, got 0"},
		{"NetworkDriver.CreateNetwork", map[string]any{"NetworkID": netID, "IPv4Data": []map[string]any{{"Pool": "10.9.0.0/24", "Gateway": "10.8.0.1/24"}}}, `gateway "10.8.0.1/24": not an address of 10.9.0.0/24`},
		{"IpamDriver.RequestPool", map[string]any{"V6": true}, "IPv6"},
		{"IpamDriver.RequestPool", map[string]any{}, "--subnet"},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "10.9.0.0/24", "SubPool": "10.9.0.0/25"}, "--ip-range is not supported"},
		{"IpamDriver.RequestPool", map[string]any{"Pool": "10.9.0.1/24"}, `subnet "10.9.0.1/24"`},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": "banana"}, `pool subnet "banana"`},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": "10.1.0.0/24", "Address": "10.2.0.1"}, "not an address of 10.1.0.0/24"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": "10.9.0.0/24"}, "subnet 10.9.0.0/24: no vxmesh network has it"},
		{"IpamDriver.RequestAddress", map[string]any{"PoolID": "10.9.0.0/24", "Address": "10.9.0.200"}, "address 10.9.0.200: no vxmesh network has subnet 10.9.0.0/24 yet: docker network create --aux-address is not supported"},
		{"NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": "zz"}, `endpoint ID "zz"`},
		{"NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": strings.Repeat("c", 64), "EndpointID": epID}, "the Docker Engine does not list it"},
		{"NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID, "Interface": map[string]string{"Address": "10.1.0.5/24", "MacAddress": "02:00:00:00:00:01"}}, "derives an endpoint's MAC"},
		{"NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID, "Interface": map[string]string{"AddressIPv6": "fd00::5/64"}}, "IPv6"},
		{"NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID, "SandboxKey": "/x"}, "not created through this plugin"},
		{"NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": netID, "EndpointID": epID, "Options": map[string]any{"com.docker.network.portmap": []any{map[string]any{"Proto": 6, "Port": 80, "HostPort": 8080}}}}, "not joined"},
		{"NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": netID, "EndpointID": epID, "Options": map[string]any{"com.docker.network.portmap": []any{map[string]any{"Proto": 6, "Port": 80, "HostPort": 0}}}}, "docker run -p 80 or -P"},
	} {
		tp.refused(tc.method, tc.body, tc.want)
	}
	if len(b.Networks()) != 1 || len(b.Endpoints()) != 0 || len(b.held) != 0 {
		t.Fatalf("refused requests changed the daemon: networks %+v, endpoints %+v, held %v", b.Networks(), b.Endpoints(), b.held)
	}
}

// TestLeaveOfUnknownEndpointSucceeds: Docker cleaning up an endpoint the
// daemon no longer has (a restart) is not an error.
func TestLeaveOfUnknownEndpointSucceeds(t *testing.T) {
	tp := newTestPlugin(t, newFakeBackend(), &fakeEngine{})
	tp.ok("NetworkDriver.Leave", map[string]any{"NetworkID": netID, "EndpointID": epID})
	tp.ok("NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID})
}

// TestJoinedEndpointGetsContainerName: once the Engine lists the started
// container with the endpoint, its name becomes the endpoint's alias, so
// that other hosts resolve it.
func TestJoinedEndpointGetsContainerName(t *testing.T) {
	tp := newTestPlugin(t, newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"}), &fakeEngine{})
	tp.e.add(EngineNetwork{ID: netID, Name: "web", Driver: "vxmesh", Subnet: "10.1.0.0/24"})
	tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID, "Interface": map[string]string{"Address": "10.1.0.2/24"}})
	tp.ok("NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID, "SandboxKey": "/var/run/docker/netns/1"})
	// The container shows up a little after Join.
	time.Sleep(50 * time.Millisecond)
	tp.e.addContainer(epID, "d1")
	tp.waitAlias("d1")
}

// TestJoinedEndpointGetsNetworkAliases: the container's network aliases
// (docker run --network-alias, with the short container ID Docker adds)
// become aliases of the endpoint after its name, so that other hosts
// resolve them as Docker's own resolver does on this one.
func TestJoinedEndpointGetsNetworkAliases(t *testing.T) {
	tp := newTestPlugin(t, newFakeBackend(api.Network{Name: "web", Subnet: "10.1.0.0/24", Gateway: "10.1.0.1"}), &fakeEngine{})
	tp.e.add(EngineNetwork{ID: netID, Name: "web", Driver: "vxmesh", Subnet: "10.1.0.0/24"})
	tp.e.aliases = map[string][]string{epID: {"7f3c2a9d1e0b", "api", "d1"}}
	tp.ok("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": netID, "EndpointID": epID, "Interface": map[string]string{"Address": "10.1.0.2/24"}})
	tp.ok("NetworkDriver.Join", map[string]any{"NetworkID": netID, "EndpointID": epID, "SandboxKey": "/var/run/docker/netns/1"})
	tp.e.addContainer(epID, "d1")
	tp.waitAlias("d1,7f3c2a9d1e0b,api")
}

// waitAlias waits until the only endpoint has exactly the alias want.
func (tp *testPlugin) waitAlias(want string) {
	tp.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		eps := tp.b.Endpoints()
		if len(eps) == 1 && strings.Join(eps[0].Aliases, ",") == want {
			return
		}
		if time.Now().After(deadline) {
			tp.t.Fatalf("endpoint never got the container's name %q as alias: %+v", want, eps)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
