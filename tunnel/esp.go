package tunnel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
)

// Encrypted networks (docs/architecture.md, "Encrypted networks"). A segment with
// a cipher (Segment.SetCipher) sends every datagram as ESP (RFC 4303, AES-GCM per
// RFC 4106) in UDP (RFC 3948) to the peers' ESP port, and accepts its
// frames only from ESP: cleartext VXLAN for its VNI is dropped and counted
// ("cleartext").
//
// The ESP payload is exactly the UDP datagram that would have been sent in
// the clear: an inner UDP header (source port from the flow hash,
// destination the data port, length, checksum 0), the VXLAN header and the
// frame, with next header 17. In the buffer:
//
//	scratch (8) | ESP header (16) | UDP (8) | VXLAN (8) | frame | trailer
//	            ^ offset-espFrontLen                     ^ offset
//
// The SAs are the control plane's (VTEP.SetSAs): one outbound SA per peer
// and cipher, sealing with the primary key, and any number of inbound SAs,
// found by SPI. They are per host pair, not per network: the networks with
// the same cipher share them, so a sequence number, and so a nonce, is
// never used twice under one key.

// espFrontLen is what an encrypted datagram needs in front of the frame:
// VXLAN and inner UDP headers, the ESP header and the scratch Seal and
// Open borrow in front of it.
const espFrontLen = packet.VXLANHeaderLen + udpHeaderLen + esp.HeaderLen + esp.ScratchLen

const udpHeaderLen = 8

// Sealing takes a sequence number and sending happens later, so the
// datagrams of Write calls running at the same time reach a peer out of
// order; the receiver's replay window (esp.WindowSize) absorbs that as
// long as no datagram is overtaken by WindowSize or more datagrams to the
// same peer. A Write call holds at most espMaxHeld sealed datagrams before
// it sends them (four of the largest GSO runs); so espMaxSealers Write
// calls may hold theirs at the same time, each overtaken by all the
// others, without a valid datagram being refused as a replay
// (TestConcurrentSealersNeverReplay).
const (
	espMaxHeld    = 4 * MaxGSOSegments
	espMaxSealers = 63
)

// The window covers espMaxSealers full holds; does not compile otherwise.
const _ = uint(esp.WindowSize - espMaxSealers*espMaxHeld)

// OutboundSA is the SA this host seals a cipher's datagrams to Peer with.
type OutboundSA struct {
	Peer netip.Addr
	SA   *esp.Outbound
}

// InboundSA is an SA this host opens datagrams from Peer with: a datagram
// that authenticates under it is taken as sent by Peer, whatever its outer
// source address.
type InboundSA struct {
	Peer netip.Addr
	SA   *esp.Inbound
}

// secState is the immutable security snapshot the data path reads.
type secState struct {
	out    map[outKey]*esp.Outbound
	in     *esp.Table
	peerOf map[*esp.Inbound]netip.Addr
}

type outKey struct {
	addr   netip.Addr
	cipher esp.Cipher
}

// SetSAs replaces the VTEP's SAs. The SA objects carry sequence numbers
// and replay windows, so the control plane passes the same objects again
// for as long as their keys are in use, and new ones only for new keys or
// peers. out has one SA per peer and cipher.
//
// An SA that collides with an earlier one of the lists (a second outbound
// SA for a peer and cipher, an inbound SA with an SPI already taken) is
// left out and named in the error; every other SA is installed all the
// same, so one bad SA does not cut the others off.
func (v *VTEP) SetSAs(out []OutboundSA, in []InboundSA) error {
	st := &secState{out: make(map[outKey]*esp.Outbound, len(out)), peerOf: make(map[*esp.Inbound]netip.Addr, len(in))}
	var skipped []error
	for _, o := range out {
		k := outKey{o.Peer.Unmap(), o.SA.Stats().Cipher}
		if st.out[k] != nil {
			skipped = append(skipped, fmt.Errorf("vtep: left out a second outbound %v SA to %s (SPI 0x%08x)", k.cipher, k.addr, o.SA.SPI()))
			continue
		}
		st.out[k] = o.SA
	}
	sas := make([]*esp.Inbound, 0, len(in))
	bySPI := make(map[uint32]netip.Addr, len(in))
	for _, i := range in {
		if prev, ok := bySPI[i.SA.SPI()]; ok {
			skipped = append(skipped, fmt.Errorf("vtep: left out the inbound SA from %s with SPI 0x%08x, which the SA from %s has", i.Peer.Unmap(), i.SA.SPI(), prev))
			continue
		}
		bySPI[i.SA.SPI()] = i.Peer.Unmap()
		st.peerOf[i.SA] = i.Peer.Unmap()
		sas = append(sas, i.SA)
	}
	t, err := esp.NewTable(sas...)
	if err != nil {
		return fmt.Errorf("vtep: %w", err)
	}
	st.in = t
	v.sec.Store(st)
	return errors.Join(skipped...)
}

