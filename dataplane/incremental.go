package dataplane

import (
	"slices"
)

// Reconfig's port diff without a walk of every port. Reconfig's full path
// maps every wanted port by key and walks every applied port: O(ports)
// hashing per call, twice per container run on a host with a thousand.
// When only ports changed since the last Reconfig (the same networks, of
// the same shape, no port error then or now), the wanted list of a network
// differs from the one applied last only in a window: the common head and
// tail are cut off by comparing entries (cheap, no hashing), and only the
// ports in the window are removed, changed, added and attached. The result
// is the full path's: TestReconfigIncrementalEqualsFull compares the two
// after random sequences of configs.

// portWindow is the part of one network's port list that changed: old is
// the window of the list applied last, now that of the wanted one.
type portWindow struct {
	w        *NetworkConfig
	old, now []PortConfig
	// nowByName maps the names in now to their entries.
	nowByName map[string]PortConfig
}

// lastApplied records what a Reconfig applied, for the next one's fast
// path: each network's port list (a copy) and whether the lists were
// clean (no port named twice or without a device). dp.mu is held.
func (dp *Dataplane) lastApplied(order []*NetworkConfig, clean bool) {
	dp.lastPorts = make(map[string][]PortConfig, len(order))
	for _, w := range order {
		dp.lastPorts[w.Name] = slices.Clone(w.Ports)
	}
	dp.lastClean = clean
}

// portWindows returns the changed windows of cfg's networks against the
// last Reconfig, or false when the fast path does not apply: the
// networks are not those applied last (by name, VNI and shape), a list
// then or now has a port error, or a changed port's name is taken by
// another port of its network. dp.mu is held; nothing is changed.
func (dp *Dataplane) portWindows(cfg Config) ([]portWindow, bool) {
	if !dp.lastClean || dp.noFastPath || len(cfg.Networks) != len(dp.lastPorts) || len(cfg.Networks) != len(dp.nets) {
		return nil, false
	}
	vnis := make(map[uint32]bool, len(cfg.Networks))
	names := make(map[string]bool, len(cfg.Networks))
	var out []portWindow
	for i := range cfg.Networks {
		w := &cfg.Networks[i]
		last, ok := dp.lastPorts[w.Name]
		n := dp.nets[w.Name]
		if !ok || n == nil || !n.sameShape(w) || vnis[w.VNI] || names[w.Name] {
			return nil, false
		}
		vnis[w.VNI], names[w.Name] = true, true
		old, now := trimCommon(last, w.Ports)
		if len(old) == 0 && len(now) == 0 {
			continue
		}
		pw := portWindow{w: w, old: old, now: now, nowByName: make(map[string]PortConfig, len(now))}
		oldNames := make(map[string]bool, len(old))
		for _, pc := range old {
			oldNames[pc.Name] = true
		}
		for _, pc := range now {
			if _, dup := pw.nowByName[pc.Name]; dup || pc.Device == nil {
				return nil, false
			}
			// A name new to the window must be new to the network: one
			// outside the window would be named twice.
			if !oldNames[pc.Name] && dp.ports[portKey{w.Name, pc.Name}] != nil {
				return nil, false
			}
			pw.nowByName[pc.Name] = pc
		}
		out = append(out, pw)
	}
	return out, true
}

// trimCommon cuts the common head and tail off a and b and returns what
// is left of each.
func trimCommon(a, b []PortConfig) ([]PortConfig, []PortConfig) {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	a, b = a[i:], b[i:]
	j := 0
	for j < len(a) && j < len(b) && a[len(a)-1-j] == b[len(b)-1-j] {
		j++
	}
	return a[:len(a)-j], b[:len(b)-j]
}

// reconfigPorts is Reconfig's fast path (portWindows said it applies):
// the full path's steps, with the port steps on the windows only. dp.mu
// is held.
func (dp *Dataplane) reconfigPorts(cfg Config, windows []portWindow) []error {
	var errs []error
	// Removals: the ports that left their window, or changed device;
	// those that changed address leave their switch.
	for _, pw := range windows {
		for _, pc := range pw.old {
			p := dp.ports[portKey{pw.w.Name, pc.Name}]
			if p == nil {
				continue
			}
			w, ok := pw.nowByName[pc.Name]
			dp.retire(p, w, ok)
		}
	}
	want := make(map[string]bool, len(cfg.Networks))
	for i := range cfg.Networks {
		want[cfg.Networks[i].Name] = true
	}
	for name := range dp.lbs {
		if !want[name] {
			dp.removeBalancer(name)
		}
	}
	errs = dp.applySAs(cfg, errs)
	for _, pw := range windows {
		for _, pc := range pw.now {
			if k := (portKey{pw.w.Name, pc.Name}); dp.ports[k] == nil {
				dp.addPort(k, pc)
			}
		}
	}
	changed := make(map[string]*portWindow, len(windows))
	for i := range windows {
		changed[windows[i].w.Name] = &windows[i]
	}
	order := make([]*NetworkConfig, 0, len(cfg.Networks))
	for i := range cfg.Networks {
		w := &cfg.Networks[i]
		order = append(order, w)
		n, err := dp.applyNetwork(w)
		dp.applyServices(w, n, cfg.Conntrack, &errs)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = dp.attachPorts(n, w, changed[w.Name], errs)
		dp.applyRemotes(n, w, &errs)
		dp.applyGateway(n, w, &errs)
		dp.applyGatewayHost(n, w, &errs)
	}
	dp.setOverlay(order)
	return errs
}

// attachPorts puts network n's ports that are on no switch on it, in the
// order of w.Ports as the full path does (which of two ports with one MAC
// joins depends on it), in one view: those of the changed window pw (nil:
// none) when they are the only ones, else every port of w.Ports (a port
// outside the window failed before: rare). dp.mu is held.
func (dp *Dataplane) attachPorts(n *network, w *NetworkConfig, pw *portWindow, errs []error) []error {
	pcs := w.Ports
	if pw != nil {
		pcs = pw.now
	} else {
		pcs = nil
	}
	for name := range dp.unattached[w.Name] {
		if pw == nil || pw.nowByName[name] == (PortConfig{}) {
			pcs = w.Ports
			break
		}
	}
	if len(pcs) == 0 {
		return errs
	}
	release := n.sw.HoldViews()
	defer release()
	for _, pc := range pcs {
		p := dp.ports[portKey{w.Name, pc.Name}]
		if p == nil || p.ref.Load() != nil {
			continue
		}
		if err := dp.attach(p, n); err != nil {
			errs = append(errs, &Error{Network: w.Name, Object: "port " + pc.Name, Err: err})
		}
	}
	return errs
}

// setUnattached records whether the port k is on no switch (retried by
// the next Reconfig's fast path). dp.mu is held.
func (dp *Dataplane) setUnattached(k portKey, on bool) {
	if !on {
		delete(dp.unattached[k.network], k.name)
		return
	}
	if dp.unattached == nil {
		dp.unattached = map[string]map[string]bool{}
	}
	if dp.unattached[k.network] == nil {
		dp.unattached[k.network] = map[string]bool{}
	}
	dp.unattached[k.network][k.name] = true
}
