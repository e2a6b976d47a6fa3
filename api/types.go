// Package api holds the request and response types of the daemon's
// HTTP+JSON API (served on a unix socket) and the client the CLI uses.
package api

import "time"

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/vxmesh/vxmesh.sock"

// SocketEnv names the environment variable that overrides DefaultSocket.
const SocketEnv = "VXMESH_SOCKET"

// Network describes an overlay network.
type Network struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	Subnet  string    `json:"subnet"`
	Gateway string    `json:"gateway"`
	MTU     int       `json:"mtu"`
	VNI     uint32    `json:"vni"`
	Created time.Time `json:"created"`
	// VTEPs are the external RFC 7348 VTEPs (not vxmesh nodes) that get
	// the network's broadcast and unknown frames.
	VTEPs []string `json:"vteps"`
	// Endpoints lists the network's endpoints on every node (inspect only).
	Endpoints []Endpoint `json:"endpoints"`
	// Peers are the remote VTEPs this node exchanges the network's frames
	// with, with their counters (inspect only).
	Peers []Peer `json:"peers"`
	// Encrypted networks carry their frames between hosts in ESP
	// (AES-GCM) on the ESP port; Cipher is aes128-gcm or aes256-gcm.
	Encrypted bool   `json:"encrypted"`
	Cipher    string `json:"cipher,omitempty"`
	// SAs are this node's security associations with the other hosts of
	// an encrypted network (inspect only): parameters and counters, never
	// keys.
	SAs []SA `json:"sas"`
	// StormLimit is how many flooded frames (broadcast, multicast,
	// unknown unicast) per second each container port may send; -1 means
	// no limit.
	StormLimit int `json:"storm_limit"`
	// Internal networks have no egress.
	Internal bool `json:"internal"`
	// Drops counts the network's frames the tunnel dropped, by reason
	// (inspect only): "cleartext" (VXLAN without ESP for an encrypted
	// network), "no-sa", "unknown-peer", "spoofed-src", "mtu", ...
	Drops map[string]uint64 `json:"drops,omitempty"`
	// FloodNoPeers counts frames to flood to other hosts while there was
	// none (inspect only): not an error, not in Drops.
	FloodNoPeers uint64 `json:"flood_no_peers,omitempty"`
	// Conflicts lists the other nodes' endpoint records of the network
	// that this node refuses, with the reason (inspect only): an address
	// outside the blocks the node holds, or one claimed twice.
	Conflicts []string `json:"conflicts"`
}

// SA is one direction of a security association between this node and a
// peer, as network inspect shows it. It holds no key material.
type SA struct {
	// Node and VTEP name the peer.
	Node string `json:"node"`
	VTEP string `json:"vtep"`
	// Direction is "out" (this node seals with it) or "in" (it opens).
	Direction string `json:"direction"`
	// Key is the ID of the data key the SA is derived from; State is
	// "primary", "pending" or "secondary", the key's place in the ring.
	Key    uint32 `json:"key"`
	State  string `json:"state"`
	SPI    string `json:"spi"`
	Cipher string `json:"cipher"`
	// Seq is, outbound, the last sequence number sent; inbound, the
	// highest one authenticated.
	Seq     uint64 `json:"seq"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	// Drops counts refused packets by reason (auth, replay, malformed,
	// seq-exhausted), nonzero ones only.
	Drops map[string]uint64 `json:"drops,omitempty"`
}

// Keys describes the cluster's data keys (the key ring of encrypted
// networks) without key material.
type Keys struct {
	// Version increases with every change of the ring; 0 means there is
	// no ring yet (no encrypted network).
	Version uint64 `json:"version"`
	// Primary is the ID of the key SAs seal with; Pending, during a
	// rotation, the new key not yet used for sending.
	Primary uint32    `json:"primary"`
	Pending uint32    `json:"pending,omitempty"`
	Keys    []KeyInfo `json:"keys"`
	// Rotator is the node that creates and rotates keys (the alive node
	// with the lowest name); RotationInterval is its period in seconds.
	Rotator          string  `json:"rotator"`
	RotationInterval float64 `json:"rotation_interval_seconds"`
	// Nodes lists, per node, the newest key it has installed.
	Nodes []KeyNode `json:"nodes"`
	// RingsRefused counts the rings from the cluster this node refused in
	// this run: rings older than one it used, or bringing back a key that
	// had left the ring (their SAs would repeat nonces or accept replays).
	// The rotator answers a refused ring with a new key.
	RingsRefused uint64 `json:"rings_refused,omitempty"`
}

// KeyInfo is one key of the ring, without its secret.
type KeyInfo struct {
	ID      uint32    `json:"id"`
	Created time.Time `json:"created"`
	// State is primary, pending or secondary.
	State string `json:"state"`
}

// KeyNode is what a node reports about its keys.
type KeyNode struct {
	Node      string `json:"node"`
	Installed uint32 `json:"installed"`
	// RingsRefused is the node's Keys.RingsRefused.
	RingsRefused uint64 `json:"rings_refused,omitempty"`
}

// KeyExport is the answer of a key export: THE KEYS of this node's SAs as
// lines of Wireshark's ESP SA table (esp_sa). Root only.
type KeyExport struct {
	ESPSA string `json:"esp_sa"`
}

// Peer is a remote VTEP of a network as one node sees it.
type Peer struct {
	// VTEP is the peer's underlay address.
	VTEP string `json:"vtep"`
	// Node names the vxmesh node behind the VTEP; empty for an external
	// VTEP.
	Node      string `json:"node,omitempty"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	TxDrops   uint64 `json:"tx_drops"`
}

