package cniplugin

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vxmesh/vxmesh/api"
)

// fakeDaemon is an in-memory daemon: one network, containers by name.
type fakeDaemon struct {
	net      api.Network
	ctrs     map[string]api.Container
	attached []api.AttachRequest
	detached []string
	failWith error
}

func newFake() *fakeDaemon {
	return &fakeDaemon{
		net:  api.Network{Name: "web", Subnet: "10.9.0.0/24", Gateway: "10.9.0.1", MTU: 1450},
		ctrs: map[string]api.Container{},
	}
}

func (f *fakeDaemon) Network(name string) (api.Network, error) {
	if f.failWith != nil {
		return api.Network{}, f.failWith
	}
	if name != f.net.Name {
		return api.Network{}, &api.StatusError{Code: http.StatusNotFound, Msg: "network " + name + ": not found"}
	}
	return f.net, nil
}

func (f *fakeDaemon) Attach(req api.AttachRequest) (api.Endpoint, error) {
	f.attached = append(f.attached, req)
	ip := req.IP
	if ip == "" {
		ip = "10.9.0.2"
	}
	ep := api.Endpoint{Name: req.Name, Network: req.Network, IP: ip, MAC: "02:42:0a:09:00:02", IfName: req.IfName, Netns: req.Netns, Aliases: req.Aliases, State: "up"}
	ct := f.ctrs[req.Name]
	ct.Name = req.Name
	ct.Endpoints = append(ct.Endpoints, ep)
	f.ctrs[req.Name] = ct
	return ep, nil
}

func (f *fakeDaemon) Detach(name, network string) error {
	if f.failWith != nil {
		return f.failWith
	}
	ct, ok := f.ctrs[name]
	if !ok {
		return &api.StatusError{Code: http.StatusNotFound, Msg: "container " + name + ": not found"}
	}
	f.detached = append(f.detached, name+"/"+network)
	delete(f.ctrs, name)
	_ = ct
	return nil
}

func (f *fakeDaemon) Container(name string) (api.Container, error) {
	if f.failWith != nil {
		return api.Container{}, f.failWith
	}
	ct, ok := f.ctrs[name]
	if !ok {
		return api.Container{}, &api.StatusError{Code: http.StatusNotFound, Msg: "container " + name + ": not found"}
	}
	return ct, nil
}

func (f *fakeDaemon) Containers() ([]api.Container, error) {
	var out []api.Container
	for _, c := range f.ctrs {
		out = append(out, c)
	}
	return out, nil
}

const goodConf = `{"cniVersion":"1.0.0","name":"webnet","type":"vxmesh-cni","network":"web"}`

func plugin(f *fakeDaemon, l Link) *Plugin {
	return &Plugin{
		Dial:    func(string) Daemon { return f },
		Inspect: func(string, string) (Link, error) { return l, nil },
	}
}

// attachedLink is what the namespace holds after a first attach.
var attachedLink = Link{Up: true, MAC: "02:42:0a:09:00:02", Addrs: []netip.Prefix{netip.MustParsePrefix("10.9.0.2/24")}, DefaultGW: netip.MustParseAddr("10.9.0.1")}

func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return e.Code
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, conf, wantErr string
	}{
		{"ok", goodConf, ""},
		{"ok with socket and runtime config", `{"cniVersion":"1.0.0","name":"n","type":"vxmesh-cni","network":"web","socket":"/tmp/s.sock","runtimeConfig":{"ips":["10.9.0.7/24"]},"cni.dev/attachment":"x"}`, ""},
		{"missing network", `{"cniVersion":"1.0.0","name":"webnet","type":"vxmesh-cni"}`, `network config "webnet": missing "network"`},
		{"misspelt key", `{"cniVersion":"1.0.0","name":"webnet","type":"vxmesh-cni","netwrok":"web"}`, `unknown key "netwrok"`},
		{"ipam", `{"cniVersion":"1.0.0","name":"webnet","type":"vxmesh-cni","network":"web","ipam":{"type":"host-local"}}`, `"ipam" "host-local"`},
		{"nameservers", `{"cniVersion":"1.0.0","name":"webnet","type":"vxmesh-cni","network":"web","dns":{"nameservers":["8.8.8.8"]}}`, `"dns.nameservers"`},
		{"relative socket", `{"cniVersion":"1.0.0","name":"webnet","type":"vxmesh-cni","network":"web","socket":"vx.sock"}`, `"socket" "vx.sock": not an absolute path`},
		{"not json", `{"cniVersion":`, "not a JSON object"},
		{"wrong type", `{"cniVersion":"1.0.0","name":"webnet","network":7}`, "network config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.conf))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Network != "web" {
					t.Fatalf("network %q", c.Network)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error on more than one line: %q", err)
			}
		})
	}
}

func TestSocketPath(t *testing.T) {
	c, _ := ParseConfig([]byte(goodConf))
	if c.SocketPath() != api.DefaultSocket {
		t.Fatalf("default socket %q", c.SocketPath())
	}
}

func TestFixedIP(t *testing.T) {
	for _, tc := range []struct {
		name, conf, cniArgs string
		want                string
		bits                int
		wantErr             string
	}{
		{"none", goodConf, "", "", -1, ""},
		{"runtimeConfig", `{"name":"n","network":"web","runtimeConfig":{"ips":["10.9.0.7/24"]}}`, "", "10.9.0.7", 24, ""},
		{"args", `{"name":"n","network":"web","args":{"cni":{"ips":["10.9.0.8"]}}}`, "", "10.9.0.8", -1, ""},
		{"CNI_ARGS", goodConf, "IgnoreUnknown=1;IP=10.9.0.9;K8S_POD_NAME=x", "10.9.0.9", -1, ""},
		{"same twice", `{"name":"n","network":"web","runtimeConfig":{"ips":["10.9.0.7/24"]}}`, "IP=10.9.0.7", "10.9.0.7", 24, ""},
		{"two addresses", `{"name":"n","network":"web","runtimeConfig":{"ips":["10.9.0.7/24","10.9.0.8/24"]}}`, "", "", 0, "exactly one address"},
		{"ipv6", `{"name":"n","network":"web","runtimeConfig":{"ips":["fd00::7/64"]}}`, "", "", 0, "IPv4"},
		{"garbage", goodConf, "IP=ten", "", 0, `ip "ten"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.conf))
			if err != nil {
				t.Fatal(err)
			}
			a, bits, err := c.FixedIP(tc.cniArgs)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" && a.IsValid() || tc.want != "" && a.String() != tc.want || bits != tc.bits {
				t.Fatalf("got %v /%d, want %q /%d", a, bits, tc.want, tc.bits)
			}
		})
	}
}

func TestContainerName(t *testing.T) {
	if got := ContainerName("abc"); got != "cni-abc" {
		t.Fatalf("short ID: %q", got)
	}
	id := strings.Repeat("0123456789abcdef", 4) // a 64-hex-digit runtime ID
	a, b := ContainerName(id), ContainerName(id[:63]+"0")
	if len(a) > 64 || !strings.HasPrefix(a, "cni-0123456789") {
		t.Fatalf("long ID: %q (%d characters)", a, len(a))
	}
	if a == b {
		t.Fatalf("IDs differing in their last character share the name %q", a)
	}
}

func TestBuildResult(t *testing.T) {
	c, _ := ParseConfig([]byte(`{"cniVersion":"1.0.0","name":"webnet","network":"web","dns":{"search":["svc.example"]}}`))
	f := newFake()
	ep := api.Endpoint{IP: "10.9.0.5", MAC: "02:42:0a:09:00:05", IfName: "net1"}
	res, err := BuildResult(c, f.net, ep, "/run/netns/x", true)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res)
	var got struct {
		Interfaces []struct{ Name, Mac, Sandbox string }
		IPs        []struct {
			Address, Gateway string
			Interface        *int
		}
		Routes []struct{ Dst, GW string }
		DNS    struct{ Nameservers, Search, Options []string }
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Interfaces) != 1 || got.Interfaces[0].Name != "net1" || got.Interfaces[0].Mac != ep.MAC || got.Interfaces[0].Sandbox != "/run/netns/x" {
		t.Fatalf("interfaces %+v", got.Interfaces)
	}
	if len(got.IPs) != 1 || got.IPs[0].Address != "10.9.0.5/24" || got.IPs[0].Gateway != "10.9.0.1" || got.IPs[0].Interface == nil || *got.IPs[0].Interface != 0 {
		t.Fatalf("ips %s", b)
	}
	if len(got.Routes) != 1 || got.Routes[0].Dst != "0.0.0.0/0" || got.Routes[0].GW != "10.9.0.1" {
		t.Fatalf("routes %s", b)
	}
	if strings.Join(got.DNS.Nameservers, ",") != "127.0.0.11" || strings.Join(got.DNS.Search, ",") != "svc.example" || strings.Join(got.DNS.Options, ",") != "ndots:0" {
		t.Fatalf("dns %+v", got.DNS)
	}

	res, _ = BuildResult(c, f.net, ep, "/run/netns/x", false)
	if len(res.Routes) != 0 {
		t.Fatalf("a second network's result has routes %v", res.Routes)
	}
	if _, err := BuildResult(c, f.net, api.Endpoint{IP: "10.8.0.5"}, "", false); err == nil {
		t.Fatal("an address outside the subnet made a result")
	}
}

func args(conf string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "c1", Netns: "/proc/self/ns/net", IfName: "eth0", StdinData: []byte(conf)}
}

func TestAddAsksDaemon(t *testing.T) {
	f := newFake()
	p := plugin(f, attachedLink)
	conf := `{"cniVersion":"1.0.0","name":"webnet","network":"web","runtimeConfig":{"ips":["10.9.0.7/24"],"aliases":{"webnet":["db"],"other":["x"]}}}`
	c, _ := ParseConfig([]byte(conf))
	a := args(conf)
	a.IfName = "net0"
	res, err := p.add(c, a)
	if err != nil {
		t.Fatal(err)
	}
	want := api.AttachRequest{Network: "web", Name: "cni-c1", Netns: "/proc/self/ns/net", IfName: "net0", IP: "10.9.0.7", Aliases: []string{"db"}}
	if len(f.attached) != 1 || f.attached[0].Name != want.Name || f.attached[0].IP != want.IP || f.attached[0].IfName != want.IfName ||
		f.attached[0].Netns != want.Netns || strings.Join(f.attached[0].Aliases, ",") != "db" || f.attached[0].Network != "web" {
		t.Fatalf("attach requests %+v, want %+v", f.attached, want)
	}
	if res.IPs[0].Address.String() != "10.9.0.7/24" || len(res.Routes) != 1 {
		t.Fatalf("result %+v", res)
	}
}

func TestAddRefuses(t *testing.T) {
	f := newFake()
	p := plugin(f, attachedLink)
	for _, tc := range []struct {
		name, conf string
		netns      string
		code       uint
	}{
		{"prefix length", `{"cniVersion":"1.0.0","name":"n","network":"web","runtimeConfig":{"ips":["10.9.0.7/16"]}}`, "/proc/self/ns/net", types.ErrInvalidNetworkConfig},
		{"unknown network", `{"cniVersion":"1.0.0","name":"n","network":"nope"}`, "/proc/self/ns/net", types.ErrInvalidNetworkConfig},
		{"missing netns", goodConf, "/nonexistent/netns", types.ErrInvalidNetNS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := ParseConfig([]byte(tc.conf))
			a := args(tc.conf)
			a.Netns = tc.netns
			_, err := p.add(c, a)
			if err == nil {
				t.Fatal("ADD succeeded")
			}
			if code := cniCode(t, err); code != tc.code {
				t.Fatalf("code %d (%v), want %d", code, err, tc.code)
			}
		})
	}
	if len(f.attached) != 0 {
		t.Fatalf("refused ADDs reached the daemon: %+v", f.attached)
	}
}

// TestUnreachableDaemon runs the real API client against a socket nobody
// listens on: ADD, DEL and CHECK answer "try again later" (11), STATUS
// "plugin not available" (50).
func TestUnreachableDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	p := &Plugin{Dial: func(s string) Daemon { return api.NewClient(s) }, Inspect: func(string, string) (Link, error) { return attachedLink, nil }}
	conf := `{"cniVersion":"1.1.0","name":"n","network":"web","socket":"` + sock + `","prevResult":{"cniVersion":"1.1.0"}}`
	if err := p.Add(args(conf)); cniCode(t, err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), sock) {
		t.Fatalf("ADD: %v", err)
	}
	if err := p.Del(args(conf)); cniCode(t, err) != types.ErrTryAgainLater {
		t.Fatalf("DEL: %v", err)
	}
	if err := p.Check(args(conf)); cniCode(t, err) != types.ErrTryAgainLater {
		t.Fatalf("CHECK: %v", err)
	}
	if err := p.Status(args(conf)); cniCode(t, err) != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS: %v", err)
	}
}

func TestBadConfigCode(t *testing.T) {
	p := plugin(newFake(), attachedLink)
	for _, cmd := range []func(*skel.CmdArgs) error{p.Add, p.Del, p.Check, p.GC, p.Status} {
		if err := cmd(args(`{"cniVersion":"1.0.0","name":"n"}`)); cniCode(t, err) != types.ErrInvalidNetworkConfig {
			t.Fatalf("error %v, want code 7", err)
		}
	}
}

func TestDelIdempotent(t *testing.T) {
	f := newFake()
	p := plugin(f, attachedLink)
	c, _ := ParseConfig([]byte(goodConf))
	if _, err := p.add(c, args(goodConf)); err != nil {
		t.Fatal(err)
	}
	// Another interface name on the same network is not this attachment.
	other := args(goodConf)
	other.IfName = "eth1"
	if err := p.Del(other); err != nil || len(f.detached) != 0 {
		t.Fatalf("DEL of another ifname: %v, detached %v", err, f.detached)
	}
	for i := range 2 {
		if err := p.Del(args(goodConf)); err != nil {
			t.Fatalf("DEL %d: %v", i+1, err)
		}
	}
	if strings.Join(f.detached, ",") != "cni-c1/web" {
		t.Fatalf("detached %v", f.detached)
	}
	f.failWith = &api.StatusError{Code: http.StatusInternalServerError, Msg: "state: disk full"}
	if err := p.Del(args(goodConf)); cniCode(t, err) != types.ErrInternal {
		t.Fatalf("DEL with a failing daemon: %v", err)
	}
}

func checkConf(t *testing.T, res *current.Result) string {
	t.Helper()
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	return `{"cniVersion":"1.0.0","name":"webnet","network":"web","prevResult":` + string(b) + `}`
}

func TestCheck(t *testing.T) {
	f := newFake()
	c, _ := ParseConfig([]byte(goodConf))
	res, err := plugin(f, attachedLink).add(c, args(goodConf))
	if err != nil {
		t.Fatal(err)
	}
	conf := checkConf(t, res)
	if err := plugin(f, attachedLink).Check(args(conf)); err != nil {
		t.Fatalf("CHECK of a good attachment: %v", err)
	}
	for _, tc := range []struct {
		name string
		link Link
		want string
	}{
		{"down", Link{MAC: attachedLink.MAC, Addrs: attachedLink.Addrs, DefaultGW: attachedLink.DefaultGW}, "down"},
		{"mac", Link{Up: true, MAC: "02:00:00:00:00:01", Addrs: attachedLink.Addrs, DefaultGW: attachedLink.DefaultGW}, "MAC"},
		{"address", Link{Up: true, MAC: attachedLink.MAC, DefaultGW: attachedLink.DefaultGW}, "address 10.9.0.2/24 missing"},
		{"route", Link{Up: true, MAC: attachedLink.MAC, Addrs: attachedLink.Addrs}, "default route via 10.9.0.1 missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := plugin(f, tc.link).Check(args(conf))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CHECK: %v, want %q", err, tc.want)
			}
		})
	}
	// The daemon's record differs from prevResult.
	ct := f.ctrs["cni-c1"]
	ct.Endpoints[0].IP = "10.9.0.3"
	if err := plugin(f, attachedLink).Check(args(conf)); err == nil || !strings.Contains(err.Error(), "prevResult has address 10.9.0.2/24, the daemon 10.9.0.3/24") {
		t.Fatalf("CHECK against another record: %v", err)
	}
	ct.Endpoints[0].State = "down: netns gone"
	if err := plugin(f, attachedLink).Check(args(conf)); err == nil || !strings.Contains(err.Error(), "down: netns gone") {
		t.Fatalf("CHECK of a down endpoint: %v", err)
	}
	delete(f.ctrs, "cni-c1")
	if err := plugin(f, attachedLink).Check(args(conf)); cniCode(t, err) != types.ErrUnknownContainer {
		t.Fatalf("CHECK of an unknown container: %v", err)
	}
}

func TestGC(t *testing.T) {
	f := newFake()
	f.ctrs["cni-keep"] = api.Container{Name: "cni-keep", Endpoints: []api.Endpoint{{Network: "web", IfName: "eth0"}}}
	f.ctrs["cni-stale"] = api.Container{Name: "cni-stale", Endpoints: []api.Endpoint{{Network: "web", IfName: "eth0"}}}
	f.ctrs["cni-othernet"] = api.Container{Name: "cni-othernet", Endpoints: []api.Endpoint{{Network: "db", IfName: "eth0"}}}
	f.ctrs["mine"] = api.Container{Name: "mine", Endpoints: []api.Endpoint{{Network: "web", IfName: "eth0"}}}
	conf := `{"cniVersion":"1.1.0","name":"webnet","network":"web","cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}`
	if err := plugin(f, attachedLink).GC(args(conf)); err != nil {
		t.Fatal(err)
	}
	if strings.Join(f.detached, ",") != "cni-stale/web" {
		t.Fatalf("GC detached %v, want only cni-stale/web", f.detached)
	}
}

// TestGCLeavesAnotherConfigurationsAttachments: two CNI configurations
// (webnet, webnet2) attach to the same vxmesh network. A GC of webnet2
// lists only its own attachments as valid; it used to detach webnet's
// too, since the daemon knows only the vxmesh network. Now each keeps
// its own: webnet2's GC leaves webnet's container, webnet's GC removes
// it, an attachment no configuration recorded (made before the records)
// goes as before, and DEL and GC leave no record behind.
func TestGCLeavesAnotherConfigurationsAttachments(t *testing.T) {
	f := newFake()
	p := plugin(f, attachedLink)
	p.StateDir = t.TempDir()
	conf1 := `{"cniVersion":"1.1.0","name":"webnet","network":"web"}`
	conf2 := `{"cniVersion":"1.1.0","name":"webnet2","network":"web"}`
	for _, a := range []struct{ conf, id string }{{conf1, "a1"}, {conf2, "b1"}, {conf2, "b2"}} {
		c, _ := ParseConfig([]byte(a.conf))
		ca := args(a.conf)
		ca.ContainerID = a.id
		if _, err := p.add(c, ca); err != nil {
			t.Fatal(err)
		}
	}
	f.ctrs["cni-old"] = api.Container{Name: "cni-old", Endpoints: []api.Endpoint{{Network: "web", IfName: "eth0"}}}
	gc := func(conf string) {
		t.Helper()
		f.detached = nil
		if err := p.GC(args(conf)); err != nil {
			t.Fatal(err)
		}
	}
	gc(`{"cniVersion":"1.1.0","name":"webnet2","network":"web","cni.dev/valid-attachments":[{"containerID":"b1","ifname":"eth0"}]}`)
	if got := strings.Join(f.detached, ","); got != "cni-b2/web,cni-old/web" && got != "cni-old/web,cni-b2/web" {
		t.Fatalf("webnet2's GC detached %q, want cni-b2 and cni-old (not webnet's cni-a1)", got)
	}
	gc(`{"cniVersion":"1.1.0","name":"webnet","network":"web"}`)
	if got := strings.Join(f.detached, ","); got != "cni-a1/web" {
		t.Fatalf("webnet's GC detached %q, want cni-a1", got)
	}
	if err := p.Del(&skel.CmdArgs{ContainerID: "b1", Netns: "/proc/self/ns/net", IfName: "eth0", StdinData: []byte(conf2)}); err != nil {
		t.Fatal(err)
	}
	var left []string
	filepath.WalkDir(p.StateDir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && path != p.StateDir {
			left = append(left, path)
		}
		return nil
	})
	if len(left) != 0 {
		t.Errorf("records left after DEL and GC: %v", left)
	}
}

func TestMergePrev(t *testing.T) {
	c, _ := ParseConfig([]byte(goodConf))
	f := newFake()
	prev := &current.Result{CNIVersion: "1.0.0", Interfaces: []*current.Interface{{Name: "lo0"}}}
	res, _ := BuildResult(c, f.net, api.Endpoint{IP: "10.9.0.5", MAC: "02:42:0a:09:00:05", IfName: "eth0"}, "/x", true)
	m := mergePrev(prev, res)
	if len(m.Interfaces) != 2 || m.Interfaces[1].Name != "eth0" || *m.IPs[0].Interface != 1 {
		t.Fatalf("merged %+v", m)
	}
}
