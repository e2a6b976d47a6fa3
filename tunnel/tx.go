package tunnel

import (
	"errors"
	"fmt"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
)

// Transmit, in three steps per Write: classify each frame (checks, its
// fan-out: one peer or all of them), emit its datagrams into the queue
// (cleartext in place or segmented into the arena, or sealed), and account
// the batch once at the end.

// fanout is the list of peers one frame goes to: the VTEP of a known MAC,
// or every peer when the frame is flooded.
type fanout []*peer

// txFrame is one classified frame of a Write.
type txFrame struct {
	i     int            // index in the batch
	buf   []byte         // the frame's buffer, to read and to write headroom into
	off   int            // the frame's offset in buf
	f     []byte         // the frame
	owned []byte         // the frame's buffer if this port owns it (packet.Frames.Owned), else nil
	o     packet.Offload // its metadata slot, to read
	g     packet.GSO     // the super-segment, if isGSO
	isGSO bool
	// fill is set for a shared frame with a partial checksum: the
	// checksum is completed in every copy, never in the shared buffer.
	fill  bool
	hash  uint32
	fan   fanout
	flood bool // fan is every peer
}

// errSegmentDown is returned by Write on a removed network or closed VTEP.
var errSegmentDown = errors.New("network removed or VTEP closed")

// Write sends frames the caller owns for the call: WriteFrames of
// packet.OwnedFrames(bufs, offset).
func (n *Segment) Write(bufs [][]byte, offset int) (int, error) {
	return n.WriteFrames(packet.OwnedFrames(bufs, offset))
}

// WriteFrames implements vswitch.Sink: it encapsulates and sends every
// frame and returns how many it took: sent to at least one VTEP, or to be
// flooded while the network has no peer (nothing to do, counted in
// SegmentStats.FloodNoPeers, not an error). A frame to a MAC in the static
// or the learned FDB goes to that MAC's VTEP; any other frame goes to
// every peer, all datagrams pointing at the same bytes. Datagrams are sent
// with Underlay.WriteBatch, once per call unless the segment arena fills
// up.
//
// The frame's offload metadata (its slot) decides how:
//   - none: the VXLAN header is written in place in the headroom, in front
//     of the frame, and the datagram points into the caller's buffer.
//   - partial checksum: it is completed in place if the port owns the
//     frame (packet.CompleteChecksum, which clears the flag), then as
//     above; a shared frame is copied into the scratch arena behind its
//     VXLAN header and completed there.
//   - TCP super-segment (GSOTCPv4/v6): it is split into segments of GSOSize
//     payload bytes (packet.GSO: headers copied, lengths, IPv4 ID and
//     checksums, TCP sequence numbers and checksums computed) in a scratch
//     arena, each behind its own VXLAN header; the caller's frame is not
//     modified. An inconsistent super-segment is dropped ("gso-invalid").
//
// On an encrypted network only an owned frame to one peer is sealed in
// place; everything else is sealed in the arena (writeESP). No datagram
// exceeds the network MTU: a plain frame longer than the MTU plus the
// Ethernet header, or a super-segment whose segments would be, is dropped
// ("mtu"), never fragmented; a super-segment's own length is not checked.
// A shared frame's bytes and slot are left byte-equal (packet.Frames).
// WriteFrames may be called concurrently and does not allocate once warm.
func (n *Segment) WriteFrames(fr packet.Frames) (int, error) {
	count := fr.Len()
	if count == 0 {
		return 0, nil
	}
	offset := fr.Offset()
	if offset < packet.OffloadLen+packet.VXLANHeaderLen {
		n.c.drops[dropMalformed].Add(uint64(count))
		return 0, fmt.Errorf("vni %d: write offset %d leaves no room for the offload slot and the VXLAN header", n.vni, offset)
	}
	if n.removed.Load() || n.v.closed.Load() {
		n.c.drops[dropDown].Add(uint64(count))
		return 0, fmt.Errorf("vni %d: %w", n.vni, errSegmentDown)
	}
	var sec *secState
	cipher := esp.Cipher(n.cipher.Load())
	if cipher != 0 {
		if offset < packet.OffloadLen+espFrontLen {
			n.c.drops[dropMalformed].Add(uint64(count))
			return 0, fmt.Errorf("vni %d: write offset %d leaves no room for the ESP headers", n.vni, offset)
		}
		if sec = n.v.sec.Load(); sec == nil {
			sec = &secState{}
		}
	}
	sc := n.v.getTx()
	sc.start(count)
	st, now := n.state.Load(), n.v.clock()
	var flooded, gsoFrames uint64
	super := n.v.SuperEnabled() // one load per batch: the switch may flip meanwhile
	t := txFrame{off: offset}   // reused for every frame: classify sets every field it uses
	for i := range count {
		t.i, t.buf, t.owned = i, fr.Buf(i), fr.Owned(i)
		if why := n.classify(sc, st, now, &t); why != dropNone {
			sc.why[i] = why
			continue
		}
		if t.flood {
			flooded++
		}
		if t.isGSO {
			gsoFrames++
		}
		switch {
		case cipher != 0:
			n.writeESP(sc, sec, cipher, &t)
		case super && t.isGSO && len(t.fan) == 1 && t.g.Segments() > 1 && n.writeSuper(sc, &t):
			// One segment (see putSuperHeader) goes as one datagram below.
		case t.isGSO:
			n.emitSegments(sc, &t)
		case !t.fill:
			// The common case, kept here: the VXLAN header into the
			// headroom, the datagram pointing into the caller's buffer.
			dgram := t.buf[t.off-packet.VXLANHeaderLen:]
			packet.PutVXLAN(dgram, n.vni)
			n.queue(sc, dgram, 0, &t)
		default:
			n.emitCopy(sc, &t)
		}
	}
	n.send(sc)
	sent, err := n.account(sc, fr, flooded, gsoFrames)
	n.v.putTx(sc)
	return sent, err
}

