package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// psStatus returns the STATUS column of name's row in the ps table.
func psStatus(e *env, name string) string {
	e.t.Helper()
	lines := strings.Split(strings.TrimSpace(e.cli("ps")), "\n")
	head := lines[0]
	at, end := strings.Index(head, "STATUS"), strings.Index(head, "ENDPOINTS")
	if at < 0 || end < at {
		e.t.Fatalf("ps heading %q: no STATUS then ENDPOINTS column", head)
	}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name && len(l) >= end {
			return strings.TrimSpace(l[at:end])
		}
	}
	return ""
}

// TestPsStatusRunningExitedGone follows a container made by run -d: ps
// shows it running, "exited 3" once its main process exited with status
// 3, and gone once its namespace is deleted; JSON and template output
// agree with the table.
func TestPsStatusRunningExitedGone(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.75.0.0/24")
	stop := filepath.Join(t.TempDir(), "stop")
	// The container shares the host's file system: the file ends it.
	e.cli("run", "-d", "--network", "web", "--name", "c1", "--", "sh", "-c",
		fmt.Sprintf("while [ ! -e %s ]; do sleep 0.05; done; exit 3", stop))
	if got := psStatus(e, "c1"); got != "running" {
		t.Fatalf("ps STATUS of c1 = %q, want running", got)
	}
	if c, _ := e.container("c1"); c.Status != api.StatusRunning || len(c.PIDs) == 0 || c.ExitStatus != nil {
		t.Fatalf("ps --format json c1: %+v, want running with PIDs", c)
	}
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		if got := psStatus(e, "c1"); got != "exited 3" {
			return fmt.Errorf("ps STATUS of c1 = %q", got)
		}
		return nil
	}, "ps showing c1 exited 3")
	if c, _ := e.container("c1"); c.Status != "exited 3" || c.ExitStatus == nil || *c.ExitStatus != 3 || len(c.PIDs) != 0 || c.State != api.ContainerUp {
		t.Errorf("ps --format json c1: %+v, want exited 3 without PIDs", c)
	}
	if out := e.cli("ps", "--format", "{{.Name}} {{.Status}} {{len .PIDs}}"); strings.TrimSpace(out) != "c1 exited 3 0" {
		t.Errorf("ps --format template: %q, want \"c1 exited 3 0\"", out)
	}
	if out, err := exec.Command("ip", "netns", "del", e.h.ContainerNetns("c1")).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del: %v: %s", err, out)
	}
	if got := psStatus(e, "c1"); got != "gone" {
		t.Errorf("ps STATUS of c1 after ip netns del = %q, want gone", got)
	}
	if c, _ := e.container("c1"); c.Status != api.StatusGone || c.State != api.ContainerGone {
		t.Errorf("ps --format json c1 after ip netns del: %+v", c)
	}
	e.cli("rm", "c1")

	// A run in the foreground exits with its command's status, and ps
	// then shows the container exited with it, as after run -d.
	_, err := e.h.CLI("run", "--network", "web", "--name", "fg", "--", "sh", "-c", "exit 4")
	var ce *testbed.CLIError
	if !errors.As(err, &ce) || ce.ExitCode != 4 {
		t.Fatalf("run in the foreground of exit 4: %v, want exit status 4", err)
	}
	if got := psStatus(e, "fg"); got != "exited 4" {
		t.Errorf("ps STATUS of fg after its foreground run = %q, want exited 4", got)
	}
	e.cli("rm", "fg")
}

// TestPsStatusKilledMainProcess: a main process killed by a signal exits
// 128+SIG, as a shell reports it, while a process started by exec keeps
// the container running.
func TestPsStatusKilledMainProcess(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.76.0.0/24")
	e.run("c1", "web")
	c, _ := e.container("c1")
	if len(c.PIDs) != 1 {
		t.Fatalf("ps c1: %+v, want one process", c)
	}
	main := c.PIDs[0]
	e.cli("exec", "-d", "c1", "--", "sleep", "infinity")
	eventually(t, 5*time.Second, func() error {
		if c, _ := e.container("c1"); len(c.PIDs) != 2 {
			return fmt.Errorf("ps c1: PIDs %v", c.PIDs)
		}
		return nil
	}, "the exec'd process showing in ps")
	if err := syscall.Kill(main, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		if c, _ := e.container("c1"); len(c.PIDs) != 1 || c.ExitStatus == nil {
			return fmt.Errorf("ps c1: %+v", c)
		}
		return nil
	}, "the main process's exit recorded")
	if got := psStatus(e, "c1"); got != "running" {
		t.Errorf("ps STATUS with an exec'd process left = %q, want running", got)
	}
	c, _ = e.container("c1")
	if *c.ExitStatus != 128+9 {
		t.Errorf("exit status of a SIGKILLed main process = %d, want 137", *c.ExitStatus)
	}
	e.cli("rm", "c1")
}

