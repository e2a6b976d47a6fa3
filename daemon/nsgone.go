package daemon

import (
	"context"
	"time"
)

// netnsCheckInterval is how often the daemon looks whether each
// container's namespace is still there (watchNamespaces): the bound on how
// long a gone container stays a name and a backend, plus the cluster's
// propagation. The same pass stops the containers whose main process
// exited once the processes it left are gone too (exited.go).
//
// It is a poll, not an event, because nothing reports the loss: the
// daemon's own TAP descriptor, opened inside the namespace, holds a
// reference on it, so when the last process exits (attach --pid) or its
// name is deleted (ip netns del) the namespace lives on without a name and
// its device is never unregistered; the TAP reader just waits. One stat of
// each container's path a second (NetnsIs, a few microseconds each) costs
// a few milliseconds a second at a thousand containers.
const netnsCheckInterval = time.Second

// downNetnsGone is the state of an endpoint whose namespace is gone.
const downNetnsGone = "down: namespace gone"

// watchNamespaces withdraws the containers whose namespace is gone (see
// netnsCheckInterval and withdrawGone) until ctx ends.
func (d *Daemon) watchNamespaces(ctx context.Context) {
	t := time.NewTicker(netnsCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.checkNamespaces()
	}
}

// nsCheck is a container whose namespace a check looks at, with what it
// was recorded as.
type nsCheck struct {
	c        *container
	path     string
	dev, ino uint64
}

// checkNamespaces looks at every container's namespace once and withdraws
// those that are gone. The paths are looked at without d.mu; a container
// removed, replaced or being torn down meanwhile is left alone.
func (d *Daemon) checkNamespaces() {
	d.mu.Lock()
	if d.stopping {
		d.mu.Unlock()
		return
	}
	checks := make([]nsCheck, 0, len(d.containers))
	var exited []*container
	now := time.Now()
	for _, c := range d.containers {
		if c.hostTAP || c.nsGone {
			continue // Docker owns a host TAP container's namespace
		}
		checks = append(checks, nsCheck{c: c, path: c.netns, dev: c.nsDev, ino: c.nsIno})
		if c.exitPending() && c.exitRecheck.due(now) {
			exited = append(exited, c)
		}
	}
	d.mu.Unlock()
	var gone []*container
	for _, k := range checks {
		if !d.sb.NetnsIs(k.path, k.dev, k.ino) {
			gone = append(gone, k.c)
		}
	}
	d.withdrawGoneOnes(gone)
	// Those whose main process exited while others it left ran on
	// (exited.go): one scan of the processes, only while one is due.
	d.checkExited(exited)
}

// withdrawGoneOnes withdraws those of gone (found without d.mu) whose
// namespace is still gone under it.
func (d *Daemon) withdrawGoneOnes(gone []*container) {
	if len(gone) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	changed := false
	for _, c := range gone {
		if d.stopping || d.containers[c.name] != c || d.tearingDown[c.name] || c.nsGone {
			continue
		}
		// Looked at again under d.mu: the check above ran without it.
		if d.sb.NetnsIs(c.netns, c.nsDev, c.nsIno) {
			continue
		}
		d.withdrawGone(c)
		changed = true
		d.log.Warn("container's namespace is gone; its names and backends are withdrawn until it is removed", "container", c.name, "netns", c.netns)
	}
	if changed {
		d.applyPublication()
	}
}

// applyPublication applies the data plane and DNS after containers were
// withdrawn or published again; callers hold d.mu.
func (d *Daemon) applyPublication() {
	if err := d.applyDataplane(); err != nil {
		d.log.Error("data plane", "err", err)
	}
	d.refreshDNS()
}

// withdrawEndpoints takes c's endpoints out of the cluster (every host's
// DNS, FDB and balancers drop them as after a removal) and closes its
// published ports, shown down with why. Callers hold d.mu.
func (d *Daemon) withdrawEndpoints(c *container, down string) {
	for _, ep := range c.sortedEndpoints() {
		d.unpublishEndpoint(ep)
		closePorts(ep.ports)
		for _, pp := range ep.ports {
			pp.down = down
		}
	}
}

// withdrawGone marks c's namespace gone and takes its endpoints out of the
// cluster (every host's DNS, FDB and balancers drop them as after a
// removal), of this host's data plane (its device closes with the next
// apply, which frees the namespace: the device's descriptor held it) and
// of its published ports; its resolver closes. The container and its
// addresses stay recorded, reserved in this node's blocks, so `ps` shows
// it gone and `rm` forgets it. Callers hold d.mu and apply the data plane
// after.
func (d *Daemon) withdrawGone(c *container) {
	c.nsGone = true
	d.withdrawEndpoints(c, downNetnsGone)
	for _, ep := range c.sortedEndpoints() {
		ep.dev, ep.down = nil, downNetnsGone
		// The port lists are made again without its device.
		delete(d.portsOf, ep.net.rec.Name)
	}
	if d.dns != nil {
		if l := d.dns.listeners[c.name]; l != nil {
			l.Close()
			delete(d.dns.listeners, c.name)
		}
	}
}
