package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

const nicID = 1

// queueLen is how many outgoing frames the stack may queue for the
// switch before it drops (counted in Stats.TxDropped).
const queueLen = 4096

// Config configures one network's gateway.
type Config struct {
	// Name is the network's name, used in errors.
	Name string
	// Addr is the gateway address with the network's prefix length.
	Addr netip.Prefix
	// MAC is the gateway MAC the switch answers ARP with.
	MAC packet.MAC
	// MTU is the network MTU (largest IP packet).
	MTU int
	// Internal gives the network no egress.
	Internal bool
	// Egress is the host's egress state (shared by all gateways); nil
	// means no egress either.
	Egress *Egress
	// HostAddr and HostMAC are this host's own identity on the network,
	// unlike the anycast Addr and MAC which every host's gateway shares:
	// the source of routing-mesh connections that do not keep the
	// client's address (client-ip=snat|proxy-v2), and the MAC through
	// which other hosts send back the replies of those that do. Zero:
	// the gateway has none (routing-mesh connections are then refused).
	// The stack owns HostAddr beside Addr (with Addr's prefix); SetHost
	// changes both in place.
	HostAddr netip.Addr
	HostMAC  packet.MAC
}

// Gateway is one network's gateway on this host.
type Gateway struct {
	cfg   Config
	stack *stack.Stack
	ep    *channel.Endpoint
	link  *linkEP // ep as the stack's link: its frames to Attach's Output
	dev   *device

	ctx    context.Context
	cancel context.CancelFunc
	host   atomic.Pointer[hostID] // Config.HostAddr and HostMAC, as SetHost changed them
	mu     sync.Mutex
	flows  map[*flow]struct{} // open egress flows, aborted by Close
	wg     sync.WaitGroup
	// stopping is set when Close begins: no new flow, no frame from the
	// network.
	stopping  atomic.Bool
	closeOnce sync.Once
	// echoFrags reassembles fragmented echo requests to outside
	// addresses; echoID numbers the fragmented replies.
	echoFrags echoFrags
	echoID    atomic.Uint32
	// icmpLimit rate-limits the ICMP errors the gateway sends (ttl.go).
	icmpLimit icmpBucket
}

// MinMTU is the smallest network MTU a gateway takes: the IPv4 datagram
// every host must accept (RFC 791), which the gateway's ICMP errors and
// TCP segments are sized against.
const MinMTU = 576

// New builds a network's gateway. Its Device is to be attached to the
// network's switch with AddGateway.
func New(cfg Config) (*Gateway, error) {
	if !cfg.Addr.Addr().Is4() || cfg.Addr.Bits() < 1 || cfg.Addr.Bits() > 30 {
		return nil, fmt.Errorf("gateway %q: address %s is not an IPv4 address with a prefix", cfg.Name, cfg.Addr)
	}
	if cfg.MTU < MinMTU || cfg.MTU > 65535-packet.EthernetHeaderLen {
		return nil, fmt.Errorf("gateway %q: MTU %d out of range", cfg.Name, cfg.MTU)
	}
	if cfg.MAC.IsZero() || cfg.MAC.IsMulticast() {
		return nil, fmt.Errorf("gateway %q: MAC %s is not a unicast address", cfg.Name, cfg.MAC)
	}
	s, err := newStack(cfg)
	if err != nil {
		return nil, fmt.Errorf("gateway %q: %s", cfg.Name, err)
	}
	g := &Gateway{cfg: cfg, stack: s, flows: map[*flow]struct{}{}}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.host.Store(&hostID{})
	err = g.setup()
	if err == nil {
		err = g.setHost(cfg.HostAddr, cfg.HostMAC)
	}
	if err != nil {
		s.Close()
		g.cancel()
		return nil, fmt.Errorf("gateway %q: %s", cfg.Name, err)
	}
	return g, nil
}

