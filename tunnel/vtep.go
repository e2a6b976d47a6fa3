// Package tunnel is the VTEP (RFC 7348 VXLAN tunnel end point): it carries
// the Ethernet frames of overlay networks between hosts in VXLAN over UDP.
//
// Each overlay network is a *Network, which the host's virtual switch sees
// as one port: Write encapsulates frames in place (the VXLAN header goes in
// the headroom in front of the frame) and sends them to the VTEP that has
// the destination MAC, or to every peer (head-end replication) for
// broadcast, multicast and unknown unicast. One receive loop (VTEP.Run)
// reads batches of datagrams from the Underlay straight into buffers where
// the inner frame lands at packet.Headroom, validates them, learns inner
// source MACs behind external VTEPs and hands whole batches to each
// network's input function. Neither direction copies or allocates per
// packet; forwarding state is read from immutable snapshots.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

// Config configures a VTEP.
type Config struct {
	// Underlay carries the datagrams; the VTEP owns it and closes it on
	// Close.
	Underlay Underlay
	// DataPort is the UDP destination port of every datagram sent; 0 means
	// 4789 (packet.VXLANPort).
	DataPort uint16
	// Logger receives control-plane events (never per-packet ones); nil
	// discards them.
	Logger *slog.Logger
	// BatchSize is the number of datagrams read per batch; 0 means
	// packet.BatchSize.
	BatchSize int
	// AgingTime is how long a learned MAC lives without traffic; 0 means
	// 300s.
	AgingTime time.Duration
	// MaxLearned bounds the learned MACs per network (default 8192); more
	// sources are delivered but not learned.
	MaxLearned int
	// Now is the clock used for aging; nil means time.Now. For tests.
	Now func() time.Time
}

// DefaultMTU is the network MTU used when AddNetwork is given 0: 1500 minus
// the 50 bytes of outer IPv4, UDP, VXLAN and inner Ethernet headers.
const DefaultMTU = 1450

// InputFunc receives decapsulated frames: frame i is
// bufs[i][offset:offset+sizes[i]], with headroom in front of offset. The
// buffers are borrowed for the call. vswitch.PortRef.Input fits.
type InputFunc func(bufs [][]byte, sizes []int, offset int)

// VTEP is a VXLAN tunnel end point serving any number of networks (VNIs)
// over one underlay. Its methods are safe for concurrent use.
type VTEP struct {
	u          Underlay
	port       uint16
	log        *slog.Logger
	batch      int
	aging      int64
	maxLearned int
	now        func() time.Time
	epoch      time.Time

	nets atomic.Pointer[map[uint32]*Network] // immutable snapshot
	mu   sync.Mutex                          // serialises network changes
	txs  chan *txScratch                     // free per-call transmit scratch

	running   atomic.Bool
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	rx rxState // used by the receive loop only

	c vtepCounters
}

// rxState is the receive loop's batch, allocated once.
type rxState struct {
	bufs      [][]byte  // packet.BufferSize buffers
	msgs      []Message // msgs[i].Buf = bufs[i][packet.Headroom-VXLANHeaderLen:]
	gbufs     [][]byte  // frames of the group being collected
	gsizes    []int
	lastSweep int64
}