// NetworkUpdateRequest changes a network's external VTEPs.
type NetworkUpdateRequest struct {
	AddVTEPs    []string `json:"add_vteps,omitempty"`
	RemoveVTEPs []string `json:"remove_vteps,omitempty"`
}

// Node is a cluster member.
type Node struct {
	Name string `json:"name"`
	// Addr is the gossip address, DataAddr the VXLAN endpoint.
	Addr     string `json:"addr"`
	DataAddr string `json:"data_addr"`
	// State is alive, suspect, dead or left.
	State string `json:"state"`
	Self  bool   `json:"self"`
	// Networks are the networks the node has endpoints on.
	Networks []string `json:"networks"`
}

// ClaimWait is a node declared dead that a create on this host waits for
// (GET /v1/claim-waits): the create's claim goes on without it once it
// has been dead for the node grace, unless it answers first.
type ClaimWait struct {
	Node string `json:"node"`
	// DeadSeconds is how long ago this host declared it dead.
	DeadSeconds float64 `json:"dead_seconds"`
	// LeftSeconds is how much longer the claim waits for it at most.
	LeftSeconds float64 `json:"left_seconds"`
}

// NetworkCreateRequest asks for a new network. Empty fields get defaults.
type NetworkCreateRequest struct {
	Name    string `json:"name"`
	Subnet  string `json:"subnet,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	MTU     int    `json:"mtu,omitempty"`
	VNI     uint32 `json:"vni,omitempty"`
	// VTEPs are external RFC 7348 VTEPs to flood to and learn from.
	VTEPs []string `json:"vteps,omitempty"`
	// Encrypted asks for ESP encryption between hosts; Cipher is
	// aes128-gcm (default) or aes256-gcm.
	Encrypted bool   `json:"encrypted,omitempty"`
	Cipher    string `json:"cipher,omitempty"`
	// StormLimit is how many flooded frames per second each container
	// port may send: 0 means the default (1000), -1 no limit.
	StormLimit int `json:"storm_limit,omitempty"`
	// Internal networks have no egress: their gateway answers ARP, ping
	// and DNS, and refuses every flow to outside the overlay.
	Internal bool `json:"internal,omitempty"`
}

// Endpoint is a container interface attached to a network.
type Endpoint struct {
	Name    string   `json:"name"`
	Network string   `json:"network"`
	IP      string   `json:"ip"`
	MAC     string   `json:"mac"`
	IfName  string   `json:"ifname"`
	Netns   string   `json:"netns"`
	Aliases []string `json:"aliases"`
	// Managed is true for containers made by `vxmesh run` (the daemon owns
	// their network namespace) and false for attached namespaces.
	Managed bool   `json:"managed"`
	Node    string `json:"node"`
	// ResolvConf is the file bind-mounted over /etc/resolv.conf for
	// processes started by `run` and `exec`.
	ResolvConf string `json:"resolv_conf,omitempty"`
	// MountNS is the mount namespace that processes started by `run` and
	// `exec` copy theirs from (a mount template, sandbox.Cmd.MountNS);
	// "" for the host's.
	MountNS string `json:"mount_ns,omitempty"`
	// State is "up" when the daemon is forwarding for the endpoint, or
	// "down: <cause>" when its interface could not be reopened.
	State string `json:"state"`
	// Published are the ports published to this endpoint on its host.
	Published []PublishedPort `json:"published"`
}

// AttachRequest attaches a network namespace to a network. Exactly one of
// Netns, PID or Docker names the namespace, unless Create asks the daemon
// to make a named namespace for a new container.
type AttachRequest struct {
	Network string   `json:"network"`
	Name    string   `json:"name"`
	Netns   string   `json:"netns,omitempty"`
	PID     int      `json:"pid,omitempty"`
	Docker  string   `json:"docker,omitempty"`
	Create  bool     `json:"create,omitempty"`
	IP      string   `json:"ip,omitempty"`
	Aliases []string `json:"aliases,omitempty"`
	IfName  string   `json:"ifname,omitempty"`
	// Services are the services the endpoint joins as a backend
	// (`--service NAME[:WEIGHT]`); each must exist and be on Network.
	Services []ServiceMember `json:"services,omitempty"`
	// Publish are ports published on this host (`run -p`,
	// `[HOSTIP:]HOSTPORT:PORT[/udp]`); only with Create.
	Publish []string `json:"publish,omitempty"`
	// Command is the command `run` starts as the container's main
	// process, which `start` and the restart policy start again; only
	// with Create. Without it the container cannot be started again.
	Command *Command `json:"command,omitempty"`
	// Restart is the restart policy (`run --restart`): "no" (also ""),
	// "on-failure[:MAX]", "always" or "unless-stopped", with Docker's
	// meaning; only with Create and Command.
	Restart string `json:"restart,omitempty"`
}

// Command is a container's main process as `run` started it: its
// arguments (Argv[0] looked up in Env's PATH), environment and working
// directory.
type Command struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
}

// PublishedPort is a port of a container published on its host: Spec
// is `[HOSTIP:]HOSTPORT:PORT/PROTO`, State "up" or "down: <cause>".
type PublishedPort struct {
	Spec  string `json:"spec"`
	State string `json:"state"`
}

// ServiceMember is an endpoint's membership of a service: Weight (1 when
// 0) counts for the wrr and maglev schedulers.
type ServiceMember struct {
	Name   string `json:"name"`
	Weight int    `json:"weight,omitempty"`
}

// Container is a container made by `vxmesh run` or an attached namespace,
// as `vxmesh ps` shows it.
type Container struct {
	Name      string     `json:"name"`
	Netns     string     `json:"netns"`
	Managed   bool       `json:"managed"`
	PIDs      []int      `json:"pids"`
	Endpoints []Endpoint `json:"endpoints"`
	// State is ContainerUp, or ContainerGone when its namespace no longer
	// exists or its path names another namespace (after a reboot or `ip
	// netns del`): then PIDs is empty and `rm` only forgets the container.
	State string `json:"state"`
	// Status is what ps shows (from Client.ContainerNamespace, which
	// lists no processes, only "exited N" of a stopped container, else
	// empty): "running" while processes are in the namespace; "exited N"
	// when none is and the main process of a container made by `run`
	// exited with status N (128+SIG if killed by signal SIG), and from
	// then on until a main process is reported started again (the
	// container is stopped: withdrawn from DNS and balancing);
	// "restarting" while its restart policy is about to start it again;
	// "stopped" after `vxmesh stop` when no exit status was reported;
	// "gone" when State is; else "up" (a namespace with no process, and
	// no exit status known).
	Status string `json:"status"`
	// ExitStatus is the main process's exit status, once known.
	ExitStatus *int `json:"exit_status,omitempty"`
	// Restart is the container's restart policy ("no" for none; only for
	// a container made by run), RestartCount how many times the policy
	// started it since `run` or the last `start`, and Restarting whether
	// it is waiting for the policy's next start (Status "restarting").
	Restart      string `json:"restart,omitempty"`
	RestartCount int    `json:"restart_count"`
	// Command is the command start and the restart policy run (argv
	// only; a container made by an older vxmesh, or attached, has none).
	Command []string `json:"command,omitempty"`
	// ResolvConf is bind-mounted over /etc/resolv.conf for processes
	// started by `run` and `exec`.
	ResolvConf string `json:"resolv_conf"`
	// MountNS is as in Endpoint.
	MountNS string `json:"mount_ns,omitempty"`
}

