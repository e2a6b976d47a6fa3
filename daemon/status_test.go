package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// setPIDs sets the processes of the namespace at path.
func (f *fakeSandbox) setPIDs(path string, pids ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pids[f.ns[path]] = pids
}

func status(t *testing.T, d *Daemon, name string) api.Container {
	t.Helper()
	c, err := d.Container(name)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestContainerStatusFromMainProcess: ps's STATUS is running while
// processes are in the namespace, "exited N" once the main process a
// monitor reported exited with N and none is left (until one is reported
// started again), gone with the namespace; reports that do not fit
// change nothing.
func TestContainerStatusFromMainProcess(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	if c := status(t, d, "c1"); c.Status != api.StatusUp || c.ExitStatus != nil {
		t.Fatalf("no process, nothing reported: %+v, want up", c)
	}
	sb.setPIDs(ep.Netns, 4242)
	if err := d.SetMainProcess("c1", api.MainProcess{PID: 4242}); err != nil {
		t.Fatal(err)
	}
	if c := status(t, d, "c1"); c.Status != api.StatusRunning {
		t.Fatalf("with a process: %+v, want running", c)
	}
	three, bad := 3, 256
	for _, tc := range []struct {
		name string
		p    api.MainProcess
		want string
	}{
		{"c1", api.MainProcess{PID: 999, ExitStatus: &three}, "not its main process"},
		{"c1", api.MainProcess{PID: 4242, ExitStatus: &bad}, "out of range 0-255"},
		{"c1", api.MainProcess{PID: 0}, "want a positive PID"},
		{"nosuch", api.MainProcess{PID: 4242, ExitStatus: &three}, `container "nosuch": not found`},
	} {
		if err := d.SetMainProcess(tc.name, tc.p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SetMainProcess(%s, %+v) = %v, want %q", tc.name, tc.p, err, tc.want)
		}
	}
	sb.setPIDs(ep.Netns)
	if c := status(t, d, "c1"); c.Status != api.StatusUp || c.ExitStatus != nil {
		t.Fatalf("after refused reports: %+v, want up and no exit status", c)
	}
	if err := d.SetMainProcess("c1", api.MainProcess{PID: 4242, ExitStatus: &three}); err != nil {
		t.Fatal(err)
	}
	if c := status(t, d, "c1"); c.Status != "exited 3" || c.ExitStatus == nil || *c.ExitStatus != 3 {
		t.Fatalf("after the exit: %+v, want exited 3", c)
	}
	// Stopped (exited.go): a process entering the namespace some other
	// way (exec refuses) does not make it running; a main process
	// reported started does.
	sb.setPIDs(ep.Netns, 5000)
	if c := status(t, d, "c1"); c.Status != "exited 3" {
		t.Fatalf("a process in the stopped container's namespace: %+v, want exited 3", c)
	}
	if err := d.SetMainProcess("c1", api.MainProcess{PID: 5000}); err != nil {
		t.Fatal(err)
	}
	if c := status(t, d, "c1"); c.Status != api.StatusRunning {
		t.Fatalf("started again: %+v, want running", c)
	}
	sb.DeleteNamedNetns("c1")
	if c := status(t, d, "c1"); c.Status != api.StatusGone {
		t.Fatalf("namespace deleted: %+v, want gone", c)
	}

	path := filepath.Join(t.TempDir(), "x1")
	sb.addNetns(path)
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "x1", Netns: path})
	if err := d.SetMainProcess("x1", api.MainProcess{PID: 7}); err == nil || !strings.Contains(err.Error(), "not made by run") {
		t.Errorf("main process of an attached namespace: %v, want refused", err)
	}
}

