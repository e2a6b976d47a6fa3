//go:build linux

package tunnel

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/internal/busypoll"

	"github.com/vxmesh/vxmesh/packet"
)

// UDPConfig configures ListenUDP.
type UDPConfig struct {
	// Addr is the local (advertise) address; the zero value binds
	// 0.0.0.0. An IPv6 address opens dual-stack IPv6 sockets.
	Addr netip.Addr
	// Port is the data port the receive socket binds; 0 means 4789.
	Port uint16
	// TxSockets is the number of transmit sockets, each bound to its own
	// port of the dynamic range 49152-65535 (RFC 7348 section 5: free
	// ones, from a random one on); the inner flow hash picks one, which
	// sets the outer source port. 0 means 8.
	TxSockets int
	// BatchSize bounds the datagrams per recvmmsg/sendmmsg; 0 means
	// packet.BatchSize.
	BatchSize int
	// SocketBuffer is the SO_RCVBUF/SO_SNDBUF size in bytes; 0 means 4 MiB.
	SocketBuffer int
	// RxSockets is the number of receive sockets on the data port; 0
	// means 1. Several are bound with SO_REUSEPORT, so the kernel spreads
	// the datagrams over them by 4-tuple hash (VXLAN source ports are
	// flow-hashed, RFC 7348), and each is read by its own loop
	// (ReadBatchQueue). Before binding them, a probe socket without
	// SO_REUSEPORT checks that the port is free, so a second daemon (or a
	// kernel VXLAN device) cannot share it unnoticed.
	RxSockets int
	// NoGRO leaves UDP_GRO off on the receive socket. With it on (where
	// the kernel has it), ReadBatch may return several datagrams of one
	// sender in one Message (GSOSize).
	NoGRO bool
	// TxFromRx opens no transmit sockets: WriteBatch sends out of the
	// (first) receive socket, so every datagram's source port is Port, as
	// ESP in UDP goes from 4500 to 4500 (RFC 3948). TxSockets is ignored.
	TxFromRx bool
	// BusyPoll, if positive, is how long a receive queue keeps reading
	// without blocking after its last datagram (see internal/busypoll);
	// 0 blocks in the netpoller as soon as the socket is empty.
	BusyPoll time.Duration
}

// UDP is the Linux underlay: one or more sockets receiving on the data port
// (UDPConfig.RxSockets) and a pool of transmit sockets, all driven through the Go netpoller with
// recvmmsg/sendmmsg on preallocated message arrays. Transmit sockets set
// IP_PMTUDISC_DO, so a datagram above the path MTU fails with
// ErrMessageSize instead of being fragmented. It implements Underlay.
type UDP struct {
	family int
	local  netip.AddrPort
	batch  int
	rx     []udpSock
	tx     []udpSock
	txIsRx bool // tx is rx[0] (UDPConfig.TxFromRx)
	closed atomic.Bool

	rq  []rxQueue
	txs chan *mmsgState // free transmit states

	gso          atomic.Bool // UDP_SEGMENT sends are used
	gro          bool        // UDP_GRO is on on the receive socket
	gsoFallbacks atomic.Uint64
}

// rxQueue is the receive state of one receive socket.
type rxQueue struct {
	mu sync.Mutex // one reader at a time; guards s
	s  *mmsgState
}

// UDPOffloads describes the segmentation offloads a UDP underlay uses.
type UDPOffloads struct {
	// GSO is true while sends of several datagrams use UDP_SEGMENT (it
	// goes off for good if the kernel refuses one with EIO: the route's
	// device cannot checksum).
	GSO bool
	// GRO is true if the receive socket has UDP_GRO on.
	GRO bool
	// GSOFallbacks counts GSO sends the kernel refused that were sent
	// again as separate datagrams.
	GSOFallbacks uint64
}

// Offloads returns the offloads in use and the fallback count.
func (u *UDP) Offloads() UDPOffloads {
	return UDPOffloads{GSO: u.gso.Load(), GRO: u.gro, GSOFallbacks: u.gsoFallbacks.Load()}
}

