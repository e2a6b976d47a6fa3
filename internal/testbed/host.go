package testbed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// Host is one simulated machine: a network namespace with an underlay
// interface eth0 (Addr/24, MTU 1500) and, once started, a vxmesh daemon.
type Host struct {
	// Name is the node name (h1, h2, ...), passed to the daemon as --node.
	Name string
	// Netns is the name of the host's network namespace.
	Netns string
	// NetnsPath is the namespace's bind mount (/run/netns/<Netns>).
	NetnsPath string
	// Addr is the host's underlay IPv4 address on eth0.
	Addr string
	// Dir holds the host's socket, state directory and log.
	Dir string
	// Socket is the daemon's API socket.
	Socket string
	// StateDir is the daemon's --state-dir.
	StateDir string
	// LogFile receives the daemon's stdout and stderr (appended across restarts).
	LogFile string
	// ContainerPrefix is the daemon's --netns-prefix: container NAME made by
	// `vxmesh run` on this host lives in /run/netns/<ContainerPrefix>NAME.
	ContainerPrefix string

	// The fields below shape the daemon's command line; change them before
	// StartDaemon to vary it.

	// Join lists the nodes the daemon joins (--join); New sets it to h1's
	// address for every host but h1.
	Join []string
	// KeyFile is the daemon's --cluster-key-file, the testbed's shared
	// KeyFile unless changed; empty passes no flag (the daemon then makes
	// its own key in its state directory).
	KeyFile string
	// Flags are appended to the daemon's arguments at every start
	// (Options.DaemonFlags unless changed).
	Flags []string

	tb   *Testbed
	cmd  *exec.Cmd
	done chan struct{}
	// waitErr is written by the goroutine that waits for cmd before it
	// closes done; read it only after <-done.
	waitErr error
}

func (h *Host) build() error {
	if err := os.MkdirAll(h.StateDir, 0o700); err != nil {
		return fmt.Errorf("testbed: host %s: %w", h.Name, err)
	}
	if err := attachUnderlay(h.tb.Underlay, h.Netns, h.Name, h.Addr); err != nil {
		return fmt.Errorf("testbed: host %s: %w", h.Name, err)
	}
	return nil
}

// ContainerNetns returns the netns name of container name made by `vxmesh
// run` on this host.
func (h *Host) ContainerNetns(name string) string { return h.ContainerPrefix + name }

// ContainerNetnsPath returns the bind-mount path of ContainerNetns(name).
func (h *Host) ContainerNetnsPath(name string) string {
	return filepath.Join(NetnsDir, h.ContainerNetns(name))
}

// DaemonArgs returns the argv StartDaemon runs (before its extra
// arguments): the daemon in the host's namespace, advertising the host's
// underlay address, with the key file, join list and Flags.
func (h *Host) DaemonArgs() []string {
	args := []string{
		"nsenter", "--net=" + h.NetnsPath, "--",
		h.tb.binary, "daemon",
		"--node", h.Name,
		"--socket", h.Socket,
		"--state-dir", h.StateDir,
		"--netns-prefix", h.ContainerPrefix,
		// The hosts have no default route to guess the address from.
		"--advertise", h.Addr,
	}
	if h.KeyFile != "" {
		args = append(args, "--cluster-key-file", h.KeyFile)
	}
	if len(h.Join) > 0 {
		args = append(args, "--join", strings.Join(h.Join, ","))
	}
	return append(args, h.Flags...)
}

// Running reports whether the daemon started by StartDaemon is still alive.
func (h *Host) Running() bool {
	if h.cmd == nil {
		return false
	}
	select {
	case <-h.done:
		return false
	default:
		return true
	}
}