// New returns a VTEP with no networks. Call Run to start receiving.
func New(cfg Config) *VTEP {
	v := &VTEP{
		u:          cfg.Underlay,
		port:       cfg.DataPort,
		log:        cfg.Logger,
		batch:      cfg.BatchSize,
		aging:      int64(cfg.AgingTime),
		maxLearned: cfg.MaxLearned,
		now:        cfg.Now,
	}
	if v.port == 0 {
		v.port = packet.VXLANPort
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.batch <= 0 {
		v.batch = packet.BatchSize
	}
	if v.aging <= 0 {
		v.aging = int64(300 * time.Second)
	}
	if v.maxLearned <= 0 {
		v.maxLearned = 8192
	}
	if v.now == nil {
		v.now = time.Now
	}
	v.epoch = v.now()
	v.nets.Store(&map[uint32]*Network{})
	v.txs = make(chan *txScratch, 4*runtime.GOMAXPROCS(0))
	r := &v.rx
	r.bufs = make([][]byte, v.batch)
	r.msgs = make([]Message, v.batch)
	r.gbufs = make([][]byte, 0, v.batch)
	r.gsizes = make([]int, 0, v.batch)
	for i := range r.bufs {
		r.bufs[i] = make([]byte, packet.BufferSize)
		r.msgs[i].Buf = r.bufs[i][packet.Headroom-packet.VXLANHeaderLen:]
	}
	return v
}

// clock returns the VTEP time in nanoseconds since New.
func (v *VTEP) clock() int64 { return int64(v.now().Sub(v.epoch)) }

// AddNetwork starts serving vni with the given MTU (the largest inner IP
// packet; 0 means DefaultMTU). The network has no peers and no input
// function yet.
func (v *VTEP) AddNetwork(vni uint32, mtu int) (*Network, error) {
	if vni > packet.VXLANMaxVNI {
		return nil, fmt.Errorf("vni %d: out of range (0-%d)", vni, packet.VXLANMaxVNI)
	}
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if maxMTU := packet.MaxFrame - packet.EthernetHeaderLen - 4; mtu < 68 || mtu > maxMTU {
		return nil, fmt.Errorf("vni %d: mtu %d out of range (68-%d)", vni, mtu, maxMTU)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed.Load() {
		return nil, fmt.Errorf("vni %d: %w", vni, net.ErrClosed)
	}
	old := *v.nets.Load()
	if old[vni] != nil {
		return nil, fmt.Errorf("vni %d: network already exists", vni)
	}
	n := newNetwork(v, vni, mtu)
	next := make(map[uint32]*Network, len(old)+1)
	for k, x := range old {
		next[k] = x
	}
	next[vni] = n
	v.nets.Store(&next)
	v.log.Info("vxlan network added", "vni", vni, "mtu", mtu)
	return n, nil
}

// RemoveNetwork stops serving vni: its datagrams are dropped as
// "unknown-vni" from now on and its Write refuses frames. Removing an
// unknown VNI does nothing.
func (v *VTEP) RemoveNetwork(vni uint32) {
	v.mu.Lock()
	defer v.mu.Unlock()
	old := *v.nets.Load()
	n := old[vni]
	if n == nil {
		return
	}
	n.removed.Store(true)
	next := make(map[uint32]*Network, len(old))
	for k, x := range old {
		if k != vni {
			next[k] = x
		}
	}
	v.nets.Store(&next)
	v.log.Info("vxlan network removed", "vni", vni)
}

// Network returns the network serving vni, or nil.
func (v *VTEP) Network(vni uint32) *Network { return (*v.nets.Load())[vni] }

// Networks returns the networks, ordered by VNI.
func (v *VTEP) Networks() []*Network {
	m := *v.nets.Load()
	out := make([]*Network, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].vni < out[j].vni })
	return out
}

