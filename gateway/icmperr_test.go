package gateway

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

// recorder is a container's device that keeps a copy of every ICMP
// frame the switch writes to it.
type recorder struct {
	netdev.Device
	mu            sync.Mutex
	icmp          [][]byte
	nFrames, nGSO int // all frames, super-segments
}

func (r *recorder) keep(buf, frame []byte) {
	r.mu.Lock()
	r.nFrames++
	if packet.OffloadOf(buf).IsGSO() {
		r.nGSO++
	}
	r.mu.Unlock()
	eth := packet.Ethernet(frame)
	if len(frame) < packet.EthernetHeaderLen+20 || eth.EtherType() != packet.EtherTypeIPv4 ||
		packet.IPv4(eth.Payload()).Protocol() != packet.ProtoICMP {
		return
	}
	r.mu.Lock()
	r.icmp = append(r.icmp, append([]byte(nil), frame...))
	r.mu.Unlock()
}

func (r *recorder) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		r.keep(b, b[offset:])
	}
	return r.Device.Write(bufs, offset)
}

func (r *recorder) WriteFrames(f packet.Frames) (int, error) {
	for i := range f.Len() {
		r.keep(f.Buf(i), f.Buf(i)[f.Offset():])
	}
	return r.Device.WriteFrames(f)
}

// counts returns how many frames and super-segments were written.
func (r *recorder) counts() (frames, gso int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nFrames, r.nGSO
}

// frames returns the ICMP frames recorded so far.
func (r *recorder) frames() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.icmp...)
}

// unreachable is a parsed ICMP destination unreachable frame.
type unreachable struct {
	src, dst           netip.Addr // outer
	code               uint8
	innerSrc, innerDst netip.AddrPort
	innerProto         uint8
	innerTotal         int  // the quoted IP header's total length
	udpLen             int  // the quoted UDP header's length
	udpCsumOK          bool // the quoted UDP checksum is right for payload
}

// parseUnreachable checks an ICMP destination unreachable frame's
// checksums and returns what it says, comparing the quoted datagram's
// UDP checksum with one over payload.
func parseUnreachable(t *testing.T, frame []byte, payload []byte) unreachable {
	t.Helper()
	ip := packet.IPv4(frame[packet.EthernetHeaderLen:])
	if !ip.Valid() || ip.HeaderChecksum() != binary.BigEndian.Uint16(ip[10:]) {
		t.Fatalf("ICMP frame's IP header is not valid: % x", frame)
	}
	m := ip.Payload()
	if len(m) < 8+20+8 || m[0] != 3 || packet.Fold(packet.Sum(m, 0)) != 0 {
		t.Fatalf("not a destination unreachable with a valid checksum quoting 28 bytes: % x", m)
	}
	if len(ip) > icmpMaxLen {
		t.Errorf("ICMP error of %d bytes, more than %d", len(ip), icmpMaxLen)
	}
	in := packet.IPv4(m[8:])
	u := in[20:]
	sport, dport := binary.BigEndian.Uint16(u[0:]), binary.BigEndian.Uint16(u[2:])
	full := append(append([]byte(nil), u[:8]...), payload...)
	return unreachable{
		src: ip.Src(), dst: ip.Dst(), code: m[1],
		innerSrc: netip.AddrPortFrom(in.Src(), sport), innerDst: netip.AddrPortFrom(in.Dst(), dport),
		innerProto: in.Protocol(), innerTotal: int(binary.BigEndian.Uint16(in[2:])),
		udpLen:    int(binary.BigEndian.Uint16(u[4:])),
		udpCsumOK: packet.Fold(packet.Sum(full, packet.PseudoHeaderSum(in.Src(), in.Dst(), packet.ProtoUDP, len(full)))) == 0,
	}
}

