// Package lb is the service load balancer's core: services and their
// VIPs, schedulers, connection tracking and the in-place NAT rewrite of
// Ethernet frames. It imports only packet, and is meant to be called from
// a switch port's batch loop; it never blocks on the control plane.
//
// # Model
//
// A Service has a VIP on one network, optional ports (proto/port ->
// backend port; without ports every port and protocol of the VIP goes to
// the same port on a backend, as Docker's fwmark does), a Scheduler
// (RoundRobin, WeightedRoundRobin, LeastConns, PowerOfTwo, Maglev), an
// optional client-IP Affinity timeout, and Backends (IP, MAC, weight,
// state Active, Draining or Ejected). A network's services are compiled
// into an immutable Snapshot (NewSnapshot, or Snapshot.With/Without) and
// published with Table.Swap (an atomic.Pointer): the data path reads it
// without locks. Runtime state (counters, round-robin position, backend
// health) lives outside the configuration and carries over swaps by
// service (VIP and name) and backend (IP).
//
// A Snapshot indexes its VIPs in two levels on their last two bytes (one
// slot each up to a /16; wider networks overflow into a small map), so
// With and Without copy 4 KiB and Swap compares only the changed slots:
// adding a backend costs the same with 1 or 10,000 services (9
// allocations). What a new connection reads of its service (VIP,
// scheduler, ports, the active list and up to 4 backends inline) is the
// first lines of one allocation, the configuration last; up to 8
// backends are found by address with a scan, not a map. A backend's
// runtime state is two cache lines, the per-packet counters alone on the
// second. Spread over 10,000 services, each connection still meets its
// service cold in the CPU caches (about 4 lines: index node, service,
// backend state, service state), which the same connections to one
// service do not; BenchmarkLookupServices* measure it.
//
// A Table is one network's balancer; a Conntrack is the host's
// connection table, shared by the Tables of all networks (keys include a
// host-local network id). Conntrack has Shards shards, each with its own
// mutex, a fixed slab of entries (all allocated by NewConntrack), two
// hash indexes and an LRU list, so no packet allocates; a full shard
// evicts its least recently used entry. An entry is 80 bytes, 88 with its
// index share at the default size (TestEntrySize). The caller passes a
// coarse clock (now, nanoseconds, > 0, one reading per batch) and calls
// Conntrack.Sweep periodically.
//
// # Packet path
//
// Translate is called for each frame a client's port sends (a
// container's, or a host's gateway dialling a VIP for a published port). A frame to a
// VIP finds its connection (client IP/port, VIP/port) or gets a new one
// from the scheduler (TCP SYN, UDP, ICMP echo); its destination MAC, IP
// and port become the backend's, in place, with RFC 1624 incremental
// checksum updates. With CHECKSUM_PARTIAL (virtio NEEDS_CSUM, which
// every TSO super-segment has), the TCP/UDP checksum field holds the
// pseudo-header sum only: it is updated for the address change but not
// for the port change, because the device sums the ports itself; the
// offload metadata stays valid (headers do not move). A TCP packet that
// is not a SYN and has no connection gets Reject (the caller answers with
// WriteReject: a RST), except with Maglev, where it goes to the backend
// every host would choose. A port the service does not list gets Reject
// too (RST, or ICMP port unreachable for UDP).
//
// # Connections opened without a frame
//
// Open is Translate's decision for a TCP SYN made before any frame: the
// routing mesh's ingress host asks it for a connection's backend before
// it dials, so that a backend on its own host can be reached without the
// switch (the published-port fast path). It makes the entry the SYN would
// make, with the same key, scheduler state and counters; the caller then
// either dials the VIP after all (its SYN finds the entry and follows
// it: one pick, counted once) or tells the entry what frames would have
// (Conn.Connected, Conn.Failed, Conn.Closed).
//
// # Reply path: no SNAT
//
// Backends see the client's own address. Their replies are addressed to
// the client, so they always come back to the client's host, where the
// caller passes every frame bound for a local port through Untranslate:
// the backend-side key (backend IP/port, client IP/port) finds the entry
// (a client outside the overlay, brought in by another host's gateway,
// is no local port: the switch of the backend's host steers those
// replies back to that host, see vswitch.Switch.AddRemoteGateway),
// and the source IP and port become the VIP's again and the source MAC
// the VIP's MAC (the one the switch answered ARP with, Service.MAC or
// VIPMAC), so the client's stack and ARP cache see only the VIP. ICMP
// errors about a translated flow are translated both ways (outer address
// and the quoted header, with their checksums).
//
// # Health and churn
//
// A backend's RST to a SYN, or a SYN still unanswered after
// Timeouts.SynRetry (seen when the client retransmits it), counts as a
// failed attempt: the connection moves to another backend, at most
// MaxRetries times, before the client sees an error. A move avoids every
// backend that failed the attempt so far (the entry remembers them), so
// two failing backends cannot use up the retries while a healthy one is
// there, and takes a second choice when the first already has a
// connection from the client's port, as a new connection does. The RST
// is hidden: Untranslate returns Retry and WriteRetry writes the
// client's SYN (its headers are remembered in a small bounded table,
// keyed by client port) re-addressed to the new backend, for the caller
// to send at once; if it was forgotten, the client's own retransmission
// reaches the new backend. EjectAfter failures in a row eject a backend from scheduling
// for Timeouts.Eject. Draining backends get no new connections but keep
// theirs; when a backend leaves the snapshot its UDP and echo flows move
// at once, and its TCP connections stay until the caller's Table.Flush at
// the end of the stop grace period. A client that is a backend of the
// service is not balanced to itself, and a client port never gets two
// connections to the same backend address and port (two VIPs sharing a
// backend), which neither the backend nor the reply path could tell
// apart.
//
// # IP fragments
//
// A datagram above the MTU comes in fragments; only the first carries
// the ports. The first fragment is balanced like a whole datagram and
// what it was rewritten to is remembered in a FragTable (Config.FragMax
// datagrams, Config.FragTimeout) by source, destination, protocol and IP
// ID; later fragments get their address, header checksum and MAC from
// it, both ways, without reassembly. A later fragment that comes before
// its first is held (Verdict Hold, Config.FragHeld slots, counted by
// Conntrack.FragHeld, not as a drop) and given back rewritten by TakeHeld
// once its first passed; one held past the fragment timeout is counted
// as ReasonFragTimeout by the next Conntrack.Sweep. When the first is
// refused (Drop or Reject), the fragments held for it are dropped at
// once and the later ones are dropped as they come, all counted under
// the first's reason. Tiny or overlapping
// fragments that would hide or change the L4 header (RFC 1858) are
// dropped (ReasonFragTiny).
//
// # Not handled (yet)
//
// IPv6 (the entry and the keys would carry 16-byte addresses: 108 bytes
// an entry, within budget), protocols other than TCP, UDP and ICMP echo
// (refused with protocol unreachable).
package lb
