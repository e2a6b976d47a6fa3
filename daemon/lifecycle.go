package daemon

import (
	"fmt"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/sandbox"
)

// A container made by `run` can be stopped (`vxmesh stop`), started again
// (`vxmesh start`: its saved command, in its namespace, with its
// addresses and published ports) and restarted, and its restart policy
// (`run --restart`) starts it again after its main process exited, as
// Docker's does:
//
//   - no: never; on-failure[:MAX]: after a non-zero exit status, at most
//     MAX times (0: no bound); always and unless-stopped: after any exit.
//   - Before each restart the daemon waits, 100 ms at first, then twice
//     as long each time up to a minute; a main process that ran for 10 s
//     or more starts the delays over.
//   - A container stopped by `vxmesh stop` is not restarted by its
//     policy, until `start` or `restart`; when the daemon starts, an
//     always container is started again even then, an unless-stopped
//     one only if it was not stopped so (that is all that tells them
//     apart), and a restart the daemon's stop interrupted is made.
//   - `start` and `restart` count the restarts from 0 again.
//
// The daemon starts a main process through Config.StartMain (the CLI's
// monitor: it reports the start and the exit through SetMainProcess, as
// after `run -d`), never under d.mu: the start report takes it.

// Delays of the restart policy (see restarts.next).
const (
	firstRestartDelay = 100 * time.Millisecond
	maxRestartDelay   = time.Minute
	// restartResetAfter is how long a main process must have run for
	// its exit to start the delays over.
	restartResetAfter = 10 * time.Second
)

// defaultStopTimeout is how long `vxmesh stop` gives processes after
// SIGTERM, as `docker stop`.
const defaultStopTimeout = 10 * time.Second

// maxStopTimeout bounds `stop -t`.
const maxStopTimeout = 24 * time.Hour

// stopReportWait is how long a stop waits for the monitor's report of
// the main process's exit once the processes are gone.
const stopReportWait = 2 * time.Second

// MainStart is what Config.StartMain is given to start a container's
// main process: the daemon's socket and the container's name (where the
// monitor reports), its namespace, resolv.conf and mount template, and
// the command as `run` saved it.
type MainStart struct {
	Socket, Container          string
	Netns, ResolvConf, MountNS string
	Command                    api.Command
}

// restarts is a container's restart policy state: the restarts made
// since run or the last start, and the last delay waited (0: none yet,
// or started over).
type restarts struct {
	count int
	delay time.Duration
}

// next decides whether policy p starts a container again after its main
// process exited with status, having run for ran, and after how long; a
// restart is counted in r. Stops by `vxmesh stop` never get here.
func (r *restarts) next(p api.RestartPolicy, status int, ran time.Duration) (bool, time.Duration) {
	restart := false
	switch p.Name {
	case api.RestartAlways, api.RestartUnlessStopped:
		restart = true
	case api.RestartOnFailure:
		restart = status != 0 && (p.MaxRetries == 0 || r.count < p.MaxRetries)
	}
	if !restart {
		return false, 0
	}
	if ran >= restartResetAfter {
		r.delay = 0
	}
	if r.delay == 0 {
		r.delay = firstRestartDelay
	} else {
		r.delay = min(2*r.delay, maxRestartDelay)
	}
	r.count++
	return true, r.delay
}

// startsAtDaemonStart reports whether policy p starts a stopped
// container when the daemon starts: always does, unless-stopped unless
// `vxmesh stop` stopped it, on-failure only if the daemon's stop
// interrupted a restart it had decided (due).
func startsAtDaemonStart(p api.RestartPolicy, due, manual bool) bool {
	switch p.Name {
	case api.RestartAlways:
		return true
	case api.RestartUnlessStopped:
		return !manual
	case api.RestartOnFailure:
		return due && !manual
	}
	return false
}

// now is the daemon's clock (Config.now in tests).
func (d *Daemon) now() time.Time {
	if d.cfg.now != nil {
		return d.cfg.now()
	}
	return time.Now()
}

// restarting reports whether c waits for its restart policy's start, or
// is being started. Callers hold d.mu.
func (c *container) restarting() bool {
	return c.stopped && (c.restartTimer != nil || c.starting)
}

