package vswitch

import (
	"math/bits"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

// scratch is an input port's per-batch state, reused for every batch so
// that forwarding does not allocate once warm.
type scratch struct {
	dq    *destQueues  // borrowed from the switch for one Input call
	learn []packet.MAC // sources to learn at the end of the batch
	gen   [][]byte     // buffers for frames the switch writes (genBuf)
	ngen  int          // gen[:ngen] are in use in this batch
	// translated counts the batch's frames the balancer rewrote.
	translated uint64
	drops      [numReasons]uint64
	// stormTAT is the storm limit's theoretical arrival time (GCRA): the
	// switch clock at which the port's token bucket is full again.
	stormTAT int64
}

// mldRouters is the MAC of ff02::16, where MLDv2 reports go.
var mldRouters = packet.MAC{0x33, 0x33, 0, 0, 0, 0x16}

// destQueues are the per-destination queues of one batch. They are
// indexed by port id, so they grow with the ports a batch was ever sent
// to (a flood reaches every port): an input port borrows them from its
// switch for the length of an Input call (Switch.getQueues), so that
// idle ports hold none and the switch's total grows with the inputs
// running at once times the ports, not with the ports squared.
type destQueues struct {
	q     [][][]byte // frames queued per destination port id
	sh    [][]bool   // per queued frame: flooded, so shared with other ports
	owner []*Port    // which port q[id] is for in this batch
	dests []*Port    // destinations with queued frames, in first-use order
}

// freeQueues bounds the destQueues a switch keeps for reuse: about one
// per input running at once, and there are few cores.
const freeQueues = 8

// getQueues takes free destination queues, or makes new ones.
func (s *Switch) getQueues() *destQueues {
	select {
	case dq := <-s.queues:
		return dq
	default:
		s.queuesMade.Add(1)
		return &destQueues{}
	}
}

// putQueues gives dq back (empty, as flush leaves it); past freeQueues
// free ones it is left to the collector.
func (s *Switch) putQueues(dq *destQueues) {
	select {
	case s.queues <- dq:
	default:
	}
}

// stormAllow takes a token of the port's storm limit for a flooded frame
// at time now and reports whether there was one. The bucket holds one
// second's worth of tokens (the burst) and refills one token every gap
// nanoseconds.
func (sc *scratch) stormAllow(now, gap int64) bool {
	tat := max(sc.stormTAT, now)
	if tat+gap-now > int64(time.Second) {
		return false
	}
	sc.stormTAT = tat + gap
	return true
}

// fits checks frame f (in buf, whose slot holds its offload metadata)
// against the network MTU and the GSO bounds (packet.ParseGSO).
func (s *Switch) fits(buf, f []byte) (reason, bool) {
	o := packet.OffloadOf(buf)
	if !o.IsGSO() {
		return dropMTU, s.maxFrame == 0 || len(f) <= s.maxFrame
	}
	g, ok := packet.ParseGSO(f, o)
	if !ok {
		return dropGSOInvalid, false
	}
	return dropMTU, s.maxFrame == 0 || g.MaxSegmentLen() <= s.maxFrame
}

// add queues frame b (with its headroom) for p, shared with other ports
// if shared, and reports whether it did. It refuses only when p's id was
// reused by a port attached after the view this batch started with was
// taken, a race with RemovePort.
func (sc *scratch) add(p *Port, b []byte, shared bool, batch int) bool {
	id, dq := p.id, sc.dq
	if id >= len(dq.q) {
		dq.q = append(dq.q, make([][][]byte, id+1-len(dq.q))...)
		dq.sh = append(dq.sh, make([][]bool, id+1-len(dq.sh))...)
		dq.owner = append(dq.owner, make([]*Port, id+1-len(dq.owner))...)
	}
	switch {
	case len(dq.q[id]) == 0:
		if cap(dq.q[id]) < batch {
			// Sized to the batch (a power of two, so a queue for a
			// destination is made again at most a few times), not to
			// packet.BatchSize: a pooled set keeps a queue for every
			// port it ever reached.
			n := 1 << bits.Len(uint(batch-1))
			dq.q[id] = make([][]byte, 0, n)
			dq.sh[id] = make([]bool, 0, n)
		}
		dq.owner[id] = p
		dq.dests = append(dq.dests, p)
	case dq.owner[id] != p:
		return false
	}
	dq.q[id] = append(dq.q[id], b)
	dq.sh[id] = append(dq.sh[id], shared)
	return true
}

// Input switches the frames read from r: frame i is
// bufs[i][offset:offset+sizes[i]], with headroom in front of offset and
// its offload metadata in bufs[i][0:packet.OffloadLen] (offset must be at
// least packet.OffloadLen). Each destination port gets one WriteFrames
// call with all its frames of the batch, before Input returns; it owns a
// frame's buffer only if the frame goes to it alone, and shares it with
// the other destinations of a flooded frame (packet.Frames). The buffers
// are only borrowed; ARP requests answered by the switch are rewritten
// in place (and their slot cleared). Frames are parsed by their headers
// only, so a super-segment (up to 64 KiB, GSO metadata) is switched like
// any frame once its metadata passed packet.ParseGSO and its segments fit
// the MTU; a plain frame must fit the MTU itself. With a balancer
// (SetBalancer), frames are translated after port security and frames
// to container ports untranslated before they are queued; the frames the
// switch writes itself (ARP replies, rejects, retried SYNs) are in buffers
// it owns until Input returns. Input must be called by
// one goroutine per port; different ports may call it concurrently, and
// concurrently with the control-plane methods.
func (r *Port) Input(bufs [][]byte, sizes []int, offset int) {
	s := r.sw
	n := min(len(bufs), len(sizes))
	sc := &r.sc
	var rxBytes, forwarded, flooded, suppressed uint64
	if s.closed.Load() || r.removed.Load() {
		r.dropDown(sizes[:n])
		return
	}
	if offset < packet.OffloadLen {
		sc.drops[dropMalformed] += uint64(n)
		r.account(rxBytes, n, 0, 0, 0)
		return
	}
	sc.dq = s.getQueues()
	t := s.now()
	v, now := s.view.Load(), int64(t.Sub(s.epoch))
	l := s.loadLB(v, now, max(1, int64(t.Sub(s.lbEpoch))+1))
	mt := s.mesh.Load()
	if c := r.capture.Load(); c != nil {
		r.captureInput(c, bufs[:n], sizes[:n], offset)
	}
	for i := range n {
		size := sizes[i]
		rxBytes += uint64(max(size, 0))
		if size < packet.EthernetHeaderLen || size > len(bufs[i])-offset {
			sc.drops[dropMalformed]++
			continue
		}
		buf := bufs[i][:offset+size]
		eth := packet.Ethernet(buf[offset:])
		if why, ok := r.admit(v, buf, eth, now); !ok {
			sc.drops[why]++
			continue
		}
		if eth.EtherType() == packet.EtherTypeARP && suppressARP(v, &l, eth) {
			packet.ClearOffload(buf) // a new frame: the reply
			sc.add(r, buf, false, n)
			suppressed++
			continue
		}
		translated, why, ok := r.balance(&l, buf, offset, n)
		if !ok {
			sc.drops[why]++
			continue
		}
		dst := eth.Dst()
		if dst == s.gwMAC && r.security && mt != nil {
			if mac, ok := r.steer(v, mt, eth, now); ok {
				dst = mac
			}
		}
		out, why, ok := r.route(v, dst, translated, now)
		if ok && out != nil {
			why, ok = r.meshIn(v, mt, eth, out, translated, now)
		}
		switch {
		case !ok:
			sc.drops[why]++
		case out == nil && r.security && dst == mldRouters:
			// Every container reports its groups when its link comes
			// up (2-3 frames each after a daemon restart); flooded,
			// each cost a write to every port, and nobody listens.
			sc.drops[dropMLDReport]++
		case out == nil && r.storm && !sc.stormAllow(now, s.stormGap):
			sc.drops[dropStorm]++
		case out == nil:
			for _, p := range v.ports {
				if r.floodsFrameTo(p, dst) {
					sc.add(p, buf, true, n)
				}
			}
			flooded++
		default:
			if why, ok := r.deliver(&l, out, buf, offset, n); !ok {
				sc.drops[why]++
			} else {
				forwarded++
			}
		}
	}
	r.endBatch(offset, now)
	r.account(rxBytes, n, forwarded, flooded, suppressed)
}

// dropDown drops a batch that came in while the switch or the port is
// closing, counting its bytes.
func (r *Port) dropDown(sizes []int) {
	var rxBytes uint64
	for _, size := range sizes {
		rxBytes += uint64(max(size, 0))
	}
	r.sc.drops[dropPortDown] += uint64(len(sizes))
	r.account(rxBytes, len(sizes), 0, 0, 0)
}

// endBatch sends the frames queued for the other ports, gives the queues
// back and commits the MACs the batch learned.
func (r *Port) endBatch(offset int, now int64) {
	s, sc := r.sw, &r.sc
	r.flush(offset)
	s.putQueues(sc.dq)
	sc.dq = nil
	sc.ngen = 0
	if len(sc.learn) > 0 {
		s.commitLearned(r, now)
		clear(sc.learn)
		sc.learn = sc.learn[:0]
	}
}

// admit checks frame eth (in buf) from r: its source (which it learns),
// port security and the MTU. It returns why the frame is dropped, or true.
func (r *Port) admit(v *view, buf []byte, eth packet.Ethernet, now int64) (reason, bool) {
	why, learn, ok := r.screen(v, buf, eth)
	if learn {
		r.learn(eth.Src(), now)
	}
	return why, ok
}

// screen is admit without its side effect (also Trace's first step): it
// returns why the frame is dropped, or true and whether its source is to
// be learned (it has no local or static entry).
func (r *Port) screen(v *view, buf []byte, eth packet.Ethernet) (why reason, learn, ok bool) {
	src := eth.Src()
	if src.IsMulticast() || src.IsZero() {
		return dropMalformed, false, false
	}
	if r.security {
		if why, ok := r.check(eth); !ok {
			return why, false, false
		}
	}
	if why, ok := r.sw.fits(buf, eth); !ok {
		return why, false, false
	}
	if sp := v.port(src); sp == nil {
		return 0, true, true
	} else if sp != r {
		// The MAC is a container's on another port, or an endpoint
		// statically behind another port: not this one's to use.
		return dropSpoofedSrc, false, false
	}
	return 0, false, true
}

// route decides where a frame from r to dst goes after the balancer: to
// out, or flooded (out nil; the storm limit is the caller's), or dropped
// for the reason returned. It changes nothing (Trace uses it too).
func (r *Port) route(v *view, dst packet.MAC, translated bool, now int64) (out *Port, why reason, ok bool) {
	s := r.sw
	if !dst.IsMulticast() {
		out = s.lookup(v, dst, now)
	}
	switch {
	case (dst == s.gwMAC && !dst.IsZero() && (out == nil || !out.gateway)) || !r.gatewayRoute(v, out, dst, translated):
		return nil, dropNoRoute, false
	case out == r:
		return nil, dropSamePort, false
	}
	return out, 0, true
}

// flush writes every destination's queue with one WriteFrames call and counts the
// outcome on the destination port.
func (r *Port) flush(offset int) {
	sc := r.sc.dq
	for _, p := range sc.dests {
		q, sh := sc.q[p.id], sc.sh[p.id]
		if c := p.capture.Load(); c != nil {
			c.add(r.sw.now(), q, offset, true)
		}
		sent, _ := p.sink.WriteFrames(packet.NewFrames(q, offset, sh))
		sent = max(0, min(sent, len(q)))
		var bytes uint64
		for _, b := range q[:sent] {
			bytes += uint64(len(b) - offset)
		}
		p.c.txPackets.Add(uint64(sent))
		p.c.txBytes.Add(bytes)
		if lost := uint64(len(q) - sent); lost > 0 {
			p.c.drops[dropTxError].Add(lost)
			r.sw.c.drops[dropTxError].Add(lost)
		}
		clear(q)
		sc.q[p.id], sc.sh[p.id] = q[:0], sh[:0]
		sc.owner[p.id] = nil
	}
	clear(sc.dests)
	sc.dests = sc.dests[:0]
}

// account adds a batch's counters with one atomic add each.
func (r *Port) account(rxBytes uint64, rx int, forwarded, flooded, suppressed uint64) {
	s := r.sw
	r.c.rxPackets.Add(uint64(rx))
	r.c.rxBytes.Add(rxBytes)
	for i, d := range r.sc.drops {
		if d > 0 {
			r.c.drops[i].Add(d)
			s.c.drops[i].Add(d)
			r.sc.drops[i] = 0
		}
	}
	if forwarded > 0 {
		s.c.forwarded.Add(forwarded)
	}
	if flooded > 0 {
		s.c.flooded.Add(flooded)
	}
	if suppressed > 0 {
		s.c.arpSuppressed.Add(suppressed)
	}
	if r.sc.translated > 0 {
		s.c.translated.Add(r.sc.translated)
		r.sc.translated = 0
	}
}

// captureInput queues copies of the well-formed frames of a batch read
// from r into c, before the switch looks at them (ARP suppression rewrites
// requests in place).
func (r *Port) captureInput(c *Capture, bufs [][]byte, sizes []int, offset int) {
	t := r.sw.now()
	for i, b := range bufs {
		if size := sizes[i]; size >= packet.EthernetHeaderLen && size <= len(b)-offset {
			c.addFrame(t, b[offset:offset+size], false)
		}
	}
}
