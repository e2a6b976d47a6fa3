package tunnel

import (
	"net/netip"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
)

// TraceSA is the outbound SA a traced frame would be sealed with for one
// peer.
type TraceSA struct {
	Peer netip.Addr
	// SPI is the SA's; Found is false when the VTEP has no SA for the
	// peer and cipher yet (the datagram is dropped, "no-sa").
	SPI   uint32
	Found bool
}

// Trace is what WriteFrames would do with one frame (Segment.Trace).
type Trace struct {
	// Drop is the reason the frame is dropped, as SegmentStats.Drops
	// names it ("mtu", "gso-invalid", "flood-no-peers", "no-sa", "down"),
	// or "" if it is sent.
	Drop string
	// Peers are the VTEPs the frame goes to; Flood is set when it goes to
	// every peer (its destination is not in the FDB), Learned when the
	// destination was learned from received frames rather than
	// statically known.
	Peers   []netip.Addr
	Flood   bool
	Learned bool
	// MTU is the network's; a frame longer than MTU plus the Ethernet
	// header is dropped ("mtu").
	MTU int
	// Cipher is the network's (0: cleartext); SAs has the SA of every peer
	// of an encrypted network.
	Cipher esp.Cipher
	SAs    []TraceSA
}

// Trace reports what WriteFrames would do with frame (no offload
// metadata), through the same classification (MTU, FDB lookup, fan-out)
// and the same SA lookup, without sending, sealing or counting anything.
func (n *Segment) Trace(frame []byte) Trace {
	tr := Trace{MTU: n.mtu, Cipher: n.Cipher()}
	if n.removed.Load() || n.v.closed.Load() {
		tr.Drop = dropDown.String()
		return tr
	}
	off := packet.OffloadLen
	buf := make([]byte, off+len(frame))
	copy(buf[off:], frame)
	var sc txScratch
	t := txFrame{off: off, buf: buf}
	st := n.state.Load()
	if why := n.classify(&sc, st, n.v.clock(), &t); why != dropNone {
		tr.Drop = why.String()
		return tr
	}
	tr.Flood = t.flood
	dst := packet.Ethernet(frame).Dst()
	tr.Learned = !t.flood && st.remotes[dst] == nil
	sent := false
	var sec *secState
	if tr.Cipher != 0 {
		if sec = n.v.sec.Load(); sec == nil {
			sec = &secState{}
		}
	}
	for _, p := range t.fan {
		tr.Peers = append(tr.Peers, p.addr)
		if sec == nil {
			sent = true
			continue
		}
		sa := TraceSA{Peer: p.addr}
		if o := sec.outbound(p.addr, tr.Cipher); o != nil {
			sa.SPI, sa.Found, sent = o.SPI(), true, true
		}
		tr.SAs = append(tr.SAs, sa)
	}
	if !sent {
		tr.Drop = dropNoSA.String()
	}
	return tr
}
