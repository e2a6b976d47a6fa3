// Package gateway is a network's gateway port on one host: a gVisor
// netstack (pkg/tcpip) TCP/IP stack that owns the network's gateway
// address and sits on the network's switch as its gateway port
// (vswitch.Switch.AddGateway).
//
// Anycast: every host has a gateway for each of its networks with the same
// IP and the same MAC (derived from the IP by the daemon), and a host's
// gateway only ever talks to that host's own endpoints: the switch gives
// it frames to the gateway MAC from ports with port security only and
// sends its frames to those ports only, so no frame to or from the
// gateway MAC crosses the tunnel, and a container keeps reaching the
// gateway of the host it runs on. Besides, a gateway may have a
// host-unique address and MAC (Config.HostAddr, HostMAC; SetHost), which
// the stack owns too: the routing mesh's flows to backends on other hosts
// leave with that MAC (the backend's host sends their replies back to it)
// and, with client-ip=snat, from that address.
//
// The stack answers ARP (though the switch's ARP suppression answers for
// the gateway first) and ICMP echo at the gateway address, like a router.
//
// Egress: the NIC is promiscuous and may spoof, so the stack terminates
// every TCP connection and UDP flow an endpoint opens to any address. A
// TCP and a UDP forwarder (tcp.NewForwarder, udp.NewForwarder) decide each
// new flow with Egress.Admit and re-originate the admitted ones from
// ordinary sockets in the daemon's namespace: the outside sees the host's
// address, as with Docker's MASQUERADE. Refused and failed TCP connections
// are reset, refused UDP flows get an ICMP port unreachable from the
// stack. The ICMP destination unreachables an admitted UDP flow's host
// socket gets (a closed port, an unreachable host or network) are
// reflected to the container, quoting its datagram, as a NAT router
// would (icmperr.go); a TCP connect that fails outside is a reset when
// refused, an ICMP error quoting the container's SYN when the host or
// network is unreachable (tcperr.go). Flows to any overlay subnet, to the gateway itself or to
// non-unicast addresses are never egressed; an internal network's gateway
// egresses nothing (but still answers ARP, ping and DNS at its address).
// ICMP echo requests to outside addresses are answered by a real echo
// from the host (see echo.go).
//
// A TCP flow's copy reads and writes the stack's endpoint directly
// (epconn.go) with pooled buffers, and the last data of a direction,
// read together with the peer's FIN, goes to a kernel socket with
// MSG_MORE so that the half-close sends data and FIN in one segment
// (tcp.go: writeLast).
//
// Segmentation offload: the stack's TCP hands the switch segments of up
// to 32 KiB with GSO metadata (device.go, segment.go), carried whole to a
// container's TAP, so bulk data into a container (published ports,
// downloads) costs one frame per 32 KiB through the switch.
//
// One stack per network: a network's gateway is created and closed with
// its switch, a fault or a flood in one network's stack cannot stall
// another's, and nothing can be routed between networks inside the
// gateway. An idle gateway costs about 110 KiB and 2 goroutines.
//
// Ingress (published ports, Egress.Publish): a published port is a host
// socket whose accepted connections (UDP flows) are dialled into the
// network from the gateway's stack with the outside client's own address
// and port as the source (the NIC spoofs), to the container; its replies
// come back to this host's gateway (anycast), where the stack owns the
// flow. Clients with overlay or loopback addresses enter from the
// gateway's address instead (see ingressSource). The routing mesh's
// ports (Publish.ClientIP, mesh.go) dial a service's VIP: preserve as
// above but with the gateway's host address as the fallback, snat and
// proxy-v2 from the host address (proxy-v2 writing a PROXY v2 header
// first, AppendProxyV2); without a host address such flows are reset
// (IngressRefused). With EgressConfig.TCPSecret (the daemon derives it
// from the cluster key), every host's stacks take their TCP ISN and
// timestamp secrets from it and run on wall-clock time (tcpsync.go), so a
// client's connections through different hosts agree for the backend's
// TIME-WAIT (PAWS) as one host's would. DialTCP dials into the
// network from any source, a service VIP included (the switch balances
// the gateway's frames): the routing mesh (docs/architecture.md).
//
// Fast path (Egress.PublishFast, fastpath.go): a published TCP flow whose
// destination the FastPath knows as a container on this host is dialled
// with a kernel socket made in that container's namespace (LocalSockets:
// IP_TRANSPARENT, marked so that the namespace routes its replies back on
// lo), bound to the same source the stack would use, and spliced with the
// client's socket: no frame crosses the switch or the stack. A fast path
// that cannot be set up, or a bind/connect that meets the namespace's own
// TIME-WAIT twin, falls back to the stack (IngressFastFallback). A
// routing-mesh port with a Picker (Egress.PublishMesh) asks the
// balancer for a flow's backend before it dials the VIP; a pick that the
// FastPath knows takes the fast path (Port.dialPicked), and the pick is
// told how it went (Picked); any other dials the VIP, whose balancer
// follows the pick.
package gateway