// Container states.
const (
	ContainerUp   = "up"
	ContainerGone = "gone"
)

// Container statuses besides "exited N" (see Container.Status).
const (
	StatusRunning = "running"
	StatusUp      = "up"
	StatusGone    = "gone"
	// StatusRestarting is a stopped container whose restart policy
	// starts it again after its delay.
	StatusRestarting = "restarting"
	// StatusStopped is a container stopped by `vxmesh stop` whose main
	// process's exit status never arrived.
	StatusStopped = "stopped"
)

// StopRequest is a `vxmesh stop` or `restart`: how long the container's
// processes get after SIGTERM before SIGKILL (seconds; nil: the default,
// 10; 0: SIGKILL at once).
type StopRequest struct {
	Timeout *int `json:"timeout,omitempty"`
}

// MainProcess reports the main process of a container made by `run -d`:
// once when it started (ExitStatus nil), then when it exited.
type MainProcess struct {
	PID        int  `json:"pid"`
	ExitStatus *int `json:"exit_status,omitempty"`
}

// FDBEntry is one forwarding-database entry of a network's switch.
type FDBEntry struct {
	MAC  string `json:"mac"`
	IP   string `json:"ip,omitempty"`
	Port string `json:"port"`
	// Kind is "local" (a container port on this node), "remote" (an
	// endpoint on another node), "static" or "learned".
	Kind string `json:"kind"`
	// VTEP is the underlay address behind which the MAC lives, for
	// entries on the tunnel port.
	VTEP string `json:"vtep,omitempty"`
	// AgeSeconds is the time since a learned entry was last seen.
	AgeSeconds float64 `json:"age_seconds,omitempty"`
}

