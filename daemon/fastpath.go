package daemon

import (
	"net/netip"
	"sync"

	"github.com/vxmesh/vxmesh/gateway"
)

// The published-port fast path: a published TCP connection to a container
// on this host is dialled from inside the container's namespace, with a
// kernel socket bound to the client's address (gateway.FastPath,
// sandbox.EnableFastPath), instead of from the gateway's stack through
// the container's TAP. The namespace is set up at the container's first
// published connection and cleaned up when the container is removed or
// detached (teardown); one that cannot be set up is logged once, and its
// connections take the gateway's stack (counted ingress_fast_fallback).

// fastPaths are the containers' fast paths by container name. A name is
// not reused before its teardown ended (tearingDown), which drops its
// fast path.
type fastPaths struct {
	mu sync.Mutex
	m  map[string]*ctrFast
}

// ctrFast is one container's fast path: set up once.
type ctrFast struct {
	once    sync.Once
	sockets fastSockets
	err     error
}

// get returns c's fast path, made empty if there is none; nil once c is
// gone (marked before its teardown takes its fast path, so none is made
// after that).
func (f *fastPaths) get(c *container) *ctrFast {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c.gone.Load() {
		return nil
	}
	if f.m == nil {
		f.m = map[string]*ctrFast{}
	}
	cf := f.m[c.name]
	if cf == nil {
		cf = &ctrFast{}
		f.m[c.name] = cf
	}
	return cf
}

// take removes name's fast path and returns it (nil if none).
func (f *fastPaths) take(name string) *ctrFast {
	f.mu.Lock()
	defer f.mu.Unlock()
	cf := f.m[name]
	delete(f.m, name)
	return cf
}

// closeAll stops every socket maker (daemon shutdown); the namespaces
// keep their rules, which the next daemon uses again.
func (f *fastPaths) closeAll() {
	f.mu.Lock()
	m := f.m
	f.m = nil
	f.mu.Unlock()
	for _, cf := range m {
		cf.once.Do(func() {})
		if cf.sockets != nil {
			cf.sockets.Close()
		}
	}
}

// portFast is pp's fast path: its container's namespace, for pp's own
// container address. It is nil when the fast path is off or the sandbox
// has none.
func (d *Daemon) portFast(pp *publishedPort) gateway.FastPath {
	fsb, ok := d.sb.(fastPathSandbox)
	if !ok || d.cfg.NoFastPath {
		return nil
	}
	return func(dst netip.Addr) (gateway.LocalSockets, error) {
		c, ip := pp.ctr.Load(), pp.ip.Load()
		if c == nil || ip == nil || *ip != dst {
			return nil, nil
		}
		return d.fastFor(fsb, c)
	}
}

// meshFast is l's fast path: to the containers of this host among its
// destinations (mode=host's backends) or its service's backends
// (mode=ingress: the backend meshPick picked). It is nil when the fast
// path is off.
func (d *Daemon) meshFast(l *meshListener) gateway.FastPath {
	fsb, ok := d.sb.(fastPathSandbox)
	if !ok || d.cfg.NoFastPath {
		return nil
	}
	return func(dst netip.Addr) (gateway.LocalSockets, error) {
		m := l.local.Load()
		if m == nil || (*m)[dst] == nil {
			return nil, nil
		}
		return d.fastFor(fsb, (*m)[dst])
	}
}

// meshPick is l's Picker (mode=ingress, with the fast path on): while
// the service has backends on this host, each flow's backend is picked
// by the network's balancer before the dial (Dataplane.OpenConn), so that
// a local one takes the fast path; flows to a service with none here
// are balanced from their frames, as before. It is nil otherwise.
func (d *Daemon) meshPick(l *meshListener) gateway.Picker {
	if _, ok := d.sb.(fastPathSandbox); !ok || d.cfg.NoFastPath || l.spec.mode != meshIngress {
		return nil
	}
	return func(src, dst netip.AddrPort) (gateway.Picked, bool) {
		if m := l.local.Load(); m == nil || len(*m) == 0 {
			return nil, false
		}
		c, ok := d.dp.OpenConn(l.network, src, dst)
		if !ok {
			return nil, false
		}
		return c, true
	}
}

// fastFor returns c's fast-path sockets, set up at the first call.
func (d *Daemon) fastFor(fsb fastPathSandbox, c *container) (gateway.LocalSockets, error) {
	if c.hostTAP {
		// Docker's containers' namespaces are Docker's.
		return nil, nil
	}
	cf := d.fast.get(c)
	if cf == nil {
		return nil, nil
	}
	cf.once.Do(func() { d.setupFast(fsb, c, cf) })
	if cf.err != nil {
		return nil, cf.err
	}
	return cf.sockets, nil
}

// localContainers indexes this host's containers by network and address
// (the mesh's fast path); callers hold d.mu.
func (d *Daemon) localContainers() map[string]map[netip.Addr]*container {
	out := map[string]map[netip.Addr]*container{}
	for _, c := range d.containers {
		for n, ep := range c.endpoints {
			if out[n] == nil {
				out[n] = map[netip.Addr]*container{}
			}
			out[n][ep.ip] = c
		}
	}
	return out
}

// setupFast sets c's namespace up for the fast path and starts its socket
// maker, or records (and logs, once) why it could not.
func (d *Daemon) setupFast(fsb fastPathSandbox, c *container, cf *ctrFast) {
	nsPath, release, err := d.sb.PinNetns(c.netns, c.nsDev, c.nsIno)
	if err == nil {
		defer release()
		if err = fsb.EnableFastPath(nsPath); err == nil {
			cf.sockets, err = fsb.NewFastSockets(nsPath, d.egress.PrepareFastSocket)
			if err != nil {
				fsb.DisableFastPath(nsPath)
			}
		}
	}
	if err != nil {
		cf.err = err
		d.log.Warn("published-port fast path unavailable; the container's published connections take the gateway", "container", c.name, "err", err)
		return
	}
	d.log.Debug("published-port fast path set up", "container", c.name)
}

// dropFast ends the fast path of the container name (teardown): its
// socket maker stops and, unless its namespace is deleted next (gone),
// the rule, route and settings it added go from the namespace at nsPath
// (a pinned path; "" when the namespace is gone).
func (d *Daemon) dropFast(name, nsPath string, gone bool) {
	cf := d.fast.take(name)
	if cf == nil {
		return
	}
	cf.once.Do(func() {}) // no setup from now on
	if cf.sockets == nil {
		return
	}
	cf.sockets.Close()
	if nsPath == "" || gone {
		return
	}
	if err := d.sb.(fastPathSandbox).DisableFastPath(nsPath); err != nil {
		d.log.Warn("removing the published-port fast path from the container's namespace", "container", name, "err", err)
	}
}
