//go:build linux

package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/internal/testenv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/packet"
)

// freeUDPPort returns a UDP port that was free on 127.0.0.1 a moment ago.
func freeUDPPort(t *testing.T) uint16 {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

func listenUDP(t *testing.T, addr string, port uint16) *UDP {
	t.Helper()
	u, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddr(addr), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

func readN(t *testing.T, u *UDP, n int) []Message {
	t.Helper()
	var out []Message
	msgs := make([]Message, 16)
	for i := range msgs {
		msgs[i].Buf = make([]byte, 2048)
	}
	done := make(chan error, 1)
	go func() {
		for len(out) < n {
			k, err := u.ReadBatch(msgs)
			if err != nil {
				done <- err
				return
			}
			for _, m := range msgs[:k] {
				out = append(out, Message{Buf: bytes.Clone(m.Buf[:m.N]), N: m.N, Addr: m.Addr})
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("read %d of %d datagrams", len(out), n)
	}
	return out
}

// TestUDPTxPortsSkipPortsInUse: the transmit sockets take the free ports
// of their range in order from the start given, and fail with a clear
// error when there are too few.
func TestUDPTxPortsSkipPortsInUse(t *testing.T) {
	addr := netip.MustParseAddr("127.0.0.1")
	// Three free ports in a row, the first two then held here.
	var lo uint16
	var held []net.PacketConn
	for try := 0; lo == 0; try++ {
		if try == 50 {
			t.Fatal("no three free ports in a row found in 49152-65535")
		}
		p := uint16(49152 + (try*997)%16000)
		var cs []net.PacketConn
		for i := range uint16(3) {
			c, err := net.ListenPacket("udp4", netip.AddrPortFrom(addr, p+i).String())
			if err != nil {
				break
			}
			cs = append(cs, c)
		}
		if len(cs) == 3 {
			lo, held = p, cs[:2]
			cs[2].Close()
		} else {
			for _, c := range cs {
				c.Close()
			}
		}
	}
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	u := &UDP{family: unix.AF_INET}
	t.Cleanup(func() { u.Close() })
	if err := u.openTx(addr, 0, 1, lo, lo+2, 1); err != nil {
		t.Fatal(err)
	}
	if got := u.TxPorts(); !slices.Equal(got, []uint16{lo + 2}) {
		t.Fatalf("ports %v with %d and %d in use, want [%d]", got, lo, lo+1, lo+2)
	}
	u2 := &UDP{family: unix.AF_INET}
	t.Cleanup(func() { u2.Close() })
	err := u2.openTx(addr, 0, 1, lo, lo+2, 0)
	want := fmt.Sprintf("0 of 1 ports free in %d-%d", lo, lo+2)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("openTx with every port in use: %v, want an error saying %q", err, want)
	}
}

func TestUDPSourcePortPerFlowAndWire(t *testing.T) {
	port := freeUDPPort(t)
	ua := listenUDP(t, "127.0.0.1", port)
	ub := listenUDP(t, "127.0.0.2", port)
	v := New(Config{Underlay: ua, DataPort: port})
	n, _ := v.AddSegment(testVNI, 0)
	n.SetPeers([]netip.Addr{netip.MustParseAddr("127.0.0.2")})
	const flows = 32
	var frames [][]byte
	for i := range flows {
		f := udpFrame(packet.Broadcast, macA, uint16(10000+i), 80, 64)
		frames = append(frames, f, f) // two frames of each flow
	}
	if k, err := n.Write(withHeadroom(frames...), packet.Headroom); k != len(frames) || err != nil {
		t.Fatalf("Write = %d, %v", k, err)
	}
	got := readN(t, ub, len(frames))
	portOf := map[string]uint16{}
	used := map[uint16]bool{}
	for _, m := range got {
		if m.Addr.Addr() != netip.MustParseAddr("127.0.0.1") || !slices.Contains(ua.TxPorts(), m.Addr.Port()) {
			t.Fatalf("source %s not one of %v", m.Addr, ua.TxPorts())
		}
		if p := m.Addr.Port(); p < 49152 {
			t.Fatalf("source port %d outside RFC 7348's 49152-65535", p)
		}
		if !bytes.Equal(m.Buf[:8], []byte{0x08, 0, 0, 0, 0x00, 0x10, 0x01, 0}) {
			t.Fatalf("header % x", m.Buf[:8])
		}
		key := string(m.Buf[8:])
		if p, ok := portOf[key]; ok && p != m.Addr.Port() {
			t.Fatalf("one flow used source ports %d and %d", p, m.Addr.Port())
		}
		portOf[key] = m.Addr.Port()
		used[m.Addr.Port()] = true
	}
	if len(portOf) != flows || len(used) < 4 {
		t.Fatalf("%d flows used %d source ports", len(portOf), len(used))
	}
}

func TestUDPRoundTripBetweenVTEPs(t *testing.T) {
	port := freeUDPPort(t)
	a, b := newUDPNode(t, "127.0.0.1", port, "127.0.0.3"), newUDPNode(t, "127.0.0.3", port, "127.0.0.1")
	b.n.SetExternal([]netip.Addr{netip.MustParseAddr("127.0.0.1")}) // so that b learns
	f := udpFrame(macB, macA, 1, 2, 1000)
	if k, err := a.n.Write(withHeadroom(f), packet.Headroom); k != 1 || err != nil {
		t.Fatalf("Write = %d, %v", k, err)
	}
	if got := b.sink.wait(t, 1); !bytes.Equal(got[0], f) {
		t.Fatal("frame changed in transit")
	}
	if fdb := b.n.FDB(); len(fdb) != 1 || fdb[0].VTEP != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("fdb %+v", fdb)
	}
}

func newUDPNode(t *testing.T, addr string, port uint16, peers ...string) *node {
	u := listenUDP(t, addr, port)
	v := New(Config{Underlay: u, DataPort: port})
	n, _ := v.AddSegment(testVNI, 0)
	var ps []netip.Addr
	for _, p := range peers {
		ps = append(ps, netip.MustParseAddr(p))
	}
	n.SetPeers(ps)
	nd := &node{v: v, n: n, sink: newSink()}
	n.SetInput(nd.sink.input)
	nd.run(t)
	return nd
}

func TestUDPDataPortInUse(t *testing.T) {
	port := freeUDPPort(t)
	c, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = ListenUDP(UDPConfig{Addr: netip.MustParseAddr("127.0.0.1"), Port: port})
	want := fmt.Sprintf("data port %d: address already in use (is a kernel VXLAN device bound to it?)", port)
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

func TestUDPBatchIODoesNotAllocate(t *testing.T) {
	port := freeUDPPort(t)
	ua := listenUDP(t, "127.0.0.1", port)
	ub := listenUDP(t, "127.0.0.2", port)
	out := make([]Message, packet.BatchSize)
	in := make([]Message, packet.BatchSize)
	for i := range out {
		out[i] = Message{Buf: make([]byte, 1000), Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port), Hash: uint32(i)}
		in[i].Buf = make([]byte, 2048)
	}
	step := func() {
		ua.WriteBatch(out)
		for left := len(out); left > 0; {
			k, err := ub.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			left -= k
		}
	}
	step()
	if allocs := testing.AllocsPerRun(100, step); allocs != 0 {
		t.Errorf("sendmmsg/recvmmsg round trip allocates %.1f times per batch", allocs)
	}
}

func TestUDPCloseUnblocksRead(t *testing.T) {
	u, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddr("127.0.0.1"), Port: freeUDPPort(t)})
	if err != nil {
		t.Fatal(err)
	}
	v := New(Config{Underlay: u})
	done := make(chan error, 1)
	go func() { done <- v.Run(context.Background()) }()
	// Close must unblock a read that is blocked, not one yet to start.
	testenv.WaitBlocked(t, "tunnel.(*UDP).ReadBatch", 5*time.Second)
	select {
	case err := <-done:
		t.Fatalf("Run returned before Close: %v", err)
	default:
	}
	v.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
}

