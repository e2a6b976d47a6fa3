package gateway

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/vxmesh/vxmesh/packet"
)

// Output takes the frames the gateway's stack sends (a *vswitch.Port:
// the gateway's switch port). Input's contract is the switch's: frame i
// is bufs[i][offset:offset+sizes[i]], offload metadata in front, the
// buffers only borrowed until it returns, one caller at a time.
type Output interface {
	Input(bufs [][]byte, sizes []int, offset int)
}

// Attach sends the stack's frames to o from now on, in the goroutine of
// the stack that sends them (a TCP processor, a flow's writer, a timer),
// batched as the stack hands them over, instead of queueing them for
// Device's Read: no goroutine hand-off between the stack and the switch.
// Sends that meet another in progress queue their frames for it, so o
// sees one caller at a time, in order; a frame the switch writes back
// to the gateway within Input (an ARP reply it answers) is received
// before Input returns, and what the stack sends in reply is queued the
// same way. Frames the stack queued for Read before are sent first.
// Attach is called once; Read then has nothing more to read.
func (g *Gateway) Attach(o Output) {
	g.dev.rmu.Lock()
	defer g.dev.rmu.Unlock()
	g.dev.out.o.Store(&o)
	for pkt := g.ep.Read(); pkt != nil; pkt = g.ep.Read() {
		g.dev.output(o, []*stack.PacketBuffer{pkt})
		pkt.DecRef()
	}
}

// linkEP is the gateway's link endpoint below the Ethernet layer: the
// channel endpoint (frames injected into the stack; the queue Read
// serves until Attach) with a WritePackets that hands frames to the
// attached Output.
type linkEP struct {
	*channel.Endpoint
	d *device
}

// WritePackets sends pkts to the attached Output, or queues them for
// Read when there is none.
func (l *linkEP) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	o := l.d.out.o.Load()
	if o == nil {
		return l.Endpoint.WritePackets(pkts)
	}
	l.d.output(*o, pkts.AsSlice())
	return pkts.Len(), nil
}

// outState is the synchronous output's state (see Attach).
type outState struct {
	o atomic.Pointer[Output]

	// mu is held by the goroutine that calls Input; it owns bufs,
	// sizes and seg.
	mu    sync.Mutex
	bufs  [][]byte // packet.BatchSize slots, allocated on first use
	sizes []int
	seg   segmenter

	// qmu guards q, the frames sent while another goroutine held mu,
	// in order; queued is len(q).
	qmu    sync.Mutex
	q      []*stack.PacketBuffer
	spare  []*stack.PacketBuffer // q's previous storage, reused
	queued atomic.Int32
}

// output delivers pkts to o (see Attach): the caller that gets mu sends
// what is queued first, then its own, then what was queued meanwhile;
// a caller that does not get it queues its frames for the one that has
// it. pkts stay the caller's.
func (d *device) output(o Output, pkts []*stack.PacketBuffer) {
	s := &d.out
	if !s.mu.TryLock() {
		s.qmu.Lock()
		for _, p := range pkts {
			s.q = append(s.q, p.IncRef())
		}
		s.queued.Store(int32(len(s.q)))
		s.qmu.Unlock()
		// The holder may have looked at the queue before we added to
		// it and left: then the lock is free, and the frames ours.
		if !s.mu.TryLock() {
			return
		}
		pkts = nil
	}
	for {
		d.sendQueued(o)
		if pkts != nil {
			d.emit(o, pkts)
			pkts = nil
		}
		if !d.unlockOutput() {
			return
		}
	}
}

// unlockOutput releases mu; it reports whether the caller holds it
// again to send frames queued while it was held (by other goroutines,
// or by the stack replying within Input to a frame the switch sent
// back), which are its own unless someone else took mu.
func (d *device) unlockOutput() bool {
	s := &d.out
	s.mu.Unlock()
	return s.queued.Load() != 0 && s.mu.TryLock()
}