type udpSock struct {
	fd   uintptr // for setsockopt/getsockopt at setup only
	f    *os.File
	rc   syscall.RawConn
	port uint16
}

// mmsgState is a preallocated recvmmsg/sendmmsg argument array plus the
// RawConn callback bound to it, so that a call does not allocate.
type mmsgState struct {
	u     *UDP
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
	ctrl  []byte                  // one udpCmsgSpace control buffer per hdr
	idx   []int                   // message index of hdrs[i] (send)
	gso   []bool                  // hdrs[i] is a UDP_SEGMENT send
	msgs  []Message
	k     int // hdrs in use
	done  int // hdrs completed
	retry int // GSO sends refused, to send again without
	err   error
	fn    func(fd uintptr) bool
	poll  *busypoll.Window // receive: polling after traffic (UDPConfig.BusyPoll)
}

// udpCmsgSpace is the control buffer of one message: a cmsghdr with an
// int (UDP_GRO on receive, where the kernel writes an int) or a uint16
// (UDP_SEGMENT on send).
var udpCmsgSpace = unix.CmsgSpace(4)

// errGSORetry marks, inside WriteBatch, a message whose UDP_SEGMENT send
// the kernel refused; it is sent again as separate datagrams.
var errGSORetry = errors.New("udp gso send refused")

// ListenUDP opens the receive socket on cfg.Addr:cfg.Port and the transmit
// sockets. A data port that is taken fails with an error saying so.
func ListenUDP(cfg UDPConfig) (*UDP, error) {
	if cfg.Port == 0 {
		cfg.Port = packet.VXLANPort
	}
	if cfg.TxSockets <= 0 {
		cfg.TxSockets = 8
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = packet.BatchSize
	}
	if cfg.SocketBuffer <= 0 {
		cfg.SocketBuffer = 4 << 20
	}
	addr := cfg.Addr.Unmap()
	if !addr.IsValid() {
		addr = netip.IPv4Unspecified()
	}
	u := &UDP{family: unix.AF_INET, batch: cfg.BatchSize}
	if addr.Is6() {
		u.family = unix.AF_INET6
	}
	u.txs = make(chan *mmsgState, 2*cfg.TxSockets)
	if err := u.openRx(netip.AddrPortFrom(addr, cfg.Port), cfg.SocketBuffer, max(cfg.RxSockets, 1)); err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("data port %d: address already in use (is a kernel VXLAN device bound to it?)", cfg.Port)
		}
		return nil, err
	}
	u.local = netip.AddrPortFrom(addr, u.rx[0].port)
	if cfg.TxFromRx {
		if err := u.sendFromRx(cfg.SocketBuffer); err != nil {
			u.Close()
			return nil, err
		}
		cfg.TxSockets = 0
	}
	if err := u.openTx(addr, cfg.SocketBuffer, cfg.TxSockets, txPortMin, txPortMax, rand.N(txPortMax-txPortMin+1)); err != nil {
		u.Close()
		return nil, err
	}
	// UDP segmentation offload (Linux 4.18+) on send, GRO (5.0+) on
	// receive; without them every datagram is its own message.
	if v, err := unix.GetsockoptInt(int(u.tx[0].fd), unix.SOL_UDP, unix.UDP_SEGMENT); err == nil && v >= 0 {
		u.gso.Store(true)
	}
	if !cfg.NoGRO {
		u.gro = true
		for _, r := range u.rx {
			if unix.SetsockoptInt(int(r.fd), unix.SOL_UDP, unix.UDP_GRO, 1) != nil {
				u.gro = false
			}
		}
	}
	u.rq = make([]rxQueue, len(u.rx))
	for i := range u.rq {
		u.rq[i].s = u.newState()
		u.rq[i].s.fn = u.rq[i].s.recv
		u.rq[i].s.poll = busypoll.New(cfg.BusyPoll)
	}
	return u, nil
}

