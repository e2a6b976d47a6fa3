// Package netstack provides fake containers for root-less tests: a gVisor
// netstack TCP/IP stack with one Ethernet interface (a MAC and an IPv4
// address), whose wire side is a netdev.Device, so it can be attached to a
// switch port like a container's TAP device.
//
// It is built only with the "gvisor" build tag until go.mod lists gVisor's
// netstack dependencies.
package netstack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

const nicID = 1

// Container is a netstack TCP/IP stack behind one Ethernet interface.
type Container struct {
	name  string
	mac   packet.MAC
	addr  netip.Prefix
	stack *stack.Stack
	ep    *channel.Endpoint
	dev   *device
}

// New returns a container with the given MAC and address (its prefix is
// the on-link subnet), MTU 1500 and a queue of 1024 outgoing frames.
func New(name string, mac packet.MAC, addr netip.Prefix) (*Container, error) {
	return NewWithMTU(name, mac, addr, 1500)
}

// NewWithMTU is New with an interface MTU, as a container gets from its
// network.
func NewWithMTU(name string, mac packet.MAC, addr netip.Prefix, mtu int) (*Container, error) {
	if !addr.Addr().Is4() {
		return nil, fmt.Errorf("container %q: address %s is not IPv4", name, addr)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	ep := channel.New(1024, uint32(mtu+packet.EthernetHeaderLen), tcpip.LinkAddress(mac[:]))
	if err := s.CreateNIC(nicID, ethernet.New(ep)); err != nil {
		return nil, fmt.Errorf("container %q: create NIC: %s", name, err)
	}
	pa := tcpip.ProtocolAddress{
		Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{
			Address:   tcpip.AddrFrom4(addr.Addr().As4()),
			PrefixLen: addr.Bits(),
		},
	}
	if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("container %q: add address: %s", name, err)
	}
	subnet := pa.AddressWithPrefix.Subnet()
	s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: nicID}})
	ctx, cancel := context.WithCancel(context.Background())
	c := &Container{name: name, mac: mac, addr: addr, stack: s, ep: ep}
	c.dev = &device{c: c, ctx: ctx, cancel: cancel}
	return c, nil
}

// MAC returns the interface's MAC address.
func (c *Container) MAC() packet.MAC { return c.mac }

// Addr returns the interface's IPv4 address.
func (c *Container) Addr() netip.Addr { return c.addr.Addr() }

// Device returns the wire side of the interface: what the container sends
// is read from it, what is written to it is received by the container.
func (c *Container) Device() netdev.Device { return c.dev }

// Listen listens for TCP connections on port.
func (c *Container) Listen(port uint16) (net.Listener, error) {
	return gonet.ListenTCP(c.stack, tcpip.FullAddress{NIC: nicID, Port: port}, ipv4.ProtocolNumber)
}

// Dial opens a TCP connection to dst.
func (c *Container) Dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	return gonet.DialContextTCP(ctx, c.stack,
		tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(dst.Addr().As4()), Port: dst.Port()}, ipv4.ProtocolNumber)
}

// SetDefaultRoute routes every address outside the on-link subnet
// through gw, as a container's default route does.
func (c *Container) SetDefaultRoute(gw netip.Addr) {
	subnet := tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(c.addr.Addr().As4()), PrefixLen: c.addr.Bits()}.Subnet()
	c.stack.SetRouteTable([]tcpip.Route{
		{Destination: subnet, NIC: nicID},
		{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(gw.As4()), NIC: nicID},
	})
}

// DialUDP opens a UDP socket connected to dst.
func (c *Container) DialUDP(dst netip.AddrPort) (net.Conn, error) {
	return gonet.DialUDP(c.stack, nil, &tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(dst.Addr().As4()), Port: dst.Port()}, ipv4.ProtocolNumber)
}

// ListenUDP opens a UDP socket bound to port.
func (c *Container) ListenUDP(port uint16) (net.PacketConn, error) {
	return gonet.DialUDP(c.stack, &tcpip.FullAddress{NIC: nicID, Port: port}, nil, ipv4.ProtocolNumber)
}

// Close shuts the stack and its device down.
func (c *Container) Close() {
	c.dev.Close()
	c.stack.Close()
	c.stack.Wait()
}

// device is the wire side of a Container.
type device struct {
	c      *Container
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex // one reader at a time
}

func (d *device) Name() string   { return d.c.name }
func (d *device) BatchSize() int { return packet.BatchSize }
func (d *device) Close() error   { d.cancel(); return nil }

// Read blocks for the container's next frame, then takes whatever else is
// queued, up to len(bufs).
func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	pkt := d.c.ep.ReadContext(d.ctx)
	if pkt == nil {
		return 0, fmt.Errorf("%s: read: %w", d.c.name, net.ErrClosed)
	}
	n := 0
	for pkt != nil {
		packet.ClearOffload(bufs[n]) // netstack sends complete frames
		sizes[n] = 0
		for _, s := range pkt.AsSlices() {
			sizes[n] += copy(bufs[n][offset+sizes[n]:], s)
		}
		pkt.DecRef()
		if n++; n == len(bufs) {
			break
		}
		pkt = d.c.ep.Read()
	}
	return n, nil
}

// Write delivers frames to the container's stack, copying them; the
// caller owns them (see WriteFrames).
func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	return d.WriteFrames(packet.OwnedFrames(bufs, offset))
}

// WriteFrames delivers frames to the container's stack, copying them. The
// stack takes complete frames only: a partial checksum is completed, in
// place in an owned frame and in a copy of a shared one; a valid TCP
// super-segment (packet.ParseGSO) is handed over whole, as one large
// segment (the stack does not check the MTU of what it receives), as a
// kernel's GRO would, and an invalid one is refused.
func (d *device) WriteFrames(f packet.Frames) (int, error) {
	if d.ctx.Err() != nil {
		return 0, fmt.Errorf("%s: write: %w", d.c.name, net.ErrClosed)
	}
	offset := f.Offset()
	sent := 0
	var err error
	for i := range f.Len() {
		b := f.Owned(i)
		if b == nil {
			b = f.CopyTo(i, make([]byte, len(f.Buf(i))))
		}
		o := packet.OffloadOf(b)
		if _, ok := packet.ParseGSO(b[offset:], o); o.IsGSO() && !ok || !packet.CompleteChecksum(b[offset:], o) {
			if err == nil {
				err = fmt.Errorf("%s: write: frame with offload metadata % x not supported", d.c.name, []byte(o))
			}
			continue
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b[offset:])})
		d.c.ep.InjectInbound(0, pkt)
		pkt.DecRef()
		sent++
	}
	return sent, err
}
