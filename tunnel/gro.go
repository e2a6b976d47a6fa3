package tunnel

import "github.com/vxmesh/vxmesh/packet"

// groTable collects the frames of one segment received in a batch, to be
// delivered together, and coalesces consecutive TCP segments of a flow
// into super-segments with GSO metadata (packet.GROHead) on the way. It is
// used by one receive loop; reset empties it after every delivery.
type groTable struct {
	bufs  [][]byte         // buffers of the frames, each at packet.Headroom
	sizes []int            // frame lengths, set by finish
	heads []packet.GROHead // heads[j] describes bufs[j]'s frame
	// whole[j] > 0 is the length of a super-segment received whole in
	// bufs[j] (addSuper): heads[j] is empty, its slot is already written.
	whole []int
	// spare buffers for the datagrams of a coalesced (GRO) read that
	// start frames of their own; allocated on first use.
	spare  [][]byte
	nspare int // spare[:nspare] are in the table

	dgrams, bytes uint64 // datagrams and their frame bytes in the table
	// trusted: the frames came in authenticated ESP datagrams, and
	// coalescing does not verify their checksums (packet.GROHead.Trust).
	trusted bool
}

// groSpares is the number of spare buffers: when they are all in the
// table, it is delivered first (sparesUsed).
const groSpares = 16

// groWindow is how many of the table's latest frames a TCP segment is
// tried against for coalescing.
const groWindow = 8

// init sizes the table for batch datagrams.
func (g *groTable) init(batch int) {
	g.bufs = make([][]byte, 0, batch+groSpares)
	g.sizes = make([]int, 0, batch+groSpares)
	g.heads = make([]packet.GROHead, 0, batch+groSpares)
	g.whole = make([]int, 0, batch+groSpares)
}

// len returns the number of frames in the table.
func (g *groTable) len() int { return len(g.bufs) }

// merge counts frame and appends it to one of the table's latest frames
// of its flow if it is the next TCP segment; it reports whether it did.
func (g *groTable) merge(frame []byte) bool {
	g.dgrams++
	g.bytes += uint64(len(frame))
	for j := len(g.bufs) - 1; j >= max(0, len(g.bufs)-groWindow); j-- {
		h := &g.heads[j]
		hb := g.bufs[j][packet.Headroom:]
		if !packet.SameFlow(hb[:h.Len()], frame) {
			continue
		}
		// Not tried against older frames of the flow: its segments
		// never get reordered.
		return h.Append(hb[:packet.MaxGSOFrame], frame)
	}
	return false
}

// sparesUsed reports whether every spare buffer is in the table, so that
// add(nil, ...) needs a delivery first.
func (g *groTable) sparesUsed() bool { return g.nspare == groSpares }

// add starts a new frame: in buf, where frame already is at
// packet.Headroom, or, with buf nil, copied into a spare buffer
// (sparesUsed must be false).
func (g *groTable) add(buf, frame []byte) {
	if buf == nil {
		if g.spare == nil {
			g.spare = make([][]byte, groSpares)
			for k := range g.spare {
				g.spare[k] = make([]byte, packet.BufferSize)
			}
		}
		buf = g.spare[g.nspare]
		g.nspare++
		copy(buf[packet.Headroom:], frame)
	}
	g.bufs = append(g.bufs, buf)
	g.heads = append(g.heads, packet.GROHead{})
	g.whole = append(g.whole, 0)
	h := &g.heads[len(g.heads)-1]
	h.Start(buf[packet.Headroom : packet.Headroom+len(frame)])
	if g.trusted {
		h.Trust()
	}
}

// addSuper adds frame, a super-segment received whole, in buf at
// packet.Headroom with its offload slot written (packet.ParseTunnelSuper).
// Nothing is appended to it (its empty head matches no flow) and finish
// leaves its slot as is.
func (g *groTable) addSuper(buf, frame []byte) {
	g.dgrams++
	g.bytes += uint64(len(frame))
	g.bufs = append(g.bufs, buf)
	g.heads = append(g.heads, packet.GROHead{})
	g.whole = append(g.whole, len(frame))
}

// finish completes the super-segments (their headers and metadata slots)
// and returns the frames as a batch for an input function: frame j is
// bufs[j][packet.Headroom:packet.Headroom+sizes[j]].
func (g *groTable) finish() (bufs [][]byte, sizes []int) {
	g.sizes = g.sizes[:0]
	for j, b := range g.bufs {
		if g.whole[j] > 0 {
			g.sizes = append(g.sizes, g.whole[j])
			continue
		}
		h := &g.heads[j]
		h.Finish(b[packet.Headroom:packet.Headroom+h.Len()], packet.OffloadOf(b))
		g.sizes = append(g.sizes, h.Len())
	}
	return g.bufs, g.sizes
}

// reset empties the table.
func (g *groTable) reset() {
	clear(g.bufs)
	g.bufs, g.sizes, g.heads, g.whole = g.bufs[:0], g.sizes[:0], g.heads[:0], g.whole[:0]
	g.dgrams, g.bytes, g.nspare = 0, 0, 0
}