// StartDaemon starts the vxmesh daemon inside the host's namespace (with
// nsenter, not `ip netns exec`, so that netns bind mounts the daemon makes
// are visible to everyone) and waits until `vxmesh network ls` succeeds.
// extra is appended to the daemon's arguments. Output goes to LogFile.
func (h *Host) StartDaemon(extra ...string) error {
	if h.tb.binary == "" {
		return fmt.Errorf("testbed: host %s: no vxmesh binary configured", h.Name)
	}
	if h.Running() {
		return fmt.Errorf("testbed: host %s: daemon already running (pid %d)", h.Name, h.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(h.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("testbed: host %s: %w", h.Name, err)
	}
	argv := append(h.DaemonArgs(), extra...)
	fmt.Fprintf(logf, "=== %s testbed: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Kill the daemon if we die without cleaning up, and keep it out of
	// our process group so a Ctrl-C reaches us, not it: we stop it in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("testbed: host %s: start daemon: %w", h.Name, err)
	}
	logf.Close() // the child holds its own descriptor
	h.cmd = cmd
	h.done = make(chan struct{})
	go func(done chan struct{}) {
		h.waitErr = cmd.Wait()
		close(done)
	}(h.done)

	deadline := time.Now().Add(h.tb.readyTimeout)
	var lastErr error
	for {
		select {
		case <-h.done:
			return fmt.Errorf("testbed: host %s: daemon exited before it was ready (%v); log:\n%s", h.Name, h.waitErr, h.LogTail(20))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, lastErr = h.CLIContext(ctx, "network", "ls")
		cancel()
		if lastErr == nil {
			return nil
		}
		if time.Now().After(deadline) {
			_ = h.KillDaemon()
			return fmt.Errorf("testbed: host %s: daemon not ready after %v (last: %v); log:\n%s", h.Name, h.tb.readyTimeout, lastErr, h.LogTail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StopDaemon sends SIGTERM and waits for the daemon to exit (SIGKILL after
// 10 s). It returns an error if the daemon had to be killed or exited
// with a failure status.
func (h *Host) StopDaemon() error {
	return h.stop(syscall.SIGTERM, 10*time.Second)
}

// KillDaemon sends SIGKILL, as a crash would, and reaps the daemon.
func (h *Host) KillDaemon() error {
	return h.stop(syscall.SIGKILL, 10*time.Second)
}

func (h *Host) stop(sig syscall.Signal, grace time.Duration) error {
	if h.cmd == nil {
		return nil
	}
	defer func() { h.cmd = nil }()
	select {
	case <-h.done:
		return nil
	default:
	}
	_ = h.cmd.Process.Signal(sig)
	select {
	case <-h.done:
		if sig == syscall.SIGKILL {
			return nil
		}
		var ee *exec.ExitError
		if errors.As(h.waitErr, &ee) && !ee.Exited() {
			// Killed by the signal itself without handling it.
			return fmt.Errorf("testbed: host %s: daemon died from %v instead of exiting cleanly", h.Name, sig)
		}
		if h.waitErr != nil {
			return fmt.Errorf("testbed: host %s: daemon exit after %v: %w", h.Name, sig, h.waitErr)
		}
		return nil
	case <-time.After(grace):
		// SIGQUIT makes the Go runtime write every goroutine's stack to
		// the log before it exits: what the daemon was stuck on.
		_ = h.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-h.done:
		case <-time.After(2 * time.Second):
			_ = h.cmd.Process.Kill()
			<-h.done
		}
		// The testbed's directory goes with Close: keep the stacks.
		kept := h.LogFile
		if b, err := os.ReadFile(h.LogFile); err == nil {
			if f, err := os.CreateTemp("", "vxmesh-stuck-"+h.Name+"-*.log"); err == nil {
				f.Write(b)
				f.Close()
				kept = f.Name()
			}
		}
		return fmt.Errorf("testbed: host %s: daemon ignored %v for %v and was stopped with SIGQUIT (stacks in %s)", h.Name, sig, grace, kept)
	}
}

// DaemonPID returns the process ID of the running daemon (0 if none).
func (h *Host) DaemonPID() int {
	if !h.Running() {
		return 0
	}
	return h.cmd.Process.Pid
}

// Signal sends sig to the running daemon.
func (h *Host) Signal(sig os.Signal) error {
	if !h.Running() {
		return fmt.Errorf("testbed: host %s: daemon not running", h.Name)
	}
	return h.cmd.Process.Signal(sig)
}

// LogTail returns the last n lines of the daemon log.
func (h *Host) LogTail(n int) string {
	b, err := os.ReadFile(h.LogFile)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// CLIError is the error of a failed CLI call.
type CLIError struct {
	Args     []string
	ExitCode int // -1 if the command did not exit normally
	Stdout   string
	Stderr   string
	Err      error
}

// Error implements error.
func (e *CLIError) Error() string {
	return fmt.Sprintf("vxmesh %s: %v: %s", strings.Join(e.Args, " "), e.Err, strings.TrimSpace(e.Stderr))
}

// Unwrap returns the error underneath, for errors.Is and errors.As.
func (e *CLIError) Unwrap() error { return e.Err }

// CLI runs `vxmesh args...` with `--socket <Socket>` inside the host's network
// namespace, as a user logged into that host would, and returns stdout. A
// non-zero exit gives a *CLIError carrying the exit code and stderr.
func (h *Host) CLI(args ...string) (string, error) {
	return h.CLIContext(context.Background(), args...)
}

// CLIContext is CLI with a context that kills the command when done.
func (h *Host) CLIContext(ctx context.Context, args ...string) (string, error) {
	cmd := h.Command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		ce := &CLIError{Args: args, ExitCode: -1, Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ce.ExitCode = ee.ExitCode()
		}
		return stdout.String(), ce
	}
	return stdout.String(), nil
}

// Command returns an unstarted `vxmesh args...` command that runs in the
// host's namespace and talks to its daemon, for callers that need to stream
// its output or run it in the background.
func (h *Host) Command(ctx context.Context, args ...string) *exec.Cmd {
	argv := append([]string{"--net=" + h.NetnsPath, "--", h.tb.binary}, insertFlags(args, "--socket", h.Socket)...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	cmd.Env = append(os.Environ(), "VXMESH_SOCKET="+h.Socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// CLIJSON runs a state-printing command with `--format json` and decodes
// its output into v. The flag is placed right after the command words
// (e.g. `network inspect --format json web`), which every flag parser accepts.
func (h *Host) CLIJSON(v any, args ...string) error {
	out, err := h.CLI(WithFormatJSON(args)...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("vxmesh %s: decode JSON output: %w: %q", strings.Join(args, " "), err, truncate(out, 200))
	}
	return nil
}

// WithFormatJSON inserts "--format json" after the command words of args.
func WithFormatJSON(args []string) []string {
	return insertFlags(args, "--format", "json")
}

// insertFlags inserts flags after the command words of args ("network
// inspect", "exec", ...), where every subcommand's flag parser looks.
func insertFlags(args []string, flags ...string) []string {
	n := 1
	if len(args) > 1 {
		switch args[0] {
		case "network", "endpoint", "node", "key", "service":
			n = 2
		}
	}
	if n > len(args) {
		n = len(args)
	}
	out := append([]string{}, args[:n]...)
	out = append(out, flags...)
	return append(out, args[n:]...)
}

// Exec runs `vxmesh exec container -- argv...` and returns its stdout.
func (h *Host) Exec(container string, argv ...string) (string, error) {
	return h.CLI(append([]string{"exec", container, "--"}, argv...)...)
}

// ExecContext is Exec with a context.
func (h *Host) ExecContext(ctx context.Context, container string, argv ...string) (string, error) {
	return h.CLIContext(ctx, append([]string{"exec", container, "--"}, argv...)...)
}

// Links returns the interface names in the host's namespace.
func (h *Host) Links() ([]string, error) { return Links(h.Netns) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// WaitExit waits up to timeout for the daemon started by StartDaemon to
// exit on its own and returns its exit error (nil for status 0). It is for
// daemons expected to give up, e.g. one refused by the cluster.
func (h *Host) WaitExit(timeout time.Duration) (exited bool, err error) {
	if h.cmd == nil {
		return false, fmt.Errorf("testbed: host %s: no daemon started", h.Name)
	}
	select {
	case <-h.done:
		h.cmd = nil
		return true, h.waitErr
	case <-time.After(timeout):
		return false, nil
	}
}

// Nodes returns `vxmesh node ls` as this host's daemon sees the cluster.
func (h *Host) Nodes() ([]api.Node, error) {
	var ns []api.Node
	err := h.CLIJSON(&ns, "node", "ls")
	return ns, err
}

// clusterSees reports nil if h's `node ls` shows itself (as self) and every
// host in want alive.
func (h *Host) clusterSees(want []*Host) error {
	ns, err := h.Nodes()
	if err != nil {
		return err
	}
	state := map[string]string{}
	for _, n := range ns {
		state[n.Name] = n.State
		if n.Self && n.Name != h.Name {
			return fmt.Errorf("host %s: node ls marks %s as self", h.Name, n.Name)
		}
	}
	var missing []string
	for _, w := range want {
		if state[w.Name] != "alive" {
			missing = append(missing, fmt.Sprintf("%s=%q", w.Name, state[w.Name]))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("host %s: node ls shows %s, want alive", h.Name, strings.Join(missing, " "))
	}
	return nil
}
