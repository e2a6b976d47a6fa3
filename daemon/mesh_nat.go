package daemon

import (
	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/netdev"
)

// startMeshNAT gives the egress the routing mesh's per-packet NAT and its
// steering on this host's uplinks (Config.MeshNAT; docs/architecture.md,
// "Per-packet NAT for mode=ingress"), after removing the filters and
// TAPs a daemon that did not stop cleanly left. Without it (or when the
// steering cannot be set up) published ports keep the listener's path.
func (d *Daemon) startMeshNAT(tcpSecret []byte) {
	if !d.cfg.MeshNAT || d.egress == nil {
		return
	}
	if err := netdev.CleanSteer(); err != nil {
		d.log.Warn("removing stale published-port steering", "err", err)
	}
	n := gateway.NewNAT(gateway.NATConfig{TCPSecret: tcpSecret})
	s := netdev.NewSteer(n.Input)
	if err := n.SetUplinks(s); err != nil {
		d.log.Warn("published-port NAT off: steering failed; published ports keep the gateway's path", "err", err)
		_ = s.Close()
		return
	}
	d.meshSteer = s
	d.egress.SetNAT(n)
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
// the ports closed).
func (d *Daemon) stopMeshNAT() {
	if d.meshSteer != nil {
		if err := d.meshSteer.Close(); err != nil {
			d.log.Warn("removing published-port steering", "err", err)
		}
		d.meshSteer = nil
	}
}