// TestUDPEgressPortUnreachable: a container's datagram to an outside port
// nobody listens on comes back as an ICMP port unreachable from that
// address, quoting the container's datagram, and the container's socket
// fails with "connection refused" at once; the flow lives on, and the
// next datagram is refused again.
func TestUDPEgressPortUnreachable(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	pc.Close() // a closed port: the host's kernel answers port unreachable
	h := newHarness(t, false, EgressConfig{Dial: redirect(map[uint16]uint16{53: port})})
	dst := netip.AddrPortFrom(outside, 53)
	conn, err := h.ctr.DialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := []byte("is anyone there?")
	for i := 1; i <= 2; i++ {
		start := time.Now()
		if _, err := conn.Write(payload); err != nil {
			t.Fatal(err)
		}
		err = readError(conn)
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("datagram %d to a closed outside port: read %v, want connection refused", i, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("refusal took %v", d)
		}
		poll(t, "the ICMP error to be counted", func() bool { return h.eg.Stats().ICMPErrors == uint64(i) })
	}
	frames := h.rec.frames()
	if len(frames) != 2 {
		t.Fatalf("container got %d ICMP frames, want 2", len(frames))
	}
	u := parseUnreachable(t, frames[0], payload)
	local := netip.MustParseAddrPort(conn.LocalAddr().String())
	want := unreachable{
		src: outside, dst: ctrAddr.Addr(), code: codePortUnreachable,
		innerSrc: local, innerDst: dst, innerProto: packet.ProtoUDP,
		innerTotal: 20 + 8 + len(payload), udpLen: 8 + len(payload), udpCsumOK: true,
	}
	if u != want {
		t.Errorf("ICMP error %+v, want %+v", u, want)
	}
	if st := h.eg.Stats(); st.ActiveUDP != 1 || st.Total != 1 {
		t.Errorf("stats %+v: want the flow to live on after the errors", st)
	}
}

// readError reads conn until it fails other than by a timeout (10s at
// most). It polls: the fake container's socket (gonet) does not wake a
// blocked read for an ICMP error, only the next read sees it.
func readError(conn net.Conn) error {
	buf := make([]byte, 100)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := conn.Read(buf); err != nil && !isTimeout(err) {
			return err
		}
	}
	return nil
}

// TestUDPEgressNoRoute: an outside socket that cannot be opened (no route
// to the network) answers the container's first datagram with an ICMP
// network unreachable from the gateway, not a port unreachable.
func TestUDPEgressNoRoute(t *testing.T) {
	noRoute := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.ENETUNREACH)}
	}
	h := newHarness(t, false, EgressConfig{Dial: noRoute})
	dst := netip.AddrPortFrom(outside, 53)
	conn, err := h.ctr.DialUDP(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := make([]byte, 1000) // more than an ICMP error may quote
	if _, err := conn.Write(payload); err != nil {
		t.Fatal(err)
	}
	poll(t, "an ICMP error", func() bool { return len(h.rec.frames()) == 1 })
	u := parseUnreachable(t, h.rec.frames()[0], payload)
	local := netip.MustParseAddrPort(conn.LocalAddr().String())
	want := unreachable{
		src: gwAddr.Addr(), dst: ctrAddr.Addr(), code: codeNetUnreachable,
		innerSrc: local, innerDst: dst, innerProto: packet.ProtoUDP,
		innerTotal: 20 + 8 + len(payload), udpLen: 8 + len(payload), udpCsumOK: true,
	}
	if u != want {
		t.Errorf("ICMP error %+v, want %+v", u, want)
	}
	if st := h.eg.Stats(); st.Refused[RefuseConnect] != 1 || st.ActiveUDP != 0 || st.ICMPErrors != 1 {
		t.Errorf("stats %+v: want one connect refusal, one ICMP error, no flow", st)
	}
}

// TestParseErrQueue: the IP_RECVERR control message of a port
// unreachable, as Linux builds it, and truncated ones.
func TestParseErrQueue(t *testing.T) {
	oob := errQueueMsg(syscall.ECONNREFUSED, eeOriginICMP, 3, 3, [4]byte{192, 0, 2, 10})
	ee, ok := parseErrQueue(oob)
	want := extErr{errno: syscall.ECONNREFUSED, origin: eeOriginICMP, typ: 3, code: 3, offender: netip.MustParseAddr("192.0.2.10")}
	if !ok || ee != want {
		t.Fatalf("parseErrQueue = %+v, %v; want %+v", ee, ok, want)
	}
	for n := range len(oob) - 16 {
		if ee, ok := parseErrQueue(oob[:n]); ok && ee.offender.IsValid() {
			t.Errorf("a message cut at %d bytes gave an offender: %+v", n, ee)
		}
	}
}

