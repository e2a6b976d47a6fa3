package dataplane

import (
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/vswitch"
)

// port is a local endpoint's device and the loop that reads it into the
// switch. The loop runs from the port's first Reconfig until it is
// removed; while the port is not on a switch (its network is being
// rebuilt, or it could not join), what it reads is dropped and counted.
type port struct {
	key     portKey
	cfg     PortConfig
	sw      *vswitch.Switch // the switch ref belongs to
	ref     atomic.Pointer[vswitch.Port]
	done    chan struct{}
	closing atomic.Bool
	state   atomic.Pointer[string]
	// detached counts the frames read while the port was on no switch.
	detached atomic.Uint64
}

func (p *port) setState(s string) { p.state.Store(&s) }

func (p *port) stateString() string {
	if s := p.state.Load(); s != nil {
		return *s
	}
	return "down"
}

// busyPoller is a device whose reader can poll after traffic
// (netdev.TAP.SetBusyPoll).
type busyPoller interface{ SetBusyPoll(time.Duration) }

// addPort takes over w's device and starts its read loop.
func (dp *Dataplane) addPort(k portKey, w PortConfig) {
	dp.changes++
	p := &port{key: k, cfg: w, done: make(chan struct{})}
	p.setState("down: not on a switch yet")
	dp.ports[k] = p
	if bp, ok := w.Device.(busyPoller); ok && dp.busyPoll > 0 {
		bp.SetBusyPoll(dp.busyPoll)
	}
	dp.setUnattached(k, true)
	go p.read(w.Device, dp.batches)
}

// read hands the batches read from dev (the port's device, passed in:
// Reconfig changes p.cfg's address fields meanwhile) to the switch, run to
// completion, until the device fails or is closed. A device that can wait
// for frames (a TAP) borrows a batch from pool for each read, so an idle
// one holds no buffers; any other owns one batch for its lifetime.
func (p *port) read(dev netdev.Device, pool *batchPool) {
	defer close(p.done)
	w, ok := dev.(netdev.ReadWaiter)
	if !ok || dev.BatchSize() != pooledBatch {
		p.readOwn(dev)
		return
	}
	for {
		if err := w.WaitRead(); err != nil {
			p.failed(err)
			return
		}
		b := pool.get()
		n, err := dev.Read(b.Bufs, b.Sizes, packet.Headroom)
		p.input(b, n)
		pool.put(b)
		if err != nil {
			p.failed(err)
			return
		}
	}
}

// readOwn is read with a batch of the port's own.
func (p *port) readOwn(dev netdev.Device) {
	b := packet.NewBatch(dev.BatchSize())
	for {
		n, err := dev.Read(b.Bufs, b.Sizes, packet.Headroom)
		p.input(b, n)
		if err != nil {
			p.failed(err)
			return
		}
	}
}

// input gives the n frames read into b to the port's switch.
func (p *port) input(b *packet.Batch, n int) {
	if n <= 0 {
		return
	}
	if ref := p.ref.Load(); ref != nil {
		ref.Input(b.Bufs[:n], b.Sizes[:n], packet.Headroom)
	} else {
		p.detached.Add(uint64(n))
	}
}

// failed records the error that ended the read loop.
func (p *port) failed(err error) {
	if !p.closing.Load() {
		p.setState("down: " + err.Error())
	}
}

// attach puts p on n's switch.
func (dp *Dataplane) attach(p *port, n *network) error {
	dp.changes++
	ref, err := n.sw.AddPort(p.cfg.Device, vswitch.PortConfig{Name: p.key.name, MAC: p.cfg.MAC, IP: p.cfg.IP, Security: true})
	if err != nil {
		p.setState("down: " + err.Error())
		return err
	}
	p.sw = n.sw
	p.ref.Store(ref)
	dp.setUnattached(p.key, false)
	if !p.closing.Load() {
		select {
		case <-p.done:
		default:
			p.setState("up")
		}
	}
	return nil
}

// detach takes p off its switch; its loop keeps reading.
func (dp *Dataplane) detach(p *port) {
	ref := p.ref.Swap(nil)
	if ref == nil {
		return
	}
	dp.changes++
	p.sw.RemovePort(ref)
	p.sw = nil
	dp.setUnattached(p.key, true)
	select {
	case <-p.done:
	default:
		p.setState("down: not on a switch")
	}
}

// removePort detaches p, closes its device and waits for its loop.
func (dp *Dataplane) removePort(p *port) {
	dp.changes++
	p.closing.Store(true)
	p.cfg.Device.Close()
	<-p.done
	dp.detach(p)
	delete(dp.ports, p.key)
	dp.setUnattached(p.key, false)
	p.setState("down: stopped")
}
