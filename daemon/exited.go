package daemon

import (
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/sandbox"
)

// A container made by `run` is stopped once its main process exited and
// no process is left in its namespace (ps: "exited N"). As Docker takes a
// stopped container's endpoints out of its networks' DNS and its
// services' balancing, a stopped container's endpoint records leave the
// cluster (every host's DNS, tasks.SERVICE and balancers drop them, as
// after rm) and its published ports close; its namespace, devices,
// addresses and resolver stay until rm. A main process reported started
// in it again publishes it again.

// downExited is the state of an endpoint and a published port of a
// stopped container.
const downExited = "down: container exited"

// SetMainProcess records the main process of a container made by `run`
// (p.ExitStatus nil: it started) or its exit status. An exit is only
// taken for the PID last reported as started, so a late report of an
// earlier container of the same name changes nothing; a container with
// no known main process (see setMainProcess) takes any. A container whose
// main process exited with no process left is withdrawn before the call
// returns (see stopped); one started again is published again.
func (d *Daemon) SetMainProcess(name string, p api.MainProcess) error {
	if p.PID <= 0 {
		return invalid("container %q: main process: pid %d: want a positive PID", name, p.PID)
	}
	if p.ExitStatus != nil && (*p.ExitStatus < 0 || *p.ExitStatus > 255) {
		return invalid("container %q: main process %d: exit status %d: out of range 0-255", name, p.PID, *p.ExitStatus)
	}
	d.mu.Lock()
	c, err := d.setMainProcess(name, p)
	d.mu.Unlock()
	if err != nil || p.ExitStatus == nil {
		return err
	}
	// Looked at once now, without d.mu: one scan of the processes.
	d.checkExited([]*container{c})
	return nil
}

// setMainProcess is SetMainProcess's record under d.mu; it returns the
// container.
func (d *Daemon) setMainProcess(name string, p api.MainProcess) (*container, error) {
	c, ok := d.containers[name]
	if !ok {
		return nil, notFound("container %q: not found", name)
	}
	if !c.managed {
		return nil, invalid("container %q: not made by run: its processes are not vxmesh's", name)
	}
	if p.ExitStatus == nil {
		// Saved with the container's next save, or when the daemon
		// stops (saveMainProcesses): not one more write per run.
		c.mainPID, c.exitStatus = p.PID, nil
		c.startedAt = d.now()
		if c.stopped {
			// A start, whoever made it: a pending restart is moot.
			d.cancelRestart(c)
			c.manualStop = false
			if !c.nsGone {
				d.publishAgain(c)
			}
			c.stopped = false
			d.saveMainProcess(c)
		}
		return c, nil
	}
	// A running container whose main process is not known takes the exit
	// its monitor reports: the start was reported to a daemon that then
	// died before its next save (kill -9, a crash), or to one older than
	// the saving of main processes (an upgrade). Refused, the exit would
	// leave the container up and a backend for good.
	if c.mainPID != 0 && p.PID != c.mainPID {
		return nil, conflict("container %q: process %d is not its main process", name, p.PID)
	}
	c.mainPID = p.PID
	v := *p.ExitStatus
	c.exitStatus = &v
	c.exitRecheck = exitRecheck{}
	return c, nil // saved by checkExited
}

// saveMainProcess saves c's main process and status; a failure is
// logged: the container works on, and a restart only forgets the status.
// Callers hold d.mu.
func (d *Daemon) saveMainProcess(c *container) {
	if err := d.saveContainer(c.name); err != nil {
		d.log.Error("saving state", "container", c.name, "err", err)
	}
}

// saveMainProcesses saves the main processes reported started since
// their container's last save (the daemon stops), so that a restarted
// daemon takes their exit. Callers hold d.mu.
func (d *Daemon) saveMainProcesses() {
	var names []string
	for _, c := range d.containers {
		if c.mainPID != 0 {
			names = append(names, c.name)
		}
	}
	if len(names) == 0 {
		return
	}
	if err := d.persist(names); err != nil {
		d.log.Error("saving state", "err", err)
	}
}

