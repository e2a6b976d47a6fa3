package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRestartPolicyOnFailureRestartsTwiceThenStaysExited: a backend run
// with --restart on-failure:2 whose command exits 1 is started again
// twice by the daemon (with the command's working directory and
// environment as run had them), then stays exited 1, with 2 restarts in
// ps, and is no backend.
func TestRestartPolicyOnFailureRestartsTwiceThenStaysExited(t *testing.T) {
	es := newCluster(t, 1)
	h := es[0]
	h.network("web", "10.95.0.0/24")
	h.cli("service", "create", "api", "--network", "web")
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	// Each run appends its working directory and $VXMESH_SOCKET (the
	// CLI's environment) to runs.
	h.cli("run", "-d", "--restart", "on-failure:2", "--service", "api", "--network", "web", "--name", "flaky",
		"--", "sh", "-c", `echo "$(pwd) $VXMESH_SOCKET" >> `+runs+`; exit 1`)

	eventually(t, 15*time.Second, func() error {
		c, _ := h.container("flaky")
		if c.Status != "exited 1" || c.RestartCount != 2 {
			return fmt.Errorf("ps flaky: %s, %d restarts", c.Status, c.RestartCount)
		}
		return nil
	}, "flaky exited 1 after 2 restarts")
	// The delays are 100 and 200 ms: a third start would come well
	// within a second.
	time.Sleep(time.Second)
	c, _ := h.container("flaky")
	if c.Status != "exited 1" || c.RestartCount != 2 || c.Restart != "on-failure:2" {
		t.Errorf("a second later: ps flaky %s, %d restarts, policy %s; want exited 1, 2, on-failure:2", c.Status, c.RestartCount, c.Restart)
	}
	if got := psStatus(h, "flaky"); got != "exited 1 (restarts 2)" {
		t.Errorf("ps STATUS of flaky = %q, want exited 1 (restarts 2)", got)
	}
	b, err := os.ReadFile(runs)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	cwd, _ := os.Getwd()
	if len(lines) != 3 || lines[0] != cwd+" "+h.h.Socket || lines[1] != lines[0] || lines[2] != lines[0] {
		t.Errorf("runs of flaky: %q, want 3 runs in %s with VXMESH_SOCKET=%s", lines, cwd, h.h.Socket)
	}
	h.waitBackends("api")
}

// TestStopThenStartServesAgainEverywhere: stop withdraws a backend (its
// name stops resolving on the other host, the VIP reaches the other
// backend only); start runs its command again in the same namespace, with
// the same address: its name resolves again on the other host and it
// gets connections through the VIP again. restart does both.
func TestStopThenStartServesAgainEverywhere(t *testing.T) {
	es := twoHostsWithAPI(t, "10.96.0.0/24")
	h1, h2 := es[0], es[1]
	h1.runBackend("sb", "web", "--service", "api")
	ip := addrOnly(h1.endpoint("sb").IP)
	target := withB2AndClient(t, es, "sb")

	h1.cli("stop", "sb")
	took := h2.wantDig(10*time.Second, "client", "NXDOMAIN", nil, "sb")
	t.Logf("sb stopped resolving on h2 %v after stop returned", took.Round(10*time.Millisecond))
	for _, e := range es {
		e.waitBackends("api", "b2")
	}
	// The helper server dies of SIGTERM.
	if got := psStatus(h1, "sb"); got != "exited 143" {
		t.Errorf("ps STATUS of the stopped sb = %q, want exited 143", got)
	}

	start := time.Now()
	h1.cli("start", "sb")
	took = time.Since(start)
	if got := psStatus(h1, "sb"); got != "running" {
		t.Errorf("ps STATUS of the started sb = %q, want running", got)
	}
	took2 := h2.wantDig(10*time.Second, "client", "NOERROR", []string{ip}, "sb")
	t.Logf("start took %v; sb resolved on h2 %v after it returned", took.Round(time.Millisecond), took2.Round(10*time.Millisecond))
	for _, e := range es {
		e.waitBackends("api", "sb", "b2")
	}
	if r := h2.conns("client", target, 20, 2, 0); r.Counts["sb"] == 0 || r.Counts["b2"] == 0 || r.Errors+r.Resets != 0 {
		t.Errorf("20 connections to the VIP after start: %+v, want both sb and b2", r)
	}
	if got := addrOnly(h1.endpoint("sb").IP); got != ip {
		t.Errorf("sb's address after start: %s, want %s", got, ip)
	}

	pid := func() int {
		c, _ := h1.container("sb")
		if len(c.PIDs) == 0 {
			return 0
		}
		return c.PIDs[0]
	}
	before := pid()
	h1.cli("restart", "-t", "5", "sb")
	if after := pid(); after == 0 || after == before {
		t.Errorf("restart: processes %d then %d, want a new one", before, after)
	}
	for _, e := range es {
		e.waitBackends("api", "sb", "b2")
	}
}