// openTx opens n transmit sockets on addr, bound to ports of lo..hi: from
// the start-th one on, in order and wrapping around, skipping ports in
// use. It fails, saying so, if the range has fewer than n free ports.
func (u *UDP) openTx(addr netip.Addr, bufSize, n int, lo, hi uint16, start int) error {
	span := int(hi) - int(lo) + 1
	for i := 0; i < span && len(u.tx) < n; i++ {
		port := lo + uint16((start+i)%span)
		s, err := u.open(netip.AddrPortFrom(addr, port), bufSize, true, false)
		if errors.Is(err, unix.EADDRINUSE) {
			continue
		}
		if err != nil {
			return err
		}
		u.tx = append(u.tx, s)
	}
	if len(u.tx) < n {
		return fmt.Errorf("udp %s: transmit sockets: %d of %d ports free in %d-%d (the VXLAN source ports, RFC 7348)", addr, len(u.tx), n, lo, hi)
	}
	return nil
}

// sendFromRx makes the first receive socket the only transmit socket,
// with the transmit sockets' options: IP_PMTUDISC_DO and the send buffer.
func (u *UDP) sendFromRx(bufSize int) error {
	s := u.rx[0]
	fd := int(s.fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO); err != nil {
		return fmt.Errorf("udp %s: IP_MTU_DISCOVER: %w", u.local, err)
	}
	if u.family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO); err != nil {
			return fmt.Errorf("udp %s: IPV6_MTU_DISCOVER: %w", u.local, err)
		}
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, bufSize) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, bufSize)
	}
	u.tx, u.txIsRx = []udpSock{s}, true
	return nil
}

// openRx opens n receive sockets on at: one plain socket, or n sockets
// with SO_REUSEPORT after a plain probe socket found the port free.
func (u *UDP) openRx(at netip.AddrPort, bufSize, n int) error {
	if n > 1 {
		probe, err := u.open(at, 0, false, false)
		if err != nil {
			return err
		}
		probe.f.Close()
	}
	for range n {
		s, err := u.open(at, bufSize, false, n > 1)
		if err != nil {
			for _, r := range u.rx {
				r.f.Close()
			}
			u.rx = nil
			return err
		}
		u.rx = append(u.rx, s)
	}
	return nil
}

// open creates, configures and binds one non-blocking socket (bufSize 0
// leaves the buffer sizes alone).
func (u *UDP) open(at netip.AddrPort, bufSize int, tx, reusePort bool) (udpSock, error) {
	fd, err := unix.Socket(u.family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return udpSock{}, fmt.Errorf("udp %s: socket: %w", at, err)
	}
	fail := func(op string, err error) (udpSock, error) {
		unix.Close(fd)
		return udpSock{}, fmt.Errorf("udp %s: %s: %w", at, op, err)
	}
	if u.family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return fail("IPV6_V6ONLY", err)
		}
	}
	opt, force := unix.SO_RCVBUF, unix.SO_RCVBUFFORCE
	if tx {
		opt, force = unix.SO_SNDBUF, unix.SO_SNDBUFFORCE
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO); err != nil {
			return fail("IP_MTU_DISCOVER", err)
		}
		if u.family == unix.AF_INET6 {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO); err != nil {
				return fail("IPV6_MTU_DISCOVER", err)
			}
		}
	}
	// Root may exceed net.core.[rw]mem_max; otherwise settle for the cap.
	if bufSize > 0 && unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, bufSize) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, bufSize)
	}
	if reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("SO_REUSEPORT", err)
		}
	}
	if err := unix.Bind(fd, sockaddr(at)); err != nil {
		return fail("bind", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	var port uint16
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		port = uint16(sa.Port)
	case *unix.SockaddrInet6:
		port = uint16(sa.Port)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("udp:%s", netip.AddrPortFrom(at.Addr(), port)))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return udpSock{}, fmt.Errorf("udp %s: %w", at, err)
	}
	return udpSock{fd: uintptr(fd), f: f, rc: rc, port: port}, nil
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
}