// afterExit applies c's restart policy to the exit of its main process:
// c was just stopped by it. Callers hold d.mu.
func (d *Daemon) afterExit(c *container) {
	if c.command == nil || c.manualStop || d.stopping || c.exitStatus == nil {
		return
	}
	var ran time.Duration
	if !c.startedAt.IsZero() {
		ran = d.now().Sub(c.startedAt)
	}
	ok, delay := c.restarts.next(c.policy, *c.exitStatus, ran)
	if !ok {
		return
	}
	d.scheduleRestart(c, delay)
	d.log.Info("container exited; its restart policy starts it again", "container", c.name, "exit_status", *c.exitStatus,
		"policy", c.policy.String(), "restarts", c.restarts.count, "delay", delay)
}

// scheduleRestart starts c by its policy after delay. Callers hold d.mu.
func (d *Daemon) scheduleRestart(c *container, delay time.Duration) {
	d.cancelRestart(c)
	c.restartGen++
	gen := c.restartGen
	c.restartTimer = time.AfterFunc(delay, func() { d.restartByPolicy(c, gen) })
}

// cancelRestart cancels c's pending restart, if any. Callers hold d.mu.
func (d *Daemon) cancelRestart(c *container) {
	if c.restartTimer != nil {
		c.restartTimer.Stop()
		c.restartTimer = nil
	}
}

// restartByPolicy is c's pending restart number gen, its delay over.
func (d *Daemon) restartByPolicy(c *container, gen uint64) {
	d.mu.Lock()
	if c.restartGen != gen || c.restartTimer == nil {
		d.mu.Unlock()
		return // cancelled, or another one replaced it
	}
	c.restartTimer = nil
	if d.stopping || d.containers[c.name] != c || d.tearingDown[c.name] || d.leaving[c.name] || c.manualStop || !c.stopped || c.starting || c.nsGone {
		d.mu.Unlock()
		return
	}
	ms := d.mainStart(c)
	c.starting = true
	d.mu.Unlock()
	if err := d.launch(c, ms); err != nil {
		d.log.Error("restart policy: starting the container failed", "container", c.name, "err", err)
		// As an exit of a process that could not start: the policy
		// decides again, after a longer delay.
		d.mu.Lock()
		if d.containers[c.name] == c && c.stopped && !c.manualStop {
			v := sandbox.ExitInitFailed
			c.exitStatus = &v
			d.afterExit(c)
			d.saveMainProcess(c)
		}
		d.mu.Unlock()
	}
}

// mainStart is what StartMain needs to start c's main process. Callers
// hold d.mu.
func (d *Daemon) mainStart(c *container) MainStart {
	return MainStart{Socket: d.cfg.Socket, Container: c.name, Netns: c.netns, ResolvConf: d.resolvConfPath(),
		MountNS: d.mountNS, Command: *c.command}
}

// launch starts c's main process (c.starting is set) without d.mu; the
// monitor's start report has published c again by the time it returns.
func (d *Daemon) launch(c *container, ms MainStart) error {
	err := d.cfg.StartMain(ms)
	d.mu.Lock()
	c.starting = false
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("container %q: starting %q: %w", c.name, ms.Command.Argv[0], err)
	}
	return nil
}

// startAtDaemonStart starts the stopped containers whose policy says so
// when the daemon starts (see startsAtDaemonStart), each after its
// delay. Callers hold d.mu.
func (d *Daemon) startAtDaemonStart() {
	for _, c := range d.containers {
		due := c.restartDue
		c.restartDue = false
		if !c.stopped || c.nsGone || c.command == nil || !startsAtDaemonStart(c.policy, due, c.manualStop) {
			continue
		}
		c.manualStop = false
		d.scheduleRestart(c, c.restarts.delay)
		d.log.Info("restart policy: starting the stopped container again", "container", c.name, "policy", c.policy.String())
	}
}

