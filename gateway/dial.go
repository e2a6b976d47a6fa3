package gateway

import (
	"context"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// DialTCP opens a TCP connection from src to dst inside the network, from
// the gateway's stack: src may be any address (the NIC spoofs), an outside
// client's to keep its address (client-ip=preserve), HostAddr for a flow
// whose replies must come back to this host without per-flow state
// elsewhere (client-ip=snat), or the gateway address. dst may be a
// service VIP: the switch balances the gateway's frames like a
// container's. Port 0 in src picks a free port.
func (g *Gateway) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	c, err := g.dialIn(src, dst, ctx.Done(), nil, nil)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	// A net.Conn with deadlines: gonet's, on the endpoint's own waiter
	// queue (c's entries are dropped).
	c.wq.EventUnregister(&c.readEntry)
	c.wq.EventUnregister(&c.writeEntry)
	return gonet.NewTCPConn(c.wq, c.ep), nil
}