func (u *UDP) newState() *mmsgState {
	s := &mmsgState{
		u:     u,
		hdrs:  make([]unix.Mmsghdr, u.batch),
		iovs:  make([]unix.Iovec, u.batch),
		names: make([]unix.RawSockaddrInet6, u.batch),
		ctrl:  make([]byte, u.batch*udpCmsgSpace),
		idx:   make([]int, u.batch),
		gso:   make([]bool, u.batch),
	}
	for i := range s.hdrs {
		h := &s.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&s.names[i]))
		h.Iov = &s.iovs[i]
		h.SetIovlen(1)
	}
	return s
}

// cmsg returns hdr i's control buffer.
func (s *mmsgState) cmsg(i int) []byte {
	return s.ctrl[i*udpCmsgSpace : (i+1)*udpCmsgSpace]
}

// setSegment attaches a UDP_SEGMENT control message with size to hdr i.
func (s *mmsgState) setSegment(i, size int) {
	c := s.cmsg(i)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&c[unix.CmsgLen(0)])) = uint16(size)
	s.hdrs[i].Hdr.Control = &c[0]
	s.hdrs[i].Hdr.SetControllen(unix.CmsgSpace(2))
}

// noControl detaches hdr i's control buffer.
func (s *mmsgState) noControl(i int) {
	s.hdrs[i].Hdr.Control = nil
	s.hdrs[i].Hdr.SetControllen(0)
}

// groSize returns the UDP_GRO segment size in hdr i's received control
// data, or 0.
func (s *mmsgState) groSize(i int) int {
	n := int(s.hdrs[i].Hdr.Controllen)
	c := s.cmsg(i)
	for off := 0; off+unix.CmsgLen(0) <= min(n, len(c)); {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&c[off]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || off+l > len(c) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(2) {
			if l >= unix.CmsgLen(4) {
				return int(*(*int32)(unsafe.Pointer(&c[off+unix.CmsgLen(0)])))
			}
			return int(*(*uint16)(unsafe.Pointer(&c[off+unix.CmsgLen(0)])))
		}
		off += unix.CmsgSpace(l - unix.CmsgLen(0))
	}
	return 0
}

// BusyPolled returns how many reads of the receive queues found
// datagrams by polling after traffic (UDPConfig.BusyPoll) rather than
// after a wake-up from the netpoller.
func (u *UDP) BusyPolled() uint64 {
	var n uint64
	for i := range u.rq {
		n += u.rq[i].s.poll.Caught()
	}
	return n
}

// LocalAddr returns the address and data port the receive sockets are
// bound to.
func (u *UDP) LocalAddr() netip.AddrPort { return u.local }

// TxPorts returns the source ports of the transmit sockets.
func (u *UDP) TxPorts() []uint16 {
	ports := make([]uint16, len(u.tx))
	for i, s := range u.tx {
		ports[i] = s.port
	}
	return ports
}

