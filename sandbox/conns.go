//go:build linux

package sandbox

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TCP states as sock_diag reports them (include/net/tcp_states.h).
const (
	tcpTimeWait = 6
	tcpClose    = 7
	tcpListen   = 10
)

// InboundTCPConns counts the open TCP connections to addr in the network
// namespace at nsPath: connections whose local end is addr on a port
// something in the namespace listens on (on addr or on the wildcard
// address), in any state but TIME_WAIT and closed. Those are the
// connections clients made to a server in the namespace, whichever host
// or balancer they came through; connections the namespace made to others
// are not counted. listening (nil for none) remembers the ports seen
// listening by earlier calls and is updated in place, so that a server
// that closed its listener to finish its connections (a graceful
// shutdown) is still seen serving them. It asks the kernel (sock_diag),
// so it needs the privileges to enter the namespace.
func InboundTCPConns(nsPath string, addr netip.Addr, listening map[uint16]bool) (int, error) {
	nsh, err := netns.GetFromPath(nsPath)
	if err != nil {
		return 0, fmt.Errorf("netns %q: %w", nsPath, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh, unix.NETLINK_INET_DIAG)
	if err != nil {
		return 0, fmt.Errorf("netns %q: sock_diag: %w", nsPath, err)
	}
	defer h.Close()
	// Both families: a dual-stack server (Go's default listener) has
	// AF_INET6 sockets with IPv4-mapped addresses.
	var all []*netlink.Socket
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := h.SocketDiagTCP(family)
		if err != nil {
			// An interrupted dump may have missed connections: not a count.
			return 0, fmt.Errorf("netns %q: TCP sockets: %w", nsPath, err)
		}
		all = append(all, socks...)
	}
	if listening == nil {
		listening = map[uint16]bool{}
	}
	return countInbound(all, addr.Unmap(), listening), nil
}

// countInbound is InboundTCPConns's count over a socket dump; it adds the
// ports listening on addr to listening.
func countInbound(socks []*netlink.Socket, addr netip.Addr, listening map[uint16]bool) int {
	for _, s := range socks {
		if s.State == tcpListen && (s.ID.Source.IsUnspecified() || sockAddr(s.ID.Source) == addr) {
			listening[s.ID.SourcePort] = true
		}
	}
	n := 0
	for _, s := range socks {
		switch {
		case s.State == tcpListen || s.State == tcpTimeWait || s.State == tcpClose:
		case sockAddr(s.ID.Source) == addr && listening[s.ID.SourcePort]:
			n++
		}
	}
	return n
}

// sockAddr converts a sock_diag address (4 or 16 bytes) to a netip.Addr,
// IPv4-mapped addresses unmapped; an invalid one matches nothing.
func sockAddr(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}