// --- root: interoperability with the kernel's VXLAN device ---

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNetns runs fn on a locked thread inside the named network namespace.
func inNetns(t *testing.T, name string, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(orig)
		ns, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(ns)
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- err // the thread stays locked and dies with the goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("netns %s: %v", name, err)
	}
}

func arpRequestFrame(srcMAC packet.MAC, srcIP, dstIP netip.Addr) []byte {
	f := make([]byte, 14+packet.ARPLen)
	e := packet.Ethernet(f)
	e.SetDst(packet.Broadcast)
	e.SetSrc(srcMAC)
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeARP)
	a := f[14:]
	copy(a, []byte{0, 1, 8, 0, 6, 4, 0, 1})
	copy(a[8:14], srcMAC[:])
	s4, d4 := srcIP.As4(), dstIP.As4()
	copy(a[14:18], s4[:])
	copy(a[24:28], d4[:])
	return f
}

func TestKernelVXLANInterop(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	id := fmt.Sprintf("%d", os.Getpid()%100000)
	nsK, nsM := "vxtk"+id, "vxtm"+id
	for _, ns := range []string{nsK, nsM} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	run(t, "ip", "link", "add", "vtk"+id, "netns", nsK, "type", "veth", "peer", "name", "vtm"+id, "netns", nsM)
	run(t, "ip", "-n", nsK, "addr", "add", "192.0.2.1/24", "dev", "vtk"+id)
	run(t, "ip", "-n", nsM, "addr", "add", "192.0.2.2/24", "dev", "vtm"+id)
	for _, ns := range []string{nsK, nsM} {
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", nsK, "link", "set", "vtk"+id, "up")
	run(t, "ip", "-n", nsM, "link", "set", "vtm"+id, "up")
	kernelMAC := packet.MAC{0x02, 0, 0, 0, 0x42, 0x01}
	ourMAC := packet.MAC{0x02, 0, 0, 0, 0x42, 0x02}
	run(t, "ip", "-n", nsK, "link", "add", "vx0", "address", kernelMAC.String(), "type", "vxlan", "id", "4242",
		"dstport", "4789", "local", "192.0.2.1", "remote", "192.0.2.2")
	run(t, "ip", "-n", nsK, "addr", "add", "10.42.0.1/24", "dev", "vx0")
	run(t, "ip", "-n", nsK, "link", "set", "vx0", "up")

	var u *UDP
	var err error
	inNetns(t, nsM, func() { u, err = ListenUDP(UDPConfig{Addr: netip.MustParseAddr("192.0.2.2")}) })
	if err != nil {
		t.Fatal(err)
	}
	v := New(Config{Underlay: u})
	n, err := v.AddSegment(4242, 9000) // larger than the underlay allows, to see EMSGSIZE
	if err != nil {
		t.Fatal(err)
	}
	n.SetPeers([]netip.Addr{netip.MustParseAddr("192.0.2.1")})
	n.SetExternal([]netip.Addr{netip.MustParseAddr("192.0.2.1")}) // the kernel VTEP
	nd := &node{v: v, n: n, sink: newSink()}
	n.SetInput(nd.sink.input)
	nd.run(t)

	// We ask the kernel VTEP's host for 10.42.0.1; it must decapsulate our
	// request and send its reply back through VXLAN.
	req := arpRequestFrame(ourMAC, netip.MustParseAddr("10.42.0.2"), netip.MustParseAddr("10.42.0.1"))
	if k, err := n.Write(withHeadroom(req), packet.Headroom); k != 1 || err != nil {
		t.Fatalf("Write = %d, %v", k, err)
	}
	var reply packet.ARP
	deadline := time.Now().Add(5 * time.Second)
	for reply == nil && time.Now().Before(deadline) {
		for _, f := range nd.sink.wait(t, nd.sink.count()+0) {
			e := packet.Ethernet(f)
			if e.EtherType() == packet.EtherTypeARP && packet.ARP(e.Payload()).Op() == packet.ARPReply {
				reply = packet.ARP(e.Payload())
				if e.Dst() != ourMAC || e.Src() != kernelMAC {
					t.Fatalf("reply %s -> %s", e.Src(), e.Dst())
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if reply == nil || reply.SenderMAC() != kernelMAC || reply.SenderIP() != netip.MustParseAddr("10.42.0.1") {
		t.Fatalf("no ARP reply from the kernel VTEP (stats %+v)", v.Stats())
	}
	// The kernel learned our MAC behind our VTEP and our IP at our MAC.
	if fdb := run(t, "bridge", "-n", nsK, "fdb", "show", "dev", "vx0"); !strings.Contains(fdb, ourMAC.String()+" dst 192.0.2.2") {
		t.Errorf("kernel fdb does not have our MAC:\n%s", fdb)
	}
	if neigh := run(t, "ip", "-n", nsK, "neigh", "show", "10.42.0.2"); !strings.Contains(neigh, ourMAC.String()) {
		t.Errorf("kernel neighbour table: %q", neigh)
	}
	// The kernel's frames came from an address that is our peer: we learned
	// its MAC behind it.
	if fdb := n.FDB(); len(fdb) != 1 || fdb[0].MAC != kernelMAC || fdb[0].VTEP != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("our fdb %+v", fdb)
	}
	// A datagram above the veth MTU (1500) is refused, not fragmented.
	big := udpFrame(kernelMAC, ourMAC, 1, 2, 1600)
	if k, _ := n.Write(withHeadroom(big), packet.Headroom); k != 0 {
		t.Fatal("a 1650-byte frame went out on a 1500-byte underlay")
	}
	if d := n.Stats().Drops["mtu"]; d != 1 {
		t.Errorf("mtu drops %d (stats %+v)", d, n.Stats())
	}
}

// TestUDPSendsFromReceiveSocket: with TxFromRx the underlay opens no
// transmit sockets and sends out of its receive socket, so a peer sees its
// datagrams come from the bound port (ESP in UDP from 4500 to 4500, RFC
// 3948); GSO runs go out the same way.
func TestUDPSendsFromReceiveSocket(t *testing.T) {
	port := freeUDPPort(t)
	u, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddr("127.0.0.1"), Port: port, TxFromRx: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if got := u.TxPorts(); !slices.Equal(got, []uint16{port}) {
		t.Errorf("TxPorts = %v, want [%d]", got, port)
	}
	peer, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddr("127.0.0.1"), Port: freeUDPPort(t), NoGRO: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	to := peer.LocalAddr()
	run := bytes.Repeat([]byte{7}, 3*1000)
	msgs := []Message{{Buf: []byte("one"), Addr: to, Hash: 1}, {Buf: []byte("two"), Addr: to, Hash: 6}, {Buf: run, GSOSize: 1000, Addr: to, Hash: 3}}
	if n, err := u.WriteBatch(msgs); n != len(msgs) || err != nil {
		t.Fatalf("WriteBatch = %d, %v", n, err)
	}
	got := readN(t, peer, 5)
	for _, m := range got {
		if m.Addr != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port) {
			t.Errorf("datagram of %d bytes from %v, want from port %d", m.N, m.Addr, port)
		}
	}
	if err := u.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}