// TestStopKillsWhatIgnoresSIGTERMAfterTheTimeout: stop -t 1 of a command
// that ignores SIGTERM kills it with SIGKILL after the second (not
// before it, and well before the default 10 s): exited 137; start runs
// it again and stop -t 0 kills it at once. An unknown name is refused.
func TestStopKillsWhatIgnoresSIGTERMAfterTheTimeout(t *testing.T) {
	es := newCluster(t, 1)
	h := es[0]
	h.network("web", "10.97.0.0/24")
	h.cli("run", "-d", "--network", "web", "--name", "stubborn", "--", "sh", "-c", `trap "" TERM; sleep 600`)
	eventually(t, 5*time.Second, func() error {
		if c, _ := h.container("stubborn"); len(c.PIDs) == 0 {
			return fmt.Errorf("processes %v", c.PIDs)
		}
		return nil
	}, "stubborn running")
	start := time.Now()
	h.cli("stop", "-t", "1", "stubborn")
	took := time.Since(start)
	t.Logf("stop -t 1 took %v", took.Round(time.Millisecond))
	if took < time.Second || took > 8*time.Second {
		t.Errorf("stop -t 1 took %v, want a second and some", took)
	}
	if got := psStatus(h, "stubborn"); got != "exited 137" {
		t.Errorf("ps STATUS = %q, want exited 137", got)
	}
	if c, _ := h.container("stubborn"); len(c.PIDs) != 0 {
		t.Errorf("processes left: %v", c.PIDs)
	}
	h.cli("start", "stubborn")
	if got := psStatus(h, "stubborn"); got != "running" {
		t.Errorf("after start: ps STATUS = %q, want running", got)
	}
	h.cli("stop", "-t", "0", "stubborn")
	if got := psStatus(h, "stubborn"); got != "exited 137" {
		t.Errorf("after stop -t 0: ps STATUS = %q, want exited 137", got)
	}
	h.cliFails([]string{strconv.Quote("nope"), "not found"}, "stop", "nope")
}

// TestRestartPolicyTakesAnExitMadeWhileTheDaemonWasDown: the main process
// of an on-failure:1 container exits 3 while its daemon is stopped; its
// monitor reports the exit once the daemon is back, whose policy then
// starts the command again once (it exits 3 at once), and the container
// stays exited 3 with 1 restart.
func TestRestartPolicyTakesAnExitMadeWhileTheDaemonWasDown(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.98.0.0/24")
	dir := t.TempDir()
	gate, runs := filepath.Join(dir, "gate"), filepath.Join(dir, "runs")
	e.cli("run", "-d", "--restart", "on-failure:1", "--network", "web", "--name", "gated",
		"--", "sh", "-c", "echo run >> "+runs+"; while [ ! -e "+gate+" ]; do sleep 0.05; done; exit 3")
	lines := func() int {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), "\n")
	}
	eventually(t, 5*time.Second, func() error {
		if n := lines(); n != 1 {
			return fmt.Errorf("%d runs", n)
		}
		return nil
	}, "gated's first run")
	c, _ := e.container("gated")
	if len(c.PIDs) == 0 {
		t.Fatalf("ps gated: %+v, want its process", c)
	}
	if err := e.h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		for _, pid := range c.PIDs {
			if alive(pid) {
				return fmt.Errorf("process %d alive", pid)
			}
		}
		return nil
	}, "gated's exit while the daemon is down")
	if err := e.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() error {
		c, _ := e.container("gated")
		if c.Status != "exited 3" || c.RestartCount != 1 || lines() != 2 {
			return fmt.Errorf("ps gated: %s, %d restarts; %d runs", c.Status, c.RestartCount, lines())
		}
		return nil
	}, "gated restarted once by its policy, then exited 3")
}