// inject hands frames that are not the stack's (the NAT's, nat.go) to
// the attached Output as the gateway's own, in order with the stack's:
// it waits for mu, then sends what the stack queued meanwhile. It
// reports false when the gateway has no Output or is closing.
func (g *Gateway) inject(bufs [][]byte, sizes []int, offset int) bool {
	d := g.dev
	op := d.out.o.Load()
	if op == nil || g.stopping.Load() {
		return false
	}
	s := &d.out
	s.mu.Lock()
	d.tx.Add(uint64(len(bufs)))
	(*op).Input(bufs, sizes, offset)
	for d.unlockOutput() {
		d.sendQueued(*op)
	}
	return true
}

// sendQueued sends the frames queued for the holder of mu; the caller
// holds it.
func (d *device) sendQueued(o Output) {
	s := &d.out
	if s.queued.Load() == 0 {
		return
	}
	q := d.takeQueued()
	d.emit(o, q)
	for i, p := range q {
		p.DecRef()
		q[i] = nil
	}
	s.qmu.Lock()
	s.spare = q[:0]
	s.qmu.Unlock()
}

// takeQueued takes the queued frames; the caller holds mu.
func (d *device) takeQueued() []*stack.PacketBuffer {
	s := &d.out
	s.qmu.Lock()
	defer s.qmu.Unlock()
	q := s.q
	s.q, s.spare = s.spare, nil
	s.queued.Store(0)
	return q
}

// emit copies pkts into the batch and hands it to o, in as many Input
// calls as the batch's size takes; the caller holds mu.
func (d *device) emit(o Output, pkts []*stack.PacketBuffer) {
	s := &d.out
	if s.bufs == nil {
		s.bufs = make([][]byte, packet.BatchSize)
		s.sizes = make([]int, packet.BatchSize)
	}
	mtuBuf := packet.Headroom + packet.EthernetHeaderLen + d.g.cfg.MTU
	n := 0
	flush := func() {
		if n > 0 {
			d.tx.Add(uint64(n))
			o.Input(s.bufs[:n], s.sizes[:n], packet.Headroom)
			n = 0
		}
	}
	for _, pkt := range pkts {
		size := pkt.Size()
		if need := packet.Headroom + size; len(s.bufs[n]) < need {
			s.bufs[n] = make([]byte, max(need, mtuBuf))
		}
		frame, smallMSS := frameOf(pkt, s.bufs[n], packet.Headroom)
		if smallMSS == 0 {
			s.sizes[n] = len(frame)
			if n++; n == len(s.bufs) {
				flush()
			}
			continue
		}
		s.seg.start(frame, smallMSS)
		for s.seg.frame != nil {
			for i := n; i < len(s.bufs); i++ {
				if len(s.bufs[i]) < mtuBuf {
					s.bufs[i] = make([]byte, mtuBuf)
				}
			}
			if n += s.seg.next(s.bufs[n:], s.sizes[n:], packet.Headroom); n == len(s.bufs) {
				flush()
			}
		}
	}
	flush()
}

// frameOf copies pkt into buf at offset and sets buf's offload metadata:
// a TCP super-segment gets its GSO metadata, unless its MSS is below
// what the switch takes (packet.GSOMinSizeIPv4), which frameOf returns
// for the caller to segment it (0 otherwise). buf holds the frame.
func frameOf(pkt *stack.PacketBuffer, buf []byte, offset int) (frame []byte, smallMSS int) {
	frame = buf[offset : offset+pkt.Size()]
	// The views themselves, not AsSlices, which allocates a slice per
	// packet.
	vl, skip := pkt.AsViewList()
	copied := 0
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		copied += copy(frame[copied:], b[skip:])
		skip = 0
	}
	packet.ClearOffload(buf)
	gso := pkt.GSOOptions
	if gso.Type != stack.GSOTCPv4 {
		return frame, 0
	}
	if int(gso.MSS) < packet.GSOMinSizeIPv4 {
		return frame, int(gso.MSS)
	}
	l3 := packet.EthernetHeaderLen
	l4 := l3 + int(frame[l3]&0x0f)*4
	hdrLen := l4 + int(frame[l4+12]>>4)*4
	packet.OffloadOf(buf).Set(packet.OffloadNeedsCsum, packet.GSOTCPv4, hdrLen, int(gso.MSS), l4, int(gso.CsumOffset))
	return frame, 0
}
