//go:build linux

package dns

import (
	"net"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpBatch is the number of datagrams one recvmmsg/sendmmsg moves.
const udpBatch = 32

// batch.group marks the answers it placed in a uint64.
const _ = uint64(1) << (64 - udpBatch)

// freeBatches bounds the batches kept for reuse: about one per busy loop
// at a time, and there are few cores.
const freeBatches = 8

// batchPool holds the free batches of a Server's UDP loops.
type batchPool chan *batch

func newBatchPool() batchPool { return make(batchPool, freeBatches) }

// get returns a free batch or a new one.
func (p batchPool) get() *batch {
	select {
	case b := <-p:
		return b
	default:
		return newBatch()
	}
}

// put frees b, or leaves it to the collector when enough are free.
func (p batchPool) put(b *batch) {
	select {
	case p <- b:
	default:
	}
}

// batch is the preallocated recvmmsg/sendmmsg state of a busy UDP loop.
// Idle loops hold none: a loop takes one from the Server's pool when its
// socket is readable and gives it back when the socket is drained.
type batch struct {
	in, out [udpBatch]unix.Mmsghdr
	inIov   [udpBatch]unix.Iovec
	// outIov are the answers in send order: the answers of one message
	// are consecutive.
	outIov [udpBatch]unix.Iovec
	names  [udpBatch]unix.RawSockaddrInet6
	// ctrl are the messages' UDP_SEGMENT control messages.
	ctrl   [udpBatch][segCmsgSpace]byte
	inBuf  [udpBatch][maxUDPRead]byte
	outBuf [udpBatch][maxUDPRead]byte
	// ansLen and ansFrom are the length of answer j (in outBuf[j]) and
	// the query (index in names) it answers.
	ansLen  [udpBatch]uint16
	ansFrom [udpBatch]uint8
	// iovFrom is the query of outIov[p]; msgIov the first outIov of
	// message m.
	iovFrom         [udpBatch]uint8
	msgIov          [udpBatch]uint8
	nIn, nAns, nOut int
	done            int
}

// maxSegmented bounds the payload of one UDP_SEGMENT send: that of the
// largest UDP datagram over IPv4 (65535 - 20 - 8), which the kernel
// refuses to exceed.
const maxSegmented = 65507

// segCmsgSpace is the control buffer of one message: a cmsghdr with the
// uint16 segment size of UDP_SEGMENT.
const segCmsgSpace = (unix.SizeofCmsghdr + 2 + 7) &^ 7

func newBatch() *batch {
	b := &batch{}
	for i := range udpBatch {
		b.inIov[i].Base = &b.inBuf[i][0]
		b.inIov[i].SetLen(maxUDPRead)
		b.in[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.in[i].Hdr.Iov = &b.inIov[i]
		b.in[i].Hdr.SetIovlen(1)
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b.ctrl[i][0]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
	}
	return b
}

// group lays out the batch's answers as messages to send: with gso, the
// answers of equal length to one client, and one shorter answer to it as
// the last, go in one message, which the kernel segments back into one
// datagram per answer (UDP_SEGMENT: segments of the first's length, the
// last may be shorter), so they pay one pass through the send path rather
// than one each; the client receives the same datagrams. Without gso
// every answer is its own message.
func (b *batch) group(gso bool) {
	var used uint64 // answers already placed, by index
	p, m := 0, 0
	for j := range b.nAns {
		if used&(1<<j) != 0 {
			continue
		}
		start := p
		b.placeIov(p, j)
		p++
		if gso {
			short := -1 // a shorter answer to the same client
			size := int(b.ansLen[j])
			for k := j + 1; k < b.nAns; k++ {
				if used&(1<<k) != 0 || b.ansLen[k] > b.ansLen[j] || !b.sameClient(j, k) {
					continue
				}
				if b.ansLen[k] < b.ansLen[j] {
					if short < 0 {
						short = k
					}
					continue
				}
				if size+int(b.ansLen[k]) > maxSegmented {
					break
				}
				size += int(b.ansLen[k])
				used |= 1 << k
				b.placeIov(p, k)
				p++
			}
			if short >= 0 && size+int(b.ansLen[short]) <= maxSegmented {
				used |= 1 << short
				b.placeIov(p, short)
				p++
			}
		}
		b.setMsg(m, start, p-start)
		m++
	}
	b.nOut, b.done = m, 0
}

// sameClient reports whether answers j and k go to the same address.
func (b *batch) sameClient(j, k int) bool {
	fj, fk := b.ansFrom[j], b.ansFrom[k]
	nl := int(b.in[fj].Hdr.Namelen)
	if int(b.in[fk].Hdr.Namelen) != nl || nl > unix.SizeofSockaddrInet6 {
		return false
	}
	return string((*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&b.names[fj]))[:nl]) ==
		string((*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&b.names[fk]))[:nl])
}