// PortStats are the counters of one switch port.
type PortStats struct {
	Name      string            `json:"name"`
	RxPackets uint64            `json:"rx_packets"`
	RxBytes   uint64            `json:"rx_bytes"`
	TxPackets uint64            `json:"tx_packets"`
	TxBytes   uint64            `json:"tx_bytes"`
	Drops     map[string]uint64 `json:"drops,omitempty"`
}

// NetworkStats are the counters of one network's switch.
type NetworkStats struct {
	Network       string            `json:"network"`
	Flooded       uint64            `json:"flooded"`
	ARPSuppressed uint64            `json:"arp_suppressed"`
	Drops         map[string]uint64 `json:"drops,omitempty"`
	Ports         []PortStats       `json:"ports"`
	// FloodNoPeers counts frames to flood to other hosts while there was
	// none: not an error, not in Drops (network inspect shows the same
	// counter).
	FloodNoPeers uint64 `json:"flood_no_peers,omitempty"`
	// IngressReturn is how many routing-mesh flows (client-ip=preserve)
	// this host's switch sends back to the host they came in through,
	// of at most IngressReturnMax (0 before the network has another
	// host's gateway identity).
	IngressReturn    int `json:"ingress_return,omitempty"`
	IngressReturnMax int `json:"ingress_return_max,omitempty"`
	// IngressReturnEvicted counts entries of closed flows (FIN or RST
	// seen) freed before their timeout to make room in a full table.
	IngressReturnEvicted uint64 `json:"ingress_return_evicted,omitempty"`
	// BalancerDrops counts the frames to a VIP of the network that its
	// balancer dropped or refused, by reason ("port", "no-conn",
	// "no-backend", ...); every reason is listed once the network has
	// services. Stats.Conntrack.Drops sums them over the networks.
	BalancerDrops map[string]uint64 `json:"balancer_drops,omitempty"`
}

// KernelTunnelStats are the state and counters of kernel UDP tunnel
// segmentation.
type KernelTunnelStats struct {
	// Mode is the daemon's --kernel-tunnel: "auto", "on" or "off".
	Mode string `json:"mode"`
	// Active is true while TCP super-segments to one peer go to the
	// kernel whole; Reason says why it is or is not (the firewall rule
	// of auto, the reverse-path filter, the kernel's refusal at start).
	Active         bool   `json:"active"`
	Reason         string `json:"reason,omitempty"`
	TxSupers       uint64 `json:"tx_supers"`
	SuperFallbacks uint64 `json:"super_fallbacks"`
	RxSupers       uint64 `json:"rx_supers"`
}