// exitPending reports whether c's main process exited and c is not
// withdrawn yet (processes it left may still be in the namespace).
// Callers hold d.mu.
func (c *container) exitPending() bool {
	return c.exitStatus != nil && !c.stopped && !c.nsGone && !c.hostTAP
}

// Looking whether the processes a main process left are gone costs a
// scan of every process on the host (42-73 ms at 1,000 containers), so a
// container whose main process daemonized, leaving its server running for
// good, is looked at less and less often: after 1 s, then twice as long
// each time, up to maxExitRecheck.
const (
	firstExitRecheck = time.Second
	maxExitRecheck   = 32 * time.Second
)

// exitRecheck is when a container whose main process exited while others
// ran on is looked at again, and the interval after that.
type exitRecheck struct {
	at    time.Time
	every time.Duration
}

// due reports whether the check is due at now.
func (r exitRecheck) due(now time.Time) bool { return !now.Before(r.at) }

// next is the check after one at now that found processes left.
func (r exitRecheck) next(now time.Time) exitRecheck {
	every := min(max(2*r.every, firstExitRecheck), maxExitRecheck)
	return exitRecheck{at: now.Add(every), every: every}
}

// withdrawn reports whether c's endpoints are out of the cluster: its
// namespace is gone, or it is stopped. Callers hold d.mu.
func (c *container) withdrawn() bool { return c.nsGone || c.stopped }

// checkExited stops those of cs whose main process exited and whose
// namespace has no process left, with one scan of the processes (made
// without d.mu; a container changed meanwhile is looked at again under
// it). If the processes cannot be listed, nothing is stopped.
func (d *Daemon) checkExited(cs []*container) {
	if len(cs) == 0 {
		return
	}
	pids, err := d.sb.NetnsPIDs()
	if err != nil {
		d.log.Warn("listing processes", "err", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopExited(cs, pids, true)
}

// stopExited stops those of cs whose main process exited and whose
// namespace has no process in pids (a scan of the processes; nil: none
// made, nothing is stopped). recheck: one that still has processes is
// looked at again later (see exitRecheck). Callers hold d.mu.
func (d *Daemon) stopExited(cs []*container, pids map[sandbox.NetnsID][]int, recheck bool) {
	if pids == nil {
		return
	}
	changed := false
	for _, c := range cs {
		if d.stopping || d.containers[c.name] != c || d.tearingDown[c.name] || !c.exitPending() {
			continue
		}
		if len(pids[sandbox.NetnsID{Dev: c.nsDev, Ino: c.nsIno}]) > 0 {
			if recheck {
				// What the main process left still runs: ps says running.
				c.exitRecheck = c.exitRecheck.next(time.Now())
				d.saveMainProcess(c) // its exit status
			}
			continue
		}
		d.stop(c)
		changed = true
		d.log.Info("container exited; its names and backends are withdrawn until it starts again or is removed", "container", c.name, "exit_status", *c.exitStatus)
	}
	if changed {
		d.applyPublication()
	}
}

// stop marks c stopped, takes its endpoints out of the cluster and closes
// its published ports (see downExited), applies its restart policy
// (lifecycle.go) and saves it. Its devices stay:
// its namespace is there and may run again. Callers hold d.mu and apply
// the data plane after.
func (d *Daemon) stop(c *container) {
	c.stopped = true
	d.withdrawEndpoints(c, downExited)
	d.afterExit(c)
	d.saveMainProcess(c)
}

// publishAgain publishes stopped container c again, its main process
// started: its endpoint records, and its published ports (one whose host
// port is taken now stays down, with the cause). Callers hold d.mu.
func (d *Daemon) publishAgain(c *container) {
	c.stopped = false
	for _, ep := range c.sortedEndpoints() {
		d.publishEndpoint(ep)
		for _, pp := range ep.ports {
			d.openPort(ep, pp)
		}
	}
	d.applyPublication()
	d.log.Info("container started again; its names and backends are published", "container", c.name)
}
