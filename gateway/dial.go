package gateway

import (
	"context"
	"net"
	"net/netip"
)

// DialTCP opens a TCP connection from src to dst inside the network, from
// the gateway's stack: src may be any address (the NIC spoofs), an outside
// client's to keep its address (client-ip=preserve), HostAddr for a flow
// whose replies must come back to this host without per-flow state
// elsewhere (client-ip=snat), or the gateway address. dst may be a
// service VIP: the switch balances the gateway's frames like a
// container's. Port 0 in src picks a free port.
func (g *Gateway) DialTCP(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
	c, _, err := g.dialIn(ctx, src, dst)
	if err != nil {
		return nil, err
	}
	return c, nil
}
