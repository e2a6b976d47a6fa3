package daemon

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/internal/fwprobe"
	"github.com/vxmesh/vxmesh/netdev"
)

// MeshNATMode says when the routing mesh's mode=ingress,
// client-ip=preserve TCP ports are translated per packet on this host's
// uplinks (Config.MeshNAT, `daemon --mesh-nat`).
//
// The steering's tc filters take those ports' segments away at the
// uplinks' ingress, before netfilter: an input firewall (nftables or
// iptables INPUT, PREROUTING, a netdev ingress chain) that drops them on
// the listener's path never sees them. MeshNATAuto therefore steers only
// while nothing could filter a locally delivered packet
// (fwprobe.DecideLocal) and checks again with the kernel tunnel's watcher
// (after every nftables change and every Config.KernelTunnelRecheck),
// removing the filters when a firewall appears (new connections then take
// the listener's path, through the firewall) and putting them back when it
// goes. MeshNATOn steers whatever the firewall says.
type MeshNATMode string

// The per-packet NAT modes.
const (
	MeshNATOff  MeshNATMode = "off"
	MeshNATAuto MeshNATMode = "auto"
	MeshNATOn   MeshNATMode = "on"
)

// ParseMeshNATMode parses auto, on or off, and the boolean spellings the
// flag had before it took a mode (true, false, 1, 0, ...) as on and off.
func ParseMeshNATMode(s string) (MeshNATMode, error) {
	m, err := parseAutoOnOff(s)
	return MeshNATMode(m), err
}

// meshNATState is the state of the NAT's steering, replaced whole.
type meshNATState struct {
	mode   MeshNATMode
	open   bool   // the NAT and its steering are set up
	active bool   // the steering's filters are wanted on the uplinks
	reason string // why active or not
	// cut counts the NAT's connections that were open when steering
	// stopped: their later segments reach the kernel, which resets them.
	cut uint64
}

// gatedUplinks is the NAT's steering with a switch: while off, it is
// synced to no port, so its filters and TAPs are gone and every segment
// takes the kernel's path (through the host's firewall); the NAT keeps
// its ports, to steer again at once when switched on.
type gatedUplinks struct {
	u  gateway.Uplinks
	on atomic.Bool
}

// Sync steers ports while g is on, none while off.
func (g *gatedUplinks) Sync(ports []uint16) error {
	if !g.on.Load() {
		ports = nil
	}
	return g.u.Sync(ports)
}

// Write sends frames out of an uplink (replies of NAT flows).
func (g *gatedUplinks) Write(ifindex int, bufs [][]byte, offset int) (int, error) {
	return g.u.Write(ifindex, bufs, offset)
}

// meshNATMode returns the configured mode ("" is off).
func (d *Daemon) meshNATMode() MeshNATMode {
	if d.cfg.MeshNAT == "" {
		return MeshNATOff
	}
	return d.cfg.MeshNAT
}

// meshNATAllowed checks whether mode (on or auto) steers now.
func (d *Daemon) meshNATAllowed(mode MeshNATMode) (bool, string) {
	if mode == MeshNATOn {
		return true, "--mesh-nat=on: steered past the host's input firewall"
	}
	v := fwprobe.CheckLocal()
	return v.Clear, v.Reason
}

// startMeshNAT gives the egress the routing mesh's per-packet NAT and its
// steering on this host's uplinks (Config.MeshNAT; docs/architecture.md,
// "Routing mesh: per-packet NAT on the ingress host"), after removing the filters and
// TAPs a daemon that did not stop cleanly left. Without it (or when the
// steering cannot be set up) published ports keep the listener's path;
// in auto mode they keep it while a firewall could filter them.
func (d *Daemon) startMeshNAT(tcpSecret []byte) {
	mode := d.meshNATMode()
	if mode == MeshNATOff || d.egress == nil {
		d.meshNAT.Store(&meshNATState{mode: mode, reason: "switched off (--mesh-nat=off)"})
		return
	}
	if err := netdev.CleanSteer(); err != nil {
		d.log.Warn("removing stale published-port steering", "err", err)
	}
	n := gateway.NewNAT(gateway.NATConfig{TCPSecret: tcpSecret})
	s := netdev.NewSteer(n.Input)
	active, reason := d.meshNATAllowed(mode)
	g := &gatedUplinks{u: s}
	g.on.Store(active)
	if err := n.SetUplinks(g); err != nil {
		d.log.Warn("published-port NAT off: steering failed; published ports keep the gateway's path", "err", err)
		d.meshNAT.Store(&meshNATState{mode: mode, reason: "unavailable: " + err.Error()})
		_ = s.Close()
		return
	}
	d.meshSteer, d.meshGate = s, g
	d.meshNAT.Store(&meshNATState{mode: mode, open: true, active: active, reason: reason})
	d.egress.SetNAT(n)
	if active {
		d.log.Info("published-port NAT steering on", "mode", mode, "reason", reason)
	} else {
		d.log.Warn("published-port NAT steering off: published ports keep the gateway's path", "mode", mode, "reason", reason)
	}
}

