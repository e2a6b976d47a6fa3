package tunnel

import (
	"net/netip"
	"sort"
	"sync/atomic"
)

// dropReason says why a frame or datagram was dropped.
type dropReason uint8

const (
	dropNone          dropReason = iota
	dropMalformed                // too short, no I flag, truncated, bad inner source MAC
	dropUnknownVNI               // no network for the VNI
	dropUnknownPeer              // the outer source is not a VTEP of the network
	dropNoInput                  // the network has no input function yet
	dropMTU                      // larger than the network or underlay MTU
	dropNoPeer                   // not a drop: flooding with no peer to send to (SegmentStats.FloodNoPeers)
	dropTxError                  // the underlay refused the datagram
	dropDown                     // the network was removed or the VTEP closed
	dropGSOInvalid               // offload metadata that does not match the frame
	dropCleartext                // cleartext VXLAN for an encrypted network
	dropNoSA                     // encrypted network: no SA for the peer yet
	dropESPAuth                  // ESP: the ICV did not verify (wrong key, forged)
	dropESPReplay                // ESP: sequence number seen or behind the window
	dropESPUnknownSPI            // ESP: no inbound SA for the SPI
	dropESPMalformed             // ESP: not ESP, bad trailer, not an inner VXLAN datagram
	dropESPSeq                   // ESP: the outbound SA's sequence numbers are used up
	dropSpoofedSrc               // inner source MAC statically behind another VTEP
	dropOwnAddr                  // outer source is this node's own underlay address
	numDrops
)

// String returns the reason's name as shown in Stats.
func (r dropReason) String() string {
	switch r {
	case dropMalformed:
		return "malformed"
	case dropUnknownVNI:
		return "unknown-vni"
	case dropUnknownPeer:
		return "unknown-peer"
	case dropNoInput:
		return "no-input"
	case dropMTU:
		return "mtu"
	case dropNoPeer:
		return "flood-no-peers"
	case dropTxError:
		return "tx-error"
	case dropDown:
		return "down"
	case dropGSOInvalid:
		return "gso-invalid"
	case dropCleartext:
		return "cleartext"
	case dropNoSA:
		return "no-sa"
	case dropESPAuth:
		return "esp-auth"
	case dropESPReplay:
		return "esp-replay"
	case dropESPUnknownSPI:
		return "esp-unknown-spi"
	case dropESPMalformed:
		return "esp-malformed"
	case dropESPSeq:
		return "esp-seq-exhausted"
	case dropSpoofedSrc:
		return "spoofed-src"
	case dropOwnAddr:
		return "own-address"
	}
	return "none"
}

type vtepCounters struct {
	rxDatagrams, rxBytes atomic.Uint64
	readErrors           atomic.Uint64
	txSupers, superFails atomic.Uint64
	rxSupers             atomic.Uint64
	helperSealed         atomic.Uint64
	drops                [numDrops]atomic.Uint64
}

type netCounters struct {
	rxPackets, rxBytes   atomic.Uint64
	txPackets, txBytes   atomic.Uint64
	txDatagrams, flooded atomic.Uint64
	txGSO                atomic.Uint64
	floodNoPeers         atomic.Uint64
	learnLimited         atomic.Uint64
	drops                [numDrops]atomic.Uint64
}

// Stats are a VTEP's counters since New.
type Stats struct {
	// RxDatagrams and RxBytes count every datagram read from the underlay
	// (bytes of UDP payload), whatever became of it.
	RxDatagrams, RxBytes uint64
	// ReadErrors counts failed underlay reads.
	ReadErrors uint64
	// Drops counts datagrams dropped before their network was known, by
	// reason ("malformed", "unknown-vni", "own-address": sent from this
	// node's own underlay address; for ESP datagrams "esp-auth",
	// "esp-replay", "esp-unknown-spi", "esp-malformed").
	Drops map[string]uint64
	// TxSupers counts TCP super-segments sent through the kernel as whole
	// VXLAN super-packets (Config.Super), SuperFallbacks those it refused
	// (they were split here instead), and RxSupers the super-segments that
	// arrived whole in one datagram (packet.ParseTunnelSuper).
	TxSupers, SuperFallbacks, RxSupers uint64
	// HelperSealed counts the ESP datagrams of super-segments that a
	// helper goroutine built and sealed beside the writing one (the rest
	// the writing goroutine sealed itself).
	HelperSealed uint64
	// Segments holds each network's counters, ordered by VNI.
	Segments []SegmentStats
}

