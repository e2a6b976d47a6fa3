//go:build linux

package netdev

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vxmesh/vxmesh/internal/testenv"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/packet"
)

func requireTAP(t *testing.T) {
	t.Helper()
	testenv.RequireTUN(t)
}

func uniqueName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// newNetns creates an anonymous network namespace and returns a descriptor
// for it; the namespace goes away with the descriptor at cleanup.
func newNetns(t *testing.T) int {
	t.Helper()
	var fd int
	withThreadNetns(t, func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return err
		}
		var err error
		fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		return err
	})
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// inNetns runs fn on a thread switched into the namespace nsfd.
func inNetns(t *testing.T, nsfd int, fn func()) {
	t.Helper()
	withThreadNetns(t, func() error {
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			return err
		}
		fn()
		return nil
	})
}

// withThreadNetns runs fn on a locked thread and puts the thread back into
// its original network namespace afterwards. (A thread must not be left
// in another namespace: if it is the main thread, the runtime cannot
// discard it and /proc/self/ns/net would change for the whole process.)
func withThreadNetns(t *testing.T, fn func() error) {
	t.Helper()
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer unix.Close(orig)
		err = fn()
		if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
			ch <- serr // stays locked: the thread is not reused
			return
		}
		runtime.UnlockOSThread()
		ch <- err
	}()
	if err := <-ch; err != nil {
		t.Fatalf("netns: %v", err)
	}
}

var (
	nsIP   = netip.MustParseAddr("10.77.0.1")
	peerIP = netip.MustParseAddr("10.77.0.2")
	peerHW = packet.MAC{0x02, 0x77, 0, 0, 0, 2}
)

// testTAP is a TAP moved into its own namespace and configured there with
// 10.77.0.1/24 and a permanent neighbour 10.77.0.2 at peerHW.
type testTAP struct {
	tap  *TAP
	ns   int
	nsHW packet.MAC // the interface's MAC inside the namespace
}

func newTestTAP(t *testing.T, persist bool) *testTAP {
	t.Helper()
	requireTAP(t)
	name := uniqueName("vxt")
	tap, err := CreateTAP(name, persist)
	if err != nil {
		t.Fatal(err)
	}
	if tap.Name() != name {
		t.Fatalf("Name() = %q, want %q", tap.Name(), name)
	}
	t.Cleanup(func() {
		tap.SetPersist(false)
		tap.Close()
	})
	ns := newNetns(t)
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(link, ns); err != nil {
		t.Fatal(err)
	}
	configureTestLink(t, ns, name)
	h, err := netlink.NewHandleAt(netns.NsHandle(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err = h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return &testTAP{tap: tap, ns: ns, nsHW: packet.MAC(link.Attrs().HardwareAddr)}
}

func configureTestLink(t *testing.T, ns int, name string) {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: nsIP.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(link, addr); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	err = h.NeighAdd(&netlink.Neigh{
		LinkIndex:    link.Attrs().Index,
		Family:       unix.AF_INET,
		State:        netlink.NUD_PERMANENT,
		IP:           peerIP.AsSlice(),
		HardwareAddr: net.HardwareAddr(peerHW[:]),
	})
	if err != nil {
		t.Fatal(err)
	}
}

func checksum(b []byte) uint16 {
	var sum uint32
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// buildIPv4 writes Ethernet+IPv4(+payload) into buf at offset and returns
// the whole buffer trimmed to the frame's end.
func buildIPv4(buf []byte, offset int, dst, src packet.MAC, sip, dip netip.Addr, proto byte, l4 []byte) []byte {
	f := buf[offset:]
	copy(f[0:6], dst[:])
	copy(f[6:12], src[:])
	binary.BigEndian.PutUint16(f[12:14], packet.EtherTypeIPv4)
	ip := f[14:]
	clear(ip[:20])
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+len(l4)))
	ip[8] = 64
	ip[9] = proto
	s, d := sip.As4(), dip.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip[:20]))
	copy(ip[20:], l4)
	return buf[:offset+14+20+len(l4)]
}