// errQueueMsg builds an IP_RECVERR control message (struct cmsghdr,
// struct sock_extended_err, struct sockaddr_in).
func errQueueMsg(errno syscall.Errno, origin, typ, code uint8, offender [4]byte) []byte {
	data := make([]byte, 16+16)
	binary.NativeEndian.PutUint32(data[0:], uint32(errno))
	data[4], data[5], data[6] = origin, typ, code
	binary.NativeEndian.PutUint16(data[16:], syscall.AF_INET)
	copy(data[20:], offender[:])
	b := make([]byte, syscall.CmsgSpace(len(data)))
	h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = syscall.IPPROTO_IP, ipRecvErr
	h.SetLen(syscall.CmsgLen(len(data)))
	copy(b[syscall.CmsgLen(0):], data)
	return b
}

// FuzzParseErrQueue: any control message bytes parse without a panic,
// and what parses is read from an IP_RECVERR message that holds it.
func FuzzParseErrQueue(f *testing.F) {
	f.Add(errQueueMsg(syscall.ECONNREFUSED, eeOriginICMP, 3, 3, [4]byte{192, 0, 2, 10}))
	f.Add(errQueueMsg(syscall.EHOSTUNREACH, eeOriginICMP, 3, 1, [4]byte{10, 0, 0, 1}))
	f.Add(errQueueMsg(syscall.EMSGSIZE, 1, 0, 0, [4]byte{}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		ee, ok := parseErrQueue(oob)
		if !ok {
			if ee != (extErr{}) {
				t.Fatalf("not parsed but %+v", ee)
			}
			return
		}
		msgs, err := syscall.ParseSocketControlMessage(oob)
		if err != nil {
			t.Fatalf("parsed %+v from bytes the syscall package refuses: %v", ee, err)
		}
		found := false
		for _, m := range msgs {
			if m.Header.Level == syscall.IPPROTO_IP && m.Header.Type == ipRecvErr && len(m.Data) >= 16 {
				found = m.Data[5] == ee.typ && m.Data[6] == ee.code
				break
			}
		}
		if !found {
			t.Fatalf("parsed %+v without an IP_RECVERR message holding it", ee)
		}
	})
}

// TestTCPEgressHostUnreachable: an outside connect that fails with "no
// route to host" answers the container's SYN with an ICMP host
// unreachable from the gateway quoting it, not a reset, and the
// container's connect fails at once; a refused connect stays a reset.
func TestTCPEgressHostUnreachable(t *testing.T) {
	unreachable := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}
	}
	h := newHarness(t, false, EgressConfig{Dial: unreachable})
	start := time.Now()
	_, err := h.dial(t, netip.AddrPortFrom(outside, 80))
	if err == nil || strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial to an unreachable host: %v, want a host unreachable error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failure took %v", d)
	}
	frames := h.rec.frames()
	if len(frames) != 1 {
		t.Fatalf("container got %d ICMP frames, want 1", len(frames))
	}
	ip := packet.IPv4(frames[0][packet.EthernetHeaderLen:])
	m := ip.Payload()
	in := packet.IPv4(m[8:])
	if ip.Src() != gwAddr.Addr() || m[0] != 3 || m[1] != codeHostUnreachable || packet.Fold(packet.Sum(m, 0)) != 0 ||
		in.Src() != ctrAddr.Addr() || in.Dst() != outside || in.Protocol() != packet.ProtoTCP ||
		binary.BigEndian.Uint16(in[22:]) != 80 || len(m) != 8+20+8 {
		t.Errorf("ICMP error % x: want a host unreachable from the gateway quoting the SYN to %s:80", ip, outside)
	}
}