// recheckMeshNAT checks the steering's condition once and, where the
// answer changed, adds or removes the filters and logs the change once.
// Connections the NAT has open when the filters go lose their later
// segments to the kernel, which resets them: counted and logged. The
// check runs without d.mu; the switch holds it, so that it cannot put
// filters back after shutdown removed them (stopMeshNAT).
func (d *Daemon) recheckMeshNAT() {
	cur := d.meshNAT.Load()
	if cur == nil || !cur.open {
		return
	}
	check := d.meshNATCheck
	if check == nil {
		check = d.meshNATAllowed
	}
	active, reason := check(cur.mode)
	if active == cur.active && reason == cur.reason {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.meshGate == nil {
		return // shut down
	}
	next := *cur
	next.active, next.reason = active, reason
	if active == cur.active {
		d.meshNAT.Store(&next)
		d.log.Debug("published-port NAT steering: reason changed", "active", active, "reason", reason)
		return
	}
	n := d.egress.NAT()
	var open int64
	if !active && n != nil {
		open = n.Stats().Open
		next.cut += uint64(max(open, 0))
	}
	d.meshGate.on.Store(active)
	d.meshNAT.Store(&next)
	var err error
	if n != nil {
		err = n.Resync()
	}
	switch {
	case active:
		d.log.Info("published-port NAT steering back on", "mode", cur.mode, "reason", reason, "err", err)
	default:
		d.log.Warn("published-port NAT steering off: new connections take the gateway's path, through the firewall; open NAT connections are reset by the kernel",
			"mode", cur.mode, "reason", reason, "cut", open, "err", err)
	}
}

// steerMesh has l's port translated by the NAT when it can be: a
// mode=ingress, client-ip=preserve TCP port. A failure is logged once per
// port and leaves it on the listener's path.
func (d *Daemon) steerMesh(l *meshListener) {
	if d.egress.NAT() == nil || l.port == nil || l.spec.mode != meshIngress || l.spec.proto != "tcp" ||
		clientIPMode(l.spec.clientIP) != gateway.ClientIPPreserve {
		return
	}
	if err := l.port.SteerNAT(); err != nil {
		d.log.Warn("published port not steered to the NAT; it keeps the gateway's path", "service", l.service, "publish", l.spec.String(), "err", err)
	}
}

// resyncMeshNAT re-checks the uplinks and addresses the NAT's steering
// hooks and frees its expired flows (every reconcile).
func (d *Daemon) resyncMeshNAT() {
	n := d.egress.NAT()
	if n == nil {
		return
	}
	n.Sweep()
	if err := n.Resync(); err != nil && err.Error() != d.meshSteerErr {
		d.log.Warn("published-port steering", "err", err)
		d.meshSteerErr = err.Error()
	}
}

// stopMeshNAT removes the steering's filters and TAPs (shutdown, after
// the ports closed); callers hold d.mu.
func (d *Daemon) stopMeshNAT() {
	d.meshGate = nil // no recheck switches the steering on again
	if d.meshSteer != nil {
		if err := d.meshSteer.Close(); err != nil {
			d.log.Warn("removing published-port steering", "err", err)
		}
		d.meshSteer = nil
	}
}

// parseAutoOnOff parses a mode flag's auto, on or off (any case), and the
// boolean spellings (true, false, 1, 0, ...) as on and off.
func parseAutoOnOff(s string) (string, error) {
	switch m := strings.ToLower(strings.TrimSpace(s)); m {
	case "off", "auto", "on":
		return m, nil
	}
	if b, err := strconv.ParseBool(s); err == nil {
		if b {
			return "on", nil
		}
		return "off", nil
	}
	return "", fmt.Errorf("%q: want auto, on or off", s)
}
