package daemon

import (
	"context"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/fwprobe"
	"github.com/vxmesh/vxmesh/tunnel"
)

// KernelTunnelMode says when TCP super-segments go to the kernel as whole
// VXLAN super-packets (Config.KernelTunnel, `daemon --kernel-tunnel`).
//
// The kernel forwards those packets from a TAP in the host's namespace to
// the underlay, so the host's netfilter sees them as forwarded, where the
// daemon's own UDP is locally sent: a FORWARD policy of DROP (Docker
// installs one) drops them silently. KernelTunnelAuto therefore uses the
// kernel path only while nothing can filter forwarded packets
// (fwprobe.Decide: no nftables base chain of family ip or inet on the
// prerouting, forward or postrouting hook, no legacy iptables table) and
// checks again after every nftables change and every
// Config.KernelTunnelRecheck, switching the VTEP between the kernel path
// and the userspace split at run time.
// KernelTunnelOn trusts the operator to have let UDP to the data port
// from this node's address through. Both need the reverse-path filter
// off, checked at the same times.
type KernelTunnelMode string

// The kernel tunnel modes.
const (
	KernelTunnelOff  KernelTunnelMode = "off"
	KernelTunnelAuto KernelTunnelMode = "auto"
	KernelTunnelOn   KernelTunnelMode = "on"
)

// DefaultKernelTunnelRecheck is how often the conditions of the kernel
// tunnel are checked again by default: one netlink dump of the nftables
// chains and a few small file reads, about 50 us. Legacy iptables and
// the sysctls send no notification, so this bounds how long a legacy
// firewall loaded after start drops the kernel path's packets.
const DefaultKernelTunnelRecheck = time.Second

// ParseKernelTunnelMode parses auto, on or off, and the boolean spellings
// the flag had before it took a mode (true, false, 1, 0, ...) as on and
// off.
func ParseKernelTunnelMode(s string) (KernelTunnelMode, error) {
	m, err := parseAutoOnOff(s)
	return KernelTunnelMode(m), err
}

// ktnlState is the state of kernel tunnel segmentation, replaced whole.
type ktnlState struct {
	mode   KernelTunnelMode
	open   bool   // the TAP is open: the VTEP has a SuperWriter
	active bool   // the VTEP uses it
	reason string // why active or not
}

// kernelTunnelMode returns the configured mode ("" is off).
func (d *Daemon) kernelTunnelMode() KernelTunnelMode {
	if d.cfg.KernelTunnel == "" {
		return KernelTunnelOff
	}
	return d.cfg.KernelTunnel
}

// openKernelTunnel opens the kernel tunnel TAP unless the mode is off or
// the kernel or host cannot have it (then nil: the VTEP segments in
// userspace), and records whether the VTEP is to use it from the start;
// ul's transmit ports become its source ports.
func (d *Daemon) openKernelTunnel(ul tunnel.Underlay) tunnel.SuperWriter {
	mode := d.kernelTunnelMode()
	if mode == KernelTunnelOff {
		d.ktnl.Store(&ktnlState{mode: mode, reason: "switched off (--kernel-tunnel=off)"})
		return nil
	}
	kc := tunnel.KernelTunnelConfig{Local: d.cfg.Advertise}
	if u, ok := ul.(*tunnel.UDP); ok {
		kc.SourcePorts = u.TxPorts()
	}
	k, err := tunnel.OpenKernelTunnel(kc)
	if err != nil {
		d.ktnl.Store(&ktnlState{mode: mode, reason: "unavailable: " + err.Error()})
		d.log.Warn("kernel tunnel segmentation unavailable: segmenting in userspace", "mode", mode, "err", err)
		return nil
	}
	active, reason := d.kernelTunnelAllowed(mode)
	d.ktnl.Store(&ktnlState{mode: mode, open: true, active: active, reason: reason})
	if active {
		d.log.Info("kernel tunnel segmentation on", "tap", k.Name(), "mode", mode, "reason", reason)
	} else {
		d.log.Warn("kernel tunnel segmentation off: segmenting in userspace", "tap", k.Name(), "mode", mode, "reason", reason)
	}
	return k
}