// Stats is the daemon-wide counter snapshot.
type Stats struct {
	Node     string         `json:"node"`
	Networks []NetworkStats `json:"networks"`
	// DNS are the counters of the embedded resolver (every container's
	// 127.0.0.11 together).
	DNS DNSStats `json:"dns"`
	// TunnelDrops counts datagrams the tunnel dropped before their
	// network was known, by reason: "unknown-vni", "malformed", and for
	// ESP "esp-auth", "esp-replay", "esp-unknown-spi", "esp-malformed".
	TunnelDrops map[string]uint64 `json:"tunnel_drops,omitempty"`
	// KernelTunnel is the state of the kernel's UDP tunnel segmentation
	// (daemon --kernel-tunnel) and counts the TCP super-segments sent
	// through it, those it refused (split by the daemon instead) and those
	// received whole; nil with --kernel-tunnel=off while all are zero.
	KernelTunnel *KernelTunnelStats `json:"kernel_tunnel,omitempty"`
	// ESPHelperSealed counts the ESP datagrams of super-segments that a
	// helper goroutine sealed beside the writing one (encrypted networks
	// seal on more than one core).
	ESPHelperSealed uint64 `json:"esp_helper_sealed,omitempty"`
	// ESPAESGCM names the AES-GCM code that seals and opens ESP on this
	// host: "vaes-avx512" (vxmesh's vector code) or "crypto/cipher" (Go's).
	ESPAESGCM string `json:"esp_aes_gcm,omitempty"`
	// RefusedRecords counts records of the replicated tables this node
	// refused, once per record version: by table ("networks",
	// "endpoints") for invalid ones, "endpoint-conflict" for endpoints
	// outside their node's address blocks or claiming a taken address,
	// "own-endpoint-conflict" for this node's endpoints in a block another
	// node holds, "reconcile-panic" for a panic reconcile survived.
	RefusedRecords map[string]uint64 `json:"refused_records,omitempty"`
	// GossipDrops counts what the cluster layer refused, by reason:
	// "gossip-version", "version-ahead", "replayed"; and how this node's
	// own large entries fared: "entry-resent" (a member had not
	// acknowledged a send in time), "entry-undelivered" (given up to
	// anti-entropy after 16 sends), "regossip-full" (an own small write
	// broadcast once only: 4096 were already scheduled again),
	// "claim-resent" (a claim request sent again to a member that had
	// not answered the previous one in time).
	GossipDrops map[string]uint64 `json:"gossip_drops,omitempty"`
	// OpenFDs is the number of file descriptors the daemon holds open,
	// and FDLimit its soft open-files limit (RLIMIT_NOFILE, raised to the
	// hard limit at start): past it, new containers and connections fail.
	OpenFDs int    `json:"open_fds"`
	FDLimit uint64 `json:"fd_limit"`
	// Goroutines is the number of goroutines the daemon runs: with
	// OpenFDs, what shows a leak (it must return to its baseline once
	// connections and containers are gone).
	Goroutines int `json:"goroutines"`
	// Services are this node's counters of every service on every
	// network that has a VIP here.
	Services []ServiceStats `json:"services,omitempty"`
	// HealthChecks are the durations of the health checks this node runs
	// (on its own backends), by service and network.
	HealthChecks []HealthCheckStats `json:"health_checks,omitempty"`
	// Conntrack is this node's connection table.
	Conntrack ConntrackStats `json:"conntrack"`
	// Egress are the counters of the flows the networks' gateways
	// re-originate from this host.
	Egress EgressStats `json:"egress"`
}

// ConntrackStats describe the host's service connection table.
type ConntrackStats struct {
	Max       int    `json:"max"`
	Entries   int    `json:"entries"`
	Evictions uint64 `json:"evictions"`
	// FragEvictions counts fragmented datagrams to or from a VIP that
	// were still incomplete when the fragment table forgot them for new
	// ones (their later fragments are dropped as "fragment").
	FragEvictions uint64 `json:"frag_evictions"`
	// FragHeld counts later fragments to or from a VIP that came before
	// their datagram's first fragment and were held until it came. They
	// are not drops: one given up is counted in the drops ("fragment",
	// "frag-timeout", or the reason its first fragment was refused).
	FragHeld uint64            `json:"frag_held"`
	Drops    map[string]uint64 `json:"drops,omitempty"`
}

