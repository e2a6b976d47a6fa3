package tunnel

import (
	"sync/atomic"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
)

// ESP sealing on more than one core. A Write call lays its
// super-segments' runs out in the arena and reserves each run's sequence
// numbers when it queues the run (espJob), in queue order, so every run
// goes out numbered in the order it is sent and the wire stays monotonic
// per SA within a call, as when it sealed inline. The runs are built and
// sealed in send, just before the one WriteBatch: the datagrams are split
// (VTEP.split) between the calling goroutine and, if one is idle, a
// helper goroutine of the VTEP, which claim chunks of espChunk datagrams
// until none is left. The caller never waits for a helper to wake up: one
// that comes late finds nothing left to claim. Neighbouring datagrams of a
// run may be sealed at the same time because esp.SealReserved borrows
// nothing from the bytes in front of a packet.
//
// (Opening the datagrams of a batch of coalesced reads the same way was
// tried and measured: no gain in throughput and a little more CPU per
// byte, so the ESP loop still opens each datagram in place just before
// it handles it.)

const (
	// espChunk is the number of datagrams a goroutine claims at a time.
	espChunk = 4
	// espParallelMin is the fewest datagrams worth offering to a helper;
	// fewer are handled by the caller alone.
	espParallelMin = 16
)

// splitWork is a list of items that a goroutine and a helper process in
// chunks (VTEP.split).
type splitWork struct {
	total  int
	next   atomic.Int64  // the next item to claim
	offer  atomic.Uint64 // offer number << 2 | offerOpen, offerJoined or offerClosed
	done   chan struct{} // a helper that joined is done
	do     func(from, to int, scratch *esp.Scratch)
	helped *atomic.Uint64 // counts the items helpers processed
}

// The states of an offer (the low 2 bits of splitWork.offer).
const (
	offerOpen   = 0 // offered, no helper joined yet
	offerJoined = 1 // a helper joined: the caller waits for it
	offerClosed = 2 // the caller finished before a helper joined
)

func newSplitWork(do func(from, to int, scratch *esp.Scratch), helped *atomic.Uint64) *splitWork {
	return &splitWork{done: make(chan struct{}, 1), do: do, helped: helped}
}

// helpOffer is what split hands a helper: the work, and which offer it
// is, so that a helper that takes an offer after the caller moved on does
// nothing.
type helpOffer struct {
	w   *splitWork
	gen uint64
}

// split processes items 0..total-1 of w, with an idle helper if there is
// one and enough items; scratch is the caller's.
func (v *VTEP) split(w *splitWork, total int, scratch *esp.Scratch) {
	if total < espParallelMin || v.helpers < 1 {
		w.do(0, total, scratch)
		return
	}
	v.startHelpers()
	w.total = total
	w.next.Store(0)
	gen := w.offer.Load()>>2 + 1
	w.offer.Store(gen << 2)
	select {
	case v.helpq <- helpOffer{w, gen}:
		w.chunks(scratch)
		if !w.offer.CompareAndSwap(gen<<2|offerOpen, gen<<2|offerClosed) {
			<-w.done // a helper joined: wait for its last chunk
		}
	default: // every helper is busy
		w.do(0, total, scratch)
	}
}

// chunks claims chunks of w's items and processes them until none is
// left; it returns how many it processed.
func (w *splitWork) chunks(scratch *esp.Scratch) int {
	done := 0
	for {
		from := int(w.next.Add(espChunk)) - espChunk
		if from >= w.total {
			return done
		}
		to := min(from+espChunk, w.total)
		w.do(from, to, scratch)
		done += to - from
	}
}

// startHelpers starts the VTEP's helper goroutines, one per core beyond
// the first when it was created (v.helpers), once; they end on Close.
func (v *VTEP) startHelpers() {
	v.helpOnce.Do(func() {
		for range v.helpers {
			go v.helper()
		}
	})
}

// helper processes its share of the work offered to it until the VTEP
// is closed.
func (v *VTEP) helper() {
	var scratch esp.Scratch
	for {
		select {
		case o := <-v.helpq:
			w := o.w
			if !w.offer.CompareAndSwap(o.gen<<2|offerOpen, o.gen<<2|offerJoined) {
				continue // the caller did everything itself
			}
			w.helped.Add(uint64(w.chunks(&scratch)))
			w.done <- struct{}{}
		case <-v.helpStop:
			return
		}
	}
}

// espJob is one queued run of a super-segment's segments for one peer,
// laid out in the arena but not yet built and sealed.
type espJob struct {
	g      packet.GSO
	sa     *esp.Outbound
	seq    uint64 // sequence number of the run's first datagram
	first  int    // the run's first segment of g
	count  int    // its segments
	stride int    // bytes from one ESP datagram of the run to the next
	at     int    // arena offset of the first datagram's ESP header
	hash   uint32
}

// sealState is the part of txScratch that queues runs for sealJobs.
type sealState struct {
	jobs    []espJob
	pending int          // datagrams in jobs
	scratch *esp.Scratch // the writing goroutine's
	seg     *Segment     // the segment whose jobs are being sealed
	work    *splitWork   // sealRange over the pending datagrams
}

// reset empties the queue, not keeping the callers' frames reachable.
func (s *sealState) reset() {
	clear(s.jobs)
	s.jobs, s.pending = s.jobs[:0], 0
}

// sealJobs builds and seals the runs queued in sc.seal and empties the
// queue.
func (n *Segment) sealJobs(sc *txScratch) {
	s := &sc.seal
	if s.work == nil {
		s.work = newSplitWork(func(from, to int, scratch *esp.Scratch) {
			s.seg.sealRange(s, sc.arena, from, to, scratch)
		}, &n.v.c.helperSealed)
	}
	s.seg = n
	n.v.split(s.work, s.pending, s.scratch)
	s.seg = nil
	s.reset()
}

// sealRange builds and seals the queued datagrams from..to-1, counted over
// all of s.jobs in order, in arena: each segment into its place in its
// run, behind its VXLAN and inner UDP headers, then sealed with its
// reserved sequence number.
func (n *Segment) sealRange(s *sealState, arena []byte, from, to int, scratch *esp.Scratch) {
	base := 0
	for j := range s.jobs {
		job := &s.jobs[j]
		if base >= to {
			return
		}
		lo, hi := max(from-base, 0), min(to-base, job.count)
		for x := lo; x < hi; x++ {
			start := job.at + x*job.stride + esp.HeaderLen
			payload := start + udpHeaderLen + packet.VXLANHeaderLen
			sl := job.g.SegmentLen(job.first + x)
			job.g.Segment(job.first+x, arena[payload:payload+sl])
			packet.PutVXLAN(arena[payload-packet.VXLANHeaderLen:], n.vni)
			putInnerUDP(arena[start:payload+sl], job.hash, n.v.port)
			// The layout was checked when the run was queued and its
			// sequence numbers reserved, so this cannot fail.
			job.sa.SealReserved(arena, start, payload+sl, job.seq+uint64(x), scratch)
		}
		base += job.count
	}
}