// SegmentStats are one network's counters. Packet and byte counts are of
// inner Ethernet frames.
type SegmentStats struct {
	VNI uint32
	MTU int
	// RxPackets and RxBytes count frames handed to the input function.
	RxPackets, RxBytes uint64
	// TxPackets and TxBytes count frames Write sent to at least one VTEP;
	// TxDatagrams counts the datagrams sent for them (replication and
	// segmentation included) and Flooded the frames replicated to every
	// peer. TxGSO counts the frames that were TCP super-segments and were
	// split into segments before encapsulation.
	TxPackets, TxBytes, TxDatagrams, Flooded, TxGSO uint64
	// FloodNoPeers counts frames to flood while the network had no peer
	// (no other host, no external VTEP): nothing to do, not an error and
	// not a drop. Write accepts them (they count in its result) but not in
	// TxPackets.
	FloodNoPeers uint64
	// Learned is the number of live learned MACs; LearnLimited counts
	// sources not learned because the table was full.
	Learned      int
	LearnLimited uint64
	// Drops counts dropped frames by reason: "malformed", "unknown-peer",
	// "no-input", "cleartext" (VXLAN without ESP for an encrypted
	// network), "spoofed-src" (an inner source MAC that is statically
	// behind another VTEP) on receive; "mtu", "tx-error", "down",
	// "malformed", "gso-invalid" (offload metadata inconsistent with the
	// frame), "no-sa" (encrypted: no SA for any peer yet),
	// "esp-seq-exhausted" on send.
	Drops map[string]uint64
	// Peers holds per-VTEP counters, ordered by address.
	Peers []PeerStats
}

// PeerStats are the counters of one remote VTEP of a network.
type PeerStats struct {
	Addr               netip.Addr
	RxPackets, RxBytes uint64
	TxPackets, TxBytes uint64
	// TxDrops counts datagrams to this VTEP the underlay refused.
	TxDrops uint64
}

func dropMap(c *[numDrops]atomic.Uint64) map[string]uint64 {
	m := map[string]uint64{}
	for i := range c {
		if v := c[i].Load(); v > 0 {
			m[dropReason(i).String()] = v
		}
	}
	return m
}

// Stats returns a snapshot of the VTEP's and its networks' counters.
func (v *VTEP) Stats() Stats {
	s := Stats{
		RxDatagrams: v.c.rxDatagrams.Load(),
		RxBytes:     v.c.rxBytes.Load(),
		ReadErrors:  v.c.readErrors.Load(),
		Drops:       dropMap(&v.c.drops),

		TxSupers:       v.c.txSupers.Load(),
		SuperFallbacks: v.c.superFails.Load(),
		RxSupers:       v.c.rxSupers.Load(),
		HelperSealed:   v.c.helperSealed.Load(),
	}
	for _, n := range v.Segments() {
		s.Segments = append(s.Segments, n.Stats())
	}
	return s
}

// Stats returns a snapshot of the network's counters.
func (n *Segment) Stats() SegmentStats {
	s := SegmentStats{
		VNI:          n.vni,
		MTU:          n.mtu,
		RxPackets:    n.c.rxPackets.Load(),
		RxBytes:      n.c.rxBytes.Load(),
		TxPackets:    n.c.txPackets.Load(),
		TxBytes:      n.c.txBytes.Load(),
		TxDatagrams:  n.c.txDatagrams.Load(),
		Flooded:      n.c.flooded.Load(),
		TxGSO:        n.c.txGSO.Load(),
		FloodNoPeers: n.c.floodNoPeers.Load(),
		LearnLimited: n.c.learnLimited.Load(),
		Drops:        dropMap(&n.c.drops),
	}
	for _, e := range n.FDB() {
		if !e.Static {
			s.Learned++
		}
	}
	n.mu.Lock()
	for _, p := range n.objs {
		s.Peers = append(s.Peers, PeerStats{
			Addr:      p.addr,
			RxPackets: p.rxPackets.Load(),
			RxBytes:   p.rxBytes.Load(),
			TxPackets: p.txPackets.Load(),
			TxBytes:   p.txBytes.Load(),
			TxDrops:   p.txDrops.Load(),
		})
	}
	n.mu.Unlock()
	sort.Slice(s.Peers, func(i, j int) bool { return s.Peers[i].Addr.Less(s.Peers[j].Addr) })
	return s
}
