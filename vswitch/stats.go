package vswitch

import (
	"sort"
	"sync/atomic"
)

// reason is why a frame was dropped.
type reason int

const (
	dropMalformed    reason = iota // shorter than an Ethernet header, bad source MAC, bad IPv4/ARP under port security
	dropPortSecurity               // source MAC/IP not the port's
	dropNoRoute                    // addressed to the gateway while it has no port, to or from the gateway port across the tunnel
	dropSamePort                   // destination is the input port
	dropTxError                    // the destination port's Write failed
	dropPortDown                   // input on a removed port or a closed switch
	dropRAGuard                    // IPv6 router advertisement or redirect from a secured port, or an ICMPv6 type hidden by the header chain
	dropNDSpoof                    // neighbor discovery from a secured port that speaks for another address or MAC
	dropGSOInvalid                 // offload metadata that does not match the frame or breaks the GSO bounds
	dropMTU                        // a frame (or a super-segment's segment) larger than the network MTU
	dropStorm                      // a flooded frame over the port's storm limit
	dropSpoofedSrc                 // source MAC with a local or static entry on another port
	dropLB                         // dropped by the balancer (its Reasons say why)
	dropLBReject                   // refused by the balancer, answered with a RST or ICMP unreachable
	dropLBRetry                    // a backend's RST to a SYN, hidden by the balancer (the SYN went to another backend)
	dropLBHeld                     // an IP fragment that came before its datagram's first, held by the balancer (sent when the first comes)
	dropVIPPass                    // to a VIP's MAC from a balanced port, but not balanced (not IPv4, or another IP)
	dropVIPRemote                  // to a VIP's MAC from a port that is not balanced (the tunnel)
	dropIngressFull                // a new routing-mesh flow while the ingress-return table is full
	dropIngressStray               // from the tunnel to this host's gateway-host MAC, but no reply of a flow its gateway opened
	dropMLDReport                  // an MLDv2 report (to ff02::16) from a secured port: the overlay has no multicast router to hear it
	numReasons
)

// String returns the reason's key in Stats.
func (r reason) String() string {
	switch r {
	case dropMalformed:
		return "malformed"
	case dropPortSecurity:
		return "port-security"
	case dropNoRoute:
		return "no-route"
	case dropSamePort:
		return "same-port"
	case dropTxError:
		return "tx-error"
	case dropPortDown:
		return "port-down"
	case dropRAGuard:
		return "ra-guard"
	case dropNDSpoof:
		return "nd-spoof"
	case dropGSOInvalid:
		return "gso-invalid"
	case dropMTU:
		return "mtu"
	case dropStorm:
		return "storm"
	case dropSpoofedSrc:
		return "spoofed-src"
	case dropLB:
		return "lb-drop"
	case dropLBReject:
		return "lb-reject"
	case dropLBRetry:
		return "lb-retry"
	case dropLBHeld:
		return "lb-held"
	case dropVIPPass:
		return "vip-pass"
	case dropVIPRemote:
		return "vip-remote"
	case dropIngressFull:
		return "ingress-full"
	case dropIngressStray:
		return "ingress-stray"
	case dropMLDReport:
		return "mld-report"
	}
	return "unknown"
}

type dropCounters [numReasons]atomic.Uint64

func (d *dropCounters) snapshot() map[string]uint64 {
	m := map[string]uint64{}
	for i := range d {
		if n := d[i].Load(); n > 0 {
			m[reason(i).String()] = n
		}
	}
	return m
}

type portCounters struct {
	rxPackets, rxBytes, txPackets, txBytes atomic.Uint64
	drops                                  dropCounters
}

type switchCounters struct {
	forwarded, flooded, arpSuppressed, learnLimited atomic.Uint64
	translated, lbRejects, lbRetries                atomic.Uint64
	drops                                           dropCounters
}

// Stats is a snapshot of a switch's counters.
type Stats struct {
	// Ports lists the attached ports by name.
	Ports []PortStats
	// Drops counts dropped frames by reason over the switch's lifetime,
	// including ports since removed. Drops on input are charged to the
	// input port, tx-error to the destination port.
	Drops map[string]uint64
	// Forwarded counts frames sent to one known destination port.
	Forwarded uint64
	// Flooded counts frames sent to all other ports (broadcast, multicast,
	// unknown unicast); each counts once however many ports it reached.
	Flooded uint64
	// ARPSuppressed counts ARP requests answered by the switch.
	ARPSuppressed uint64
	// LearnLimited counts source MACs not learned because the table was full.
	LearnLimited uint64
	// Translated counts frames the balancer rewrote to a backend (they
	// count in Forwarded or Flooded too).
	Translated uint64
	// LBRejects counts the RSTs and ICMP unreachables the switch sent for
	// the balancer ("lb-reject" counts the refused frames); LBRetries the
	// client SYNs it re-sent to another backend ("lb-retry" counts the
	// hidden RSTs).
	LBRejects, LBRetries uint64
	// IngressReturn is how many routing-mesh flows the ingress-return
	// table holds (live, or expired and not swept yet), of at most
	// IngressReturnMax (0 until the switch has a remote gateway).
	IngressReturn, IngressReturnMax int
	// IngressReturnEvicted counts entries of closed flows (FIN or RST
	// seen) the table freed before their timeout to take a new flow.
	IngressReturnEvicted uint64
}

// PortStats are one port's counters. Rx counts every frame given to Input;
// Tx counts frames the port's Write accepted.
type PortStats struct {
	Name                                   string
	RxPackets, RxBytes, TxPackets, TxBytes uint64
	Drops                                  map[string]uint64
}

// Stats returns the current counters.
func (s *Switch) Stats() Stats {
	st := Stats{
		Drops:         s.c.drops.snapshot(),
		Forwarded:     s.c.forwarded.Load(),
		Flooded:       s.c.flooded.Load(),
		ARPSuppressed: s.c.arpSuppressed.Load(),
		LearnLimited:  s.c.learnLimited.Load(),
		Translated:    s.c.translated.Load(),
		LBRejects:     s.c.lbRejects.Load(),
		LBRetries:     s.c.lbRetries.Load(),
	}
	if mt := s.mesh.Load(); mt != nil {
		st.IngressReturn, st.IngressReturnMax = int(mt.n.Load()), mt.max()
		st.IngressReturnEvicted = mt.evicted.Load()
	}
	for _, r := range s.view.Load().ports {
		st.Ports = append(st.Ports, PortStats{
			Name:      r.name,
			RxPackets: r.c.rxPackets.Load(),
			RxBytes:   r.c.rxBytes.Load(),
			TxPackets: r.c.txPackets.Load(),
			TxBytes:   r.c.txBytes.Load(),
			Drops:     r.c.drops.snapshot(),
		})
	}
	sort.Slice(st.Ports, func(i, j int) bool { return st.Ports[i].Name < st.Ports[j].Name })
	return st
}
