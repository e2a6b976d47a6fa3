// Package tunnel is the VTEP (RFC 7348 VXLAN tunnel end point): it carries
// the Ethernet frames of overlay networks between hosts in VXLAN over UDP.
//
// Each overlay network is a *Segment, which the host's virtual switch sees
// as one port: Write encapsulates frames in place (the VXLAN header goes in
// the headroom in front of the frame) and sends them to the VTEP that has
// the destination MAC, or to every peer (head-end replication) for
// broadcast, multicast and unknown unicast. One receive loop (VTEP.Run) per
// receive queue of the underlay (MultiQueueUnderlay) reads batches of
// datagrams straight into buffers where the inner frame lands at
// packet.Headroom, validates them, learns the inner
// source MACs that no static entry names and hands whole batches to each
// network's input function. Runs of segments go to the underlay as one
// UDP segmentation send (Message.GSOSize); coalesced (UDP_GRO) reads are
// split into their datagrams, and consecutive TCP segments of one flow
// are merged into one super-segment with GSO metadata (packet.GROHead),
// moving their payloads within the receive buffers, so the TAP takes
// them in one write. Neither direction allocates per packet; forwarding
// state is read from immutable snapshots.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vxmesh/vxmesh/crypto/esp"
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
	// ESPUnderlay receives the ESP datagrams (RFC 3948) of encrypted
	// networks, one per message or a coalesced run per message
	// (Message.GSOSize, UDP_GRO), each opened in place; the VTEP owns it
	// and closes it on Close. Nil: the VTEP receives no ESP, and encrypted networks
	// receive nothing.
	ESPUnderlay Underlay
	// ESPPort is the UDP destination port of every ESP datagram sent; 0
	// means 4500 (esp.Port).
	ESPPort uint16
	// LocalAddr, if set, is this node's own underlay address: datagrams
	// claiming to come from it are dropped ("own-address").
	LocalAddr netip.Addr
	// Super, if set, sends the TCP super-segments of cleartext networks to
	// one peer through the kernel as whole VXLAN super-packets
	// (KernelTunnel); a super-segment it refuses is split and sent over
	// the Underlay as without it. The VTEP owns it and closes it on Close.
	// It is used from New on; SetSuperEnabled switches it off and on.
	Super SuperWriter
}

// DefaultMTU is the network MTU used when AddSegment is given 0: 1500 minus
// the 50 bytes of outer IPv4, UDP, VXLAN and inner Ethernet headers.
const DefaultMTU = 1450

// InputFunc receives decapsulated frames: frame i is
// bufs[i][offset:offset+sizes[i]], with headroom in front of offset. The
// buffers are borrowed for the call. vswitch.Port.Input fits.
type InputFunc func(bufs [][]byte, sizes []int, offset int)

// VTEP is a VXLAN tunnel end point serving any number of networks (VNIs)
// over one underlay. Its methods are safe for concurrent use.
type VTEP struct {
	u          Underlay
	port       uint16
	espU       Underlay
	espPort    uint16
	log        *slog.Logger
	batch      int
	aging      int64
	maxLearned int
	now        func() time.Time
	epoch      time.Time
	local      netip.Addr
	super      SuperWriter
	superOn    atomic.Bool // super is used (SetSuperEnabled); read once per transmit batch

	nets atomic.Pointer[map[uint32]*Segment] // immutable snapshot
	mu   sync.Mutex                          // serialises network changes
	txs  chan *txScratch                     // free per-call transmit scratch

	running   atomic.Bool
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	rx   rxState                  // used by the receive loop only
	mq   MultiQueueUnderlay       // u, if it has several receive queues
	rxq  []rxState                // receive queues 1.. of mq, one loop each
	erx  rxState                  // used by the ESP receive loop only
	sec  atomic.Pointer[secState] // SAs, immutable snapshot
	inMu sync.Mutex               // serialises the loops' input calls

	helpq    chan helpOffer // work offered to an idle helper (split)
	helpStop chan struct{}  // closed by Close: the helpers end
	helpOnce sync.Once      // starts the helpers (startHelpers)
	helpers  int            // how many: GOMAXPROCS at New - 1, at most 3

	c vtepCounters
}