// StopContainer stops a container made by run, as `docker stop`: SIGTERM
// to the processes in its namespace, SIGKILL to those left after the
// timeout; its main process's exit then stops it (ps: exited N), and its
// restart policy does not start it again until `start`. A stopped one
// stays so (its pending restart, if any, is cancelled).
func (d *Daemon) StopContainer(name string, req api.StopRequest) error {
	grace := defaultStopTimeout
	if req.Timeout != nil {
		t := time.Duration(*req.Timeout) * time.Second
		if *req.Timeout < 0 || t > maxStopTimeout {
			return invalid("container %q: stop timeout %d s: out of range 0-%d", name, *req.Timeout, int(maxStopTimeout/time.Second))
		}
		grace = t
	}
	c, err := d.lockNotStarting(name, "stop")
	if err != nil {
		return err
	}
	if !c.manualStop {
		c.manualStop = true
		d.saveMainProcess(c)
	}
	d.cancelRestart(c)
	if c.stopped {
		d.mu.Unlock()
		return nil
	}
	path, dev, ino := c.netns, c.nsDev, c.nsIno
	d.mu.Unlock()

	pinned, release, err := d.sb.PinNetns(path, dev, ino)
	if err != nil {
		return fmt.Errorf("container %q: %w", name, err)
	}
	err = d.sb.KillNetns(pinned, grace)
	release()
	if err != nil {
		return fmt.Errorf("container %q: stopping its processes: %w", name, err)
	}
	d.awaitStopped(c)
	d.log.Info("container stopped", "container", name)
	return nil
}

// lockNotStarting takes d.mu and returns the lifecycleTarget name once
// no start of it is in flight (a stop must come after the start's
// report, or the start would undo it); on error d.mu is not held.
func (d *Daemon) lockNotStarting(name, verb string) (*container, error) {
	d.awaitStart(name)
	for {
		d.mu.Lock()
		c, err := d.lifecycleTarget(name, verb)
		if err != nil {
			d.mu.Unlock()
			return nil, err
		}
		if !c.starting {
			return c, nil
		}
		d.mu.Unlock()
		d.awaitStart(name)
	}
}

// awaitStart waits until no start of container name is in flight (its
// monitor reported it, or failed). It does not hold d.mu on return.
func (d *Daemon) awaitStart(name string) {
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		d.mu.Lock()
		c := d.containers[name]
		starting := c != nil && c.starting
		d.mu.Unlock()
		if !starting {
			return
		}
		time.Sleep(delay)
	}
}

// lifecycleTarget is the container that stop, start or restart (verb)
// acts on: one made by run, whose namespace is there. Callers hold d.mu.
func (d *Daemon) lifecycleTarget(name, verb string) (*container, error) {
	c, ok := d.containers[name]
	if !ok {
		return nil, notFound("container %q: not found", name)
	}
	if !c.managed {
		return nil, invalid("container %q: attached with attach, not made by run: vxmesh does not %s its processes (do it where they were started)", name, verb)
	}
	if c.nsGone {
		return nil, conflict("container %q: its network namespace %s is gone (remove it with vxmesh rm)", name, c.netns)
	}
	if d.tearingDown[name] || d.leaving[name] {
		return nil, conflict("container %q: being removed", name)
	}
	return c, nil
}