// kernelTunnelAllowed checks the conditions of mode (on or auto) now.
func (d *Daemon) kernelTunnelAllowed(mode KernelTunnelMode) (bool, string) {
	if err := tunnel.CheckReversePathFilter(); err != nil {
		return false, err.Error()
	}
	if mode == KernelTunnelOn {
		return true, "--kernel-tunnel=on: the forward firewall is the operator's to open"
	}
	v := fwprobe.Check()
	return v.Clear, v.Reason
}

// watchFirewall checks the conditions of the kernel tunnel and of the
// published-port NAT's steering (mesh_nat.go) again every
// Config.KernelTunnelRecheck until ctx is done and, where either is in
// auto mode, at once after every nftables change in the host's namespace
// (fwprobe.Watch), so a firewall that appears (Docker starting) turns
// them off within a netlink round trip rather than the interval. Legacy
// iptables and the sysctls send no notification: the interval covers
// them. One watcher serves both.
func (d *Daemon) watchFirewall(ctx context.Context) {
	every := d.cfg.KernelTunnelRecheck
	if every <= 0 {
		every = DefaultKernelTunnelRecheck
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var changed <-chan struct{}
	k, m := d.ktnl.Load(), d.meshNAT.Load()
	auto := k != nil && k.open && k.mode == KernelTunnelAuto && d.ktnlCheck == nil ||
		m != nil && m.open && m.mode == MeshNATAuto && d.meshNATCheck == nil
	if auto {
		c, err := fwprobe.Watch(ctx)
		if err != nil {
			d.log.Warn("firewall watch: no nftables change notifications; checking every interval only", "interval", every, "err", err)
		}
		changed = c
		if err == nil {
			// A change between the first check and the subscription
			// sent no notification to this socket.
			d.recheckFirewall()
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case _, ok := <-changed:
			if !ok {
				changed = nil // the watch ended: the interval goes on
				continue
			}
		}
		d.recheckFirewall()
	}
}

// recheckFirewall checks both consumers' conditions once.
func (d *Daemon) recheckFirewall() {
	d.recheckKernelTunnel()
	d.recheckMeshNAT()
}

// recheckKernelTunnel checks the conditions once and, where the answer
// changed, switches the VTEP (it reads the switch once per transmit
// batch, so no frame is lost to the switch) and logs the change once.
func (d *Daemon) recheckKernelTunnel() {
	cur := d.ktnl.Load()
	if cur == nil || !cur.open {
		return
	}
	check := d.ktnlCheck
	if check == nil {
		check = d.kernelTunnelAllowed
	}
	active, reason := check(cur.mode)
	if active == cur.active && reason == cur.reason {
		return
	}
	d.ktnl.Store(&ktnlState{mode: cur.mode, open: true, active: active, reason: reason})
	switch {
	case active == cur.active:
		d.log.Debug("kernel tunnel segmentation: reason changed", "active", active, "reason", reason)
	case active:
		d.dp.SetKernelTunnel(true)
		d.log.Info("kernel tunnel segmentation back on", "mode", cur.mode, "reason", reason)
	default:
		d.dp.SetKernelTunnel(false)
		d.log.Warn("kernel tunnel segmentation off: segmenting in userspace", "mode", cur.mode, "reason", reason)
	}
}

// kernelTunnelStats returns the state of kernel tunnel segmentation and
// the VTEP's counters of it (ts); nil with the mode off while the
// counters are zero.
func (d *Daemon) kernelTunnelStats(ts tunnel.Stats) *api.KernelTunnelStats {
	ks := d.ktnl.Load()
	if (ks == nil || ks.mode == KernelTunnelOff) && ts.TxSupers+ts.SuperFallbacks+ts.RxSupers == 0 {
		return nil
	}
	out := &api.KernelTunnelStats{TxSupers: ts.TxSupers, SuperFallbacks: ts.SuperFallbacks, RxSupers: ts.RxSupers}
	if ks != nil {
		out.Mode, out.Active, out.Reason = string(ks.mode), ks.active, ks.reason
	}
	return out
}
