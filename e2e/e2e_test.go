package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

func TestTwoContainersPingAndMoveTCPDataExactly(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.20.0.0/24")
	e.run("c1", "web")
	e.run("c2", "web")
	e.mustPing("c1", e.ip("c2"))
	e.mustPing("c2", e.ip("c1"))

	// 8 MiB of pseudo-random bytes c1 -> c2, compared by length and SHA-256.
	moveBytes(t, e, "c1", e, "c2", 8<<20, 42)
}

// moveBytes sends size pseudo-random bytes over TCP from container src on
// host se to container dst on host de and fails unless the receiver got
// exactly those bytes (same length and SHA-256).
func moveBytes(t *testing.T, se *env, src string, de *env, dst string, size int, seed uint64) {
	t.Helper()
	recv := startBackground(t, de.h.Command(context.Background(), "exec", dst, "--", suite.self, helperArg, "recv", "0.0.0.0:7000"))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := testbed.WaitTCPListen(ctx, de.h.ContainerNetnsPath(dst), 7000); err != nil {
		t.Fatalf("receiver in %s: %v: %s", dst, err, recv.out.String())
	}
	sent, err := se.h.Exec(src, suite.self, helperArg, "send", de.ip(dst)+":7000", strconv.Itoa(size), strconv.FormatUint(seed, 10))
	if err != nil {
		t.Fatalf("sender in %s: %v", src, err)
	}
	exited, err := recv.wait(30 * time.Second)
	if !exited || err != nil {
		t.Fatalf("receiver in %s: exited %v, %v: %s", dst, exited, err, recv.out.String())
	}
	received := recv.out.String()
	want := fmt.Sprintf("%d ", size)
	if !strings.HasPrefix(sent, want) || strings.TrimSpace(received) != strings.TrimSpace(sent) {
		t.Fatalf("TCP data %s -> %s differs: sent %q, received %q", src, dst, sent, received)
	}
}

func TestNetworksAreIsolated(t *testing.T) {
	e := newEnv(t)
	e.network("red", "10.30.0.0/24")
	e.network("blue", "10.31.0.0/24")
	e.run("r1", "red")
	e.run("r2", "red")
	e.run("b1", "blue")
	e.mustPing("r1", e.ip("r2")) // the path works within a network
	e.mustNotPing("r1", e.ip("b1"))
	e.mustNotPing("b1", e.ip("r1"))
	var fdb []api.FDBEntry
	e.json(&fdb, "fdb", "red")
	b1 := e.endpoint("b1")
	for _, f := range fdb {
		if strings.EqualFold(f.MAC, b1.MAC) {
			t.Errorf("red's FDB knows blue's b1: %+v", f)
		}
	}
}