// EgressStats are the counters of a host's egress (package gateway).
type EgressStats struct {
	// MaxFlows bounds the egress and published-port flows open at once
	// (--egress-max-flows).
	MaxFlows int `json:"max_flows"`
	// Active flows by protocol.
	ActiveTCP  int64 `json:"active_tcp"`
	ActiveUDP  int64 `json:"active_udp"`
	ActiveICMP int64 `json:"active_icmp"`
	// Total counts the flows admitted since the daemon started.
	Total uint64 `json:"total"`
	// Refused counts refused flows by reason: "internal", "overlay",
	// "local", "address", "source", "limit", "connect", "echo", and
	// "ingress-limit" (a published port's flow beyond MaxFlows).
	Refused map[string]uint64 `json:"refused,omitempty"`
	// BytesOut and BytesIn count payload bytes to and from the outside.
	BytesOut uint64 `json:"bytes_out"`
	BytesIn  uint64 `json:"bytes_in"`
	// ICMPErrors counts the ICMP errors (a closed port, an unreachable
	// host, a TTL expired on the path) reflected to containers' egress
	// flows or sent by the gateways.
	ICMPErrors uint64 `json:"icmp_errors,omitempty"`
	// TTLExceeded counts the ICMP time exceeded the gateways sent for
	// packets to outside addresses whose TTL expired there (traceroute,
	// ping -t 1; also in ICMPErrors); TTLDropped the later fragments of
	// such packets, dropped silently; ICMPRateLimited the ICMP errors a
	// gateway's rate limit (1000/s, burst 50) held back.
	TTLExceeded     uint64 `json:"ttl_exceeded,omitempty"`
	TTLDropped      uint64 `json:"ttl_dropped,omitempty"`
	ICMPRateLimited uint64 `json:"icmp_rate_limited,omitempty"`
	// Ingress counts the flows of published ports (`run -p`): open TCP
	// connections and UDP flows, all accepted, those that entered the
	// network from the gateway's address instead of the client's (a
	// loopback or overlay client), those that could not reach the
	// container, and bytes to containers (in) and to clients (out).
	IngressTCP      int64  `json:"ingress_tcp"`
	IngressUDP      int64  `json:"ingress_udp"`
	IngressTotal    uint64 `json:"ingress_total"`
	IngressSNAT     uint64 `json:"ingress_snat"`
	IngressFailed   uint64 `json:"ingress_failed"`
	IngressBytesIn  uint64 `json:"ingress_bytes_in"`
	IngressBytesOut uint64 `json:"ingress_bytes_out"`
	// IngressRefused counts routing-mesh flows refused because they
	// needed the gateway's host address and it had none (also failed).
	IngressRefused uint64 `json:"ingress_refused"`
	// IngressFast counts published TCP flows dialled from inside the
	// container's namespace (the fast path), IngressFastFallback those
	// that took the gateway path because the fast path could not be set
	// up.
	IngressFast         uint64 `json:"ingress_fast"`
	IngressFastFallback uint64 `json:"ingress_fast_fallback"`
	// NAT are the counters of the routing mesh's per-packet NAT of
	// steered published ports (--mesh-nat), nil without it.
	NAT *NATStats `json:"nat,omitempty"`
}

// NATStats are the per-packet NAT's state and counters: flows in its table (closing
// ones too), connections open, the table's bound, flows started, closing flows evicted to make room, frames
// translated towards the network (in) and the clients (out), the ports
// steered now, dropped frames by reason and the RSTs sent for segments of
// no flow.
type NATStats struct {
	// Mode is the daemon's --mesh-nat ("auto" or "on"); Active is true
	// while the steering's filters are on the uplinks, Reason says why
	// it is or is not (auto's firewall rule, a failure to set it up).
	// Cut counts the connections the NAT had open when steering stopped
	// (a firewall appeared): the kernel resets them.
	Mode      string            `json:"mode,omitempty"`
	Active    bool              `json:"active"`
	Reason    string            `json:"reason,omitempty"`
	Cut       uint64            `json:"cut"`
	Flows     int64             `json:"flows"`
	Open      int64             `json:"open"`
	Max       int               `json:"max"`
	Total     uint64            `json:"total"`
	Evicted   uint64            `json:"evicted"`
	FramesIn  uint64            `json:"frames_in"`
	FramesOut uint64            `json:"frames_out"`
	Ports     int               `json:"ports"`
	Drops     map[string]uint64 `json:"drops,omitempty"`
	Resets    uint64            `json:"resets"`
}

// DNSStats are the embedded resolver's counters.
type DNSStats struct {
	// Upstreams are the servers names that are not local go to.
	Upstreams []string `json:"upstreams"`
	// Listeners is the number of containers served now.
	Listeners int `json:"listeners"`
	// Queries counts the queries received; Local those answered from
	// container names and aliases; Forwarded those sent upstream.
	Queries   uint64 `json:"queries"`
	Local     uint64 `json:"local"`
	Forwarded uint64 `json:"forwarded"`
	// NXDomain and ServFail count the answers with that rcode.
	NXDomain uint64 `json:"nxdomain"`
	ServFail uint64 `json:"servfail"`
	// Overloaded counts the queries refused (SERVFAIL) because too many
	// forwarded queries were in flight.
	Overloaded uint64 `json:"overloaded"`
	// NoEgress counts the queries for outside names refused (SERVFAIL)
	// because the asking container is only on internal networks.
	NoEgress uint64 `json:"no_egress"`
	// UpstreamErrors counts the failed tries: timeouts, network errors,
	// SERVFAIL, REFUSED or NOTIMP from an upstream.
	UpstreamErrors uint64 `json:"upstream_errors"`
	// Inflight is the number of forwarded queries in flight now.
	Inflight int64 `json:"inflight"`
	// Coalesced counts the local answers that left in one UDP_SEGMENT
	// send with an earlier answer to the same client (sends saved).
	Coalesced uint64 `json:"coalesced"`
	// UpstreamLatency is the round trip of the upstreams' answers.
	UpstreamLatency LatencyStats `json:"upstream_latency"`
}