// putInnerUDP writes the inner UDP header of an encrypted datagram in
// front of the VXLAN header at b[0:8]: source port from the flow hash,
// destination port, length of the whole datagram b, checksum 0 (RFC 7348
// allows it over IPv4, and ESP authenticates the datagram anyway).
func putInnerUDP(b []byte, hash uint32, dport uint16) {
	binary.BigEndian.PutUint16(b[0:], innerSrcPort(hash))
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	b[6], b[7] = 0, 0
}

// innerSrcPort maps a flow hash into the dynamic port range, where the
// underlay's transmit sockets have the outer source ports (RFC 7348
// section 5).
func innerSrcPort(hash uint32) uint16 { return uint16(txPortMin + hash%(txPortMax-txPortMin+1)) }

// espDropReason maps an esp refusal to the VTEP drop reason.
func espDropReason(err error) dropReason {
	switch esp.ReasonOf(err) {
	case esp.ReasonAuth:
		return dropESPAuth
	case esp.ReasonReplay:
		return dropESPReplay
	case esp.ReasonUnknownSPI:
		return dropESPUnknownSPI
	}
	return dropESPMalformed
}

// openESP opens the ESP datagram buf[start:end] in place, buf being the
// receive buffer it was read into, and returns its inner VXLAN datagram
// and the peer the SA authenticates (not the outer source address). The
// datagram may be one of a coalesced (UDP_GRO) read: Open borrows the
// ScratchLen bytes in front of it, the tail of the datagram before, and
// restores them. A refused datagram returns nil and is counted in drops by
// reason.
func (v *VTEP) openESP(sec *secState, buf []byte, start, end int, drops *[numDrops]uint64) ([]byte, netip.Addr) {
	if sec == nil {
		drops[dropESPUnknownSPI]++
		return nil, netip.Addr{}
	}
	sa, in0, in1, nh, err := sec.in.Open(buf[:end], start, end)
	if err != nil {
		drops[espDropReason(err)]++
		return nil, netip.Addr{}
	}
	u := buf[in0:in1]
	if nh != esp.ProtoUDP || len(u) < udpHeaderLen || int(binary.BigEndian.Uint16(u[4:])) != len(u) ||
		binary.BigEndian.Uint16(u[2:]) != v.port {
		drops[dropESPMalformed]++
		return nil, netip.Addr{}
	}
	return u[udpHeaderLen:], sec.peerOf[sa]
}

// espRxFront is where an ESP datagram is read relative to packet.Headroom,
// so that its frame lands at packet.Headroom after Open.
const espRxFront = packet.VXLANHeaderLen + udpHeaderLen + esp.HeaderLen

// SetCipher makes the network an encrypted one (c nonzero: its datagrams
// are sealed with the VTEP's outbound SAs of cipher c and sent to the ESP
// port, and cleartext VXLAN for it is dropped) or a cleartext one (0).
// Set it before SetInput.
func (n *Segment) SetCipher(c esp.Cipher) error {
	if c != 0 && c.KeyLen() == 0 {
		return fmt.Errorf("vni %d: unknown %v", n.vni, c)
	}
	n.cipher.Store(uint32(c))
	return nil
}

// Cipher returns the network's cipher, 0 for a cleartext network.
func (n *Segment) Cipher() esp.Cipher { return esp.Cipher(n.cipher.Load()) }

