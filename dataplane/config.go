package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

// Config is the complete desired state of the data plane. Reconfig makes
// the data plane match it; whatever it does not name is taken down.
//
// Each network's gateway port is part of its NetworkConfig (Gateway,
// Subnet, Internal).
type Config struct {
	// Networks are the overlay networks this host has, by unique name
	// and unique VNI.
	Networks []NetworkConfig
	// Outbound and Inbound are the ESP security associations of every
	// encrypted network, per peer VTEP (see tunnel.VTEP.SetSAs).
	Outbound []tunnel.OutboundSA
	Inbound  []tunnel.InboundSA
	// Conntrack configures the host's connection table, shared by the
	// balancers of every network (size and timeouts). It is read when
	// the data plane makes the table, at the first Reconfig in which a
	// network has services (so a host without services does not hold
	// the table's memory: 88 bytes an entry, 23 MB at lb.DefaultMax);
	// later changes take effect when the data plane is made again.
	Conntrack lb.Config
}

// NetworkConfig is one overlay network: its switch and its VXLAN segment.
// Changing VNI, MTU, Gateway, Subnet, Internal or StormLimit rebuilds the network (its
// ports stay open and are moved to the new switch); the rest is changed
// in place.
type NetworkConfig struct {
	// Name names the network (and its switch).
	Name string
	// VNI is the VXLAN network identifier, MTU the largest inner IP
	// packet.
	VNI uint32
	MTU int
	// Cipher is the ESP transform of an encrypted network, 0 in the
	// clear.
	Cipher esp.Cipher
	// Gateway is the gateway address the switch answers ARP for (with
	// GatewayMAC). With a Subnet too, the network gets a gateway port
	// (package gateway) that owns the address, answers ping and
	// egresses flows to outside the overlay; without, frames to
	// GatewayMAC are dropped.
	Gateway    netip.Addr
	GatewayMAC packet.MAC
	// GatewayHost and GatewayHostMAC are this host's own identity on the
	// network for its gateway port (gateway.Config.HostAddr, HostMAC),
	// unique in the cluster, unlike the anycast Gateway and GatewayMAC;
	// other hosts know them as a Remote with Gateway set. Zero: none.
	// Changing them is applied in place (the gateway's stack moves its
	// address; no flow of the anycast address is aborted). The switch
	// sends the gateway's routing-mesh flows to backends on other hosts
	// from GatewayHostMAC, and takes their replies to it
	// (vswitch.Switch.SetGatewayHost).
	GatewayHost    netip.Addr
	GatewayHostMAC packet.MAC
	// Subnet is the network's subnet: the gateway's prefix, and never
	// egressed from any network.
	Subnet netip.Prefix
	// Internal networks have no egress (Docker's --internal).
	Internal bool
	// StormLimit is the flooded frames per second and port (see
	// vswitch.Config.StormLimit).
	StormLimit int
	// External are RFC 7348 VTEPs outside the cluster: flooding peers
	// behind which MACs are learned.
	External []netip.Addr
	// Peers are the VTEPs of the other hosts with endpoints on the
	// network. Frames are flooded to Peers, External and the VTEP of
	// every remote endpoint.
	Peers []netip.Addr
	// Members are the VTEPs of the other cluster members (the same list
	// for every network). Their frames are accepted even before they are
	// Peers, because a host's first endpoint on the network sends before
	// its record reaches this host, and the frames' unknown source MACs
	// are learned so replies find their way back until the record
	// arrives (tunnel.Segment.SetMembers). They are not flooded to.
	Members []netip.Addr
	// Ports are this host's endpoints on the network.
	Ports []PortConfig
	// Remotes are the other hosts' endpoints: static switch entries
	// behind the tunnel port, and MAC -> VTEP entries in the tunnel.
	Remotes []Remote
	// IngressReturnMax bounds the switch's ingress-return table (routing
	// mesh flows whose replies go back to another host's gateway); 0
	// means vswitch.DefaultIngressReturnMax. Read when the network is
	// built; its entries age with Config.Conntrack's timeouts.
	IngressReturnMax int
	// Services are the network's service VIPs with their backends (lb):
	// frames from a local port to a VIP are balanced at that port, and
	// the switch answers ARP for each VIP. Each Reconfig publishes them
	// in the network's lb.Table (only the services that changed are
	// compiled again); a refused service is an Error ("service NAME")
	// and keeps the version applied before, if any. A backend that
	// leaves the list keeps its TCP connections until FlushBackend.
	Services []lb.Service
}

// PortConfig is a local endpoint: a device (a container's TAP) on the
// network's switch with port security for MAC and IP.
type PortConfig struct {
	// Name is unique within the network; it names the switch port.
	Name string
	// Device is read by the data plane's loop and written by the switch.
	// The first Reconfig that names a device takes it over: the data
	// plane closes it when its port leaves the desired state (or is
	// given another device), and on Close.
	Device netdev.Device
	MAC    packet.MAC
	IP     netip.Addr
}

// Remote is an endpoint on another host.
type Remote struct {
	MAC  packet.MAC
	IP   netip.Addr
	VTEP netip.Addr
	// Gateway marks another host's gateway identity on the network (its
	// NetworkConfig.GatewayHost and GatewayHostMAC): the routing mesh's
	// flows it sends from an outside client's address to a local
	// endpoint have their replies sent back to it
	// (vswitch.Switch.AddRemoteGateway).
	Gateway bool
}

// Error is the failure of one step of a Reconfig, naming the object.
type Error struct {
	// Network is the network the object belongs to ("" for SAs).
	Network string
	// Object names the failed object: "network", "port NAME", "remote
	// MAC", "peers", "external VTEPs", "cipher", "SAs", "service NAME",
	// "conntrack".
	Object string
	Err    error
}

// Error implements error.
func (e *Error) Error() string {
	if e.Network == "" {
		return fmt.Sprintf("%s: %v", e.Object, e.Err)
	}
	if e.Object == "network" {
		return fmt.Sprintf("network %q: %v", e.Network, e.Err)
	}
	return fmt.Sprintf("network %q: %s: %v", e.Network, e.Object, e.Err)
}

// Unwrap returns the error underneath, for errors.Is and errors.As.
func (e *Error) Unwrap() error { return e.Err }

// portKey identifies a port across networks.
type portKey struct{ network, name string }
