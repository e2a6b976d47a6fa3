//go:build linux

package tunnel

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/internal/testenv"
	"github.com/vxmesh/vxmesh/packet"
)

// --- root: kernel UDP tunnel segmentation (KernelTunnel) ---

var (
	ktnlA = netip.MustParseAddr("192.0.2.11")
	ktnlB = netip.MustParseAddr("192.0.2.12")
)

// ktnlHosts builds two namespaces joined by a veth (ktnlA, ktnlB) and
// returns their names and the name of A's veth.
func ktnlHosts(t *testing.T) (nsA, nsB, vethA string) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip", "iproute2")
	id := fmt.Sprintf("%d%s", os.Getpid()%100000, strings.ReplaceAll(t.Name()[len(t.Name())-3:], "/", ""))
	nsA, nsB, vethA = "vxka"+id, "vxkb"+id, "vka"+id
	for _, ns := range []string{nsA, nsB} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	const macVethA, macVethB = "02:00:c0:00:02:0b", "02:00:c0:00:02:0c"
	run(t, "ip", "link", "add", vethA, "address", macVethA, "netns", nsA, "type", "veth",
		"peer", "name", "vkb"+id, "address", macVethB, "netns", nsB)
	// Permanent neighbour entries: they do not count against the ARP
	// table's limit, which many namespaces on one machine can exhaust
	// (a full table makes the first packets to a new neighbour fail).
	run(t, "ip", "-n", nsA, "neigh", "replace", ktnlB.String(), "lladdr", macVethB, "dev", vethA, "nud", "permanent")
	run(t, "ip", "-n", nsB, "neigh", "replace", ktnlA.String(), "lladdr", macVethA, "dev", "vkb"+id, "nud", "permanent")
	run(t, "ip", "-n", nsA, "addr", "add", ktnlA.String()+"/24", "dev", vethA)
	run(t, "ip", "-n", nsB, "addr", "add", ktnlB.String()+"/24", "dev", "vkb"+id)
	run(t, "ip", "-n", nsA, "link", "set", vethA, "up")
	run(t, "ip", "-n", nsB, "link", "set", "vkb"+id, "up")
	// Forwarding on in the namespace as a whole must not be what makes it
	// work: only the TAP gets it.
	run(t, "ip", "netns", "exec", nsA, "sysctl", "-qw", "net.ipv4.conf.all.forwarding=0", "net.ipv4.conf.all.rp_filter=0")
	return nsA, nsB, vethA
}