// outbound returns the SA sealing cipher c's datagrams to addr, or nil.
func (s *secState) outbound(addr netip.Addr, c esp.Cipher) *esp.Outbound {
	return s.out[outKey{addr, c}]
}

// writeESP queues the ESP datagrams of frame t for its fan-out. A plain
// frame to one peer that this port owns (packet.Frames.Owned) is sealed
// in place (sealInPlace); everything else (a shared frame, flooding: one
// sealed copy per peer; super-segments: one per segment and peer) is
// built in the scratch arena, the caller's frame untouched (sealCopy,
// writeESPSegments). A peer without an SA, or an SA out of sequence
// numbers, is a drop of that datagram ("no-sa", "esp-seq-exhausted" when
// no datagram of the frame was sent).
func (n *Segment) writeESP(sc *txScratch, sec *secState, c esp.Cipher, t *txFrame) {
	switch {
	case t.isGSO:
		n.writeESPSegments(sc, sec, c, t)
	case len(t.fan) == 1 && t.owned != nil && cap(t.owned)-len(t.owned) >= esp.MaxTrailerLen:
		n.sealInPlace(sc, sec, c, t)
	default:
		for _, p := range t.fan {
			n.sealCopy(sc, sec, c, t, p)
		}
	}
}

// sealInPlace seals owned frame t for its one peer where it is: the
// VXLAN, inner UDP and ESP headers go into the headroom, the trailer into
// the tailroom.
func (n *Segment) sealInPlace(sc *txScratch, sec *secState, c esp.Cipher, t *txFrame) {
	to, b := t.fan[0], t.owned
	sa := sec.outbound(to.addr, c)
	if sa == nil {
		n.espDrop(sc, to, t.i, dropNoSA)
		return
	}
	if len(sc.msgs) == cap(sc.msgs) || sc.sealed >= espMaxHeld {
		n.send(sc)
	}
	offset := t.off
	start := offset - packet.VXLANHeaderLen - udpHeaderLen
	packet.PutVXLAN(b[offset-packet.VXLANHeaderLen:], n.vni)
	putInnerUDP(b[start:], t.hash, n.v.port)
	s0, s1, err := sa.Seal(b, start, len(b))
	if err != nil {
		n.espDrop(sc, to, t.i, espSealDrop(err))
		return
	}
	n.queueESP(sc, b[s0:s1], 0, to, t, len(t.f))
}

// sealCopy seals a copy of plain frame t for peer p in the arena,
// completing its checksum there if t.fill.
func (n *Segment) sealCopy(sc *txScratch, sec *secState, c esp.Cipher, t *txFrame, p *peer) {
	sa := sec.outbound(p.addr, c)
	if sa == nil {
		n.espDrop(sc, p, t.i, dropNoSA)
		return
	}
	flen := len(t.f)
	slot := espFrontLen + flen + esp.MaxTrailerLen
	sc.ensureArena()
	if len(sc.arena)-sc.used < slot || len(sc.msgs) == cap(sc.msgs) || sc.sealed >= espMaxHeld {
		n.send(sc)
	}
	base := sc.used
	start := base + esp.ScratchLen + esp.HeaderLen
	payload := start + udpHeaderLen + packet.VXLANHeaderLen
	copy(sc.arena[payload:], t.f)
	if t.fill {
		t.o.FillChecksum(sc.arena[payload : payload+flen])
	}
	packet.PutVXLAN(sc.arena[payload-packet.VXLANHeaderLen:], n.vni)
	putInnerUDP(sc.arena[start:payload+flen], t.hash, n.v.port)
	s0, s1, err := sa.Seal(sc.arena[:base+slot], start, payload+flen)
	if err != nil {
		n.espDrop(sc, p, t.i, espSealDrop(err))
		return
	}
	sc.used += slot
	n.queueESP(sc, sc.arena[s0:s1], 0, p, t, flen)
}