// classify checks the frame in t.buf (t.i, t.buf, t.off and t.owned are
// set), finds its fan-out and describes it in the rest of t; it returns
// why the frame is dropped, or dropNone. An owned frame's partial checksum
// is completed in place here.
func (n *Segment) classify(sc *txScratch, st *netState, now int64, t *txFrame) dropReason {
	b := t.buf
	if len(b) < t.off+packet.EthernetHeaderLen {
		return dropMalformed
	}
	t.f, t.o = b[t.off:], packet.OffloadOf(b)
	t.fill, t.flood = false, false
	maxFrame := n.mtu + packet.EthernetHeaderLen
	if t.isGSO = t.o.IsGSO(); t.isGSO {
		var valid bool
		if t.g, valid = packet.ParseGSO(t.f, t.o); !valid {
			return dropGSOInvalid
		}
		if t.g.MaxSegmentLen() > maxFrame {
			return dropMTU
		}
	} else {
		if len(t.f) > maxFrame {
			return dropMTU
		}
		switch {
		case !t.o.NeedsCsum():
		case !t.o.CsumFits(len(t.f)):
			return dropGSOInvalid
		case t.owned != nil:
			packet.CompleteChecksum(t.f, t.o)
		default:
			t.fill = true
		}
	}
	dst := packet.Ethernet(t.f).Dst()
	var to *peer
	if !dst.IsMulticast() {
		if to = st.remotes[dst]; to == nil {
			if e := n.learned.Lookup(dst); e != nil && n.learned.Live(e, now) {
				to = e.Value
			}
		}
	}
	switch {
	case to != nil:
		sc.one[0] = to
		t.fan = sc.one[:]
	case len(st.peers) == 0:
		return dropNoPeer
	default:
		t.fan, t.flood = st.peers, true
	}
	t.hash = flowHash(t.f)
	return dropNone
}