// LatencyStats summarizes round-trip times in milliseconds.
type LatencyStats struct {
	Count uint64  `json:"count"`
	AvgMs float64 `json:"avg_ms"`
	MaxMs float64 `json:"max_ms"`
	// Buckets is a histogram: Count of the round trips up to LeMs; the
	// last bucket, without LeMs, holds the slower ones.
	Buckets []LatencyBucket `json:"buckets"`
}

// LatencyBucket is one histogram bucket of LatencyStats.
type LatencyBucket struct {
	LeMs  float64 `json:"le_ms,omitempty"`
	Count uint64  `json:"count"`
}

// Service is a cluster-wide service: a virtual IP per network (none with
// endpoint mode dnsrr), a balancing policy and the endpoints that joined
// it as backends (`run/attach --service`).
type Service struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	// EndpointMode is "vip" (a VIP balanced in the switch) or "dnsrr"
	// (DNS answers the backends' addresses).
	EndpointMode string `json:"endpoint_mode"`
	// VIPs are the service's networks with its VIP on each (empty with
	// dnsrr).
	VIPs []ServiceVIP `json:"vips"`
	// Scheduler is rr, wrr, lc, p2c or maglev.
	Scheduler string `json:"scheduler"`
	// Affinity is "" or client-ip:TIMEOUT (a Go duration).
	Affinity string `json:"affinity,omitempty"`
	// Ports are PORT/PROTO or PORT:TARGET/PROTO; none means every port of
	// the VIP goes to the same port on a backend.
	Ports []string `json:"ports"`
	// HealthCheck is "", tcp:PORT or http::PORT/PATH.
	HealthCheck string `json:"health_check,omitempty"`
	// StopGracePeriod is how long a leaving backend keeps its
	// connections; DNSTTL the TTL of the service's DNS answers (Go
	// durations).
	StopGracePeriod string    `json:"stop_grace_period"`
	DNSTTL          string    `json:"dns_ttl"`
	Created         time.Time `json:"created"`
	CreatedBy       string    `json:"created_by"`
	// Backends are the service's backends on every node (inspect and ps
	// only), with this node's counters.
	Backends []ServiceBackend `json:"backends,omitempty"`
	// Stats are this node's counters of the service, per network
	// (inspect only).
	Stats []ServiceStats `json:"stats,omitempty"`
	// Published are the service's published ports (the routing mesh),
	// canonical: published=P,target=T,protocol=tcp|udp,mode=ingress|host,
	// client-ip=preserve|snat|proxy-v2.
	Published []string `json:"published"`
	// PublishState is each node's state of each published port it
	// serves (inspect only), as the nodes report it.
	PublishState []ServicePublishState `json:"publish_state,omitempty"`
}

// ServicePublishState is one node's state of one published port: "up"
// or "down: CAUSE" (a host port already in use, ...), and, for the
// answering node only, its counters of the port.
type ServicePublishState struct {
	Node      string `json:"node"`
	Published string `json:"published"`
	State     string `json:"state"`
	// Network is the network whose gateway the flows enter.
	Network string `json:"network"`
	Local   bool   `json:"local,omitempty"`
	// Counters of the answering node: open flows, flows accepted,
	// refused or failed, bytes towards the backends (in) and clients.
	Active   int64  `json:"active,omitempty"`
	Total    uint64 `json:"total,omitempty"`
	Failed   uint64 `json:"failed,omitempty"`
	BytesIn  uint64 `json:"bytes_in,omitempty"`
	BytesOut uint64 `json:"bytes_out,omitempty"`
}

// ServiceVIP is a service's virtual IP on one network.
type ServiceVIP struct {
	Network string `json:"network"`
	VIP     string `json:"vip,omitempty"`
}

