package dockerplugin

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/gateway"
)

// Bodies Docker 20.10 sent (captured), the fuzz targets' seeds.
var seedBodies = []string{
	`{"AddressSpace":"vxmesh","Pool":"10.99.0.0/24","SubPool":"","Options":{},"V6":false}`,
	`{"PoolID":"10.99.0.0/24","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}`,
	`{"NetworkID":"61804b9348aaa17d3d6df4c9f4549abfe5cc4efa99a6ab22dd282d1021df0a7c","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{}},"IPv4Data":[{"AddressSpace":"vxmesh","Gateway":"10.99.0.1/24","Pool":"10.99.0.0/24"}],"IPv6Data":[]}`,
	`{"NetworkID":"61804b9348aaa17d3d6df4c9f4549abfe5cc4efa99a6ab22dd282d1021df0a7c","EndpointID":"336362ad5e76fcb3cef3f7d635ca8b27e158ea2c2f5f2cfb1c430e2707546242","Interface":{"Address":"10.99.0.5/24","AddressIPv6":"","MacAddress":""},"Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}`,
	`{"NetworkID":"61804b9348aaa17d3d6df4c9f4549abfe5cc4efa99a6ab22dd282d1021df0a7c","EndpointID":"336362ad5e76fcb3cef3f7d635ca8b27e158ea2c2f5f2cfb1c430e2707546242","SandboxKey":"/tmp/dk/x/netns/1b5f14270aa9","Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}`,
	`{"PoolID":"10.99.0.0/24","Address":"10.99.0.5"}`,
	`{"NetworkID":"61804b9348aaa17d3d6df4c9f4549abfe5cc4efa99a6ab22dd282d1021df0a7c","EndpointID":"336362ad5e76fcb3cef3f7d635ca8b27e158ea2c2f5f2cfb1c430e2707546242"}`,
	`{"NetworkID":"61804b9348aaa17d3d6df4c9f4549abfe5cc4efa99a6ab22dd282d1021df0a7c","EndpointID":"336362ad5e76fcb3cef3f7d635ca8b27e158ea2c2f5f2cfb1c430e2707546242","Options":{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}],"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":18080,"HostPortEnd":18080}]}}`,
	``, `{`, `null`, `[]`, `{"IPv4Data":[{"Pool":"10.99.0.0/33"}]}`,
}

// FuzzRequests: any body to any method gets 200 or an Err, as one JSON
// object, and never panics the plugin.
func FuzzRequests(f *testing.F) {
	b := newFakeBackend(api.Network{Name: "web", Subnet: "10.99.0.0/24", Gateway: "10.99.0.1"})
	e := &fakeEngine{nets: []EngineNetwork{{ID: netID, Name: "web", Driver: "vxmesh", Subnet: "10.99.0.0/24", Gateway: "10.99.0.1"}}}
	p := New(Config{Backend: b, Engine: e, Driver: "vxmesh", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer p.Close()
	h := p.Handler()
	var methods []string
	for m := range p.routes() {
		methods = append(methods, m)
	}
	sort.Strings(methods)
	for i, body := range seedBodies {
		f.Add(uint8(i), body)
	}
	f.Fuzz(func(t *testing.T, m uint8, body string) {
		method := methods[int(m)%len(methods)]
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, method, strings.NewReader(body)))
		var resp map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			t.Fatalf("%s %q: answer %q is not a JSON object", method, body, rec.Body.String())
		}
		if msg, _ := resp["Err"].(string); (rec.Code == http.StatusOK) != (msg == "") {
			t.Fatalf("%s %q: status %d with Err %q", method, body, rec.Code, msg)
		}
	})
}

// FuzzParseNetworks: any Engine answer parses or fails, never panics.
func FuzzParseNetworks(f *testing.F) {
	f.Add([]byte(`[{"Name":"web","Id":"61804b9348aa","Driver":"vxmesh","IPAM":{"Driver":"vxmesh","Config":[{"Subnet":"10.99.0.0/24","Gateway":"10.99.0.1"}]},"Options":{"vxmesh.network":"web"}}]`))
	f.Add([]byte(`[{"Name":"none","Id":"1","Driver":"null","IPAM":{"Config":[]}}]`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		nets, err := parseNetworks(b)
		if err == nil && nets == nil {
			t.Fatal("no error and no list")
		}
	})
}

func TestParseNetworks(t *testing.T) {
	nets, err := parseNetworks([]byte(`[{"Name":"web","Id":"6180","Driver":"vxmesh","IPAM":{"Config":[{"Subnet":"10.99.0.0/24","Gateway":"10.99.0.1"}]},"Options":{"vxmesh.network":"w"},"Internal":true},{"Name":"none","Id":"1","Driver":"null","IPAM":{"Config":[]},"Internal":false}]`))
	if err != nil || len(nets) != 2 || nets[0].ID != "6180" || nets[0].Name != "web" || nets[0].Driver != "vxmesh" || nets[0].Subnet != "10.99.0.0/24" || nets[0].Gateway != "10.99.0.1" || nets[0].Options["vxmesh.network"] != "w" || !nets[0].Internal || nets[1].Subnet != "" || nets[1].Internal {
		t.Fatalf("parseNetworks = %+v, %v", nets, err)
	}
	if _, err := parseNetworks([]byte(`{`)); err == nil {
		t.Fatal("a truncated answer parsed")
	}
}