// Run receives and delivers datagrams until ctx is done (it then closes
// the VTEP and returns ctx.Err()) or Close is called (it returns nil). Only
// one Run may be active.
func (v *VTEP) Run(ctx context.Context) error {
	if !v.running.CompareAndSwap(false, true) {
		return errors.New("vtep: Run called twice")
	}
	stop := context.AfterFunc(ctx, func() { v.Close() })
	defer stop()
	var lastLog time.Time
	for {
		err := v.receiveOnce()
		if err == nil {
			continue
		}
		if v.closed.Load() || errors.Is(err, net.ErrClosed) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if v.closed.Load() {
				return nil
			}
			return err
		}
		v.c.readErrors.Add(1)
		if now := time.Now(); now.Sub(lastLog) > time.Second {
			lastLog = now
			v.log.Warn("vxlan underlay read failed", "err", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// Close closes the underlay, which ends Run. Networks refuse frames after.
func (v *VTEP) Close() error {
	v.closeOnce.Do(func() {
		v.closed.Store(true)
		v.closeErr = v.u.Close()
	})
	return v.closeErr
}

// receiveOnce reads one batch and delivers it.
func (v *VTEP) receiveOnce() error {
	n, err := v.u.ReadBatch(v.rx.msgs)
	if n > 0 {
		v.receive(v.rx.msgs[:n])
	}
	return err
}

// receive validates the datagrams in msgs (filled by ReadBatch into
// v.rx.bufs) and hands each run of consecutive frames of one network to
// that network's input function.
func (v *VTEP) receive(msgs []Message) {
	r := &v.rx
	nets := *v.nets.Load()
	now := v.clock()
	var (
		cur   *Network
		st    *netState
		lt    *learnedTable
		bytes uint64
		drops [numDrops]uint64 // VTEP level: before the network is known
	)
	for i := range msgs {
		m := &msgs[i]
		bytes += uint64(max(m.N, 0))
		if m.N < packet.VXLANHeaderLen+packet.EthernetHeaderLen || m.N > len(m.Buf) {
			drops[dropMalformed]++
			continue
		}
		x := packet.VXLAN(m.Buf[:m.N])
		if !x.Valid() {
			drops[dropMalformed]++
			continue
		}
		nw := nets[x.VNI()]
		if nw == nil {
			drops[dropUnknownVNI]++
			continue
		}
		if nw != cur {
			v.deliver(cur)
			cur, st, lt = nw, nw.state.Load(), nw.learned.Load()
		}
		p := st.allowed[m.Addr.Addr().Unmap()]
		if p == nil {
			nw.rx.drops[dropUnknownPeer]++
			continue
		}
		size := m.N - packet.VXLANHeaderLen
		eth := packet.Ethernet(x.Payload())
		src := eth.Src()
		if src.IsMulticast() || src.IsZero() {
			nw.rx.drops[dropMalformed]++
			continue
		}
		if st.remotes[src] == nil {
			if e := lt.m[src]; e != nil && e.peer == p {
				if now-e.seen.Load() > int64(time.Second) {
					e.seen.Store(now)
				}
			} else if nw.learn(src, p, now) {
				lt = nw.learned.Load()
			}
		}
		p.rxPackets.Add(1)
		p.rxBytes.Add(uint64(size))
		packet.ClearOffload(r.bufs[i]) // a complete frame from the wire
		r.gbufs = append(r.gbufs, r.bufs[i])
		r.gsizes = append(r.gsizes, size)
	}
	v.deliver(cur)
	v.c.rxDatagrams.Add(uint64(len(msgs)))
	v.c.rxBytes.Add(bytes)
	for i, d := range drops {
		if d > 0 {
			v.c.drops[i].Add(d)
		}
	}
	if now-r.lastSweep > min(v.aging/2, int64(30*time.Second)) {
		r.lastSweep = now
		for _, nw := range nets {
			nw.sweep(now)
		}
	}
}

// deliver hands the collected group to n's input function and adds n's
// receive counters.
func (v *VTEP) deliver(n *Network) {
	if n == nil {
		return
	}
	r := &v.rx
	if k := len(r.gbufs); k > 0 {
		var bytes uint64
		for _, s := range r.gsizes {
			bytes += uint64(s)
		}
		if in := n.input.Load(); in != nil && !n.removed.Load() {
			(*in)(r.gbufs, r.gsizes, packet.Headroom)
			n.c.rxPackets.Add(uint64(k))
			n.c.rxBytes.Add(bytes)
		} else {
			n.rx.drops[dropNoInput] += uint64(k)
		}
		clear(r.gbufs)
		r.gbufs, r.gsizes = r.gbufs[:0], r.gsizes[:0]
	}
	for i, d := range n.rx.drops {
		if d > 0 {
			n.c.drops[i].Add(d)
			n.rx.drops[i] = 0
		}
	}
}