// TestReadyWhenAPIServes: Config.Ready (systemd's READY=1) is called once,
// when the API already answers.
func TestReadyWhenAPIServes(t *testing.T) {
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), newFakeSandbox(), t.TempDir())
	cfg.Socket = filepath.Join(t.TempDir(), "vxmesh.sock")
	answered := make(chan error, 2)
	cfg.Ready = func() {
		_, err := api.NewClient(cfg.Socket).Networks()
		answered <- err
	}
	d := startNode(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(ctx) }()
	select {
	case err := <-answered:
		if err != nil {
			t.Fatalf("Ready called before the API answers: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Ready not called")
	}
	cancel()
	if err := <-served; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if len(answered) != 0 {
		t.Fatal("Ready called twice")
	}
}

// TestContainersScanProcessesOnce: ps lists the processes of every
// container with one scan of the processes, not one per container, opens
// no namespace, and still shows each container only the processes of its
// own namespace.
func TestContainersScanProcessesOnce(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	for i, name := range []string{"c1", "c2", "c3"} {
		ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: name, Create: true})
		sb.setPIDs(ep.Netns, 100+i)
	}
	// c3's name now names another namespace: it is gone, with no
	// processes, neither its old ones nor the new namespace's.
	sb.replaceNetns("/run/netns/c3", 999)
	sb.mu.Lock()
	sb.scans, sb.pins = 0, 0
	sb.mu.Unlock()
	cs := d.Containers()
	sb.mu.Lock()
	scans, pins := sb.scans, sb.pins
	sb.mu.Unlock()
	if scans != 1 {
		t.Errorf("listing 3 containers scanned the processes %d times, want once", scans)
	}
	// Whether a name still names its container's namespace is one look-up
	// (a stat): listing opens no namespace (five system calls each, 8 ms of
	// a ps with 1,000 containers).
	if pins != 0 {
		t.Errorf("listing 3 containers opened their namespaces %d times, want none", pins)
	}
	var got []string
	for _, c := range cs {
		got = append(got, fmt.Sprintf("%s:%s:%v", c.Name, c.State, c.PIDs))
	}
	want := "c1:up:[100] c2:up:[101] c3:gone:[]"
	if strings.Join(got, " ") != want {
		t.Fatalf("ps: %s, want %s", strings.Join(got, " "), want)
	}
}

// TestContainerNamespaceScansNoProcesses: the look-up `exec` and `--net
// container:` make (GET /v1/containers/NAME?processes=false) finds the
// container's namespace and whether it is gone without scanning the
// host's processes; the plain look-up (inspect) still lists them.
func TestContainerNamespaceScansNoProcesses(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	sb.setPIDs(ep.Netns, 100)
	get := func(path string) (api.Container, int) {
		t.Helper()
		sb.mu.Lock()
		sb.scans = 0
		sb.mu.Unlock()
		w := httptest.NewRecorder()
		d.Handler().ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != 200 {
			t.Fatalf("GET %s: %d %s", path, w.Code, w.Body)
		}
		var c api.Container
		if err := json.Unmarshal(w.Body.Bytes(), &c); err != nil {
			t.Fatal(err)
		}
		sb.mu.Lock()
		defer sb.mu.Unlock()
		return c, sb.scans
	}
	c, scans := get("/v1/containers/c1?processes=false")
	if scans != 0 || c.State != api.ContainerUp || c.Netns != ep.Netns || c.PIDs != nil || c.Status != "" {
		t.Errorf("namespace look-up: %d scans, state %q netns %q pids %v status %q; want 0 scans, up, %q, no pids or status",
			scans, c.State, c.Netns, c.PIDs, c.Status, ep.Netns)
	}
	c, scans = get("/v1/containers/c1")
	if scans != 1 || c.Status != api.StatusRunning || len(c.PIDs) != 1 || c.PIDs[0] != 100 {
		t.Errorf("inspect: %d scans, status %q pids %v; want 1 scan, running, [100]", scans, c.Status, c.PIDs)
	}
	sb.replaceNetns(ep.Netns, 999)
	if c, _ := get("/v1/containers/c1?processes=false"); c.State != api.ContainerGone {
		t.Errorf("namespace look-up after its namespace was replaced: state %q, want gone", c.State)
	}
}