// ServiceBackend is one backend of a service as `service ps` shows it.
type ServiceBackend struct {
	Node      string `json:"node"`
	Container string `json:"container"`
	Network   string `json:"network"`
	IP        string `json:"ip"`
	Weight    int    `json:"weight"`
	// State is active or draining (leaving: no new connections).
	State string `json:"state"`
	// Health is healthy, unhealthy or starting (a new backend of a
	// service with a check, before its first check passed), as the
	// backend's host reports it. Only healthy backends get new
	// connections and are in DNS.
	Health string `json:"health"`
	// HealthReason is the last check's result ("http 503", "connection
	// refused", ...) and HealthSince when the check's state began; both
	// only for backends checked by the answering host.
	HealthReason string    `json:"health_reason,omitempty"`
	HealthSince  time.Time `json:"health_since,omitzero"`
	// The counters of this node's data plane for the backend.
	ActiveConns int64  `json:"active_conns"`
	NewConns    uint64 `json:"new_conns"`
	Bytes       uint64 `json:"bytes"`
	Retries     uint64 `json:"retries"`
	Ejections   uint64 `json:"ejections"`
}

// ServiceStats are one node's counters of a service on one network.
type ServiceStats struct {
	Service   string `json:"service"`
	Network   string `json:"network"`
	VIP       string `json:"vip"`
	NewConns  uint64 `json:"new_conns"`
	Active    int64  `json:"active_conns"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
	Retries   uint64 `json:"retries"`
	Rejects   uint64 `json:"rejects"`
	Ejections uint64 `json:"ejections"`
}

// HealthCheckStats are the durations of the health checks this node ran
// on a service's backends on one network.
type HealthCheckStats struct {
	Service string       `json:"service"`
	Network string       `json:"network"`
	Latency LatencyStats `json:"latency"`
}

// ServiceCreateRequest asks for a new service. Empty fields get defaults:
// endpoint mode vip, scheduler rr, stop grace period 10s, DNS TTL 10s.
type ServiceCreateRequest struct {
	Name     string   `json:"name"`
	Networks []string `json:"networks"`
	// VIPs are IP (with one network) or NETWORK=IP; networks without one
	// get a free address of their subnet.
	VIPs         []string `json:"vips,omitempty"`
	EndpointMode string   `json:"endpoint_mode,omitempty"`
	Scheduler    string   `json:"scheduler,omitempty"`
	// Affinity is client-ip or client-ip:TIMEOUT.
	Affinity string   `json:"affinity,omitempty"`
	Ports    []string `json:"ports,omitempty"`
	// HealthTCP (a port) and HealthHTTP (:PORT/PATH) choose the active
	// health check; at most one.
	HealthTCP       int    `json:"health_tcp,omitempty"`
	HealthHTTP      string `json:"health_http,omitempty"`
	StopGracePeriod string `json:"stop_grace_period,omitempty"`
	DNSTTL          string `json:"dns_ttl,omitempty"`
	// Publish are published ports (--publish): published=P,target=T[,
	// protocol=tcp|udp][,mode=ingress|host][,client-ip=preserve|snat|
	// proxy-v2] or P:T[/udp].
	Publish []string `json:"publish,omitempty"`
}

// ServiceUpdateRequest changes a service; nil fields stay as they are.
type ServiceUpdateRequest struct {
	// AddNetworks get a VIP each (from VIPs as NETWORK=IP, or a free
	// one); RemoveNetworks lose theirs.
	AddNetworks    []string `json:"add_networks,omitempty"`
	RemoveNetworks []string `json:"remove_networks,omitempty"`
	VIPs           []string `json:"vips,omitempty"`
	// EndpointMode vip gives every network a VIP; dnsrr takes them away.
	EndpointMode *string `json:"endpoint_mode,omitempty"`
	Scheduler    *string `json:"scheduler,omitempty"`
	// Affinity "" or "none" turns affinity off.
	Affinity *string `json:"affinity,omitempty"`
	// Ports replace the ports (an empty list: every port).
	Ports           *[]string `json:"ports,omitempty"`
	HealthTCP       *int      `json:"health_tcp,omitempty"`
	HealthHTTP      *string   `json:"health_http,omitempty"`
	NoHealth        bool      `json:"no_health,omitempty"`
	StopGracePeriod *string   `json:"stop_grace_period,omitempty"`
	DNSTTL          *string   `json:"dns_ttl,omitempty"`
	// PublishAdd adds published ports (as ServiceCreateRequest.Publish);
	// PublishRemove removes them by PUBLISHED[/PROTO] (tcp by default).
	PublishAdd    []string `json:"publish_add,omitempty"`
	PublishRemove []string `json:"publish_remove,omitempty"`
}

// Error is the body of every non-2xx response.
type Error struct {
	Error string `json:"error"`
}
