package daemon

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// TestRestartPolicyDecisions: Docker's rules, without a daemon. The
// delays double from 100 ms up to a minute and start over after a run of
// 10 s; on-failure restarts non-zero exits up to its maximum; no never
// restarts; at the daemon's start always starts even a container stopped
// by hand, unless-stopped not, on-failure only a restart it had decided.
func TestRestartPolicyDecisions(t *testing.T) {
	always := api.RestartPolicy{Name: api.RestartAlways}
	var r restarts
	var delays []time.Duration
	for range 12 {
		ok, d := r.next(always, 0, time.Second)
		if !ok {
			t.Fatal("always: no restart")
		}
		delays = append(delays, d)
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(delays, want) {
		t.Errorf("delays %v, want %v", delays, want)
	}
	if r.count != 12 {
		t.Errorf("count %d, want 12", r.count)
	}
	// A run of 10 s starts the delays over; 9.9 s does not.
	if _, d := r.next(always, 1, 10*time.Second); d != firstRestartDelay {
		t.Errorf("after a 10 s run: delay %v, want %v", d, firstRestartDelay)
	}
	if _, d := r.next(always, 1, 9900*time.Millisecond); d != 2*firstRestartDelay {
		t.Errorf("after a 9.9 s run: delay %v, want %v", d, 2*firstRestartDelay)
	}

	onFailure2 := api.RestartPolicy{Name: api.RestartOnFailure, MaxRetries: 2}
	r = restarts{}
	if ok, _ := r.next(onFailure2, 0, 0); ok {
		t.Error("on-failure: restarted after exit 0")
	}
	for i := range 2 {
		if ok, _ := r.next(onFailure2, 1, 0); !ok {
			t.Fatalf("on-failure:2: no restart %d", i+1)
		}
	}
	if ok, _ := r.next(onFailure2, 1, 0); ok || r.count != 2 {
		t.Errorf("on-failure:2: a third restart (count %d)", r.count)
	}
	unbounded := api.RestartPolicy{Name: api.RestartOnFailure}
	r = restarts{count: 1000}
	if ok, _ := r.next(unbounded, 3, 0); !ok {
		t.Error("on-failure without a maximum: stopped restarting")
	}
	r = restarts{}
	if ok, _ := r.next(api.RestartPolicy{Name: api.RestartNo}, 1, 0); ok {
		t.Error("no: restarted")
	}

	for _, c := range []struct {
		p           string
		due, manual bool
		want        bool
	}{
		{"always", false, true, true}, {"unless-stopped", false, true, false}, {"unless-stopped", false, false, true},
		{"on-failure", true, false, true}, {"on-failure", false, false, false}, {"no", true, false, false},
	} {
		p, err := api.ParseRestartPolicy(c.p)
		if err != nil {
			t.Fatal(err)
		}
		if got := startsAtDaemonStart(p, c.due, c.manual); got != c.want {
			t.Errorf("%s, due %v, stopped by hand %v: starts at the daemon's start %v, want %v", c.p, c.due, c.manual, got, c.want)
		}
	}
}

// TestParseRestartPolicy: Docker's forms, and clear refusals.
func TestParseRestartPolicy(t *testing.T) {
	for in, want := range map[string]string{"": "no", "no": "no", "always": "always", "unless-stopped": "unless-stopped",
		"on-failure": "on-failure", "on-failure:3": "on-failure:3", "on-failure:0": "on-failure"} {
		p, err := api.ParseRestartPolicy(in)
		if err != nil || p.String() != want {
			t.Errorf("%q: %v, %v; want %s", in, p, err, want)
		}
	}
	for _, in := range []string{"sometimes", "always:3", "on-failure:-1", "on-failure:x", "no:1", "on-failure:99999999999"} {
		if _, err := api.ParseRestartPolicy(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// lifecycleHost is a daemon with network web and service api whose
// StartMain is a fake monitor: it gives the process a PID in the
// container's namespace and reports its start; its clock is clock.
type lifecycleHost struct {
	t       *testing.T
	d       *Daemon
	sb      *fakeSandbox
	dir     string
	clock   atomic.Int64 // Unix ns
	mu      sync.Mutex
	starts  []string // containers StartMain started, in order
	nextPID int
}

func newLifecycleHost(t *testing.T) *lifecycleHost {
	h := &lifecycleHost{t: t, sb: newFakeSandbox(), dir: t.TempDir(), nextPID: 1000}
	h.clock.Store(time.Unix(1_000_000, 0).UnixNano())
	h.start()
	if _, err := h.d.CreateNetwork(api.NetworkCreateRequest{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	mustCreateService(t, h.d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}})
	return h
}

// start starts (or starts again) the daemon on h's state directory.
func (h *lifecycleHost) start() {
	cfg := nodeConfig(h.t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), h.sb, h.dir)
	cfg.now = func() time.Time { return time.Unix(0, h.clock.Load()) }
	var d atomic.Pointer[Daemon]
	cfg.StartMain = func(ms MainStart) error {
		h.mu.Lock()
		h.nextPID++
		pid := h.nextPID
		h.starts = append(h.starts, ms.Container)
		h.mu.Unlock()
		if len(ms.Command.Argv) == 0 || ms.Netns == "" {
			h.t.Errorf("StartMain %+v: no command or namespace", ms)
		}
		h.sb.setPIDs(ms.Netns, pid)
		for d.Load() == nil { // a start at the daemon's start: New has not returned
			time.Sleep(time.Millisecond)
		}
		return d.Load().SetMainProcess(ms.Container, api.MainProcess{PID: pid})
	}
	d.Store(startNode(h.t, cfg))
	h.d = d.Load()
}

// started is how many times StartMain started name.
func (h *lifecycleHost) started(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, s := range h.starts {
		if s == name {
			n++
		}
	}
	return n
}

// run makes container name as run does with policy, and reports its
// main process started.
func (h *lifecycleHost) run(name, policy string) api.Endpoint {
	h.t.Helper()
	ep := mustAttach(h.t, h.d, api.AttachRequest{Network: "web", Name: name, Create: true, Services: []api.ServiceMember{{Name: "api"}},
		Command: &api.Command{Argv: []string{"server", "--port", "80"}, Env: []string{"A=1"}, Dir: "/"}, Restart: policy})
	h.mu.Lock()
	h.nextPID++
	pid := h.nextPID
	h.mu.Unlock()
	h.sb.setPIDs(ep.Netns, pid)
	if err := h.d.SetMainProcess(name, api.MainProcess{PID: pid}); err != nil {
		h.t.Fatal(err)
	}
	return ep
}

// launched reports whether name runs and the daemon's start of it has
// returned: an exit before that (a process that dies at once) is shown
// "restarting" until the start returns.
func (h *lifecycleHost) launched(name string) bool {
	h.t.Helper()
	if status(h.t, h.d, name).Status != api.StatusRunning {
		return false
	}
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	return !h.d.containers[name].starting
}

// exit makes name's main process exit with code, leaving no process.
func (h *lifecycleHost) exit(name string, code int) {
	h.t.Helper()
	c := status(h.t, h.d, name)
	if len(c.PIDs) != 1 {
		h.t.Fatalf("exit of %s: processes %v, want its main one", name, c.PIDs)
	}
	h.sb.setPIDs(c.Netns)
	if err := h.d.SetMainProcess(name, api.MainProcess{PID: c.PIDs[0], ExitStatus: &code}); err != nil {
		h.t.Fatal(err)
	}
}

// TestRestartPolicyRestartsOnFailureUpToItsMaximum: on-failure:2 starts a
// container whose main process exits 1 again twice, each time a backend
// again after a moment shown "restarting" and withdrawn, then leaves it
// exited 1 with 2 restarts; `start` starts it and counts from 0 again.
// A run of 10 s (the injected clock) starts the delays over.
func TestRestartPolicyRestartsOnFailureUpToItsMaximum(t *testing.T) {
	h := newLifecycleHost(t)
	ep := h.run("c1", "on-failure:2")
	for i := 1; i <= 2; i++ {
		h.exit("c1", 1)
		if c := status(t, h.d, "c1"); c.Status != api.StatusRestarting || c.RestartCount != i || c.Restart != "on-failure:2" {
			t.Errorf("exit %d: ps %s restarts %d policy %s, want restarting, %d, on-failure:2", i, c.Status, c.RestartCount, c.Restart, i)
		}
		if got := backendIPs(h.d, "web"); len(got) != 0 {
			t.Errorf("exit %d: restarting, yet balanced to: %v", i, got)
		}
		waitFor(t, "the policy's start", func() bool { return h.started("c1") == i && h.launched("c1") })
		waitFor(t, "c1 a backend again", func() bool { return slices.Equal(backendIPs(h.d, "web"), []string{ep.IP}) })
		if c := status(t, h.d, "c1"); c.Status != api.StatusRunning {
			t.Errorf("after restart %d: ps %q, want running", i, c.Status)
		}
	}
	h.exit("c1", 1)
	if c := status(t, h.d, "c1"); c.Status != "exited 1" || c.RestartCount != 2 {
		t.Errorf("after the maximum: ps %q restarts %d, want exited 1 and 2", c.Status, c.RestartCount)
	}
	if err := h.d.StartContainer("c1"); err != nil {
		t.Fatal(err)
	}
	if c := status(t, h.d, "c1"); c.Status != api.StatusRunning || c.RestartCount != 0 || h.started("c1") != 3 {
		t.Errorf("after start: ps %q restarts %d (%d starts), want running and 0", c.Status, c.RestartCount, h.started("c1"))
	}
	if got := backendIPs(h.d, "web"); !slices.Equal(got, []string{ep.IP}) {
		t.Errorf("after start: balancing to %v, want c1", got)
	}

	// A run of 10 s (by the daemon's clock) starts the delays over: the
	// second restart waits 100 ms again, not 200.
	delay := func() time.Duration {
		h.d.mu.Lock()
		defer h.d.mu.Unlock()
		return h.d.containers["c1"].restarts.delay
	}
	h.exit("c1", 1)
	waitFor(t, "the first restart", func() bool { return h.launched("c1") })
	h.clock.Add(int64(10 * time.Second))
	h.exit("c1", 1)
	if c := status(t, h.d, "c1"); c.Status != api.StatusRestarting || c.RestartCount != 2 {
		t.Errorf("after a 10 s run: ps %q restarts %d, want restarting and 2", c.Status, c.RestartCount)
	}
	if got := delay(); got != firstRestartDelay {
		t.Errorf("after a 10 s run: delay %v, want %v", got, firstRestartDelay)
	}
}

// TestStoppedContainerIsNotRestartedByItsPolicy: `stop` of an always
// container ends its processes and leaves it exited, withdrawn and not
// restarted; a stop whose exit is never reported (its monitor gone)
// leaves the container "stopped". After a daemon restart the always
// container starts again, the unless-stopped one does not. An attached
// namespace and an unknown name are refused.
func TestStoppedContainerIsNotRestartedByItsPolicy(t *testing.T) {
	h := newLifecycleHost(t)
	a := h.run("a", "always")
	h.run("u", "unless-stopped")

	// a: its monitor reports the exit the kill caused.
	pid := status(t, h.d, "a").PIDs[0]
	stopped := make(chan error, 1)
	go func() { stopped <- h.d.StopContainer("a", api.StopRequest{}) }()
	waitFor(t, "the kill of a's processes", func() bool {
		h.sb.mu.Lock()
		defer h.sb.mu.Unlock()
		return slices.Contains(h.sb.killed, h.sb.ns[a.Netns])
	})
	sigterm := 143
	if err := h.d.SetMainProcess("a", api.MainProcess{PID: pid, ExitStatus: &sigterm}); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("stop a: %v", err)
	}
	// u: nothing reports its exit.
	zero := 0
	if err := h.d.StopContainer("u", api.StopRequest{Timeout: &zero}); err != nil {
		t.Fatalf("stop u: %v", err)
	}
	check := func(when string) {
		t.Helper()
		if c := status(t, h.d, "a"); c.Status != "exited 143" {
			t.Errorf("%s: ps a %q, want exited 143", when, c.Status)
		}
		if c := status(t, h.d, "u"); c.Status != api.StatusStopped {
			t.Errorf("%s: ps u %q, want %s", when, c.Status, api.StatusStopped)
		}
		if got := backendIPs(h.d, "web"); len(got) != 0 {
			t.Errorf("%s: balancing to %v, want nothing", when, got)
		}
	}
	check("after stop")
	// The policy would have started a after 100 ms.
	time.Sleep(10 * firstRestartDelay)
	check("a second after stop")
	if n := h.started("a") + h.started("u"); n != 0 {
		t.Errorf("stopped containers started %d times by their policy", n)
	}
	if err := h.d.StopContainer("a", api.StopRequest{}); err != nil {
		t.Errorf("stop of a stopped container: %v, want nothing done", err)
	}

	h.d.Close()
	h.start()
	waitFor(t, "a started again at the daemon's start", func() bool { return h.started("a") == 1 })
	waitFor(t, "a running", func() bool { return status(t, h.d, "a").Status == api.StatusRunning })
	if c := status(t, h.d, "u"); c.Status != api.StatusStopped || h.started("u") != 0 {
		t.Errorf("after the daemon's restart: ps u %q (%d starts), want still %s", c.Status, h.started("u"), api.StatusStopped)
	}
	if err := h.d.StartContainer("u"); err != nil {
		t.Fatal(err)
	}
	if c := status(t, h.d, "u"); c.Status != api.StatusRunning {
		t.Errorf("after start: ps u %q, want running", c.Status)
	}

	// A container whose main process's exit was never reported (up, no
	// process) is started too; a running one is left alone.
	up := h.run("up", "no")
	h.sb.setPIDs(up.Netns)
	if err := h.d.StartContainer("up"); err != nil || h.started("up") != 1 {
		t.Errorf("start of an up container with no process: %v, %d starts; want one", err, h.started("up"))
	}
	if err := h.d.StartContainer("up"); err != nil || h.started("up") != 1 {
		t.Errorf("start of a running container: %v, %d starts; want none more", err, h.started("up"))
	}

	h.sb.addNetns("/run/netns/ext")
	mustAttach(t, h.d, api.AttachRequest{Network: "web", Name: "ext", Netns: "/run/netns/ext"})
	for _, op := range []func(string) error{
		h.d.StartContainer,
		func(n string) error { return h.d.StopContainer(n, api.StopRequest{}) },
		func(n string) error { return h.d.RestartContainer(n, api.StopRequest{}) },
	} {
		if err := op("ext"); err == nil || !strings.Contains(err.Error(), "not made by run") {
			t.Errorf("an attached namespace: %v, want refused", err)
		}
		var nf notFoundError
		if err := op("nope"); !errors.As(err, &nf) {
			t.Errorf("an unknown container: %v, want not found", err)
		}
	}
}

// TestOldStateHasNoCommand: a container saved before commands and
// policies were (no such fields) loads with none: it cannot be started
// again, and says why.
func TestOldStateHasNoCommand(t *testing.T) {
	var sc savedContainer
	if err := json.Unmarshal([]byte(`{"name":"c1","netns":"/run/netns/c1","ns_dev":1,"ns_ino":2,"managed":true,"main_pid":7,"exit_status":0,"stopped":true,"endpoints":[]}`), &sc); err != nil {
		t.Fatal(err)
	}
	c := &container{name: sc.Name}
	if err := restoreLifecycle(c, sc); err != nil {
		t.Fatal(err)
	}
	if c.command != nil || c.policy.String() != "no" || c.restarts != (restarts{}) || c.manualStop {
		t.Errorf("old state: %+v", c)
	}
	d := &Daemon{cfg: Config{StartMain: func(MainStart) error { return nil }}}
	if err := d.startable(c); err == nil || !strings.Contains(err.Error(), "did not save its command") {
		t.Errorf("start of an old container: %v, want refused", err)
	}
}
