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
	// Endpoints lists the endpoints attached to the network (inspect only).
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// NetworkCreateRequest asks for a new network. Empty fields get defaults.
type NetworkCreateRequest struct {
	Name    string `json:"name"`
	Subnet  string `json:"subnet,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	MTU     int    `json:"mtu,omitempty"`
	VNI     uint32 `json:"vni,omitempty"`
}

// Endpoint is a container interface attached to a network.
type Endpoint struct {
	Name    string   `json:"name"`
	Network string   `json:"network"`
	IP      string   `json:"ip"`
	MAC     string   `json:"mac"`
	IfName  string   `json:"ifname"`
	Netns   string   `json:"netns"`
	Aliases []string `json:"aliases,omitempty"`
	// Managed is true for containers made by `vxmesh run` (the daemon owns
	// their network namespace) and false for attached namespaces.
	Managed bool   `json:"managed"`
	Node    string `json:"node"`
	// ResolvConf is the file bind-mounted over /etc/resolv.conf for
	// processes started by `run` and `exec`.
	ResolvConf string `json:"resolv_conf,omitempty"`
	// State is "up" when the daemon is forwarding for the endpoint, or
	// "down: <cause>" when its interface could not be reopened.
	State string `json:"state"`
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
}

// Container is a container made by `vxmesh run` or an attached namespace,
// as `vxmesh ps` shows it.
type Container struct {
	Name      string     `json:"name"`
	Netns     string     `json:"netns"`
	Managed   bool       `json:"managed"`
	PIDs      []int      `json:"pids"`
	Endpoints []Endpoint `json:"endpoints"`
	// ResolvConf is bind-mounted over /etc/resolv.conf for processes
	// started by `run` and `exec`.
	ResolvConf string `json:"resolv_conf"`
}

// FDBEntry is one forwarding-database entry of a network's switch.
type FDBEntry struct {
	MAC  string `json:"mac"`
	IP   string `json:"ip,omitempty"`
	Port string `json:"port"`
	// Kind is "local" (a container port), "static" or "learned".
	Kind string `json:"kind"`
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
}

// Stats is the daemon-wide counter snapshot.
type Stats struct {
	Node     string         `json:"node"`
	Networks []NetworkStats `json:"networks"`
}

// Error is the body of every non-2xx response.
type Error struct {
	Error string `json:"error"`
}