// FuzzContainerOfEndpoint: any Engine container list parses or fails,
// never panics, and a match is a name.
func FuzzContainerOfEndpoint(f *testing.F) {
	f.Add([]byte(`[{"Id":"7da9","Names":["/d2"],"NetworkSettings":{"Networks":{"web":{"NetworkID":"6180","EndpointID":"3363"}}}}]`), "3363")
	f.Add([]byte(`[{"Names":[],"NetworkSettings":{"Networks":{"web":{"EndpointID":""}}}}]`), "")
	f.Add([]byte(`null`), "x")
	f.Fuzz(func(t *testing.T, b []byte, id string) {
		name, ok, err := containerOfEndpoint(b, id)
		if (err != nil && ok) || (!ok && name != "") {
			t.Fatalf("containerOfEndpoint = %q, %v, %v", name, ok, err)
		}
	})
}

// FuzzAliasesOfEndpoint: any Engine container inspect parses or fails,
// never panics.
func FuzzAliasesOfEndpoint(f *testing.F) {
	f.Add([]byte(`{"Name":"/d1","NetworkSettings":{"Networks":{"web":{"EndpointID":"ab12","Aliases":["7f3c2a9d1e0b","api"]}}}}`), "ab12")
	f.Add([]byte(`{"NetworkSettings":{"Networks":null}}`), "")
	f.Add([]byte(`null`), "x")
	f.Fuzz(func(t *testing.T, b []byte, id string) {
		if a, err := aliasesOfEndpoint(b, id); err != nil && a != nil {
			t.Fatalf("aliasesOfEndpoint = %v with error %v", a, err)
		}
	})
}

func TestAliasesOfEndpoint(t *testing.T) {
	body := []byte(`{"Name":"/d1","NetworkSettings":{"Networks":{"web":{"EndpointID":"ab12","Aliases":["7f3c2a9d1e0b","api"]},"db":{"EndpointID":"cd34","Aliases":null}}}}`)
	if a, err := aliasesOfEndpoint(body, "ab12"); err != nil || strings.Join(a, ",") != "7f3c2a9d1e0b,api" {
		t.Fatalf("aliases of ab12 = %v, %v", a, err)
	}
	if a, err := aliasesOfEndpoint(body, "cd34"); err != nil || len(a) != 0 {
		t.Fatalf("aliases of cd34 = %v, %v", a, err)
	}
	if a, err := aliasesOfEndpoint(body, ""); err != nil || len(a) != 0 {
		t.Fatalf("aliases of no endpoint = %v, %v", a, err)
	}
	if _, err := aliasesOfEndpoint([]byte(`[`), "ab12"); err == nil {
		t.Fatal("a truncated answer parsed")
	}
}

func TestContainerOfEndpoint(t *testing.T) {
	body := []byte(`[{"Names":["/d1"],"NetworkSettings":{"Networks":{"web":{"EndpointID":"aaaa"}}}},{"Names":["/d2"],"NetworkSettings":{"Networks":{"db":{"EndpointID":"bbbb"},"web":{"EndpointID":"cccc"}}}}]`)
	for id, want := range map[string]string{"aaaa": "d1", "cccc": "d2", "dddd": "", "": ""} {
		if name, ok, err := containerOfEndpoint(body, id); err != nil || name != want || ok != (want != "") {
			t.Errorf("containerOfEndpoint(%q) = %q, %v, %v; want %q", id, name, ok, err, want)
		}
	}
}

// FuzzPortMap: any port map Docker could send becomes specs that `vxmesh
// run -p` accepts, or a refusal; never a panic.
func FuzzPortMap(f *testing.F) {
	f.Add([]byte(`[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":18080,"HostPortEnd":18080}]`))
	f.Add([]byte(`[{"Proto":17,"Port":53,"HostIP":"::","HostPort":53},{"Proto":6,"Port":80,"HostPort":0}]`))
	f.Add([]byte(`[{"Proto":6,"Port":80,"HostIP":"127.0.0.1","HostPort":8000,"HostPortEnd":8010}]`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var v any
		if json.Unmarshal(b, &v) != nil {
			return
		}
		specs, err := parsePortMap(v)
		if err != nil {
			return
		}
		for _, s := range specs {
			if _, err := gateway.ParsePublish(s); err != nil {
				t.Fatalf("%s: spec %q does not parse: %v", b, s, err)
			}
		}
	})
}

// FuzzParseState: any state file parses into valid records or fails.
func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"endpoints":{"336362ad5e76fcb3cef3f7d635ca8b27e158ea2c2f5f2cfb1c430e2707546242":{"network":"web","ip":"10.1.0.5","held":true}}}`))
	f.Add([]byte(`{"endpoints":{"zz":{}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		eps, err := parseState(b)
		if err != nil {
			if len(eps) != 0 {
				t.Fatalf("%s: failed with records %v", b, eps)
			}
			return
		}
		for id, e := range eps {
			if _, _, err := names(id); err != nil || !e.ip.Is4() || e.network == "" {
				t.Fatalf("%s: record %s %+v", b, id, e)
			}
		}
	})
}