func udpDatagram(sport, dport uint16, payload []byte) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:2], sport)
	binary.BigEndian.PutUint16(u[2:4], dport)
	binary.BigEndian.PutUint16(u[4:6], uint16(len(u)))
	copy(u[8:], payload) // checksum 0: none (IPv4)
	return u
}

func echoRequest(id, seq uint16) []byte {
	m := make([]byte, 8+16)
	m[0] = 8
	binary.BigEndian.PutUint16(m[4:6], id)
	binary.BigEndian.PutUint16(m[6:8], seq)
	copy(m[8:], "vxmesh-tap-test!")
	binary.BigEndian.PutUint16(m[2:4], checksum(m))
	return m
}

// udpTo returns the UDP payload if frame is IPv4/UDP to port, else nil.
func udpTo(frame []byte, port uint16) []byte {
	e := packet.Ethernet(frame)
	if !e.Valid() || e.EtherType() != packet.EtherTypeIPv4 || len(frame) < 14+20+8 {
		return nil
	}
	ip := frame[14:]
	ihl := int(ip[0]&0xf) * 4
	if ip[9] != unix.IPPROTO_UDP || len(ip) < ihl+8 {
		return nil
	}
	u := ip[ihl:]
	if binary.BigEndian.Uint16(u[2:4]) != port {
		return nil
	}
	return u[8:binary.BigEndian.Uint16(u[4:6])]
}

func isEchoReply(frame []byte) bool {
	return len(frame) >= 14+20+8 &&
		packet.Ethernet(frame).EtherType() == packet.EtherTypeIPv4 &&
		frame[14+9] == unix.IPPROTO_ICMP && frame[14+20] == 0
}

func TestTAPReadBatch(t *testing.T) {
	tt := newTestTAP(t, false)
	const count = 10
	inNetns(t, tt.ns, func() {
		c, err := net.Dial("udp4", netip.AddrPortFrom(peerIP, 9999).String())
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		for i := range count {
			if _, err := fmt.Fprintf(c, "frame %d", i); err != nil {
				t.Error(err)
			}
		}
	})
	b := packet.NewBatch(packet.BatchSize)
	got, maxBatch := 0, 0
	for got < count {
		n, err := tt.tap.Read(b.Bufs, b.Sizes, packet.Headroom)
		if err != nil {
			t.Fatal(err)
		}
		maxBatch = max(maxBatch, n)
		for i := range n {
			frame := b.Bufs[i][packet.Headroom : packet.Headroom+b.Sizes[i]]
			p := udpTo(frame, 9999)
			if p == nil {
				continue // IPv6 autoconfiguration noise
			}
			if want := fmt.Sprintf("frame %d", got); string(p) != want {
				t.Errorf("frame %d payload %q, want %q", got, p, want)
			}
			if packet.Ethernet(frame).Dst() != peerHW || packet.Ethernet(frame).Src() != tt.nsHW {
				t.Errorf("frame %d: dst %v src %v", got, packet.Ethernet(frame).Dst(), packet.Ethernet(frame).Src())
			}
			got++
		}
	}
	if maxBatch < 2 {
		t.Errorf("largest batch %d frames: queued frames were not read in one call", maxBatch)
	}
	if st := tt.tap.Stats(); st.RxFrames < count || st.RxDropGSO != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestTAPWrite(t *testing.T) {
	tt := newTestTAP(t, false)
	var conn net.PacketConn
	inNetns(t, tt.ns, func() {
		var err error
		conn, err = net.ListenPacket("udp4", netip.AddrPortFrom(nsIP, 7777).String())
		if err != nil {
			t.Error(err)
		}
	})
	if conn == nil {
		t.FailNow()
	}
	defer conn.Close()

	const count = 8
	bufs := make([][]byte, count)
	for i := range bufs {
		// Fill the headroom behind the metadata slot with junk (it must not
		// be sent); the slot says "no offload".
		buf := make([]byte, packet.BufferSize)
		for j := packet.OffloadLen; j < packet.Headroom; j++ {
			buf[j] = 0xa5
		}
		bufs[i] = buildIPv4(buf, packet.Headroom, tt.nsHW, peerHW, peerIP, nsIP, unix.IPPROTO_UDP,
			udpDatagram(5555, 7777, fmt.Appendf(nil, "to ns %d", i)))
	}
	n, err := tt.tap.Write(bufs, packet.Headroom)
	if err != nil || n != count {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, count)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	p := make([]byte, 100)
	for i := range count {
		m, _, err := conn.ReadFrom(p)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("to ns %d", i); string(p[:m]) != want {
			t.Errorf("got %q, want %q", p[:m], want)
		}
	}
	if st := tt.tap.Stats(); st.TxFrames != count || st.TxErrors != 0 {
		t.Errorf("stats %+v", st)
	}

	// A refused frame (too short for Ethernet) is counted, the rest go out.
	short := make([]byte, packet.Headroom+4)
	n, err = tt.tap.Write([][]byte{short, bufs[0]}, packet.Headroom)
	if n != 1 || err == nil {
		t.Errorf("Write(short, good) = %d, %v; want 1 and an error", n, err)
	}
	if _, err := tt.tap.Write(bufs, VirtioNetHdrLen-1); err == nil {
		t.Error("Write with offset < VirtioNetHdrLen succeeded")
	}
}

func TestTAPCloseUnblocksRead(t *testing.T) {
	tt := newTestTAP(t, false)
	b := packet.NewBatch(4)
	done := make(chan error, 1)
	go func() {
		for {
			// Skip stray frames (IPv6 autoconfiguration) until Close.
			if _, err := tt.tap.Read(b.Bufs, b.Sizes, packet.Headroom); err != nil {
				done <- err
				return
			}
		}
	}()
	// Close must unblock a Read that is blocked, not one yet to start.
	testenv.WaitBlocked(t, "netdev.(*TAP).Read", 10*time.Second)
	select {
	case err := <-done:
		t.Fatalf("Read failed before Close: %v", err)
	default:
	}
	if err := tt.tap.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read still blocked 10s after Close")
	}
}

