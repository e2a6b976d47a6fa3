package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// ipOn returns container name's address on network (fatal if missing).
func (e *env) ipOn(name, network string) string {
	e.t.Helper()
	for _, ep := range e.endpoints() {
		if ep.Name == name && ep.Network == network {
			return addrOnly(ep.IP)
		}
	}
	e.t.Fatalf("endpoint ls has no %q on %q", name, network)
	return ""
}

func TestContainerOnTwoNetworks(t *testing.T) {
	e := newEnv(t)
	e.network("a", "10.61.0.0/24")
	e.network("b", "10.62.0.0/24")
	e.run("pa", "a")
	e.run("pb", "b")
	e.cli("run", "-d", "--network", "a", "--network", "b", "--name", "c", "--", "sleep", "infinity")
	ctr, ok := e.container("c")
	if !ok || len(ctr.Endpoints) != 2 || ctr.Endpoints[0].IfName != "eth0" || ctr.Endpoints[0].Network != "a" ||
		ctr.Endpoints[1].IfName != "eth1" || ctr.Endpoints[1].Network != "b" {
		t.Fatalf("ps c: %+v, want eth0 on a and eth1 on b", ctr)
	}
	if gw := defaultGateway(t, e.h.ContainerNetnsPath("c")); gw != "10.61.0.1" {
		t.Errorf("c's default route via %q, want a's gateway 10.61.0.1", gw)
	}
	e.mustPing("c", e.ip("pa"))
	e.mustPing("c", e.ip("pb"))
	e.mustPing("pb", e.ipOn("c", "b"))

	// attach adds a second network to a namespace that has one.
	path, err := e.tb.AddNetns("x")
	if err != nil {
		t.Fatal(err)
	}
	e.cli("attach", "--network", "b", "--name", "x", "--netns", path)
	e.cli("attach", "--network", "a", "--name", "x", "--netns", path)
	if gw := defaultGateway(t, path); gw != "10.62.0.1" {
		t.Errorf("x's default route via %q, want its first network's gateway 10.62.0.1", gw)
	}
	for _, peer := range []string{e.ip("pa"), e.ip("pb")} {
		eventually(t, 15*time.Second, func() error {
			_, err := testbed.InNetns(context.Background(), path, "ping", "-c", "1", "-W", "1", peer)
			return err
		}, "x cannot ping %s", peer)
	}

	// A later network that cannot be attached takes the container away.
	e.cliFails([]string{"nosuch"}, "run", "-d", "--network", "a", "--network", "nosuch", "--name", "d", "--", "sleep", "infinity")
	if _, ok := e.container("d"); ok || testbed.NetnsExists(e.h.ContainerNetns("d")) {
		t.Error("a run with a missing second network left container d behind")
	}
}

// netnsIno returns the inode that identifies the namespace at path.
func netnsIno(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// pidIno returns the inode of pid's network namespace (0 if it is gone).
func pidIno(pid int) uint64 {
	var st syscall.Stat_t
	if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) != nil {
		return 0
	}
	return st.Ino
}

func TestRmOfGoneNamespaceTouchesNothing(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.63.0.0/24")
	e.run("c1", "web")
	old, _ := e.container("c1")
	if len(old.PIDs) == 0 {
		t.Fatalf("ps c1: no processes: %+v", old)
	}
	t.Cleanup(func() {
		for _, pid := range old.PIDs {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	// The name goes and comes back for another namespace with a process.
	name := e.h.ContainerNetns("c1")
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del: %v: %s", err, out)
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	ns := e.h.ContainerNetnsPath("c1")
	ino := netnsIno(t, ns)
	other := exec.Command("ip", "netns", "exec", name, "sleep", "infinity")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Process.Kill(); other.Wait() })
	eventually(t, 5*time.Second, func() error {
		if pidIno(other.Process.Pid) != ino {
			return fmt.Errorf("process %d not in the new namespace yet", other.Process.Pid)
		}
		return nil
	}, "starting a process in the new %s", name)

	for _, restart := range []bool{false, true} {
		if restart {
			if err := e.h.StopDaemon(); err != nil {
				t.Fatal(err)
			}
			if err := e.h.StartDaemon(); err != nil {
				t.Fatal(err)
			}
		}
		c, ok := e.container("c1")
		if !ok || c.State != api.ContainerGone || len(c.PIDs) != 0 {
			t.Errorf("ps c1 (restarted %v): %+v, want state gone and no pids", restart, c)
		}
	}
	e.cli("rm", "c1")
	if _, ok := e.container("c1"); ok {
		t.Error("rm c1 left it in ps")
	}
	if !testbed.NetnsExists(name) || netnsIno(t, ns) != ino {
		t.Errorf("rm c1 deleted or replaced the new namespace %s", name)
	}
	if !alive(other.Process.Pid) || pidIno(other.Process.Pid) != ino {
		t.Errorf("rm c1 killed the new namespace's process %d", other.Process.Pid)
	}
	if l, err := testbed.Links(name); err != nil || !slices.Equal(l, []string{"lo"}) {
		t.Errorf("links of the new namespace after rm: %v, %v", l, err)
	}
	if _, err := os.Stat(ns); err != nil {
		t.Error(err)
	}
}

// logHas reports whether the daemon's log contains s.
func (e *env) logHas(s string) bool {
	b, err := os.ReadFile(e.h.LogFile)
	return err == nil && strings.Contains(string(b), s)
}

func TestDaemonSurvivesSIGHUPAndLogsStopSignal(t *testing.T) {
	e := newEnv(t)
	if err := e.h.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		if !e.h.Running() {
			return errors.New("the daemon died of SIGHUP")
		}
		if !e.logHas("SIGHUP ignored") {
			return errors.New("no \"SIGHUP ignored\" in the log")
		}
		return nil
	}, "after SIGHUP")
	e.network("web", "10.64.0.0/24")
	if err := e.h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if !e.logHas("stopping on signal") || !e.logHas("signal=SIGTERM") {
		t.Errorf("the log does not say SIGTERM stopped the daemon:\n%s", e.h.LogTail(10))
	}
}

