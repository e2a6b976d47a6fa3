package api

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// TraceRequest is POST /v1/trace: what the data plane would do with the
// first packet of a flow from a local endpoint.
type TraceRequest struct {
	Network string `json:"network"`
	// From is a container on this host, or the IP address of a local
	// endpoint on Network.
	From string `json:"from"`
	// To is IP[:PORT/PROTO] (ParseTraceTarget).
	To string `json:"to"`
	// Size is the IP packet's length; 0 means the headers alone.
	Size int `json:"size,omitempty"`
}

// Trace is the answer of POST /v1/trace.
type Trace struct {
	Network   string `json:"network"`
	Container string `json:"container"`
	Port      string `json:"port"`
	SrcMAC    string `json:"src_mac"`
	Src       string `json:"src"`
	Dst       string `json:"dst"`
	Proto     string `json:"proto"`
	DstPort   uint16 `json:"dst_port,omitempty"`
	// NextHop is the address the container's ARP asks for (Dst in the
	// subnet, else the gateway), DstMAC the switch's answer ("" if none:
	// the frame traced is then the ARP request, flooded).
	NextHop string      `json:"next_hop"`
	DstMAC  string      `json:"dst_mac"`
	Steps   []TraceStep `json:"steps"`
	// Service is the balancer's decision for a frame to a VIP.
	Service *TraceService `json:"service,omitempty"`
	// Out is the switch port the frame leaves by (a delivered frame), Flood
	// the ports a flooded one goes to.
	Out    string       `json:"out,omitempty"`
	Flood  []string     `json:"flood"`
	Tunnel *TraceTunnel `json:"tunnel,omitempty"`
	// Egress is the gateway's decision for a flow leaving the overlay:
	// "allowed", or the refusal reason ("internal", "overlay", ...).
	Egress string `json:"egress,omitempty"`
	// Verdict is deliver, tunnel, flood, egress, gateway, arp-reply or
	// drop; Drop the drop reason as counted by DropIn's stats ("switch",
	// "tunnel" or "egress").
	Verdict string `json:"verdict"`
	Drop    string `json:"drop,omitempty"`
	DropIn  string `json:"drop_in,omitempty"`
}

// TraceStep is one decision of a trace.
type TraceStep struct {
	Stage  string `json:"stage"`
	Result string `json:"result"`
}

// TraceService is the balancer's decision: the service, and the backend
// the frame goes to (an existing connection's, or the scheduler's next
// pick), or why it is refused.
type TraceService struct {
	Name        string `json:"name"`
	VIP         string `json:"vip"`
	Scheduler   string `json:"scheduler"`
	Verdict     string `json:"verdict"`
	Reason      string `json:"reason,omitempty"`
	Backend     string `json:"backend,omitempty"`
	BackendPort uint16 `json:"backend_port,omitempty"`
	Existing    bool   `json:"existing"`
}

// TraceTunnel is the tunnel's part of a trace.
type TraceTunnel struct {
	VNI       uint32      `json:"vni"`
	MTU       int         `json:"mtu"`
	Flood     bool        `json:"flood"`
	Encrypted bool        `json:"encrypted"`
	Cipher    string      `json:"cipher,omitempty"`
	Peers     []TracePeer `json:"peers"`
}

// TracePeer is a VTEP a traced frame goes to, with the SA that seals it
// on an encrypted network.
type TracePeer struct {
	VTEP string `json:"vtep"`
	Node string `json:"node,omitempty"`
	// SPI and Key (the data key's ID) name the outbound SA; SPI is "" when
	// there is none yet (the datagram is dropped, "no-sa").
	SPI      string `json:"spi,omitempty"`
	Key      uint32 `json:"key,omitempty"`
	KeyState string `json:"key_state,omitempty"`
}

// ParseTraceTarget parses IP[:PORT/PROTO]: an IPv4 address alone is an
// ICMP echo; PORT/PROTO has PROTO tcp or udp (PORT alone means tcp).
func ParseTraceTarget(s string) (ip netip.Addr, proto string, port uint16, err error) {
	addr, rest, hasPort := strings.Cut(s, ":")
	ip, err = netip.ParseAddr(addr)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, "", 0, fmt.Errorf("target %q: %q is not an IPv4 address (want IP[:PORT/PROTO])", s, addr)
	}
	if !hasPort {
		return ip, "icmp", 0, nil
	}
	ps, proto, hasProto := strings.Cut(rest, "/")
	if !hasProto {
		proto = "tcp"
	}
	if proto != "tcp" && proto != "udp" {
		return netip.Addr{}, "", 0, fmt.Errorf("target %q: protocol %q: want tcp or udp", s, proto)
	}
	n, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || n == 0 {
		return netip.Addr{}, "", 0, fmt.Errorf("target %q: port %q: want 1-65535", s, ps)
	}
	return ip, proto, uint16(n), nil
}

// Trace asks what the data plane would do with req's frame.
func (c *Client) Trace(req TraceRequest) (Trace, error) {
	var out Trace
	err := c.do("POST", "/v1/trace", req, &out)
	return out, err
}