func TestCreateTAPNames(t *testing.T) {
	requireTAP(t)
	tap, err := CreateTAP("", false)
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	if tap.Name() == "" {
		t.Fatal("kernel-chosen name is empty")
	}
	if _, err := netlink.LinkByName(tap.Name()); err != nil {
		t.Errorf("link %q: %v", tap.Name(), err)
	}
	if _, err := CreateTAP(tap.Name(), false); err == nil {
		t.Errorf("CreateTAP(%q) on an existing device succeeded", tap.Name())
	}
	if _, err := CreateTAP("this-name-is-too-long", false); err == nil {
		t.Error("CreateTAP with a 21-byte name succeeded")
	}
}

func TestOpenTAPInNetns(t *testing.T) {
	tt := newTestTAP(t, true)
	name := tt.tap.Name()
	nsPath := fmt.Sprintf("/proc/self/fd/%d", tt.ns)
	if err := tt.tap.Close(); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(tt.ns))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.LinkByName(name); err != nil {
		t.Fatalf("persistent TAP gone after Close: %v", err)
	}

	// An unknown name fails and creates nothing.
	if _, err := OpenTAPInNetns(nsPath, "vxtnothere"); err == nil {
		t.Error("OpenTAPInNetns of a missing device succeeded")
	}
	if _, err := h.LinkByName("vxtnothere"); err == nil {
		t.Error("OpenTAPInNetns of a missing device left a device behind")
	}
	// Not visible from here: it lives in the other namespace.
	if _, err := OpenTAP(name); err == nil {
		t.Error("OpenTAP found the device outside its namespace")
	}

	tap, err := OpenTAPInNetns(nsPath, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tap.SetPersist(false)
		tap.Close()
	})
	// The reopened fd works from here: ping the namespace through it.
	pingUntilReply(t, tap, tt.nsHW)

	if err := tap.SetPersist(false); err != nil {
		t.Fatal(err)
	}
	tap.Close()
	for range 100 { // device removal is synchronous, but poll to be safe
		if _, err := h.LinkByName(name); err != nil {
			return
		}
		runtime.Gosched()
	}
	t.Error("non-persistent TAP still exists after Close")
}