// TestDaemonStartSweepsOrphans: what a daemon killed in the middle of
// `run` leaves without a record (a namespace with its prefix, a half-made
// TAP in its own namespace) is removed at the next start; the namespaces
// of its containers are kept.
func TestDaemonStartSweepsOrphans(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.65.0.0/24")
	e.run("c1", "web")
	if err := e.h.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	orphan := e.h.ContainerNetns("orphan")
	tap := "vxp0123456789ab"
	for _, args := range [][]string{
		{"netns", "add", orphan},
		{"-n", e.h.Netns, "tuntap", "add", "dev", tap, "mode", "tap"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	if err := e.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	if testbed.NetnsExists(orphan) {
		t.Errorf("the orphan namespace %s survived the daemon's start", orphan)
	}
	if links, err := e.h.Links(); err != nil || slices.Contains(links, tap) {
		t.Errorf("the orphan TAP %s survived the daemon's start: %v %v", tap, links, err)
	}
	if !testbed.NetnsExists(e.h.ContainerNetns("c1")) {
		t.Fatal("the sweep deleted c1's namespace")
	}
	if c, ok := e.container("c1"); !ok || c.State != api.ContainerUp || len(c.PIDs) == 0 {
		t.Errorf("ps c1 after the sweep: %+v", c)
	}
}

func TestSecondDaemonOnBusySocketRefused(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.66.0.0/24")
	dir := t.TempDir()
	args := []string{"nsenter", "--net=" + e.h.NetnsPath, "--", suite.bin, "daemon",
		"--node", "h1b", "--socket", e.h.Socket, "--state-dir", dir, "--netns-prefix", e.h.ContainerPrefix + "b-",
		"--advertise", e.h.Addr, "--gossip-port", "17946", "--data-port", "14789", "--esp-port", "14500"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
		t.Fatalf("second daemon on a busy socket: %v, want a failure exit status; output:\n%s", err, out)
	}
	want := "socket " + e.h.Socket + ": another daemon is listening on it"
	if !strings.Contains(string(out), want) || strings.Contains(string(out), "node started") {
		t.Errorf("second daemon's output, want only the refusal %q:\n%s", want, out)
	}
	if !e.h.Running() || !slices.Equal(e.networkNames(), []string{"web"}) {
		t.Error("the first daemon stopped working")
	}
}

func TestAttachDaemonOwnNetnsRefused(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.67.0.0/24")
	links, err := e.h.Links()
	if err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(e.h.DaemonPID())
	e.cliFails([]string{"own network namespace"}, "attach", "--network", "web", "--name", "x", "--netns", e.h.NetnsPath)
	e.cliFails([]string{"own network namespace"}, "attach", "--network", "web", "--name", "x", "--pid", pid)
	e.cliFails([]string{"own network namespace"}, "attach", "--network", "web", "--name", "x", "--pid", pid, "--ifname", "vx9")
	if after, err := e.h.Links(); err != nil || !slices.Equal(after, links) {
		t.Errorf("host links changed by refused attaches: %v -> %v (%v)", links, after, err)
	}
	if _, ok := e.container("x"); ok {
		t.Error("a refused attach left container x")
	}
}
