package lb

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

// Scheduler names a balancing policy for new connections.
type Scheduler uint8

// Schedulers.
const (
	// RoundRobin hands new connections to the active backends in turn
	// (the default).
	RoundRobin Scheduler = iota
	// WeightedRoundRobin is smooth weighted round robin (nginx-style):
	// over sum(weights) connections each backend gets its weight, spread
	// out rather than in bursts.
	WeightedRoundRobin
	// LeastConns picks the backend with the fewest active connections in
	// this host's conntrack (a local view).
	LeastConns
	// PowerOfTwo picks two backends at random and takes the one with fewer
	// active connections.
	PowerOfTwo
	// Maglev is consistent hashing of the flow (Maglev, table size
	// MaglevSize): every host picks the same backend for the same flow and
	// backend set, so a flow that misses a host's conntrack mid-stream
	// still reaches its backend.
	Maglev
)

var schedulerNames = [...]string{"rr", "wrr", "lc", "p2c", "maglev"}

// String returns the CLI name of s (rr, wrr, lc, p2c, maglev).
func (s Scheduler) String() string {
	if int(s) < len(schedulerNames) {
		return schedulerNames[s]
	}
	return fmt.Sprintf("scheduler(%d)", uint8(s))
}

// ParseScheduler parses a CLI scheduler name; "" is RoundRobin.
func ParseScheduler(name string) (Scheduler, error) {
	if name == "" {
		return RoundRobin, nil
	}
	for i, n := range schedulerNames {
		if n == name {
			return Scheduler(i), nil
		}
	}
	return 0, fmt.Errorf("scheduler %q: unknown (want rr, wrr, lc, p2c or maglev)", name)
}

// BackendState is the control plane's view of a backend.
type BackendState uint8

// Backend states.
const (
	// Active backends get new connections.
	Active BackendState = iota
	// Draining backends get no new connections but keep their existing
	// ones (a leaving backend during its stop grace period).
	Draining
	// Ejected backends are out by an active health check: no new
	// connections; their UDP flows move at once.
	Ejected
)

// Port is one port a service accepts on its VIP.
type Port struct {
	Proto  uint8  // packet.ProtoTCP or packet.ProtoUDP
	Port   uint16 // the port on the VIP
	Target uint16 // the port on the backend; 0 means Port
}

// Backend is one endpoint behind a service.
type Backend struct {
	IP     netip.Addr // the backend's address on the network (IPv4)
	MAC    packet.MAC // the backend's MAC: translated frames go to it
	Weight int        // for WeightedRoundRobin and Maglev; 0 means 1, at most MaxWeight
	State  BackendState
}

// Service is one service's configuration on one network.
type Service struct {
	Name      string
	VIP       netip.Addr // IPv4 virtual address, never a container's
	MAC       packet.MAC // the MAC the switch answers ARP with for VIP; zero means VIPMAC(VIP)
	Ports     []Port     // empty: every port and protocol of VIP goes to the same port on a backend
	Scheduler Scheduler
	// Affinity, if non-zero, sends a client IP's new connections to the
	// backend its previous one used, while the previous one was less
	// than Affinity ago.
	Affinity time.Duration
	Backends []Backend
}

// Limits of a service.
const (
	MaxWeight   = 1000
	MaxBackends = 10000 // < MaglevSize, and backend indexes fit uint16
	MaxPorts    = 1024
)

// VIPMAC returns the MAC a VIP answers ARP with when its Service gives
// none: 02:42 followed by the address, the scheme Docker uses for
// containers, which never clashes because a VIP is never a container's.
func VIPMAC(vip netip.Addr) packet.MAC {
	a := vip.As4()
	return packet.MAC{0x02, 0x42, a[0], a[1], a[2], a[3]}
}

// Validate checks s; the error names the service and the cause.
func (s *Service) Validate() error {
	if !s.VIP.Is4() || s.VIP.IsUnspecified() || s.VIP.IsMulticast() {
		return fmt.Errorf("service %q: VIP %v: not a unicast IPv4 address", s.Name, s.VIP)
	}
	if s.Scheduler > Maglev {
		return fmt.Errorf("service %q: unknown scheduler %d", s.Name, s.Scheduler)
	}
	if s.Affinity < 0 {
		return fmt.Errorf("service %q: negative affinity timeout %v", s.Name, s.Affinity)
	}
	if len(s.Ports) > MaxPorts {
		return fmt.Errorf("service %q: %d ports, at most %d", s.Name, len(s.Ports), MaxPorts)
	}
	seen := make(map[[2]uint16]bool, len(s.Ports))
	for _, p := range s.Ports {
		if (p.Proto != packet.ProtoTCP && p.Proto != packet.ProtoUDP) || p.Port == 0 {
			return fmt.Errorf("service %q: port %d/%d: want a non-zero tcp or udp port", s.Name, p.Port, p.Proto)
		}
		k := [2]uint16{uint16(p.Proto), p.Port}
		if seen[k] {
			return fmt.Errorf("service %q: port %d/%d listed twice", s.Name, p.Port, p.Proto)
		}
		seen[k] = true
	}
	return s.validateBackends()
}

func (s *Service) validateBackends() error {
	if len(s.Backends) > MaxBackends {
		return fmt.Errorf("service %q: %d backends, at most %d", s.Name, len(s.Backends), MaxBackends)
	}
	seen := make(map[netip.Addr]bool, len(s.Backends))
	for _, b := range s.Backends {
		if !b.IP.Is4() || b.IP.IsUnspecified() || b.IP.IsMulticast() || b.IP == s.VIP {
			return fmt.Errorf("service %q: backend %v: not a unicast IPv4 address other than the VIP", s.Name, b.IP)
		}
		if b.MAC.IsZero() || b.MAC.IsMulticast() {
			return fmt.Errorf("service %q: backend %v: MAC %v is not a unicast address", s.Name, b.IP, b.MAC)
		}
		if b.Weight < 0 || b.Weight > MaxWeight {
			return fmt.Errorf("service %q: backend %v: weight %d outside 0..%d", s.Name, b.IP, b.Weight, MaxWeight)
		}
		if b.State > Ejected {
			return fmt.Errorf("service %q: backend %v: unknown state %d", s.Name, b.IP, b.State)
		}
		if seen[b.IP] {
			return fmt.Errorf("service %q: backend %v listed twice", s.Name, b.IP)
		}
		seen[b.IP] = true
	}
	return nil
}
