package lb

import "net/netip"

// ServiceStats are one service's counters on this host.
type ServiceStats struct {
	Name     string
	VIP      netip.Addr
	NewConns uint64 // connections (flows) created
	Active   int64  // open connections (sum over backends): not reset, not closed both ways, not expired
	Packets  uint64 // translated both ways
	Bytes    uint64
	Retries  uint64 // attempts moved to another backend
	Rejects  uint64 // RST / ICMP unreachable asked for
	// Ejections sums the backends' (those in the snapshot).
	Ejections uint64
	Backends  []BackendStats
}

// BackendStats are one backend's counters on this host.
type BackendStats struct {
	IP        netip.Addr
	State     BackendState
	Ejected   bool // passively ejected now
	NewConns  uint64
	Active    int64
	Packets   uint64
	Bytes     uint64
	Retries   uint64 // attempts moved away from it
	Failures  uint64 // failed connection attempts (RST to SYN, SYN timeout)
	Ejections uint64
}

// Stats returns the counters of every service of the published snapshot,
// sorted by VIP; now decides Ejected. It allocates (control plane).
func (t *Table) Stats(now int64) []ServiceStats {
	snap := t.snap.Load()
	var out []ServiceStats
	for _, cfg := range snap.Services() {
		c := snap.get(cfg.VIP.As4())
		ss := ServiceStats{
			Name: cfg.Name, VIP: cfg.VIP, NewConns: c.st.newConns.Load(), Packets: c.st.packets.Load(),
			Bytes: c.st.bytes.Load(), Retries: c.st.retries.Load(), Rejects: c.st.rejects.Load(),
		}
		for i := range c.backends {
			b := &c.backends[i]
			bs := BackendStats{
				IP: netip.AddrFrom4(b.ip), State: b.state, Ejected: b.st.ejectedUntil.Load() > now,
				NewConns: b.st.newConns.Load(), Active: b.st.active.Load(), Packets: b.st.packets.Load(),
				Bytes: b.st.bytes.Load(), Retries: b.st.retries.Load(), Failures: b.st.failures.Load(),
				Ejections: b.st.ejections.Load(),
			}
			ss.Active += bs.Active
			ss.Ejections += bs.Ejections
			ss.Backends = append(ss.Backends, bs)
		}
		out = append(out, ss)
	}
	return out
}