// openKernelTunnelIn opens a UDP underlay and a KernelTunnel on addr in
// namespace ns.
func openKernelTunnelIn(t *testing.T, ns string, addr netip.Addr) (*UDP, *KernelTunnel, error) {
	t.Helper()
	var u *UDP
	var k *KernelTunnel
	var err, kerr error
	inNetns(t, ns, func() {
		if u, err = ListenUDP(UDPConfig{Addr: addr}); err == nil {
			k, kerr = OpenKernelTunnel(KernelTunnelConfig{Local: addr, SourcePorts: u.TxPorts()})
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return u, k, kerr
}

// slotSink collects delivered frames with their offload slots.
type slotSink struct {
	mu            sync.Mutex
	frames, slots [][]byte
}

func (s *slotSink) input(bufs [][]byte, sizes []int, offset int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range bufs {
		s.frames = append(s.frames, bytes.Clone(bufs[i][offset:offset+sizes[i]]))
		s.slots = append(s.slots, bytes.Clone(bufs[i][:packet.OffloadLen]))
	}
}

// TestKernelTunnelCarriesSuperPacketWhole: over a veth that carries
// tunnel GSO packets (the default), a super-segment written by VTEP A
// through its KernelTunnel arrives at VTEP B in one datagram and is
// delivered byte-equal as one GSO frame (GSOTCPv4 or v6, partial
// checksum, GSOSize the MTU's MSS); neither side split or coalesced
// anything.
func TestKernelTunnelCarriesSuperPacketWhole(t *testing.T) {
	nsA, nsB, _ := ktnlHosts(t)
	t.Cleanup(func() {
		if t.Failed() {
			for _, ns := range []string{nsA, nsB} {
				out, _ := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "nstat -az | grep -v ' 0 '; ip -s link").CombinedOutput()
				t.Logf("%s:\n%s", ns, out)
			}
			out, _ := os.ReadFile("/proc/net/softnet_stat")
			t.Logf("softnet_stat (the second column counts input queue drops):\n%s", out)
		}
	})
	ua, k, err := openKernelTunnelIn(t, nsA, ktnlA)
	if err != nil {
		t.Fatalf("OpenKernelTunnel on this kernel: %v", err)
	}
	var ub *UDP
	inNetns(t, nsB, func() { ub, err = ListenUDP(UDPConfig{Addr: ktnlB}) })
	if err != nil {
		t.Fatal(err)
	}
	va, vb := New(Config{Underlay: ua, Super: k}), New(Config{Underlay: ub})
	defer va.Close()
	na, _ := va.AddSegment(testVNI, 1450)
	nb, _ := vb.AddSegment(testVNI, 1450)
	na.SetPeers([]netip.Addr{ktnlB})
	nb.SetPeers([]netip.Addr{ktnlA})
	na.SetRemotes(map[packet.MAC]netip.Addr{macB: ktnlB})
	s := &slotSink{}
	nb.SetInput(s.input)
	(&node{v: vb}).run(t)

	// A datagram may be lost: the kernel drops what arrives while its
	// per-CPU input queue is full (netdev_max_backlog), shared with every
	// namespace, which other tests' floods fill under load. A
	// super-segment not received within a second is sent again; every
	// send must go as one super-packet, and every one received must be
	// whole, in one datagram, byte-equal.
	var b []byte
	var origs [][]byte
	var sent, dgrams uint64
	deadline := time.Now().Add(20 * time.Second)
	for _, v6 := range []bool{false, true} {
		ipLen, typ := 20, uint8(packet.GSOTCPv4)
		if v6 {
			ipLen, typ = 40, packet.GSOTCPv6
		}
		mss := 1450 - ipLen - 32
		b = tsoBuffer(macB, macA, v6, 30000, mss)
		orig := bytes.Clone(b)
		origs = append(origs, orig[packet.Headroom:])
		got := -1 // the index of the super-segment among the frames received
		for got < 0 {
			if time.Now().After(deadline) {
				t.Fatalf("v6=%v: the super-segment did not arrive byte-equal in %d sends", v6, sent)
			}
			copy(b, orig)
			if n, err := na.Write([][]byte{b}, packet.Headroom); n != 1 || err != nil {
				t.Fatalf("v6=%v: Write = %d, %v", v6, n, err)
			}
			sent++
			dgrams += uint64((30000 + mss - 1) / mss)
			for wait := time.Now().Add(time.Second); got < 0 && time.Now().Before(wait); {
				time.Sleep(10 * time.Millisecond)
				s.mu.Lock()
				got = slices.IndexFunc(s.frames, func(f []byte) bool { return bytes.Equal(f, orig[packet.Headroom:]) })
				s.mu.Unlock()
			}
		}
		s.mu.Lock()
		o := packet.Offload(s.slots[got])
		s.mu.Unlock()
		if o.GSOType() != typ || !o.NeedsCsum() || o.GSOSize() != mss || o.CsumStart() != 14+ipLen || o.CsumOffset() != 16 {
			t.Errorf("v6=%v: slot %v, want GSO type %d, NeedsCsum at %d+16, GSOSize %d", v6, o, typ, 14+ipLen, mss)
		}
	}
	// B counts a batch's datagrams after it delivered its frames.
	var received int
	for {
		s.mu.Lock()
		received = len(s.frames)
		for i, f := range s.frames {
			if !slices.ContainsFunc(origs, func(o []byte) bool { return bytes.Equal(f, o) }) {
				t.Fatalf("frame %d received is not one of the super-segments sent", i)
			}
		}
		s.mu.Unlock()
		if vb.Stats().RxDatagrams == uint64(received) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if sa, sb := va.Stats(), vb.Stats(); sa.TxSupers != sent || sa.SuperFallbacks != 0 || sb.RxSupers != uint64(received) || sb.RxDatagrams != uint64(received) {
		t.Errorf("A sent %d super-packets (%d refused), B received %d whole in %d datagrams; want %d, 0, %d, %d",
			sa.TxSupers, sa.SuperFallbacks, sb.RxSupers, sb.RxDatagrams, sent, received, received)
	}
	if st := na.Stats(); st.TxPackets != sent || st.TxDatagrams != dgrams {
		t.Errorf("A's network sent %d frames in %d datagrams, want %d in %d", st.TxPackets, st.TxDatagrams, sent, dgrams)
	}
	if sent > 2 {
		t.Logf("%d sends for 2 super-segments (%d received)", sent, received)
	}

	// Writing a super-packet does not allocate. AllocsPerRun counts the
	// whole process's allocations: B's sink, which copies what it
	// receives, must not run meanwhile.
	nb.SetInput(func([][]byte, []int, int) {})
	f := b[packet.Headroom:]
	dst := netip.AddrPortFrom(ktnlB, packet.VXLANPort)
	if allocs := testing.AllocsPerRun(20, func() {
		if err := k.WriteSuper(f, packet.OffloadOf(b), testVNI, dst, 7); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Errorf("WriteSuper allocates %.1f times", allocs)
	}
}

// TestKernelTunnelSegmentsOnTheWire: where the underlay device has no
// segmentation or checksum offload (as a NIC without tunnel offloads), the
// kernel segments the super-packet itself: the receiver reads RFC 7348
// datagrams of our VNI, none over the MTU, with valid IPv4 and TCP
// checksums (and outer UDP checksums: the receiving kernel drops a bad
// one), consecutive sequence numbers and the whole payload.
func TestKernelTunnelSegmentsOnTheWire(t *testing.T) {
	nsA, nsB, vethA := ktnlHosts(t)
	testenv.RequireCommand(t, "ethtool", "ethtool")
	run(t, "ip", "netns", "exec", nsA, "ethtool", "-K", vethA, "tx", "off", "tx-udp_tnl-segmentation", "off",
		"tx-udp_tnl-csum-segmentation", "off", "gso", "off", "tso", "off")
	ua, k, err := openKernelTunnelIn(t, nsA, ktnlA)
	if err != nil {
		t.Fatalf("OpenKernelTunnel on this kernel: %v", err)
	}
	var ub *UDP
	inNetns(t, nsB, func() { ub, err = ListenUDP(UDPConfig{Addr: ktnlB, NoGRO: true}) })
	if err != nil {
		t.Fatal(err)
	}
	defer ub.Close()
	va := New(Config{Underlay: ua, Super: k})
	defer va.Close()
	na, _ := va.AddSegment(testVNI, 1450)
	na.SetPeers([]netip.Addr{ktnlB})
	na.SetRemotes(map[packet.MAC]netip.Addr{macB: ktnlB})

	const mss, payload = 1450 - 20 - 32, 30000
	b := tsoBuffer(macB, macA, false, payload, mss)
	orig := bytes.Clone(b)
	segs := (payload + mss - 1) / mss
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := exec.Command("ip", "netns", "exec", nsA, "sh", "-c", "nstat -az | grep -v ' 0 '; ip -s link; ip neigh; ethtool -k "+vethA+" | grep -E 'segm|check'").CombinedOutput()
			t.Logf("A:\n%s", out)
		}
	})
	// A datagram may be lost (the kernel's per-CPU input queue, see
	// TestKernelTunnelCarriesSuperPacketWhole): the super-packet is sent
	// again until one send's segments all arrive.
	rx := make(chan Message, 4*segs)
	go func() {
		msgs := make([]Message, 16)
		for i := range msgs {
			msgs[i].Buf = make([]byte, 2048)
		}
		for {
			k, err := ub.ReadBatch(msgs)
			if err != nil {
				close(rx)
				return
			}
			for _, m := range msgs[:k] {
				select {
				case rx <- Message{Buf: bytes.Clone(m.Buf[:m.N]), N: m.N, Addr: m.Addr}:
				default: // more than the test reads
				}
			}
		}
	}()
	var got, msgs []Message
	deadline := time.Now().Add(20 * time.Second)
	sent := uint64(0)
	for msgs == nil {
		if time.Now().After(deadline) {
			t.Fatalf("no send's %d segments all arrived in %d sends (%d datagrams)", segs, sent, len(got))
		}
		copy(b, orig)
		if n, err := na.Write([][]byte{b}, packet.Headroom); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		sent++
		for wait := time.After(2 * time.Second); msgs == nil; {
			select {
			case m := <-rx:
				got = append(got, m)
				msgs = lastWholeSend(got, segs)
				continue
			case <-wait:
			}
			break
		}
	}
	checkTCPSegments(t, msgs, 1450, orig[packet.Headroom+14+20+32:])
	if sent > 1 {
		t.Logf("%d sends, %d datagrams received", sent, len(got))
	}
	// The kernel's datagrams leave from one of the transmit sockets'
	// ports (RFC 7348's dynamic range), as the flow's others would.
	for _, m := range msgs {
		if p := m.Addr.Port(); !slices.Contains(ua.TxPorts(), p) || p < txPortMin {
			t.Fatalf("a segment's source port %d is not one of the transmit sockets' %v", p, ua.TxPorts())
		}
	}
	if sa := va.Stats(); sa.TxSupers != sent {
		t.Errorf("A sent %d super-packets through the kernel, want %d", sa.TxSupers, sent)
	}
}

// lastWholeSend returns the last n datagrams of got that are one send's
// TCP segments, from the first (sequence number 1000, as tsoBuffer
// numbers them) on, each following the one before; nil if there are none.
func lastWholeSend(got []Message, n int) []Message {
	seq := func(m Message) (uint32, int, bool) {
		x := packet.VXLAN(m.Buf)
		if !x.Valid() || len(x.Payload()) < 14+header.IPv4MinimumSize {
			return 0, 0, false
		}
		ip := header.IPv4(x.Payload()[14:])
		if !ip.IsValid(len(x.Payload())-14) || len(ip.Payload()) < header.TCPMinimumSize {
			return 0, 0, false
		}
		tcp := header.TCP(ip.Payload())
		return tcp.SequenceNumber(), len(tcp.Payload()), true
	}
	for i := len(got) - n; i >= 0; i-- {
		if s, _, ok := seq(got[i]); !ok || s != 1000 {
			continue
		}
		w := got[i : i+n]
		next := uint32(1000)
		for _, m := range w {
			s, l, ok := seq(m)
			if !ok || s != next {
				return nil
			}
			next += uint32(l)
		}
		return w
	}
	return nil
}

// TestKernelTunnelRefusedUnderStrictRPFilter: where the host's
// reverse-path filter would drop the TAP's frames, OpenKernelTunnel says
// so and leaves no device behind; the daemon then segments in userspace.
func TestKernelTunnelRefusedUnderStrictRPFilter(t *testing.T) {
	nsA, _, _ := ktnlHosts(t)
	run(t, "ip", "netns", "exec", nsA, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1")
	_, k, err := openKernelTunnelIn(t, nsA, ktnlA)
	if err == nil || !strings.Contains(err.Error(), "rp_filter") {
		if k != nil {
			k.Close()
		}
		t.Fatalf("OpenKernelTunnel = %v, want an rp_filter error", err)
	}
	if out, err := exec.Command("ip", "-n", nsA, "link", "show", "vxmesh-tnl").CombinedOutput(); err == nil {
		t.Errorf("device left behind:\n%s", out)
	}
	if _, err := OpenKernelTunnel(KernelTunnelConfig{Local: netip.MustParseAddr("2001:db8::1")}); err == nil || !strings.Contains(err.Error(), "not IPv4") {
		t.Errorf("OpenKernelTunnel on IPv6 = %v, want a not-IPv4 error", err)
	}
}