// Close closes every socket; a blocked ReadBatch returns an error matching
// net.ErrClosed.
func (u *UDP) Close() error {
	u.closed.Store(true)
	var first error
	socks := append([]udpSock(nil), u.rx...)
	if !u.txIsRx {
		socks = append(socks, u.tx...)
	}
	for _, s := range socks {
		if s.f != nil {
			if err := s.f.Close(); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

func (u *UDP) pollErr(op string, err error) error {
	if u.closed.Load() {
		return fmt.Errorf("udp %s: %s: %w", u.local, op, net.ErrClosed)
	}
	return fmt.Errorf("udp %s: %s: %w", u.local, op, err)
}

// ReadBatch implements Underlay: ReadBatchQueue of the first receive
// socket. With several (RxSockets), the others must be read too.
func (u *UDP) ReadBatch(msgs []Message) (int, error) { return u.ReadBatchQueue(0, msgs) }

// RxQueues implements MultiQueueUnderlay: the number of receive sockets.
func (u *UDP) RxQueues() int { return len(u.rx) }

// ReadBatchQueue reads receive socket q (0 <= q < RxQueues()) with one
// recvmmsg once it is readable. Datagrams longer than their Buf are
// reported with N > len(Buf). One goroutine at a time reads a queue.
func (u *UDP) ReadBatchQueue(q int, msgs []Message) (int, error) {
	n := min(len(msgs), u.batch)
	if n == 0 {
		return 0, nil
	}
	if q < 0 || q >= len(u.rq) {
		return 0, fmt.Errorf("udp %s: no receive queue %d (have %d)", u.local, q, len(u.rq))
	}
	rq := &u.rq[q]
	rq.mu.Lock()
	defer rq.mu.Unlock()
	s := rq.s
	for i := range n {
		b := msgs[i].Buf
		if len(b) == 0 {
			return 0, fmt.Errorf("udp %s: read buffer %d is empty", u.local, i)
		}
		s.iovs[i].Base = &b[0]
		s.iovs[i].SetLen(len(b))
		s.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		s.hdrs[i].Hdr.Flags = 0
		s.hdrs[i].Len = 0
		if u.gro {
			s.hdrs[i].Hdr.Control = &s.cmsg(i)[0]
			s.hdrs[i].Hdr.SetControllen(udpCmsgSpace)
		}
	}
	s.k, s.done, s.err = n, 0, nil
	err := u.rx[q].rc.Read(s.fn)
	got, rerr := s.done, s.err
	for i := range n {
		s.iovs[i].Base = nil
	}
	for i := range got {
		m := &msgs[i]
		m.N = int(s.hdrs[i].Len)
		m.Addr = decodeSockaddr(&s.names[i])
		m.GSOSize = 0
		if u.gro {
			if g := s.groSize(i); g > 0 && g < m.N {
				m.GSOSize = g
			}
		}
	}
	if got > 0 {
		s.poll.Seen()
		return got, nil
	}
	if err != nil {
		return 0, u.pollErr("read", err)
	}
	return 0, rerr
}

// recv is the receive RawConn callback; false means "wait for readability".
func (s *mmsgState) recv(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&s.hdrs[0])), uintptr(s.k),
			unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
		switch errno {
		case 0:
			s.done = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if s.poll.Again() && !s.u.closed.Load() {
				continue
			}
			return false
		default:
			s.err = fmt.Errorf("udp %s: recvmmsg: %w", s.u.local, errno)
			return true
		}
	}
}

func decodeSockaddr(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := func(p *uint16) uint16 {
		b := (*[2]byte)(unsafe.Pointer(p))
		return uint16(b[0])<<8 | uint16(b[1])
	}
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port(&sa4.Port))
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port(&sa.Port))
	}
	return netip.AddrPort{}
}

// encodeSockaddr writes a into sa for a socket of family and returns the
// sockaddr length, or 0 if a cannot be reached from such a socket.
func encodeSockaddr(sa *unix.RawSockaddrInet6, family int, a netip.AddrPort) uint32 {
	ip := a.Addr()
	if family == unix.AF_INET {
		ip = ip.Unmap()
		if !ip.Is4() {
			return 0
		}
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ip.As4()}
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		p[0], p[1] = byte(a.Port()>>8), byte(a.Port())
		return unix.SizeofSockaddrInet4
	}
	if !ip.IsValid() {
		return 0
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ip.As16()}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(a.Port()>>8), byte(a.Port())
	return unix.SizeofSockaddrInet6
}

// errAddrFamily is the Message.Err of a destination of the wrong family.
var errAddrFamily = errors.New("destination address family does not match the underlay")

// WriteBatch implements Underlay: messages are grouped by transmit socket
// (Hash modulo the pool size) and each group is sent with sendmmsg. A
// message with GSOSize goes as one UDP_SEGMENT send while the kernel
// supports it; one the kernel refuses (EIO: no checksum offload on the
// route's device, EINVAL or EMSGSIZE: over the path MTU) is sent again as
// separate datagrams, which also reports a datagram over the path MTU as
// ErrMessageSize, and counted in Offloads().GSOFallbacks.
func (u *UDP) WriteBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	var s *mmsgState
	select {
	case s = <-u.txs:
	default:
		s = u.newState()
		s.fn = s.send
	}
	for t := range u.tx {
		s.retry = 0
		u.writeSock(s, t, msgs, false)
		if s.retry > 0 {
			u.gsoFallbacks.Add(uint64(s.retry))
			u.writeSock(s, t, msgs, true)
		}
	}
	s.msgs = nil
	select {
	case u.txs <- s:
	default:
	}
	sent := 0
	var first error
	for i := range msgs {
		if msgs[i].Err == nil {
			sent++
		} else if first == nil {
			first = msgs[i].Err
		}
	}
	if first != nil {
		return sent, fmt.Errorf("udp %s: %w", u.local, first)
	}
	return sent, nil
}