func TestChangedMACIsDroppedByPortSecurity(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.21.0.0/24")
	e.run("c1", "web")
	e.run("c2", "web")
	c2ip := e.ip("c2")
	e.mustPing("c1", c2ip)

	var before api.Stats
	e.json(&before, "stats")
	e.cli("exec", "c1", "--", "ip", "link", "set", "eth0", "address", "02:00:00:00:00:99")
	// c1's ARP entry for c2 is still valid, so the pings below go out
	// with the new source MAC without a fresh ARP exchange.
	c2ns := e.h.ContainerNetnsPath("c2")
	l, err := linkIn(t, c2ns, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	e.mustNotPing("c1", c2ip)
	l2, err := linkIn(t, c2ns, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if got := l2.Stats64.RX.Packets - l.Stats64.RX.Packets; got != 0 {
		t.Errorf("c2 received %d packets from the spoofing c1, want 0", got)
	}
	var after api.Stats
	e.json(&after, "stats")
	b, a := dropsMatching(before, "web", "port", "secur"), dropsMatching(after, "web", "port", "secur")
	if a <= b {
		t.Errorf("port-security drops did not increase (%d -> %d); stats: %+v", b, a, after)
	}
}

func TestDaemonRestartKeepsContainersAndTraffic(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.22.0.0/24")
	e.run("c1", "web")
	e.run("c2", "web")
	c2ip := e.ip("c2")
	e.mustPing("c1", c2ip)
	c1ns := e.h.ContainerNetnsPath("c1")
	before, err := linkIn(t, c1ns, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	ctr, _ := e.container("c1")
	if len(ctr.PIDs) == 0 {
		t.Fatalf("ps shows no processes for c1: %+v", ctr)
	}

	for _, mode := range []string{"SIGKILL", "SIGTERM"} {
		if mode == "SIGKILL" {
			if err := e.h.KillDaemon(); err != nil {
				t.Fatal(err)
			}
		} else if err := e.h.StopDaemon(); err != nil {
			t.Fatalf("clean stop: %v", err)
		}
		// With the daemon gone, containers keep their interface and processes.
		now, err := linkIn(t, c1ns, "eth0")
		if err != nil {
			t.Fatalf("after %s: c1 lost eth0: %v", mode, err)
		}
		if now.IfIndex != before.IfIndex || now.ipv4() != before.ipv4() || now.Address != before.Address {
			t.Errorf("after %s: c1's eth0 changed: %+v -> %+v", mode, before, now)
		}
		for _, pid := range ctr.PIDs {
			if !alive(pid) {
				t.Errorf("after %s: c1's process %d died", mode, pid)
			}
		}
		if err := e.h.StartDaemon(); err != nil {
			t.Fatalf("restart after %s: %v", mode, err)
		}
		e.mustPing("c1", c2ip)
		e.mustPing("c2", e.ip("c1"))
		after, err := linkIn(t, c1ns, "eth0")
		if err != nil || after.IfIndex != before.IfIndex {
			t.Errorf("after %s restart: c1's eth0 %+v (was ifindex %d): %v", mode, after, before.IfIndex, err)
		}
		if ep := e.endpoint("c1"); ep.State != "up" {
			t.Errorf("after %s restart: c1 state %q, want up", mode, ep.State)
		}
		got, _ := e.container("c1")
		if !slices.Equal(got.PIDs, ctr.PIDs) {
			t.Errorf("after %s restart: c1 pids %v, want %v", mode, got.PIDs, ctr.PIDs)
		}
	}
}

func TestFailedCommandsLeaveNothingBehind(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.40.0.0/24")
	nets := e.networkNames()
	e.cliFails([]string{"db", "overlap", "web"}, "network", "create", "db", "--subnet", "10.40.0.128/25")
	if got := e.networkNames(); !slices.Equal(got, nets) {
		t.Errorf("network ls after a failed create: %v, want %v", got, nets)
	}
	e.cliFails([]string{"bad"}, "network", "create", "bad", "--subnet", "not-a-cidr")

	links, err := e.h.Links()
	if err != nil {
		t.Fatal(err)
	}
	e.cliFails([]string{"/nonexistent/netns"}, "attach", "--network", "web", "--name", "x1", "--netns", "/nonexistent/netns")
	path, err := e.tb.AddNetns("x2")
	if err != nil {
		t.Fatal(err)
	}
	e.cliFails([]string{"nosuchnet"}, "attach", "--network", "nosuchnet", "--name", "x2", "--netns", path)
	if e.hasEndpoint("x1") || e.hasEndpoint("x2") {
		t.Errorf("failed attach left an endpoint: %+v", e.endpoints())
	}
	if _, ok := e.container("x1"); ok {
		t.Error("failed attach left a container x1 in ps")
	}
	after, err := e.h.Links()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(after, links) {
		t.Errorf("host links changed by failed attaches: %v -> %v", links, after)
	}
	if l, err := testbed.Links(e.tb.NetnsName("x2")); err != nil || !slices.Equal(l, []string{"lo"}) {
		t.Errorf("x2 netns after failed attach: %v %v", l, err)
	}
	// A run that cannot start its command makes no container.
	e.cliFails([]string{"no-such-command"}, "run", "-d", "--network", "web", "--name", "c9", "--", "no-such-command")
	if _, ok := e.container("c9"); ok || testbed.NetnsExists(e.h.ContainerNetns("c9")) {
		t.Error("failed run left container c9 behind")
	}
}

func TestDuplicateNamesAreRejected(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.41.0.0/24")
	e.cliFails([]string{"web"}, "network", "create", "web", "--subnet", "10.42.0.0/24")
	if got := e.networkNames(); !slices.Equal(got, []string{"web"}) {
		t.Errorf("networks: %v", got)
	}
	e.run("c1", "web")
	ip := e.ip("c1")
	e.cliFails([]string{"c1"}, "run", "-d", "--network", "web", "--name", "c1", "--", "sleep", "infinity")
	path, err := e.tb.AddNetns("dup")
	if err != nil {
		t.Fatal(err)
	}
	e.cliFails([]string{"c1"}, "attach", "--network", "web", "--name", "c1", "--netns", path)
	n := 0
	for _, ep := range e.endpoints() {
		if ep.Name == "c1" {
			n++
		}
	}
	if n != 1 || e.ip("c1") != ip {
		t.Errorf("after duplicate attempts: %d endpoints named c1, ip %s (was %s)", n, e.ip("c1"), ip)
	}
}

func TestIPAMAndAddressing(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.50.0.0/24")
	var n api.Network
	e.json(&n, "network", "inspect", "web")
	if n.Gateway != "10.50.0.1" || n.Subnet != "10.50.0.0/24" {
		t.Errorf("inspect: subnet %q gateway %q, want 10.50.0.0/24 and 10.50.0.1", n.Subnet, n.Gateway)
	}
	if n.MTU != 1450 {
		t.Errorf("default MTU %d, want 1450 (underlay 1500 - 50)", n.MTU)
	}
	if n.VNI < 4096 {
		t.Errorf("default VNI %d, want >= 4096", n.VNI)
	}

	e.run("c1", "web")
	c1 := e.endpoint("c1")
	if addrOnly(c1.IP) != "10.50.0.2" {
		t.Errorf("first container got %s, want 10.50.0.2", c1.IP)
	}
	if !strings.EqualFold(c1.MAC, "02:42:0a:32:00:02") {
		t.Errorf("c1 MAC %s, want 02:42:0a:32:00:02 (02:42 + IP)", c1.MAC)
	}
	ns := e.h.ContainerNetnsPath("c1")
	l, err := linkIn(t, ns, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if l.ipv4() != "10.50.0.2/24" || !strings.EqualFold(l.Address, c1.MAC) || l.MTU != 1450 {
		t.Errorf("c1's eth0: %s %s mtu %d, want 10.50.0.2/24 %s mtu 1450", l.ipv4(), l.Address, l.MTU, c1.MAC)
	}
	if gw := defaultGateway(t, ns); gw != "10.50.0.1" {
		t.Errorf("c1's default route via %q, want 10.50.0.1", gw)
	}

	e.run("c2", "web", "--ip", "10.50.0.50")
	if got := e.ip("c2"); got != "10.50.0.50" {
		t.Errorf("--ip 10.50.0.50 gave %s", got)
	}
	if !strings.EqualFold(e.endpoint("c2").MAC, "02:42:0a:32:00:32") {
		t.Errorf("c2 MAC %s, want 02:42:0a:32:00:32", e.endpoint("c2").MAC)
	}
	e.run("c3", "web")
	if got := e.ip("c3"); got != "10.50.0.3" {
		t.Errorf("next free address %s, want 10.50.0.3", got)
	}
	e.cliFails([]string{"10.50.0.50"}, "run", "-d", "--network", "web", "--name", "c4", "--ip", "10.50.0.50", "--", "sleep", "infinity")
	e.cliFails([]string{"10.50.0.1"}, "run", "-d", "--network", "web", "--name", "c5", "--ip", "10.50.0.1", "--", "sleep", "infinity")
	e.cliFails([]string{"10.99.0.9"}, "run", "-d", "--network", "web", "--name", "c6", "--ip", "10.99.0.9", "--", "sleep", "infinity")
	for _, c := range []string{"c4", "c5", "c6"} {
		if e.hasEndpoint(c) || testbed.NetnsExists(e.h.ContainerNetns(c)) {
			t.Errorf("rejected %s left an endpoint or netns", c)
		}
	}
	// Removing a container frees its address for the next one.
	e.cli("rm", "c3")
	e.run("c7", "web")
	if got := e.ip("c7"); got != "10.50.0.3" {
		t.Errorf("after rm c3, next container got %s, want 10.50.0.3", got)
	}
}

func TestNetworkCreateOptions(t *testing.T) {
	e := newEnv(t)
	e.network("big", "10.60.0.0/16", "--gateway", "10.60.0.254", "--mtu", "1400", "--vni", "5000")
	var n api.Network
	e.json(&n, "network", "inspect", "big")
	if n.Gateway != "10.60.0.254" || n.MTU != 1400 || n.VNI != 5000 {
		t.Errorf("inspect: %+v, want gateway 10.60.0.254 mtu 1400 vni 5000", n)
	}
	e.run("c1", "big")
	ns := e.h.ContainerNetnsPath("c1")
	if l, err := linkIn(t, ns, "eth0"); err != nil || l.MTU != 1400 {
		t.Errorf("c1's eth0 MTU: %+v %v, want 1400", l, err)
	}
	if gw := defaultGateway(t, ns); gw != "10.60.0.254" {
		t.Errorf("default route via %q, want 10.60.0.254", gw)
	}
	// A network without --subnet gets one, with the same defaults.
	e.cli("network", "create", "auto")
	var a api.Network
	e.json(&a, "network", "inspect", "auto")
	if a.Subnet == "" || a.Gateway == "" || a.VNI == 0 || a.VNI == n.VNI {
		t.Errorf("auto network: %+v", a)
	}
	e.cliFails([]string{"vni"}, "network", "create", "dupvni", "--subnet", "10.61.0.0/24", "--vni", "5000")
}

func TestRunNetContainerSharesNamespace(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.23.0.0/24")
	e.run("c1", "web")
	want := strings.TrimSpace(e.cli("exec", "c1", "--", "readlink", "/proc/self/ns/net"))
	got := strings.TrimSpace(e.cli("run", "--net", "container:c1", "--", "readlink", "/proc/self/ns/net"))
	if got == "" || got != want {
		t.Errorf("run --net container:c1 ran in %q, c1 is %q", got, want)
	}
	addr := e.cli("run", "--net", "container:c1", "--", "ip", "-4", "-o", "addr", "show", "eth0")
	if !strings.Contains(addr, e.ip("c1")+"/24") {
		t.Errorf("shared netns does not show c1's address: %q", addr)
	}
	e.cli("run", "-d", "--net", "container:c1", "--", "sleep", "infinity")
	e.cliFails([]string{"nosuch"}, "run", "--net", "container:nosuch", "--", "true")
}

func TestExecPropagatesExitStatus(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.24.0.0/24")
	e.run("c1", "web")
	if out := e.cli("exec", "c1", "--", "sh", "-c", "echo hello"); strings.TrimSpace(out) != "hello" {
		t.Errorf("exec stdout %q", out)
	}
	for _, code := range []int{1, 7, 42} {
		_, err := e.h.Exec("c1", "sh", "-c", fmt.Sprintf("exit %d", code))
		ce, ok := err.(*testbed.CLIError)
		if !ok || ce.ExitCode != code {
			t.Errorf("exec exit %d: got %v", code, err)
		}
	}
	_, err := e.h.CLI("run", "--network", "web", "--name", "once", "--", "sh", "-c", "exit 3")
	if ce, ok := err.(*testbed.CLIError); !ok || ce.ExitCode != 3 {
		t.Errorf("run exit 3: got %v", err)
	}
	e.cliFails([]string{"nosuch"}, "exec", "nosuch", "--", "true")
}

func TestStateCommandsShowWhatUsersExpect(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.25.0.0/24")
	e.run("c1", "web", "--alias", "alpha")
	e.run("c2", "web")
	e.mustPing("c1", e.ip("c2"))

	var nets []api.Network
	e.json(&nets, "network", "ls")
	if len(nets) != 1 || nets[0].Name != "web" || nets[0].Subnet != "10.25.0.0/24" || nets[0].ID == "" {
		t.Errorf("network ls: %+v", nets)
	}
	table := e.cli("network", "ls")
	if !strings.Contains(table, "web") || !strings.Contains(table, "10.25.0.0/24") {
		t.Errorf("network ls table lacks web/subnet:\n%s", table)
	}

	var n api.Network
	e.json(&n, "network", "inspect", "web")
	var names []string
	for _, ep := range n.Endpoints {
		names = append(names, ep.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"c1", "c2"}) {
		t.Errorf("inspect endpoints %v, want [c1 c2]", names)
	}
	e.cliFails([]string{"nosuch"}, "network", "inspect", "nosuch")

	c1 := e.endpoint("c1")
	if c1.Network != "web" || c1.IfName != "eth0" || !c1.Managed || c1.Node != "h1" || c1.State != "up" ||
		!slices.Contains(c1.Aliases, "alpha") || !strings.Contains(c1.Netns, e.h.ContainerNetns("c1")) {
		t.Errorf("endpoint ls c1: %+v", c1)
	}
	if !strings.Contains(e.cli("endpoint", "ls"), "c1") {
		t.Error("endpoint ls table lacks c1")
	}

	ctr, ok := e.container("c1")
	if !ok || !ctr.Managed || len(ctr.Endpoints) != 1 || ctr.Endpoints[0].Network != "web" ||
		!strings.Contains(ctr.Netns, e.h.ContainerNetns("c1")) || len(ctr.PIDs) == 0 {
		t.Errorf("ps c1: %+v", ctr)
	}
	for _, pid := range ctr.PIDs {
		if id, err := netnsID(pid); err != nil || !alive(pid) {
			t.Errorf("ps pid %d of c1: %v", pid, err)
		} else if want := strings.TrimSpace(e.cli("exec", "c1", "--", "readlink", "/proc/self/ns/net")); id != want {
			t.Errorf("ps pid %d is in %s, c1 is %s", pid, id, want)
		}
	}
	ps := e.cli("ps")
	if !strings.Contains(ps, "c1") || !strings.Contains(ps, "c2") {
		t.Errorf("ps table:\n%s", ps)
	}

	var fdb []api.FDBEntry
	e.json(&fdb, "fdb", "web")
	for _, c := range []string{"c1", "c2"} {
		ep := e.endpoint(c)
		found := slices.ContainsFunc(fdb, func(f api.FDBEntry) bool {
			return strings.EqualFold(f.MAC, ep.MAC) && f.Port != "" && f.Kind == "local"
		})
		if !found {
			t.Errorf("fdb web has no local entry for %s (%s): %+v", c, ep.MAC, fdb)
		}
	}
	if !strings.Contains(strings.ToLower(e.cli("fdb", "web")), strings.ToLower(c1.MAC)) {
		t.Error("fdb table lacks c1's MAC")
	}
	e.cliFails([]string{"nosuch"}, "fdb", "nosuch")

	var st api.Stats
	e.json(&st, "stats")
	if st.Node != "h1" || len(st.Networks) != 1 || st.Networks[0].Network != "web" || len(st.Networks[0].Ports) < 2 {
		t.Errorf("stats: %+v", st)
	}
	var rx uint64
	for _, p := range st.Networks[0].Ports {
		rx += p.RxPackets
	}
	if rx == 0 {
		t.Errorf("stats count no received packets after pings: %+v", st)
	}
}

func TestAttachNamedNetnsAndDetach(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.26.0.0/24")
	e.run("c1", "web")
	path, err := e.tb.AddNetns("x1")
	if err != nil {
		t.Fatal(err)
	}
	e.cli("attach", "--network", "web", "--name", "x1", "--netns", path, "--ip", "10.26.0.100", "--alias", "ex", "--ifname", "net1")
	ep := e.endpoint("x1")
	if ep.Managed || ep.IfName != "net1" || addrOnly(ep.IP) != "10.26.0.100" {
		t.Errorf("attached endpoint: %+v", ep)
	}
	l, err := linkIn(t, path, "net1")
	if err != nil {
		t.Fatal(err)
	}
	if l.ipv4() != "10.26.0.100/24" || !strings.EqualFold(l.Address, ep.MAC) {
		t.Errorf("net1 in x1: %+v", l)
	}
	e.mustPing("c1", "10.26.0.100")
	if _, err := testbed.InNetns(context.Background(), path, "ping", "-c", "1", "-W", "2", e.ip("c1")); err != nil {
		t.Errorf("x1 -> c1: %v", err)
	}

	e.cli("detach", "x1")
	if e.hasEndpoint("x1") {
		t.Error("x1 still listed after detach")
	}
	if _, err := linkIn(t, path, "net1"); err == nil {
		t.Error("net1 still in x1 after detach")
	}
	if !testbed.NetnsExists(e.tb.NetnsName("x1")) {
		t.Error("detach removed a namespace vxmesh does not own")
	}
	e.mustNotPing("c1", "10.26.0.100")
	e.cliFails([]string{"x1"}, "detach", "x1")
}

// TestAttachKeepsOrRestoresTheDefaultRoute: attaching a namespace that
// already has a default route (another runtime's network) keeps it and
// succeeds, and a detach of the network holding a container's default
// route gives it to the container's remaining network (as Docker does),
// which keeps it when the first network is attached again.
func TestAttachKeepsOrRestoresTheDefaultRoute(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.33.0.0/24")
	e.network("db", "10.34.0.0/24")
	defaultRoute := func(path string) string {
		t.Helper()
		out, err := testbed.InNetns(context.Background(), path, "ip", "-4", "route", "show", "default")
		if err != nil {
			t.Fatalf("ip route in %s: %v: %s", path, err, out)
		}
		return strings.TrimSpace(out)
	}

	// Another runtime's network: a veth with its own default route.
	other, err := e.tb.AddNetns("dr1")
	if err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{
		{"ip", "link", "add", "ext0", "type", "veth", "peer", "name", "ext1"},
		{"ip", "link", "set", "ext0", "up"},
		{"ip", "addr", "add", "192.168.77.2/24", "dev", "ext0"},
		{"ip", "route", "add", "default", "via", "192.168.77.1"},
	} {
		if out, err := testbed.InNetns(context.Background(), other, argv...); err != nil {
			t.Fatalf("%v: %v: %s", argv, err, out)
		}
	}
	e.cli("attach", "--network", "web", "--name", "dr1", "--netns", other)
	if got := defaultRoute(other); !strings.HasPrefix(got, "default via 192.168.77.1 dev ext0") {
		t.Errorf("default route after attaching a namespace that had one: %q", got)
	}

	// Detach the network holding the default route, then attach it again.
	path, err := e.tb.AddNetns("dr2")
	if err != nil {
		t.Fatal(err)
	}
	e.cli("attach", "--network", "web", "--name", "dr2", "--netns", path)
	e.cli("attach", "--network", "db", "--name", "dr2", "--netns", path)
	if got := defaultRoute(path); !strings.HasPrefix(got, "default via 10.33.0.1 dev eth0") {
		t.Fatalf("default route with web and db: %q", got)
	}
	e.cli("detach", "--network", "web", "dr2")
	if got := defaultRoute(path); !strings.HasPrefix(got, "default via 10.34.0.1 dev eth1") {
		t.Fatalf("default route after web's detach: %q, want via db's gateway 10.34.0.1", got)
	}
	e.cli("attach", "--network", "web", "--name", "dr2", "--netns", path)
	if got := defaultRoute(path); !strings.HasPrefix(got, "default via 10.34.0.1 dev eth1") {
		t.Errorf("default route after web attached again: %q, want it kept via 10.34.0.1", got)
	}
}

func TestAttachByPID(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.27.0.0/24")
	e.run("c1", "web")
	// A process in its own unnamed network namespace, like a container
	// started by another runtime.
	proc := startBackground(t, exec.Command("unshare", "--net", "sleep", "300"))
	pid := proc.cmd.Process.Pid
	self, _ := netnsID(os.Getpid())
	eventually(t, 5*time.Second, func() error {
		if id, err := netnsID(pid); err != nil || id == self {
			return fmt.Errorf("not yet in its own netns: %v", err)
		}
		return nil
	}, "unshare --net")

	e.cli("attach", "--network", "web", "--name", "p1", "--pid", strconv.Itoa(pid))
	nsPath := fmt.Sprintf("/proc/%d/ns/net", pid)
	l, err := linkIn(t, nsPath, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	p1 := e.endpoint("p1")
	if l.ipv4() != p1.IP && l.ipv4() != p1.IP+"/24" {
		t.Errorf("eth0 in pid %d has %q, endpoint says %q", pid, l.ipv4(), p1.IP)
	}
	e.mustPing("c1", addrOnly(p1.IP))
	e.cliFails([]string{"999999"}, "attach", "--network", "web", "--name", "p2", "--pid", "999999")
	if e.hasEndpoint("p2") {
		t.Error("failed attach --pid left an endpoint")
	}
}

func TestAttachDockerWithoutEngineFailsClearly(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.28.0.0/24")
	links, _ := e.h.Links()
	e.cliFails([]string{"docker"}, "attach", "--network", "web", "--name", "d1", "--docker", "d1")
	if e.hasEndpoint("d1") {
		t.Error("failed attach --docker left an endpoint")
	}
	if after, _ := e.h.Links(); !slices.Equal(after, links) {
		t.Errorf("host links changed: %v -> %v", links, after)
	}
}

func TestRmAndNetworkRm(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.29.0.0/24")
	e.run("c1", "web")
	ctr, _ := e.container("c1")
	e.cliFails([]string{"web", "endpoint"}, "network", "rm", "web")
	if got := e.networkNames(); !slices.Equal(got, []string{"web"}) {
		t.Errorf("network ls after refused rm: %v", got)
	}
	e.cli("rm", "c1")
	if _, ok := e.container("c1"); ok || e.hasEndpoint("c1") {
		t.Error("c1 still listed after rm")
	}
	if testbed.NetnsExists(e.h.ContainerNetns("c1")) {
		t.Error("c1's netns still exists after rm")
	}
	for _, pid := range ctr.PIDs {
		eventually(t, 5*time.Second, func() error {
			if alive(pid) {
				return fmt.Errorf("pid %d alive", pid)
			}
			return nil
		}, "c1's process after rm")
	}
	e.cliFails([]string{"c1"}, "rm", "c1")
	e.cli("network", "rm", "web")
	if got := e.networkNames(); len(got) != 0 {
		t.Errorf("network ls after rm: %v", got)
	}
	e.cliFails([]string{"web"}, "network", "rm", "web")
	// Nothing of the network's switch is left in the host namespace (the
	// daemon's kernel tunnel TAP is the daemon's, not the network's).
	links, _ := e.h.Links()
	links = slices.DeleteFunc(links, func(l string) bool { return l == "vxmesh-tnl" })
	if !slices.Equal(links, []string{"lo", "eth0"}) {
		t.Errorf("host links after removing everything: %v", links)
	}
}

func TestResolvConfInsideContainers(t *testing.T) {
	e := newEnv(t)
	hostResolv, _ := os.ReadFile("/etc/resolv.conf")
	e.network("web", "10.32.0.0/24")
	e.run("c1", "web")
	out := e.cli("exec", "c1", "--", "cat", "/etc/resolv.conf")
	if !strings.Contains(out, "nameserver 127.0.0.11") {
		t.Errorf("resolv.conf in exec: %q", out)
	}
	if now, _ := os.ReadFile("/etc/resolv.conf"); string(now) != string(hostResolv) {
		t.Error("the machine's /etc/resolv.conf changed")
	}
	out = e.cli("run", "--net", "container:c1", "--", "cat", "/etc/resolv.conf")
	if !strings.Contains(out, "nameserver 127.0.0.11") {
		t.Errorf("resolv.conf in run --net container: %q", out)
	}
}

func TestDemo(t *testing.T) {
	skipUnlessReady(t)
	testenv.RequireCommand(t, "iperf3", "iperf3")
	before, _ := testbed.ListNetns("vxdemo")
	demo := startDemo(t)
	exited, err := demo.wait(2 * time.Minute)
	out := demo.output()
	if !exited || err != nil {
		t.Fatalf("vxmesh demo: exited %v, %v\n%s", exited, err, out)
	}
	for _, want := range []string{"h1$ vxmesh node ls", "h3", "alive", "h1$ vxmesh network create", "h2$ vxmesh run -d", "h3$ vxmesh run -d",
		"$ vxmesh ps", "ping", "0% packet loss", "Gbit/s", "h1$ vxmesh service create web", "c1 -> web (VIP", "$ vxmesh service ps web", "--publish published=8080,target=5201", "outside$ iperf3 -c", "the outside client's own address", "$ vxmesh network inspect", "$ vxmesh stats", "$ vxmesh fdb", "remote", "nothing left behind"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if after, _ := testbed.ListNetns("vxdemo"); len(after) > len(before) {
		t.Errorf("demo left namespaces: %v", after)
	}
}

func TestDemoInterruptedCleansUp(t *testing.T) {
	skipUnlessReady(t)
	testenv.RequireCommand(t, "iperf3", "iperf3")
	before, _ := testbed.ListNetns("vxdemo")
	demo := startDemo(t)
	// Interrupt once the containers exist.
	eventually(t, 60*time.Second, func() error {
		if !strings.Contains(demo.output(), "Ping across hosts") {
			return fmt.Errorf("not there yet")
		}
		return nil
	}, "demo reaching the ping step")
	_ = demo.cmd.Process.Signal(os.Interrupt)
	exited, err := demo.wait(30 * time.Second)
	if !exited {
		t.Fatalf("demo did not stop after SIGINT:\n%s", demo.output())
	}
	if err == nil {
		t.Errorf("interrupted demo exited 0")
	}
	if after, _ := testbed.ListNetns("vxdemo"); len(after) > len(before) {
		t.Errorf("interrupted demo left namespaces: %v\n%s", after, demo.output())
	}
}

// demoProc is `vxmesh demo` running in the background.
type demoProc struct {
	*bgProc
	outPath string
}

// startDemo starts `vxmesh demo` writing to a file (a pipe would kill it
// with SIGPIPE if we died first) and interrupts it, so it cleans up, if
// this test process dies.
func startDemo(t *testing.T) demoProc {
	t.Helper()
	path := filepath.Join(t.TempDir(), "demo.out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(suite.bin, "demo")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGINT}
	p := startBackground(t, cmd)
	// Runs before startBackground's SIGKILL: let the demo clean up.
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_, _ = p.wait(30 * time.Second)
	})
	return demoProc{bgProc: p, outPath: path}
}

func (d demoProc) output() string {
	b, _ := os.ReadFile(d.outPath)
	return string(b)
}