// newStack makes the gateway's stack. With the egress's TCPSecret, its
// TCP takes its ISN and timestamp secrets from it and runs on wall-clock
// time, as every gateway of the cluster does (tcpsync.go).
func newStack(cfg Config) (*stack.Stack, error) {
	opts := stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
		HandleLocal:        false,
	}
	var secret []byte
	if cfg.Egress != nil {
		secret = cfg.Egress.cfg.TCPSecret
	}
	if secret == nil {
		return stack.New(opts), nil
	}
	if len(secret) != tcpSecretLen {
		return nil, fmt.Errorf("tcp secret of %d bytes, want %d", len(secret), tcpSecretLen)
	}
	rng := &secretRNG{}
	unread := -1
	opts.SecureRNG = rng
	opts.Clock = newWallClock()
	opts.TransportProtocols[0] = tcpWithSecret(rng, secret, &unread)
	s := stack.New(opts)
	if unread != 0 {
		s.Close()
		return nil, fmt.Errorf("tcp secret: gVisor's TCP left %d of its %d bytes unread (its secrets are read otherwise: see tcpsync.go)", unread, tcpSecretLen)
	}
	return s, nil
}

// setup creates the NIC, the address, the route and the forwarders.
func (g *Gateway) setup() error {
	s, cfg := g.stack, g.cfg
	g.ep = channel.New(queueLen, uint32(cfg.MTU+packet.EthernetHeaderLen), tcpip.LinkAddress(cfg.MAC[:]))
	// Segmentation offload: the stack's TCP sends segments of up to
	// gsoMaxSize with GSO metadata, which the switch carries whole to a
	// container's TAP (and segments for the tunnel): one frame through
	// the switch instead of one per MSS. The channel endpoint's
	// GSOMaxSize is gsoMaxSize.
	g.ep.SupportedGSOKind = stack.HostGSOSupported
	g.dev = &device{g: g}
	g.link = &linkEP{Endpoint: g.ep, d: g.dev}
	if err := s.CreateNIC(nicID, ethernet.New(g.link)); err != nil {
		return fmt.Errorf("create NIC: %s", err)
	}
	pa := tcpip.ProtocolAddress{
		Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{
			Address:   tcpip.AddrFrom4(cfg.Addr.Addr().As4()),
			PrefixLen: cfg.Addr.Bits(),
		},
	}
	if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("add address: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: pa.AddressWithPrefix.Subnet(), NIC: nicID}})
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 8 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 8 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	// Promiscuous: accept packets to any address; spoofing: reply from
	// that address. Every egress flow then meets a forwarder, which
	// refuses what may not leave (internal networks included) with a
	// reset or a port unreachable, a clear failure rather than a silent
	// drop; published ports' flows enter with the outside client's
	// address (ingress.go), and their replies reach them.
	if err := s.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("promiscuous mode: %s", err)
	}
	if err := s.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("spoofing: %s", err)
	}
	if g.cfg.Egress == nil {
		return nil
	}
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, tcp.NewForwarder(s, 0, 1024, g.handleTCP).HandlePacket)
	s.SetTransportProtocolHandler(udp.ProtocolNumber, udp.NewForwarder(s, g.handleUDP).HandlePacket)
	return nil
}

// Name returns the network's name.
func (g *Gateway) Name() string { return g.cfg.Name }

// Addr returns the gateway address.
func (g *Gateway) Addr() netip.Addr { return g.cfg.Addr.Addr() }

// HostAddr returns this host's own address on the network (Config.HostAddr,
// or what SetHost set), invalid when it has none. A routing-mesh flow that
// does not keep the client's address (client-ip=snat or proxy-v2) is
// dialled from it.
func (g *Gateway) HostAddr() netip.Addr { return g.host.Load().addr }

// HostMAC returns this host's own gateway MAC on the network, zero when
// it has none.
func (g *Gateway) HostMAC() packet.MAC { return g.host.Load().mac }

// hostID is the gateway's host identity.
type hostID struct {
	addr netip.Addr
	mac  packet.MAC
}