// placeIov makes outIov[p] answer j.
func (b *batch) placeIov(p, j int) {
	b.outIov[p].Base = &b.outBuf[j][0]
	b.outIov[p].SetLen(int(b.ansLen[j]))
	b.iovFrom[p] = b.ansFrom[j]
}

// setMsg makes message m the n answers from outIov[p], one datagram each,
// to the client of the first.
func (b *batch) setMsg(m, p, n int) {
	h := &b.out[m].Hdr
	from := b.iovFrom[p]
	h.Name = (*byte)(unsafe.Pointer(&b.names[from]))
	h.Namelen = b.in[from].Hdr.Namelen
	h.Iov = &b.outIov[p]
	h.SetIovlen(n)
	b.msgIov[m] = uint8(p)
	if n > 1 {
		*(*uint16)(unsafe.Pointer(&b.ctrl[m][unix.CmsgLen(0)])) = uint16(b.outIov[p].Len)
		h.Control = &b.ctrl[m][0]
		h.SetControllen(segCmsgSpace)
	} else {
		h.Control = nil
		h.SetControllen(0)
	}
}

// split sends the answers of messages m and after as one message each
// (after the kernel refused message m's UDP_SEGMENT).
func (b *batch) split(m int) {
	for p := int(b.msgIov[m]); p < b.nAns; p++ {
		b.setMsg(m, p, 1)
		m++
	}
	b.nOut = m
}

// udpLoop serves one UDP socket: plain queries for precomputed names are
// answered in place, in batches; every other datagram goes to the general
// path (a miekg server reading from slow).
type udpLoop struct {
	s     *Server
	asker string
	rc    syscall.RawConn
	slow  *slowConn
	b     *batch // the batch of the current read, nil while idle
	rot   uint
	spin  int  // reads left that retry EAGAIN at once rather than park
	gso   bool // answers to one client may share a UDP_SEGMENT send
	recv  func(fd uintptr) bool
	send  func(fd uintptr) bool
}

// spinReads is how many times a loop that has just read a batch retries an
// empty socket before it parks in the netpoller.
const spinReads = 8

// serveUDP starts the fast loop on conn and returns the PacketConn the
// general path reads the rest from, or pc itself when it is not a
// *net.UDPConn. run is the loop, to be run on its own goroutine.
func (s *Server) serveUDP(asker string, pc net.PacketConn) (general net.PacketConn, run func()) {
	conn, ok := pc.(*net.UDPConn)
	if !ok {
		return pc, nil
	}
	if _, ok := s.src.(AnswerSource); !ok {
		return pc, nil
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return pc, nil
	}
	l := &udpLoop{s: s, asker: asker, rc: rc, slow: newSlowConn(conn)}
	l.recv, l.send = l.recvFn, l.sendFn
	// UDP segmentation offload on send (Linux 4.18+); without it every
	// answer is its own message.
	rc.Control(func(fd uintptr) {
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT)
		l.gso = err == nil && v >= 0 && !s.noGSO
	})
	return l.slow, l.run
}

// run reads until the socket is closed.
func (l *udpLoop) run() {
	src := l.s.src.(AnswerSource)
	for {
		l.b = nil
		err := l.rc.Read(l.recv)
		b := l.b
		if err != nil || b == nil {
			if b != nil {
				l.s.batches.put(b)
			}
			return
		}
		view := src.Answers().view(l.asker)
		b.nAns = 0
		for i := range b.nIn {
			n := min(int(b.in[i].Len), maxUDPRead)
			q := b.inBuf[i][:n]
			l.rot++
			if m := view.answer(q, b.outBuf[b.nAns][:], l.rot); m > 0 {
				b.ansLen[b.nAns], b.ansFrom[b.nAns] = uint16(m), uint8(i)
				b.nAns++
				continue
			}
			if !l.slow.push(q, &b.names[i]) {
				l.s.batches.put(b)
				return
			}
		}
		if b.nAns > 0 {
			l.s.stats.queries.Add(uint64(b.nAns))
			l.s.stats.local.Add(uint64(b.nAns))
			b.group(l.gso)
			l.rc.Write(l.send) // a failed send is a lost answer; the client retries
			if b.nOut < b.nAns {
				l.s.stats.coalesced.Add(uint64(b.nAns - b.nOut))
			}
		}
		l.s.batches.put(b)
	}
}