// rxState is the receive loop's batch, allocated once.
type rxState struct {
	bufs  [][]byte  // packet.BufferSize buffers
	msgs  []Message // msgs[i].Buf = bufs[i][packet.Headroom-VXLANHeaderLen:]
	group groTable  // the current segment's frames, delivered together

	// per batch
	nets      map[uint32]*Segment
	now       int64
	cur       *Segment
	st        *netState
	drops     [numDrops]uint64 // VTEP level: before the network is known
	lastSweep int64
	// ndrops are the drops counted for r.cur, added to its counters by
	// deliver.
	ndrops [numDrops]uint64
	supers uint64 // super-segments received whole in the batch
	// esp says the batch came from the ESP socket, whose datagrams are
	// opened in place with sec's SAs.
	esp bool
	sec *secState
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
		espU:       cfg.ESPUnderlay,
		espPort:    cfg.ESPPort,
		local:      cfg.LocalAddr.Unmap(),
		super:      cfg.Super,
		helpq:      make(chan helpOffer),
		helpStop:   make(chan struct{}),
	}
	v.superOn.Store(cfg.Super != nil)
	if v.espPort == 0 {
		v.espPort = esp.Port
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
	v.nets.Store(&map[uint32]*Segment{})
	v.txs = make(chan *txScratch, 4*runtime.GOMAXPROCS(0))
	v.helpers = min(runtime.GOMAXPROCS(0)-1, 3)
	v.rx.init(v.batch, packet.VXLANHeaderLen)
	if mq, ok := v.u.(MultiQueueUnderlay); ok && mq.RxQueues() > 1 {
		v.mq = mq
		v.rxq = make([]rxState, mq.RxQueues()-1)
		for i := range v.rxq {
			v.rxq[i].init(v.batch, packet.VXLANHeaderLen)
		}
	}
	if v.espU != nil {
		v.erx.init(v.batch, espRxFront)
		v.erx.group.trusted = true
	}
	return v
}

// init allocates a receive batch whose datagrams are read front bytes
// before packet.Headroom.
func (r *rxState) init(batch, front int) {
	r.bufs = make([][]byte, batch)
	r.msgs = make([]Message, batch)
	r.group.init(batch)
	for i := range r.bufs {
		r.bufs[i] = make([]byte, packet.BufferSize)
		r.msgs[i].Buf = r.bufs[i][packet.Headroom-front:]
	}
}

// clock returns the VTEP time in nanoseconds since New.
func (v *VTEP) clock() int64 { return int64(v.now().Sub(v.epoch)) }

// AddSegment starts serving vni with the given MTU (the largest inner IP
// packet; 0 means DefaultMTU). The network has no peers and no input
// function yet.
func (v *VTEP) AddSegment(vni uint32, mtu int) (*Segment, error) {
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
	n := newSegment(v, vni, mtu)
	next := make(map[uint32]*Segment, len(old)+1)
	for k, x := range old {
		next[k] = x
	}
	next[vni] = n
	v.nets.Store(&next)
	v.log.Info("vxlan network added", "vni", vni, "mtu", mtu)
	return n, nil
}

// RemoveSegment stops serving vni: its datagrams are dropped as
// "unknown-vni" from now on and its Write refuses frames. Removing an
// unknown VNI does nothing.
func (v *VTEP) RemoveSegment(vni uint32) {
	v.mu.Lock()
	defer v.mu.Unlock()
	old := *v.nets.Load()
	n := old[vni]
	if n == nil {
		return
	}
	n.removed.Store(true)
	next := make(map[uint32]*Segment, len(old))
	for k, x := range old {
		if k != vni {
			next[k] = x
		}
	}
	v.nets.Store(&next)
	v.log.Info("vxlan network removed", "vni", vni)
}

// Segment returns the network serving vni, or nil.
func (v *VTEP) Segment(vni uint32) *Segment { return (*v.nets.Load())[vni] }

// Segments returns the networks, ordered by VNI.
func (v *VTEP) Segments() []*Segment {
	m := *v.nets.Load()
	out := make([]*Segment, 0, len(m))
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
	// Receive queue 0 runs here; the other queues and ESP in their own
	// goroutines.
	var others []func() error
	for q := range v.rxq {
		others = append(others, func() error { return v.receiveQueueOnce(q + 1) })
	}
	if v.espU != nil {
		others = append(others, v.espReceiveOnce)
	}
	done := make(chan error, len(others))
	for i, once := range others {
		what := "vxlan"
		if v.espU != nil && i == len(others)-1 {
			what = "esp"
		}
		go func() { done <- v.loop(ctx, once, what) }()
	}
	err := v.loop(ctx, v.receiveOnce, "vxlan")
	v.Close() // ends the other loops too
	for range others {
		if oerr := <-done; err == nil && ctx.Err() == nil {
			err = oerr
		}
	}
	return err
}