// SetHost changes the gateway's host identity (Config.HostAddr and
// HostMAC) in place: the stack gives up the old address and owns the new
// one; flows of other addresses are not disturbed. Zero values remove it.
func (g *Gateway) SetHost(addr netip.Addr, mac packet.MAC) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.setHost(addr, mac); err != nil {
		return fmt.Errorf("gateway %q: %s", g.cfg.Name, err)
	}
	return nil
}

// setHost checks and applies a host identity; callers serialise.
func (g *Gateway) setHost(addr netip.Addr, mac packet.MAC) error {
	old := g.host.Load()
	if old.addr == addr && old.mac == mac {
		return nil
	}
	if addr.IsValid() || !mac.IsZero() {
		switch {
		case !addr.Is4() || !g.cfg.Addr.Masked().Contains(addr) || addr == g.cfg.Addr.Addr():
			return fmt.Errorf("host address %s: want an IPv4 address of %s other than the gateway's", addr, g.cfg.Addr.Masked())
		case mac.IsZero() || mac.IsMulticast() || mac == g.cfg.MAC:
			return fmt.Errorf("host MAC %s: want a unicast MAC other than the gateway's", mac)
		}
	}
	if old.addr != addr {
		if old.addr.IsValid() {
			if err := g.stack.RemoveAddress(nicID, tcpip.AddrFrom4(old.addr.As4())); err != nil {
				return fmt.Errorf("remove host address %s: %s", old.addr, err)
			}
		}
		if addr.IsValid() {
			pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{
				Address: tcpip.AddrFrom4(addr.As4()), PrefixLen: g.cfg.Addr.Bits()}}
			if err := g.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
				g.host.Store(&hostID{})
				return fmt.Errorf("add host address %s: %s", addr, err)
			}
		}
	}
	g.host.Store(&hostID{addr: addr, mac: mac})
	return nil
}

// Device returns the gateway's wire side: what the stack sends is read
// from it, what is written to it is received by the stack.
func (g *Gateway) Device() netdev.Device { return g.dev }

// ListenUDP opens a UDP socket at the gateway address (for the DNS
// resolver).
func (g *Gateway) ListenUDP(port uint16) (net.PacketConn, error) {
	return gonet.DialUDP(g.stack, &tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(g.Addr().As4()), Port: port}, nil, ipv4.ProtocolNumber)
}

// ListenTCP listens for TCP connections at the gateway address.
func (g *Gateway) ListenTCP(port uint16) (net.Listener, error) {
	return gonet.ListenTCP(g.stack, tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(g.Addr().As4()), Port: port}, ipv4.ProtocolNumber)
}

// closeDrain bounds how long Close waits for the device's reader to take
// the resets of the aborted flows before it shuts the device.
const closeDrain = time.Second

// Close shuts the gateway down in a bounded time, as a stopping router
// would: it takes no more frames from the network nor new flows, resets
// every open flow on both sides, aborts what the stack still holds
// (listeners, connects in progress, connections in TIME-WAIT or with
// unacknowledged data) without waiting on their TCP states, lets the
// device's reader pass the resets on (for up to closeDrain while frames
// are still queued), then shuts the stack and the device. Close is
// idempotent.
func (g *Gateway) Close() {
	g.closeOnce.Do(g.close)
}

func (g *Gateway) close() {
	g.mu.Lock()
	g.stopping.Store(true)
	for f := range g.flows {
		f.abort()
	}
	g.mu.Unlock()
	g.wg.Wait()
	g.stack.Close()
	for deadline := time.Now().Add(closeDrain); g.ep.NumQueued() > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	g.cancel()
	g.ep.Close()
	g.stack.Wait()
	g.dev.release()
}

// track registers f for Close; it reports false if the gateway is
// closing.
func (g *Gateway) track(f *flow) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopping.Load() {
		return false
	}
	g.flows[f] = struct{}{}
	g.wg.Add(1)
	return true
}

// untrack forgets f.
func (g *Gateway) untrack(f *flow) {
	g.mu.Lock()
	delete(g.flows, f)
	g.mu.Unlock()
	g.wg.Done()
}