// awaitStopped waits, once c's processes are gone, for the monitor's
// report of its main process's exit, which stops it (up to
// stopReportWait). A container whose main process is not known, or whose
// report does not come (its monitor was killed), is stopped here.
func (d *Daemon) awaitStopped(c *container) {
	deadline := time.Now().Add(stopReportWait)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		d.mu.Lock()
		if d.containers[c.name] != c || c.withdrawn() {
			d.mu.Unlock()
			return
		}
		waiting := c.mainPID != 0 && c.exitStatus == nil && time.Now().Before(deadline)
		d.mu.Unlock()
		if !waiting {
			break
		}
		time.Sleep(delay)
	}
	pids, err := d.sb.NetnsPIDs()
	if err != nil {
		d.log.Warn("listing processes", "err", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopping || d.containers[c.name] != c || c.withdrawn() || d.tearingDown[c.name] ||
		len(pids[sandbox.NetnsID{Dev: c.nsDev, Ino: c.nsIno}]) > 0 {
		return
	}
	d.stop(c)
	d.applyPublication()
}

// StartContainer starts a stopped container made by run again, as
// `docker start`: its saved command in its namespace, through
// Config.StartMain, which returns once the main process runs and the
// container is a name, a backend and a published port again. A running
// container (one with processes) is left as it is. The restarts are
// counted from 0 again.
func (d *Daemon) StartContainer(name string) error {
	// A container that is not stopped but has no process (its main
	// process's exit was never reported: ps says up) is started too.
	pids := d.netnsPIDs()
	d.mu.Lock()
	c, err := d.lifecycleTarget(name, "start")
	if err == nil {
		err = d.startable(c)
	}
	if err != nil || !c.stopped && (pids == nil || len(pids[sandbox.NetnsID{Dev: c.nsDev, Ino: c.nsIno}]) > 0) {
		d.mu.Unlock()
		return err
	}
	d.cancelRestart(c)
	c.manualStop = false
	c.restarts = restarts{}
	ms := d.mainStart(c)
	c.starting = true
	d.mu.Unlock()
	return d.launch(c, ms)
}

// startable refuses a start of c that cannot be made. Callers hold d.mu.
func (d *Daemon) startable(c *container) error {
	if c.command == nil {
		return conflict("container %q: made by a vxmesh that did not save its command: it cannot be started again (rm it and run it again)", c.name)
	}
	if d.cfg.StartMain == nil {
		return fmt.Errorf("container %q: this daemon cannot start processes", c.name)
	}
	if c.starting {
		return conflict("container %q: being started", c.name)
	}
	return nil
}

// RestartContainer stops a container made by run (as StopContainer) and
// starts it again (as StartContainer).
func (d *Daemon) RestartContainer(name string, req api.StopRequest) error {
	d.mu.Lock()
	c, err := d.lifecycleTarget(name, "restart")
	if err == nil {
		err = d.startable(c)
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if err := d.StopContainer(name, req); err != nil {
		return err
	}
	return d.StartContainer(name)
}

// restoreLifecycle sets c's command, restart policy and its state from
// the saved sc (absent in a state saved before them: none).
func restoreLifecycle(c *container, sc savedContainer) error {
	if sc.Command != nil && len(sc.Command.Argv) > 0 {
		cmd := *sc.Command
		c.command = &cmd
	}
	p, err := api.ParseRestartPolicy(sc.Restart)
	if err != nil {
		return fmt.Errorf("state: container %q: %w", sc.Name, err)
	}
	c.policy = p
	c.restarts = restarts{count: max(sc.RestartCount, 0), delay: min(max(time.Duration(sc.RestartDelay), 0), maxRestartDelay)}
	c.restartDue, c.manualStop = sc.RestartDue, sc.ManualStop
	if sc.StartedAt != 0 {
		c.startedAt = time.Unix(0, sc.StartedAt)
	}
	return nil
}

// checkLifecycleRequest refuses an attach request's command and restart
// policy unless they are well formed and for a new container.
func checkLifecycleRequest(req api.AttachRequest) error {
	if req.Command == nil && req.Restart == "" {
		return nil
	}
	if !req.Create {
		return invalid("container %q: a command and a restart policy only when the container is created (run)", req.Name)
	}
	p, err := api.ParseRestartPolicy(req.Restart)
	if err != nil {
		return invalid("container %q: %v", req.Name, err)
	}
	if req.Command == nil || len(req.Command.Argv) == 0 || req.Command.Argv[0] == "" {
		if p.Name != api.RestartNo {
			return invalid("container %q: restart policy %s: want the command it starts", req.Name, p)
		}
		return invalid("container %q: command: want at least the program", req.Name)
	}
	return nil
}

// setLifecycle gives a container made by run its command and restart
// policy from req (checked by checkLifecycleRequest).
func setLifecycle(c *container, req api.AttachRequest) {
	if req.Command != nil {
		cmd := api.Command{Argv: append([]string(nil), req.Command.Argv...), Env: append([]string(nil), req.Command.Env...), Dir: req.Command.Dir}
		c.command = &cmd
	}
	c.policy, _ = api.ParseRestartPolicy(req.Restart)
}