// emitCopy queues the cleartext datagram of a shared plain frame whose
// checksum must be completed, as a copy in the arena. (Any other plain
// frame is sent in place, its VXLAN header in the headroom, which a port
// may write into even in a shared buffer.)
func (n *Segment) emitCopy(sc *txScratch, t *txFrame) {
	need := packet.VXLANHeaderLen + len(t.f)
	if len(sc.msgs)+len(t.fan) > cap(sc.msgs) || len(sc.arena)-sc.used < need {
		n.send(sc)
	}
	sc.ensureArena()
	dgram := sc.arena[sc.used : sc.used+need]
	copy(dgram[packet.VXLANHeaderLen:], t.f)
	t.o.FillChecksum(dgram[packet.VXLANHeaderLen:])
	packet.PutVXLAN(dgram, n.vni)
	sc.used += need
	n.queue(sc, dgram, 0, t)
}

// emitSegments queues the cleartext datagrams of a super-segment's
// segments for its fan-out. The segments go into the arena back to back,
// each behind its VXLAN header, in runs that one UDP segmentation send
// carries: every datagram of a run but the last is dsize bytes long.
func (n *Segment) emitSegments(sc *txScratch, t *txFrame) {
	g := t.g
	segs := g.Segments()
	dsize := packet.VXLANHeaderLen + g.SegmentLen(0)
	perRun := max(1, min(MaxGSOSegments, MaxGSOBytes/dsize))
	sc.ensureArena()
	for k := 0; k < segs; {
		cnt := min(perRun, segs-k)
		need := (cnt-1)*dsize + packet.VXLANHeaderLen + g.SegmentLen(k+cnt-1)
		if len(sc.arena)-sc.used < need || len(sc.msgs)+len(t.fan) > cap(sc.msgs) {
			n.send(sc)
		}
		run := sc.arena[sc.used : sc.used+need]
		for j := range cnt {
			seg := run[j*dsize:]
			seg = seg[:packet.VXLANHeaderLen+g.SegmentLen(k+j)]
			g.Segment(k+j, seg[packet.VXLANHeaderLen:])
			packet.PutVXLAN(seg, n.vni)
		}
		sc.used += need
		gso := 0
		if cnt > 1 {
			gso = dsize
		}
		n.queue(sc, run, gso, t)
		k += cnt
	}
}

// writeSuper hands super-segment t, to one peer, to the kernel whole
// (SuperWriter) and accounts it. It reports false, having sent nothing, if
// the kernel path refused it; the caller splits it instead.
func (n *Segment) writeSuper(sc *txScratch, t *txFrame) bool {
	// The datagrams queued for earlier frames go first, so a flow's
	// frames leave in order (the TAP write is done by the time it returns).
	n.send(sc)
	p := t.fan[0]
	if err := n.v.super.WriteSuper(t.f, t.o, n.vni, p.dst, t.hash); err != nil {
		n.v.c.superFails.Add(1)
		return false
	}
	g := &t.g
	segs := g.Segments()
	p.txPackets.Add(uint64(segs))
	p.txBytes.Add(uint64(len(t.f) + (segs-1)*g.HeaderLen()))
	n.c.txDatagrams.Add(uint64(segs))
	n.v.c.txSupers.Add(1)
	sc.ok[t.i] = true
	return true
}

// queue adds datagram dgram of frame t (a run of datagrams of gsoSize
// bytes if gsoSize > 0) for every peer of its fan-out.
func (n *Segment) queue(sc *txScratch, dgram []byte, gsoSize int, t *txFrame) {
	if len(t.fan) == 1 {
		p := t.fan[0]
		sc.msgs = append(sc.msgs, Message{Buf: dgram, GSOSize: gsoSize, Addr: p.dst, Hash: t.hash})
		sc.peers = append(sc.peers, p)
		sc.frame = append(sc.frame, int32(t.i))
		return
	}
	for _, p := range t.fan {
		sc.msgs = append(sc.msgs, Message{Buf: dgram, GSOSize: gsoSize, Addr: p.dst, Hash: t.hash})
		sc.peers = append(sc.peers, p)
		sc.frame = append(sc.frame, int32(t.i))
	}
}