// TestFormatTemplatesThroughCLI runs --format templates, as Docker's,
// through the real binary and daemon.
func TestFormatTemplatesThroughCLI(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.77.0.0/24")
	e.cli("network", "create", "sec", "--subnet", "10.78.0.0/24", "--encrypted")
	e.run("c1", "web", "--alias", "one")
	ip := e.ip("c1")

	if out := e.cli("network", "ls", "--format", "{{.Name}}"); out != "sec\nweb\n" && out != "web\nsec\n" {
		t.Errorf("network ls --format '{{.Name}}': %q", out)
	}
	ls := strings.Split(strings.TrimSpace(e.cli("network", "ls")), "\n")
	head := strings.Fields(ls[0])
	col := slices.Index(head, "ENCRYPTED")
	if col < 0 {
		t.Fatalf("network ls heading %q: want an ENCRYPTED column", ls[0])
	}
	for _, l := range ls[1:] {
		f := strings.Fields(l)
		if want := map[string]string{"web": "no", "sec": "aes128-gcm"}[f[0]]; len(f) != len(head) || f[col] != want {
			t.Errorf("network ls row %q: ENCRYPTED %q, want %q", l, f[min(col, len(f)-1)], want)
		}
	}
	tbl := e.cli("endpoint", "ls", "--format", `table {{.Name}}\t{{.IP}}\t{{join .Aliases ","}}`)
	lines := strings.Split(strings.TrimSpace(tbl), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME IP ALIASES" ||
		strings.Join(strings.Fields(lines[1]), " ") != "c1 "+ip+" one" {
		t.Errorf("endpoint ls --format table: %q", tbl)
	}
	js := strings.TrimSpace(e.cli("ps", "--format", "{{json .}}"))
	if !strings.HasPrefix(js, `{"name":"c1",`) || !strings.Contains(js, `"status":"running"`) || strings.Contains(js, "null") {
		t.Errorf("ps --format '{{json .}}': %q", js)
	}
	_, err := e.h.CLI("ps", "--format", "{{.Nope}}")
	var ce *testbed.CLIError
	if !errors.As(err, &ce) || ce.ExitCode != 2 || !strings.HasPrefix(ce.Stderr, "vxmesh ps: --format:") {
		t.Errorf("ps --format '{{.Nope}}': %v, want exit 2 and a --format error", err)
	}
	_, err = e.h.CLI("network", "craete", "x")
	if !errors.As(err, &ce) || ce.ExitCode != 2 || !strings.Contains(ce.Stderr, `did you mean "create"?`) {
		t.Errorf("network craete: %v, want exit 2 and did you mean", err)
	}
	if out := e.cli("help", "ps"); !strings.Contains(out, "Usage: vxmesh ps") {
		t.Errorf("help ps: %q", out)
	}
}

// TestDaemonNotifiesSystemd: started as a Type=notify unit would start it
// (NOTIFY_SOCKET set), the daemon sends READY=1 once its API answers and
// STOPPING=1 when SIGTERM stops it.
func TestDaemonNotifiesSystemd(t *testing.T) {
	e := newTestbed(t, 1)[0]
	sock := filepath.Join(t.TempDir(), "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	if err := e.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	recv := func() string {
		l.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		n, err := l.Read(buf)
		if err != nil {
			t.Fatalf("reading the notify socket: %v", err)
		}
		return string(buf[:n])
	}
	if got := recv(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	if err := e.h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if got := recv(); got != "STOPPING=1" {
		t.Fatalf("notification on SIGTERM %q, want STOPPING=1", got)
	}
}