// recvFn is the RawConn read callback: it takes a batch and fills it with
// recvmmsg; false means "wait for readability" (the batch goes back).
// recvmmsg and sendmmsg are raw system calls: with MSG_DONTWAIT they never
// block, and the runtime's system call entry wakes its monitor thread
// (sysmon) whenever the loop comes out of an idle netpoller: at 10k
// queries/s the daemon made 1.7-1.9 context switches and spent 25-33 us
// of CPU per query that way, 1.0 and 14-16 us with raw calls.
func (l *udpLoop) recvFn(fd uintptr) bool {
	b := l.s.batches.get()
	for i := range udpBatch {
		b.in[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		b.in[i].Hdr.Flags = 0
		b.in[i].Len = 0
	}
	for {
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.in[0])), udpBatch,
			unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			b.nIn = int(n)
			l.b = b
			l.spin = spinReads
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if l.spin > 0 {
				l.spin--
				continue
			}
			l.s.batches.put(b)
			return false
		default:
			// A pending socket error (an ICMP error for an earlier
			// answer) is consumed by this call: read again.
			l.s.batches.put(b)
			return false
		}
	}
}

// sendFn is the RawConn write callback: it sends the current batch's
// out[done:nOut], skipping a datagram the kernel refuses. A segmented
// message the kernel refuses is sent again as one message per answer;
// EIO says the route cannot segment at all (no checksum offload), so the
// loop stops asking.
func (l *udpLoop) sendFn(fd uintptr) bool {
	b := l.b
	for b.done < b.nOut {
		n, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.out[b.done])), uintptr(b.nOut-b.done),
			unix.MSG_DONTWAIT, 0, 0)
		switch {
		case errno == 0:
			b.done += max(int(n), 1)
		case errno == unix.EINTR:
		case errno == unix.EAGAIN:
			return false
		case b.out[b.done].Hdr.Control != nil:
			if errno == unix.EIO {
				l.gso = false
			}
			b.split(b.done)
		default:
			b.done++
		}
	}
	return true
}

// slowConn is the PacketConn of the general path: it reads the datagrams
// the fast loop hands over and writes to the real socket.
type slowConn struct {
	conn      *net.UDPConn
	ch        chan slowPacket
	stop      chan struct{}
	stopOnce  sync.Once
	closeOnce sync.Once
}

type slowPacket struct {
	b    []byte
	addr *net.UDPAddr
}

func newSlowConn(conn *net.UDPConn) *slowConn {
	return &slowConn{conn: conn, ch: make(chan slowPacket, udpBatch), stop: make(chan struct{})}
}

// push hands a copy of q from sa to the general path; false means the
// general path has stopped.
func (c *slowConn) push(q []byte, sa *unix.RawSockaddrInet6) bool {
	p := slowPacket{b: append([]byte(nil), q...), addr: &net.UDPAddr{}}
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p.addr.IP = net.IPv4(sa4.Addr[0], sa4.Addr[1], sa4.Addr[2], sa4.Addr[3])
		pb := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		p.addr.Port = int(pb[0])<<8 | int(pb[1])
	} else {
		p.addr.IP = append(net.IP(nil), sa.Addr[:]...)
		pb := (*[2]byte)(unsafe.Pointer(&sa.Port))
		p.addr.Port = int(pb[0])<<8 | int(pb[1])
	}
	select {
	case c.ch <- p:
		return true
	case <-c.stop:
		return false
	}
}

func (c *slowConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case p := <-c.ch:
		return copy(b, p.b), p.addr, nil
	case <-c.stop:
		return 0, nil, net.ErrClosed
	}
}

func (c *slowConn) WriteTo(b []byte, addr net.Addr) (int, error) { return c.conn.WriteTo(b, addr) }

// Close stops the general path and closes the socket, which ends the fast
// loop.
func (c *slowConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.stopOnce.Do(func() { close(c.stop) })
		err = c.conn.Close()
	})
	return err
}

func (c *slowConn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

func (c *slowConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.conn.SetWriteDeadline(t)
}

// SetReadDeadline wakes the reader for good when t has passed (that is how
// the miekg server is shut down); later deadlines are not enforced, which
// the miekg server does not need.
func (c *slowConn) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		c.stopOnce.Do(func() { close(c.stop) })
	}
	return nil
}

func (c *slowConn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }
