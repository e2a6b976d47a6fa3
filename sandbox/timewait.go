package sandbox

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// sockDiag is a NETLINK_SOCK_DIAG socket made in a namespace (it keeps
// that namespace's view whichever thread uses it), for EndTimeWait.
type sockDiag struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf [512]byte
}

// Netlink sock_diag message types and sizes (linux/sock_diag.h,
// linux/inet_diag.h).
const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	sockDestroy      = 21 // SOCK_DESTROY
	inetDiagReqLen   = 56 // struct inet_diag_req_v2
)

func newSockDiag() (*sockDiag, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	return &sockDiag{fd: fd}, nil
}

// request sends one sock_diag request of type typ about the TCP socket
// whose local address is local and remote address remote (cookie: the
// socket's, or none), and returns the reply's payload (an inet_diag_msg)
// or the error the kernel answered. Callers hold d.mu.
func (d *sockDiag) request(typ, flags uint16, local, remote netip.AddrPort, cookie []byte) ([]byte, error) {
	d.seq++
	msg := d.buf[:unix.NLMSG_HDRLEN+inetDiagReqLen]
	clear(msg)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], typ)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST|flags)
	ne.PutUint32(msg[8:], d.seq)
	r := msg[unix.NLMSG_HDRLEN:]
	r[0], r[1] = unix.AF_INET, unix.IPPROTO_TCP
	ne.PutUint32(r[4:], ^uint32(0)) // every state: the lookup is exact
	id := r[8:]                     // struct inet_diag_sockid
	binary.BigEndian.PutUint16(id[0:], local.Port())
	binary.BigEndian.PutUint16(id[2:], remote.Port())
	l, rm := local.Addr().As4(), remote.Addr().As4()
	copy(id[4:], l[:])
	copy(id[20:], rm[:])
	if cookie != nil {
		copy(id[40:48], cookie)
	} else {
		ne.PutUint32(id[40:], ^uint32(0)) // INET_DIAG_NOCOOKIE
		ne.PutUint32(id[44:], ^uint32(0))
	}
	if err := unix.Sendto(d.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, os.NewSyscallError("sendto", err)
	}
	for {
		n, _, err := unix.Recvfrom(d.fd, d.buf[:], 0)
		if err != nil {
			return nil, os.NewSyscallError("recvfrom", err)
		}
		if n < unix.NLMSG_HDRLEN {
			return nil, errors.New("sock_diag: short reply")
		}
		b := d.buf[:n]
		if ne.Uint32(b[8:]) != d.seq {
			continue // a late reply to an earlier request
		}
		switch ne.Uint16(b[4:]) {
		case unix.NLMSG_ERROR:
			if len(b) < unix.NLMSG_HDRLEN+4 {
				return nil, errors.New("sock_diag: short error")
			}
			if e := int32(ne.Uint32(b[unix.NLMSG_HDRLEN:])); e != 0 {
				return nil, unix.Errno(-e)
			}
			return nil, nil
		case sockDiagByFamily:
			return b[unix.NLMSG_HDRLEN:], nil
		}
		return nil, errors.New("sock_diag: unexpected reply")
	}
}

// EndTimeWait ends the namespace's TIME-WAIT socket whose local address
// is local and remote address remote, if there is one, as Linux itself
// does when it takes a new SYN for a TIME-WAIT socket: the socket is
// looked up exactly and destroyed (SOCK_DESTROY, by its cookie) only if
// it is in TIME-WAIT, so a live connection of those addresses is never
// touched. It reports whether one was ended. The routing mesh calls it
// for a backend's side of a fast-path connection, before and after the
// connection: another host's gateway may bring the same client address
// and port to the backend next, with TCP timestamps unrelated to the
// kernel socket's, which a TIME-WAIT socket would drop (PAWS).
func (f *FastSockets) EndTimeWait(local, remote netip.AddrPort) (bool, error) {
	d := f.diag
	if d == nil {
		return false, errFastSocketsClosed
	}
	if !local.Addr().Is4() || !remote.Addr().Is4() {
		return false, errors.New("sock_diag: IPv4 addresses only")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fd < 0 {
		return false, errFastSocketsClosed
	}
	m, err := d.request(sockDiagByFamily, 0, local, remote, nil)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if len(m) < 4+48 || m[1] != tcpTimeWait {
		return false, nil
	}
	cookie := [8]byte(m[4+40 : 4+48]) // m is d.buf, which the next request overwrites
	_, err = d.request(sockDestroy, unix.NLM_F_ACK, local, remote, cookie[:])
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESTALE) {
		return false, nil // gone meanwhile
	}
	return err == nil, err
}
