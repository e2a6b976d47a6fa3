package e2e

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

// cniTools returns the vxmesh-cni plugin ($VXMESH_CNI_BIN, or built from
// ./cmd/vxmesh-cni) in a CNI_PATH directory, and cnitool ($CNITOOL,
// cnitool on $PATH, or installed from the module proxy into a temporary
// directory). Without cnitool the test skips, or fails under
// VXMESH_E2E_REQUIRE=1.
func cniTools(t *testing.T) (pluginDir, cnitool string) {
	t.Helper()
	pluginDir = t.TempDir()
	plugin := filepath.Join(pluginDir, "vxmesh-cni")
	if p := os.Getenv("VXMESH_CNI_BIN"); p != "" {
		b, err := os.ReadFile(p)
		if err == nil {
			err = os.WriteFile(plugin, b, 0o755)
		}
		if err != nil {
			t.Fatalf("VXMESH_CNI_BIN: %v", err)
		}
	} else if out, err := exec.Command("go", "build", "-race", "-o", plugin, "github.com/vxmesh/vxmesh/cmd/vxmesh-cni").CombinedOutput(); err != nil {
		t.Fatalf("building vxmesh-cni: %v: %s", err, out)
	}
	cnitool = os.Getenv("CNITOOL")
	if cnitool == "" {
		cnitool, _ = exec.LookPath("cnitool")
	}
	if cnitool == "" {
		dir := t.TempDir()
		cmd := exec.Command("go", "install", "github.com/containernetworking/cni/cnitool@latest")
		cmd.Env = append(os.Environ(), "GOBIN="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			msg := fmt.Sprintf("cnitool: go install github.com/containernetworking/cni/cnitool@latest: %v: %s", err, out)
			if os.Getenv("VXMESH_E2E_REQUIRE") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
		cnitool = filepath.Join(dir, "cnitool")
	}
	return pluginDir, cnitool
}

// cniEnv runs cnitool against one network configuration directory.
type cniEnv struct {
	t                        *testing.T
	tool, pluginDir, confDir string
	net                      string
}

// run runs `cnitool CMD NET NETNS` with extra environment variables and
// returns its stdout and error.
func (c *cniEnv) run(cmd, netns string, env ...string) (string, error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	x := exec.CommandContext(ctx, c.tool, cmd, c.net, netns)
	x.Env = append(os.Environ(), "CNI_PATH="+c.pluginDir, "NETCONFPATH="+c.confDir, "GORACE=atexit_sleep_ms=0")
	x.Env = append(x.Env, env...)
	var out, stderr bytes.Buffer
	x.Stdout, x.Stderr = &out, &stderr
	err := x.Run()
	if err != nil {
		err = fmt.Errorf("cnitool %s %s %s: %v: %s%s", cmd, c.net, netns, err, stderr.String(), out.String())
	}
	return out.String(), err
}

// writeConf writes the conflist of c.net: vxmesh-cni on network through
// the daemon at socket, with the ips and aliases capabilities.
func (c *cniEnv) writeConf(network, socket string) {
	c.t.Helper()
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"vxmesh-cni","network":%q,"socket":%q,"capabilities":{"ips":true,"aliases":true}}]}`, c.net, network, socket)
	if err := os.WriteFile(filepath.Join(c.confDir, c.net+".conflist"), []byte(conf), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cniEnv) must(cmd, netns string, env ...string) string {
	c.t.Helper()
	out, err := c.run(cmd, netns, env...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// cniResult is the part of a CNI 1.x result the test checks.
type cniResult struct {
	CNIVersion string `json:"cniVersion"`
	Interfaces []struct {
		Name, Mac, Sandbox string
	} `json:"interfaces"`
	IPs []struct {
		Address, Gateway string
		Interface        *int
	} `json:"ips"`
	Routes []struct{ Dst, GW string } `json:"routes"`
	DNS    struct {
		Nameservers, Options []string
	} `json:"dns"`
}

// checkResult checks an ADD result: one interface ifname in netns, one
// address in subnet (want, when set) through it with the gateway, the
// default route via the gateway and the daemon's resolver. It returns the
// address. Without defaultRoute (a container's later network), it checks
// that the result has no route.
func checkResult(t *testing.T, out, netns, ifname, subnet, gw, want string, defaultRoute bool) string {
	t.Helper()
	var r cniResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("result %q: %v", out, err)
	}
	if r.CNIVersion != "1.1.0" || len(r.Interfaces) != 1 || r.Interfaces[0].Name != ifname || r.Interfaces[0].Sandbox != netns || r.Interfaces[0].Mac == "" {
		t.Fatalf("result interfaces: %s", out)
	}
	if len(r.IPs) != 1 || r.IPs[0].Interface == nil || *r.IPs[0].Interface != 0 || r.IPs[0].Gateway != gw {
		t.Fatalf("result ips: %s", out)
	}
	p, err := netip.ParsePrefix(r.IPs[0].Address)
	if err != nil || p.Masked().String() != subnet || want != "" && p.Addr().String() != want {
		t.Fatalf("result address %q, want one in %s (%s)", r.IPs[0].Address, subnet, want)
	}
	if !defaultRoute {
		if len(r.Routes) != 0 {
			t.Fatalf("result routes for a later network: %s", out)
		}
	} else if len(r.Routes) != 1 || r.Routes[0].Dst != "0.0.0.0/0" || r.Routes[0].GW != gw {
		t.Fatalf("result routes: %s", out)
	}
	if strings.Join(r.DNS.Nameservers, ",") != "127.0.0.11" {
		t.Fatalf("result dns: %s", out)
	}
	if got := defaultGateway(t, netns); defaultRoute && got != gw {
		t.Fatalf("netns %s: default route via %q, want %s", netns, got, gw)
	}
	return p.Addr().String()
}

// TestCNI drives vxmesh-cni with cnitool, the CNI project's reference
// runtime: ADD of two namespaces (one with a fixed address and a DNS alias
// through capability arguments), traffic and names between them, CHECK
// (and a CHECK that finds a missing address), STATUS, DEL twice, GC, and
// the plugin's error codes.
func TestCNI(t *testing.T) {
	e := newEnv(t)
	pluginDir, tool := cniTools(t)
	const subnet, gw = "10.93.0.0/24", "10.93.0.1"
	e.cli("network", "create", "cniweb", "--subnet", subnet)

	c := &cniEnv{t: t, tool: tool, pluginDir: pluginDir, confDir: t.TempDir(), net: "vxnet-" + suite.prefix}
	c.writeConf("cniweb", e.h.Socket)
	// libcni caches results under /var/lib/cni; DEL removes them, this
	// makes sure of it on failure.
	t.Cleanup(func() {
		left, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", c.net+"-*"))
		for _, f := range left {
			os.Remove(f)
		}
	})

	nsA, err := e.tb.AddNetns("ca")
	if err != nil {
		t.Fatal(err)
	}
	nsB, err := e.tb.AddNetns("cb")
	if err != nil {
		t.Fatal(err)
	}
	capArgs := fmt.Sprintf(`CAP_ARGS={"ips":["10.93.0.50/24"],"aliases":{%q:["alpha"]}}`, c.net)
	outA := c.must("add", nsA, capArgs)
	t.Logf("cnitool add %s %s:\n%s", c.net, nsA, outA)
	ipA := checkResult(t, outA, nsA, "eth0", subnet, gw, "10.93.0.50", true)
	ipB := checkResult(t, c.must("add", nsB, "CNI_IFNAME=net0"), nsB, "net0", subnet, gw, "", true)

	// The daemon records them under the runtime's container IDs.
	ctrA := "cni-" + cnitoolContainerID(nsA)
	if ctr, ok := e.container(ctrA); !ok || len(ctr.Endpoints) != 1 || ctr.Endpoints[0].IP != ipA || ctr.Endpoints[0].Network != "cniweb" {
		t.Fatalf("vxmesh ps: container %s: %+v (found %v)", ctrA, ctr, ok)
	}
	for _, p := range [][2]string{{nsA, ipB}, {nsB, ipA}} {
		eventually(t, 15*time.Second, func() error {
			_, err := testbed.InNetns(context.Background(), p[0], "ping", "-c", "1", "-W", "1", p[1])
			return err
		}, "%s cannot ping %s", p[0], p[1])
	}
	eventually(t, 10*time.Second, func() error {
		out, err := testbed.InNetns(context.Background(), nsB, "dig", "@127.0.0.11", "+tries=1", "+time=2", "+short", "alpha")
		if err != nil || strings.TrimSpace(out) != ipA {
			return fmt.Errorf("%v: %q", err, out)
		}
		return nil
	}, "dig @127.0.0.11 alpha (the alias from CAP_ARGS) in %s", nsB)

	c.must("check", nsA)
	c.must("check", nsB, "CNI_IFNAME=net0")
	c.must("status", nsA)

	// A second network of the same container (cnitool derives the
	// container ID from the namespace): another interface, no default
	// route; its DEL leaves the first network alone.
	e.cli("network", "create", "cniweb2", "--subnet", "10.95.0.0/24")
	c2 := &cniEnv{t: t, tool: tool, pluginDir: pluginDir, confDir: t.TempDir(), net: c.net + "-b"}
	c2.writeConf("cniweb2", e.h.Socket)
	checkResult(t, c2.must("add", nsB, "CNI_IFNAME=net1"), nsB, "net1", "10.95.0.0/24", "10.95.0.1", "", false)
	ctrB := "cni-" + cnitoolContainerID(nsB)
	if ctr, ok := e.container(ctrB); !ok || len(ctr.Endpoints) != 2 {
		t.Fatalf("vxmesh ps: container %s: %+v, want endpoints on cniweb and cniweb2", ctrB, ctr)
	}
	c2.must("check", nsB, "CNI_IFNAME=net1")
	c2.must("del", nsB, "CNI_IFNAME=net1")
	if ctr, ok := e.container(ctrB); !ok || len(ctr.Endpoints) != 1 || ctr.Endpoints[0].Network != "cniweb" {
		t.Fatalf("after del on cniweb2: container %s: %+v", ctrB, ctr)
	}
	c.must("check", nsB, "CNI_IFNAME=net0")

	// CHECK sees an address taken away behind the daemon's back.
	if _, err := testbed.InNetns(context.Background(), nsA, "ip", "addr", "flush", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.run("check", nsA); err == nil || !strings.Contains(err.Error(), "address 10.93.0.50/24 missing") {
		t.Fatalf("check after the address was flushed: %v", err)
	}

	// DEL twice: the second finds nothing and succeeds.
	c.must("del", nsA)
	c.must("del", nsA)
	if _, ok := e.container(ctrA); ok {
		t.Fatalf("container %s still known after del", ctrA)
	}
	if links, _ := testbed.Links(filepath.Base(nsA)); strings.Contains(strings.Join(links, " "), "eth0") {
		t.Fatalf("netns %s still has eth0 after del: %v", nsA, links)
	}

	// GC (cnitool passes no valid attachment) detaches B, not a namespace
	// attached with the CLI.
	nsP, err := e.tb.AddNetns("cp")
	if err != nil {
		t.Fatal(err)
	}
	e.cli("attach", "--network", "cniweb", "--name", "plain", "--netns", nsP)
	// Nor one that another CNI configuration attached to the same vxmesh
	// network.
	nsC, err := e.tb.AddNetns("cc")
	if err != nil {
		t.Fatal(err)
	}
	c3 := &cniEnv{t: t, tool: tool, pluginDir: pluginDir, confDir: t.TempDir(), net: c.net + "-c"}
	c3.writeConf("cniweb", e.h.Socket)
	c3.must("add", nsC)
	ctrC := "cni-" + cnitoolContainerID(nsC)
	c.must("gc", nsB)
	if _, ok := e.container(ctrB); ok {
		t.Fatal("gc left the cnitool container attached")
	}
	if _, ok := e.container("plain"); !ok {
		t.Fatal("gc detached a container the plugin did not attach")
	}
	if _, ok := e.container(ctrC); !ok {
		t.Fatal("gc of one configuration detached a container another configuration attached to the same network")
	}
	c.must("del", nsB, "CNI_IFNAME=net0")
	c3.must("del", nsC)

	checkCNIErrors(t, pluginDir, nsA, e.h.Socket)
}

// cnitoolContainerID is the container ID cnitool derives from a netns path.
func cnitoolContainerID(netns string) string {
	s := sha512.Sum512([]byte(netns))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// checkCNIErrors runs the plugin directly, as a runtime does, and checks
// the CNI error JSON it prints: 7 for a configuration without "network",
// 11 when the daemon does not answer, 7 for an unknown network.
func checkCNIErrors(t *testing.T, pluginDir, netns, socket string) {
	for _, tc := range []struct {
		conf string
		code uint
		msg  string
	}{
		{`{"cniVersion":"1.0.0","name":"x","type":"vxmesh-cni"}`, 7, `missing "network"`},
		{`{"cniVersion":"1.0.0","name":"x","type":"vxmesh-cni","network":"cniweb","socket":"/nonexistent/vx.sock"}`, 11, "cannot reach the vxmesh daemon"},
		{fmt.Sprintf(`{"cniVersion":"1.0.0","name":"x","type":"vxmesh-cni","network":"nosuch","socket":%q}`, socket), 7, `network "nosuch": not found`},
	} {
		cmd := exec.Command(filepath.Join(pluginDir, "vxmesh-cni"))
		cmd.Env = append(os.Environ(), "CNI_COMMAND=ADD", "CNI_CONTAINERID=errcheck", "CNI_NETNS="+netns, "CNI_IFNAME=eth9", "CNI_PATH="+pluginDir, "GORACE=atexit_sleep_ms=0")
		cmd.Stdin = strings.NewReader(tc.conf)
		out, err := cmd.Output()
		if err == nil {
			t.Errorf("ADD with %s succeeded: %s", tc.conf, out)
			continue
		}
		var e struct {
			Code uint   `json:"code"`
			Msg  string `json:"msg"`
		}
		if jerr := json.Unmarshal(out, &e); jerr != nil || e.Code != tc.code || !strings.Contains(e.Msg, tc.msg) {
			t.Errorf("ADD with %s: %q (%v), want code %d and %q", tc.conf, out, jerr, tc.code, tc.msg)
		}
	}
}