// loop runs one receive loop until the VTEP is closed or its underlay
// fails for good.
func (v *VTEP) loop(ctx context.Context, once func() error, what string) error {
	var lastLog time.Time
	for {
		err := once()
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
			v.log.Warn("underlay read failed", "socket", what, "err", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// SetSuperEnabled switches the kernel path (Config.Super) on or off for
// the transmit batches that start after it returns; a batch under way
// finishes as it started. Off, TCP super-segments are split here as
// without a SuperWriter. It reports whether the VTEP has a SuperWriter
// (without one, on changes nothing). The data path reads the switch with
// one atomic load per batch.
func (v *VTEP) SetSuperEnabled(on bool) bool {
	if v.super == nil {
		return false
	}
	v.superOn.Store(on)
	return true
}

// SuperEnabled reports whether TCP super-segments go through the
// SuperWriter: there is one and it is switched on.
func (v *VTEP) SuperEnabled() bool { return v.super != nil && v.superOn.Load() }

// Close closes the underlay, which ends Run. Segments refuse frames after.
func (v *VTEP) Close() error {
	v.closeOnce.Do(func() {
		v.closed.Store(true)
		close(v.helpStop)
		v.closeErr = v.u.Close()
		if v.super != nil {
			if err := v.super.Close(); v.closeErr == nil {
				v.closeErr = err
			}
		}
		if v.espU != nil {
			if err := v.espU.Close(); v.closeErr == nil {
				v.closeErr = err
			}
		}
	})
	return v.closeErr
}

// receiveOnce reads one batch and delivers it.
func (v *VTEP) receiveOnce() error {
	n, err := v.u.ReadBatch(v.rx.msgs)
	if n > 0 {
		v.receive(&v.rx, v.rx.msgs[:n], false)
	}
	return err
}

// receiveQueueOnce reads one batch from receive queue q >= 1 of a
// MultiQueueUnderlay into that queue's batch and delivers it.
func (v *VTEP) receiveQueueOnce(q int) error {
	r := &v.rxq[q-1]
	n, err := v.mq.ReadBatchQueue(q, r.msgs)
	if n > 0 {
		v.receive(r, r.msgs[:n], false)
	}
	return err
}

// espReceiveOnce reads one batch of ESP datagrams (with UDP_GRO, runs of
// them coalesced into one message) and delivers their frames like
// cleartext ones; receive opens each datagram in place on the way.
func (v *VTEP) espReceiveOnce() error {
	r := &v.erx
	for i := range r.msgs {
		r.msgs[i].Buf = r.bufs[i][packet.Headroom-espRxFront:]
	}
	n, err := v.espU.ReadBatch(r.msgs)
	if n > 0 {
		v.receive(r, r.msgs[:n], true)
	}
	return err
}

// receive validates the datagrams in msgs (filled by ReadBatch into
// r.bufs; a message with GSOSize holds several) and hands each run of
// consecutive frames of one network to that network's input function.
// Consecutive TCP segments of one flow are coalesced into super-segments
// (packet.GROHead) on the way. With fromESP, r is the ESP loop's batch
// (msgs[i].Buf = r.bufs[i][packet.Headroom-espRxFront:]) and every
// datagram is opened in place (openESP) just before it is handled, so
// that a datagram's frame is still in cache when it is coalesced; without,
// datagrams for an encrypted network are dropped ("cleartext").
func (v *VTEP) receive(r *rxState, msgs []Message, fromESP bool) {
	r.nets = *v.nets.Load()
	r.now = v.clock()
	r.cur, r.st = nil, nil
	r.esp, r.sec = fromESP, nil
	if fromESP {
		r.sec = v.sec.Load()
	}
	var bytes, dgrams uint64
	for i := range msgs {
		m := &msgs[i]
		bytes += uint64(max(m.N, 0))
		if m.N < 0 || m.N > len(m.Buf) {
			dgrams++
			if fromESP {
				r.drops[dropESPMalformed]++
			} else {
				r.drops[dropMalformed]++
			}
			continue
		}
		if v.local.IsValid() && m.Addr.Addr().Unmap() == v.local {
			dgrams++
			r.drops[dropOwnAddr]++
			continue
		}
		seg := m.N
		if m.GSOSize > 0 && m.GSOSize < m.N {
			seg = m.GSOSize
		}
		for off := 0; ; off += seg {
			dgrams++
			v.receiveOne(r, i, off, m.Buf[off:min(off+seg, m.N)], m.Addr)
			if seg == 0 || off+seg >= m.N {
				break
			}
		}
	}
	v.deliver(r, r.cur)
	r.cur, r.st = nil, nil
	v.c.rxDatagrams.Add(dgrams)
	v.c.rxBytes.Add(bytes)
	if r.supers > 0 {
		v.c.rxSupers.Add(r.supers)
		r.supers = 0
	}
	for i, d := range r.drops {
		if d > 0 {
			v.c.drops[i].Add(d)
			r.drops[i] = 0
		}
	}
	if now := r.now; now-r.lastSweep > min(v.aging/2, int64(30*time.Second)) {
		r.lastSweep = now
		for _, nw := range r.nets {
			nw.sweep(now)
		}
	}
	r.nets = nil
}

// receiveOne handles datagram d from addr, at offset off of message i:
// in an ESP batch (r.esp) it is opened in place first (r.sec holds the
// SAs) and comes from the peer its SA authenticates.
func (v *VTEP) receiveOne(r *rxState, i, off int, d []byte, addr netip.AddrPort) {
	if r.esp {
		start := packet.Headroom - espRxFront + off
		var peer netip.Addr
		if d, peer = v.openESP(r.sec, r.bufs[i], start, start+len(d), &r.drops); d == nil {
			return
		}
		addr = netip.AddrPortFrom(peer, 0)
	}
	v.receiveDatagram(r, d, addr, i, off == 0)
}

// receiveDatagram validates one datagram d from addr, read into
// r.bufs[i] (at its start if first), and adds its frame to the group.
func (v *VTEP) receiveDatagram(r *rxState, d []byte, addr netip.AddrPort, i int, first bool) {
	if len(d) < packet.VXLANHeaderLen+packet.EthernetHeaderLen {
		r.drops[dropMalformed]++
		return
	}
	x := packet.VXLAN(d)
	if !x.Valid() {
		r.drops[dropMalformed]++
		return
	}
	nw := r.nets[x.VNI()]
	if nw == nil {
		r.drops[dropUnknownVNI]++
		return
	}
	if nw != r.cur {
		v.deliver(r, r.cur)
		r.cur, r.st = nw, nw.state.Load()
	}
	if !r.esp && nw.cipher.Load() != 0 {
		r.ndrops[dropCleartext]++
		return
	}
	st := r.st
	p := st.allowed[addr.Addr().Unmap()]
	if p == nil {
		r.ndrops[dropUnknownPeer]++
		return
	}
	frame := x.Payload()
	src := packet.Ethernet(frame).Src()
	if src.IsMulticast() || src.IsZero() {
		r.ndrops[dropMalformed]++
		return
	}
	// A MAC the cluster placed behind one VTEP cannot come from another,
	// nor one of this host's endpoints from any (Segment.SetLocals);
	// other MACs are learned (Segment.SetExternal, SetMembers): behind an
	// external VTEP, and behind a member whose endpoint's static entry
	// has not arrived yet.
	if sp := st.remotes[src]; sp != nil {
		if sp != p {
			r.ndrops[dropSpoofedSrc]++
			return
		}
	} else if st.locals[src] {
		r.ndrops[dropSpoofedSrc]++
		return
	} else if e := nw.learned.Lookup(src); e != nil && e.Value == p {
		if r.now-e.Seen() > int64(time.Second) {
			e.Touch(r.now) // at most once a second: a store per frame would bounce the cache line
		}
	} else if e == nil || p.external.Load() || !nw.learned.Live(e, r.now) {
		nw.learn(src, p, r.now)
	}
	p.rxPackets.Add(1)
	p.rxBytes.Add(uint64(len(frame)))
	g := &r.group
	if first && len(frame) > nw.mtu+packet.EthernetHeaderLen && packet.ParseTunnelSuper(frame, nw.mtu, packet.OffloadOf(r.bufs[i])) {
		// A super-segment the sending kernel left whole (SuperWriter, or
		// a Linux VTEP over a veth): handed on as one GSO frame.
		g.addSuper(r.bufs[i], frame)
		r.supers++
		return
	}
	if p.external.Load() {
		// A Linux VTEP with checksum offload over a veth also leaves the
		// inner TCP and UDP checksums of its other frames unfinished (a
		// NIC would finish them): finish them, or the container's kernel
		// drops the frame.
		packet.CompletePartialChecksum(frame)
	}
	if g.merge(frame) {
		return
	}
	if first {
		g.add(r.bufs[i], frame) // the frame is in place at packet.Headroom
		return
	}
	if g.sparesUsed() {
		v.deliver(r, r.cur)
	}
	g.add(nil, frame)
}

// deliver completes the collected group's super-segments, hands the group
// to n's input function and adds n's receive counters and r.ndrops. The
// VXLAN and ESP loops call input functions one at a time (v.inMu), so an
// input function never runs concurrently with itself.
func (v *VTEP) deliver(r *rxState, n *Segment) {
	if n == nil {
		return
	}
	if g := &r.group; g.len() > 0 {
		bufs, sizes := g.finish()
		if in := n.input.Load(); in != nil && !n.removed.Load() {
			// Counted first, so that whoever sees the frames sees them
			// counted.
			n.c.rxPackets.Add(g.dgrams)
			n.c.rxBytes.Add(g.bytes)
			v.inMu.Lock()
			(*in)(bufs, sizes, packet.Headroom)
			v.inMu.Unlock()
		} else {
			r.ndrops[dropNoInput] += g.dgrams
		}
		g.reset()
	}
	for i, d := range r.ndrops {
		if d > 0 {
			n.c.drops[i].Add(d)
			r.ndrops[i] = 0
		}
	}
}
