package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/daemon"
	"github.com/vxmesh/vxmesh/sandbox"
)

// monitorArg is the hidden first argument with which `run -d` re-executes
// the vxmesh binary as the monitor of a container's main process.
const monitorArg = "__monitor"

// monitorStatusFD is the monitor's file descriptor on which it tells the
// CLI "pid N" once the command runs, or "error MESSAGE".
const monitorStatusFD = 3

// nsPaths are what the daemon says a container's processes start in: its
// network namespace, the resolv.conf bind-mounted for them and the mount
// template their mount namespace is copied from ("" for the host's).
type nsPaths struct {
	netns, resolvConf, mountNS string
}

// command returns the sandbox command running argv in ns.
func (ns nsPaths) command(argv []string) *sandbox.Cmd {
	c := sandbox.Command(ns.netns, ns.resolvConf, argv)
	c.MountNS = ns.mountNS
	return c
}

// start starts c and writes to warn, if c did not start from the mount
// template it was given, why (the process still runs, from a copy of this
// host's mount namespace, with every mount made here).
func start(c *sandbox.Cmd, warn io.Writer) error {
	if err := c.Start(); err != nil {
		return err
	}
	if msg := templateWarning(c); msg != "" {
		fmt.Fprintf(warn, "vxmesh: %s\n", msg)
	}
	return nil
}

// templateWarning says why c did not start from its mount template, or "".
func templateWarning(c *sandbox.Cmd) string {
	if err := c.TemplateErr(); err != nil {
		return fmt.Sprintf("not started from the mount template (%s); started from a copy of the host's mount namespace", oneLine(err))
	}
	return ""
}

// startDetached starts argv in the container's namespace in a session of
// its own and returns its PID without waiting; warnings go to warn.
func startDetached(ns nsPaths, argv []string, warn io.Writer) (int, error) {
	c := ns.command(argv)
	c.Detach = true
	if err := start(c, warn); err != nil {
		return 0, err
	}
	return c.PID(), nil
}

// exitReport names where the monitor reports a main process: the daemon's
// socket ("" for the default) and the container.
type exitReport struct {
	socket    string
	container string
	// env and dir, if set, are the monitor's (and so the command's)
	// environment and working directory instead of the caller's (the
	// daemon starting a container again, startMain).
	env []string
	dir string
	// reap: the caller outlives the monitor and must wait for it (the
	// daemon); the CLI leaves it to init.
	reap bool
	// timing, if set, receives the monitor's timings (runTimingEnv).
	timing *monitorTiming
}

// writeRunTiming appends to the file at path one line on a `run -d` of
// container name: the attach (the daemon's answer), the monitor from its
// start until it answered, and of that the main process's start and the
// report of its PID. Errors are ignored: it is a debugging aid.
func writeRunTiming(path, name string, attach, monitor time.Duration, mt monitorTiming) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "run %s attach=%v monitor=%v start=%v report=%v\n", name, attach, monitor, mt.start, mt.report)
}

// runTimingEnv names a file to which `run -d` appends where its time went
// (runTiming): a debugging aid for the scale tests, off when unset.
const runTimingEnv = "VXMESH_RUN_TIMING"

// monitorTiming is what the monitor tells the CLI of its own steps, with
// runTimingEnv set: the main process's start (fork, mount namespace, init
// step exec'd) and the report of its PID to the daemon.
type monitorTiming struct {
	start, report time.Duration
}

// startMonitored starts argv as the main process of a container made by
// `run -d`. Only a process's parent learns its exit status, and the CLI
// exits at once, so a monitor (this binary again, in a session of its own,
// in the host's network namespace so that it is not one of the
// container's processes) starts the command, tells the daemon its PID,
// waits for it and reports its exit status. It returns the command's PID.
// If the monitor is killed or the daemon cannot be reached when the
// command exits, the status is lost and ps shows the container "up".
func startMonitored(ns nsPaths, argv []string, rep exitReport, warn io.Writer) (int, monitorTiming, error) {
	var mt monitorTiming
	r, w, err := os.Pipe()
	if err != nil {
		return 0, mt, err
	}
	defer r.Close()
	args := append([]string{"vxmesh", monitorArg, rep.socket, rep.container, ns.netns, ns.resolvConf, ns.mountNS, "--"}, argv...)
	cmd := &exec.Cmd{
		Path:        sandbox.DefaultInitPath,
		Args:        args,
		Env:         rep.env,
		Dir:         rep.dir,
		ExtraFiles:  []*os.File{w}, // fd 3 = monitorStatusFD
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return 0, mt, fmt.Errorf("starting the monitor of %q: %w", argv[0], err)
	}
	if rep.reap {
		go cmd.Wait()
	} else {
		defer cmd.Process.Release()
	}
	// "warn MESSAGE" lines, then the answer.
	br := bufio.NewReader(io.LimitReader(r, 4096))
	var line string
	for {
		b, _ := br.ReadString('\n')
		line = strings.TrimSpace(b)
		msg, ok := strings.CutPrefix(line, "warn ")
		if !ok {
			break
		}
		fmt.Fprintf(warn, "vxmesh: %s\n", msg)
	}
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		return 0, mt, fmt.Errorf("%s", msg)
	}
	// "pid N", then the monitor's timings if it was asked for them.
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "pid" {
		return 0, mt, fmt.Errorf("the monitor of %q answered %q", argv[0], line)
	}
	pid, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, mt, fmt.Errorf("the monitor of %q answered %q", argv[0], line)
	}
	if len(f) == 4 {
		mt.start, _ = time.ParseDuration(f[2])
		mt.report, _ = time.ParseDuration(f[3])
	}
	return pid, mt, nil
}

// monitorMain is the monitor started by startMonitored; args are the
// daemon socket, the container name, its netns, resolv.conf and mount
// template, "--" and the command. It returns its own exit status.
func monitorMain(args []string) int {
	// The command must not inherit the status pipe: the CLI reads it
	// until every writer closed it.
	syscall.CloseOnExec(monitorStatusFD)
	status := os.NewFile(monitorStatusFD, "monitor-status")
	if len(args) < 7 || args[5] != "--" {
		fmt.Fprintln(status, "error monitor: want SOCKET CONTAINER NETNS RESOLV_CONF MOUNT_NS -- COMMAND")
		return sandbox.ExitInitFailed
	}
	socket, name, argv := args[0], args[1], args[6:]
	ns := nsPaths{netns: args[2], resolvConf: args[3], mountNS: args[4]}
	t0 := time.Now()
	c := ns.command(argv)
	if err := c.Start(); err != nil {
		fmt.Fprintf(status, "error %s\n", oneLine(err))
		return sandbox.ExitInitFailed
	}
	t1 := time.Now()
	if msg := templateWarning(c); msg != "" {
		fmt.Fprintf(status, "warn %s\n", msg)
	}
	pid := c.PID()
	client := api.NewClient(socket)
	// Errors are not reported: the command runs, and nobody listens to
	// the monitor any more once the CLI has returned. A daemon that does
	// not answer yet (one starting containers again as it starts) is
	// asked again for a while.
	reportMain(client, name, api.MainProcess{PID: pid}, startReportPatience)
	// The monitor lives as long as the command: it must not keep the
	// daemon holding its idle connection (one per container) meanwhile.
	client.CloseIdleConnections()
	if os.Getenv(runTimingEnv) != "" {
		fmt.Fprintf(status, "pid %d %v %v\n", pid, t1.Sub(t0), time.Since(t1))
	} else {
		fmt.Fprintf(status, "pid %d\n", pid)
	}
	status.Close()
	code := sandbox.ExitStatus(c.Wait())
	// A daemon being restarted gets the exit once it is back: its
	// restart policy then sees it.
	reportMain(client, name, api.MainProcess{PID: pid, ExitStatus: &code}, exitReportPatience)
	return 0
}

// How long the monitor keeps asking a daemon that does not answer to
// take its report of the main process's start (the CLI waits for it),
// and of its exit.
const (
	startReportPatience = 30 * time.Second
	exitReportPatience  = 10 * time.Minute
)

// reportMain reports p of container name to the daemon, asking again
// while the daemon cannot be reached, for up to patience (after 100 ms,
// then twice as long each time up to 5 s). A refusal is final.
func reportMain(client *api.Client, name string, p api.MainProcess, patience time.Duration) {
	deadline := time.Now().Add(patience)
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
		err := client.MainProcess(name, p)
		var unreachable *api.UnreachableError
		if !errors.As(err, &unreachable) || time.Now().Add(delay).After(deadline) {
			return
		}
		time.Sleep(delay)
	}
}

// startMain is the daemon's Config.StartMain: the monitor of a container
// made by run started again, with the command, environment and working
// directory run saved; warnings go to the daemon's log stream.
func startMain(ms daemon.MainStart) error {
	ns := nsPaths{netns: ms.Netns, resolvConf: ms.ResolvConf, mountNS: ms.MountNS}
	env := ms.Command.Env
	if env == nil {
		env = []string{}
	}
	// exec names the binary, not the directory, when it cannot enter the
	// directory: "fork/exec /proc/self/exe: no such file or directory".
	if ms.Command.Dir != "" {
		if _, err := os.Stat(ms.Command.Dir); err != nil {
			return fmt.Errorf("the working directory run saved: %w", err)
		}
	}
	rep := exitReport{socket: ms.Socket, container: ms.Container, env: env, dir: ms.Command.Dir, reap: true}
	_, _, err := startMonitored(ns, ms.Command.Argv, rep, os.Stderr)
	return err
}

// runAttached runs argv in the container's namespace with this process's
// standard streams and returns its exit status and PID; onStart, if set,
// is told the PID once it runs. Interrupts reach the
// command (it shares the terminal's process group); the CLI itself waits.
func runAttached(ns nsPaths, argv []string, warn io.Writer, onStart func(pid int)) (code, pid int, err error) {
	c := ns.command(argv)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	// Catch (not ignore: an ignored signal stays ignored across exec) the
	// interrupt so that the CLI outlives the command and reports its status.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt)
	defer signal.Stop(sigs)
	if err := start(c, warn); err != nil {
		return 0, 0, err
	}
	pid = c.PID()
	if onStart != nil {
		onStart(pid)
	}
	return sandbox.ExitStatus(c.Wait()), pid, nil
}