// writeSock sends the messages of transmit socket t, or with retry only
// those marked errGSORetry, as separate datagrams.
func (u *UDP) writeSock(s *mmsgState, t int, msgs []Message, retry bool) {
	ntx := uint32(len(u.tx))
	useGSO := !retry && u.gso.Load()
	i, off := 0, 0 // next message, and datagram offset in it when split
	for i < len(msgs) {
		k := 0
		for i < len(msgs) && k < len(s.hdrs) {
			m := &msgs[i]
			if off == 0 && (m.Hash%ntx != uint32(t) || retry && m.Err != errGSORetry) {
				i++
				continue
			}
			if off == 0 {
				m.Err = nil
				if len(m.Buf) == 0 {
					m.Err = errors.New("empty datagram")
					i++
					continue
				}
			}
			nl := encodeSockaddr(&s.names[k], u.family, m.Addr)
			if nl == 0 {
				m.Err = errAddrFamily
				i, off = i+1, 0
				continue
			}
			s.hdrs[k].Hdr.Namelen = nl
			s.idx[k] = i
			s.gso[k] = false
			d := m.Buf
			switch seg := m.GSOSize; {
			case seg <= 0 || seg >= len(d):
				i++
			case useGSO:
				s.gso[k] = true
				i++
			default: // one datagram of the run
				d = d[off:min(off+seg, len(d))]
				if off += seg; off >= len(m.Buf) {
					i, off = i+1, 0
				}
			}
			if s.gso[k] {
				s.setSegment(k, m.GSOSize)
			} else {
				s.noControl(k)
			}
			s.iovs[k].Base = &d[0]
			s.iovs[k].SetLen(len(d))
			k++
		}
		if k == 0 {
			continue
		}
		s.msgs, s.k, s.done, s.err = msgs, k, 0, nil
		err := u.tx[t].rc.Write(s.fn)
		for j := range k {
			s.iovs[j].Base = nil
		}
		if err != nil {
			err = u.pollErr("write", err)
			for j := s.done; j < k; j++ {
				if m := &msgs[s.idx[j]]; m.Err == nil || m.Err == errGSORetry {
					m.Err = err
				}
			}
		}
	}
}

// send is the transmit RawConn callback: it sends hdrs[done:k], skipping a
// datagram the kernel refuses; false means "wait for writability".
func (s *mmsgState) send(fd uintptr) bool {
	for s.done < s.k {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.hdrs[s.done])), uintptr(s.k-s.done),
			unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			if n == 0 {
				n = 1 // cannot happen; do not spin
				s.fail(unix.EIO)
			}
			s.done += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		case unix.EIO, unix.EINVAL, unix.EMSGSIZE:
			if s.gso[s.done] {
				// Send the datagrams separately afterwards. EIO means the
				// route's device cannot checksum: GSO cannot work at all.
				if errno == unix.EIO {
					s.u.gso.Store(false)
				}
				s.msgs[s.idx[s.done]].Err = errGSORetry
				s.retry++
			} else {
				s.fail(errno)
			}
			s.done++
		default:
			s.fail(errno)
			s.done++
		}
	}
	return true
}

// fail records errno as the error of hdrs[done]'s message, keeping the
// first error of a message sent as several datagrams.
func (s *mmsgState) fail(errno syscall.Errno) {
	m := &s.msgs[s.idx[s.done]]
	if m.Err != nil && m.Err != errGSORetry {
		return
	}
	if errno == unix.EMSGSIZE {
		m.Err = ErrMessageSize
		return
	}
	m.Err = errno
}

var (
	_ Underlay           = (*UDP)(nil)
	_ MultiQueueUnderlay = (*UDP)(nil)
)