// account adds a Write's counters and returns how many frames it took and
// the error to report.
func (n *Segment) account(sc *txScratch, fr packet.Frames, flooded, gsoFrames uint64) (int, error) {
	count := fr.Len()
	ok, why := sc.ok[:count], sc.why[:count]
	err := sc.err
	sent, noPeers := 0, 0
	var drops [numDrops]uint64
	var txBytes uint64
	for i := range count {
		switch {
		case ok[i]:
			sent++
			txBytes += uint64(len(fr.Buf(i)) - fr.Offset())
		case why[i] == dropNoPeer:
			noPeers++
		default:
			drops[why[i]]++
		}
	}
	n.c.txPackets.Add(uint64(sent))
	if noPeers > 0 {
		n.c.floodNoPeers.Add(uint64(noPeers))
	}
	n.c.txBytes.Add(txBytes)
	if flooded > 0 {
		n.c.flooded.Add(flooded)
	}
	if gsoFrames > 0 {
		n.c.txGSO.Add(gsoFrames)
	}
	for r, d := range drops {
		if d > 0 {
			n.c.drops[r].Add(d)
		}
	}
	if sent+noPeers < count && err == nil {
		for i := range count {
			if !ok[i] && why[i] != dropNoPeer {
				err = fmt.Errorf("vni %d: frame dropped: %s", n.vni, why[i])
				break
			}
		}
	}
	return sent + noPeers, err
}

// send seals the queued runs (sealJobs), writes the queued datagrams
// with one WriteBatch (of the ESP underlay, if there is one, for ESP
// datagrams), accounts them per peer and per frame, and empties the
// queue and the segment arena.
func (n *Segment) send(sc *txScratch) {
	msgs := sc.msgs
	if len(msgs) == 0 {
		return
	}
	if len(sc.seal.jobs) > 0 {
		n.sealJobs(sc)
	}
	u := n.v.u
	if sc.sealed > 0 && n.v.espU != nil {
		u = n.v.espU // ESP datagrams go out of the ESP port
	}
	if _, err := u.WriteBatch(msgs); err != nil && sc.err == nil {
		sc.err = err
	}
	var dgrams uint64
	for j := range msgs {
		m, p, i := &msgs[j], sc.peers[j], sc.frame[j]
		segs := m.Segments(len(m.Buf))
		dgrams += uint64(segs)
		size := uint64(len(m.Buf) - segs*packet.VXLANHeaderLen)
		if j < len(sc.fsize) {
			size = uint64(sc.fsize[j])
		}
		if m.Err == nil {
			p.txPackets.Add(uint64(segs))
			p.txBytes.Add(size)
			sc.ok[i] = true
			continue
		}
		p.txDrops.Add(uint64(segs))
		if sc.why[i] == dropNone {
			sc.why[i] = dropTxError
			if errors.Is(m.Err, ErrMessageSize) {
				sc.why[i] = dropMTU
				n.warnMTU()
			}
		}
	}
	n.c.txDatagrams.Add(dgrams)
	clear(msgs)
	clear(sc.peers)
	sc.msgs, sc.peers, sc.frame, sc.fsize, sc.used, sc.sealed = msgs[:0], sc.peers[:0], sc.frame[:0], sc.fsize[:0], 0, 0
}

// warnMTU logs, once per network, that the underlay refused a datagram
// as larger than its path MTU: the network's MTU is more than the
// underlay carries now (lowered since the network was made, or a smaller
// hop on the path), and every frame past it is lost between hosts. The
// drops are only counted ("mtu", and "tx-error" at the switch's tunnel
// port); without this line a stalled connection would have no cause in
// the log.
func (n *Segment) warnMTU() {
	if n.mtuWarned.CompareAndSwap(false, true) {
		n.v.log.Warn("frames too large for the underlay are dropped: the network's MTU is more than the underlay's path MTU carries; lower it (make the network again) or raise the underlay's MTU",
			"vni", n.vni, "mtu", n.mtu)
	}
}
