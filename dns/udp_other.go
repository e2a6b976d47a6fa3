//go:build !linux

package dns

import "net"

// serveUDP leaves every query to the general path where recvmmsg is
// missing.
func (s *Server) serveUDP(asker string, pc net.PacketConn) (net.PacketConn, func()) {
	return pc, nil
}

// batchPool is empty where there are no batches.
type batchPool struct{}

func newBatchPool() batchPool { return batchPool{} }