// writeESPSegments queues the ESP datagrams of the segments of the TCP
// super-segment t for its fan-out. Per peer, the segments are sealed back
// to back in the scratch arena in runs that one UDP segmentation send
// carries (Message.GSOSize): segments of equal length give ESP datagrams
// of equal length, stride bytes apart, and only the last of a run may be
// shorter. Sealing datagram k borrows the ScratchLen bytes in front of
// its ESP header, the tail of datagram k-1, and restores them.
func (n *Segment) writeESPSegments(sc *txScratch, sec *secState, c esp.Cipher, t *txFrame) {
	segs := t.g.Segments()
	inner0 := udpHeaderLen + packet.VXLANHeaderLen + t.g.SegmentLen(0)
	stride := inner0 + esp.Overhead(inner0)
	perRun := max(1, min(MaxGSOSegments, MaxGSOBytes/stride))
	for _, p := range t.fan {
		sa := sec.outbound(p.addr, c)
		if sa == nil {
			n.espDrop(sc, p, t.i, dropNoSA)
			continue
		}
		for k := 0; k < segs; {
			cnt := min(perRun, segs-k)
			if !n.sealRun(sc, sa, t, p, segRun{first: k, count: cnt, stride: stride}) {
				break
			}
			k += cnt
		}
	}
}

// segRun is a run of count segments of a super-segment from segment
// first on, sealed stride bytes apart.
type segRun struct{ first, count, stride int }

// sealRun queues the segments of run of super-segment t for p as one run
// of datagrams, laid out in the arena with their sequence numbers
// reserved; send builds and seals them (sealJobs). It reports false after
// a drop.
func (n *Segment) sealRun(sc *txScratch, sa *esp.Outbound, t *txFrame, p *peer, run segRun) bool {
	g := &t.g
	k, cnt, stride := run.first, run.count, run.stride
	last := udpHeaderLen + packet.VXLANHeaderLen + g.SegmentLen(k+cnt-1)
	need := (cnt-1)*stride + esp.HeaderLen + last + esp.MaxTrailerLen
	sc.ensureArena()
	if len(sc.arena)-sc.used < need || len(sc.msgs) == cap(sc.msgs) || sc.sealed+cnt > espMaxHeld {
		n.send(sc)
	}
	flen := 0
	for x := range cnt {
		flen += g.SegmentLen(k + x)
	}
	// Reserve counts the run's packets and cleartext bytes as sealed.
	seq, err := sa.Reserve(cnt, cnt*(udpHeaderLen+packet.VXLANHeaderLen)+flen)
	if err != nil {
		n.espDrop(sc, p, t.i, espSealDrop(err))
		return false
	}
	at := sc.used
	end := at + (cnt-1)*stride + last + esp.Overhead(last)
	sc.used += need
	sc.seal.jobs = append(sc.seal.jobs, espJob{g: *g, sa: sa, seq: seq, first: k, count: cnt, stride: stride, at: at, hash: t.hash})
	sc.seal.pending += cnt
	gso := 0
	if cnt > 1 {
		gso = stride
	}
	n.queueESP(sc, sc.arena[at:end], gso, p, t, flen)
	return true
}

// queueESP adds the sealed datagram dgram of frame t (flen frame bytes;
// a run of datagrams of gso bytes if gso > 0) for p, to its ESP port.
func (n *Segment) queueESP(sc *txScratch, dgram []byte, gso int, p *peer, t *txFrame, flen int) {
	m := Message{Buf: dgram, GSOSize: gso, Addr: netip.AddrPortFrom(p.addr, n.v.espPort), Hash: t.hash}
	sc.sealed += m.Segments(len(dgram))
	sc.msgs = append(sc.msgs, m)
	sc.peers = append(sc.peers, p)
	sc.frame = append(sc.frame, int32(t.i))
	sc.fsize = append(sc.fsize, int32(flen))
}

// espDrop records that a datagram of frame i to p was not sealed.
func (n *Segment) espDrop(sc *txScratch, p *peer, i int, why dropReason) {
	p.txDrops.Add(1)
	if sc.why[i] == dropNone {
		sc.why[i] = why
	}
}

func espSealDrop(err error) dropReason {
	if err == esp.ErrSeqExhausted {
		return dropESPSeq
	}
	return dropMalformed
}