// pingUntilReply sends echo requests to the namespace through tap until a
// reply comes back. Requests are repeated because the kernel drops what a
// TAP transmits until the link watcher has re-activated its queue after
// the carrier came back (reopening a persistent TAP).
func pingUntilReply(t *testing.T, tap *TAP, nsHW packet.MAC) {
	t.Helper()
	stop := make(chan struct{})
	sent := make(chan error, 1)
	go func() {
		req := make([]byte, packet.BufferSize)
		req = buildIPv4(req, packet.Headroom, nsHW, peerHW, peerIP, nsIP, unix.IPPROTO_ICMP, echoRequest(1, 1))
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			if _, err := tap.Write([][]byte{req}, packet.Headroom); err != nil {
				sent <- err
				tap.Close()
				return
			}
			select {
			case <-stop:
				sent <- nil
				return
			case <-tick.C:
			}
		}
		sent <- errors.New("no echo reply within 10s")
		tap.Close() // unblock the reader
	}()
	b := packet.NewBatch(packet.BatchSize)
	for found := false; !found; {
		n, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom)
		if err != nil {
			t.Fatalf("Read: %v (sender: %v)", err, <-sent)
		}
		for i := range n {
			found = found || isEchoReply(b.Bufs[i][packet.Headroom:packet.Headroom+b.Sizes[i]])
		}
	}
	close(stop)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}

func TestTAPAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	tt := newTestTAP(t, false)
	req := make([]byte, packet.BufferSize)
	req = buildIPv4(req, packet.Headroom, tt.nsHW, peerHW, peerIP, nsIP, unix.IPPROTO_ICMP, echoRequest(2, 1))
	wbufs := [][]byte{req}
	b := packet.NewBatch(packet.BatchSize)
	var failed error
	roundTrip := func() {
		if _, err := tt.tap.Write(wbufs, packet.Headroom); err != nil {
			failed = err
			return
		}
		for {
			n, err := tt.tap.Read(b.Bufs, b.Sizes, packet.Headroom)
			if err != nil {
				failed = err
				return
			}
			for i := range n {
				if isEchoReply(b.Bufs[i][packet.Headroom : packet.Headroom+b.Sizes[i]]) {
					return
				}
			}
		}
	}
	allocs := testing.AllocsPerRun(200, roundTrip)
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("Write+Read allocate %.1f times per frame, want 0", allocs)
	}
}

func TestCompleteChecksum(t *testing.T) {
	// An odd-length UDP datagram with a correct checksum; then replace the
	// checksum by the pseudo-header sum as the kernel does for
	// CHECKSUM_PARTIAL and let packet.CompleteChecksum finish it.
	sip, dip := [4]byte{10, 0, 0, 1}, [4]byte{10, 0, 0, 2}
	udp := udpDatagram(1234, 53, []byte("odd-payload"))
	pseudo := make([]byte, 0, 12+len(udp))
	pseudo = append(pseudo, sip[:]...)
	pseudo = append(pseudo, dip[:]...)
	pseudo = append(pseudo, 0, unix.IPPROTO_UDP, 0, byte(len(udp)))
	want := checksum(append(pseudo, udp...))
	partial := ^checksum(pseudo) // folded pseudo-header sum, not complemented

	frame := make([]byte, 14+20)
	frame = append(frame, udp...)
	binary.BigEndian.PutUint16(frame[34+6:], partial)
	slot := make([]byte, VirtioNetHdrLen)
	copy(slot, vnet(packet.OffloadNeedsCsum, packet.GSONone, 0, 0, 34, 6))
	if !packet.CompleteChecksum(frame, packet.OffloadOf(slot)) {
		t.Fatal("CompleteChecksum refused valid offsets")
	}
	if got := binary.BigEndian.Uint16(frame[34+6:]); got != want {
		t.Errorf("checksum %#04x, want %#04x", got, want)
	}
	if !packet.OffloadOf(slot).IsNone() {
		t.Errorf("slot % x after completion, want NeedsCsum cleared", slot)
	}
	copy(slot, vnet(packet.OffloadNeedsCsum, packet.GSONone, 0, 0, len(frame), 6))
	if packet.CompleteChecksum(frame, packet.OffloadOf(slot)) {
		t.Error("CompleteChecksum accepted offsets past the frame")
	}
}
