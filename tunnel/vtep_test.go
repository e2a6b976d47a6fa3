package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

func TestEncapDecapRoundTrip(t *testing.T) {
	mn := NewMemNetwork()
	a := newNode(t, mn, vtepA, nil, vtepB)
	b := newNode(t, mn, vtepB, nil, vtepA)
	a.run(t)
	b.run(t)
	if err := a.n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB}); err != nil {
		t.Fatal(err)
	}
	f1 := udpFrame(macB, macA, 1000, 53, 100)
	f2 := udpFrame(packet.Broadcast, macA, 1001, 67, 300)
	bufs := withHeadroom(f1, f2)
	if n, err := a.n.Write(bufs, packet.Headroom); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	// The frame bytes are untouched; the header went into the headroom.
	if !bytes.Equal(bufs[0][packet.Headroom:], f1) || !bytes.Equal(bufs[1][packet.Headroom:], f2) {
		t.Fatal("Write modified the frame")
	}
	got := b.sink.wait(t, 2)
	if !bytes.Equal(got[0], f1) || !bytes.Equal(got[1], f2) {
		t.Fatalf("b received\n% x\n% x", got[0], got[1])
	}
	// Reverse direction: b has no static entry for macA but learned it
	// behind a from the frames above, so it sends there without a flood.
	if n, err := b.n.Write(withHeadroom(udpFrame(macA, macB, 53, 1000, 10)), packet.Headroom); n != 1 || err != nil {
		t.Fatalf("b.Write = %d, %v", n, err)
	}
	if got := a.sink.wait(t, 1); packet.Ethernet(got[0]).Src() != macB {
		t.Fatalf("a received from %s", packet.Ethernet(got[0]).Src())
	}
	as, bs := a.n.Stats(), b.n.Stats()
	if as.TxPackets != 2 || as.TxDatagrams != 2 || as.Flooded != 1 || as.RxPackets != 1 {
		t.Errorf("a stats %+v", as)
	}
	if bs.RxPackets != 2 || bs.RxBytes != uint64(len(f1)+len(f2)) || len(bs.Drops) != 0 || bs.Flooded != 0 {
		t.Errorf("b stats %+v", bs)
	}
	if len(as.Peers) != 1 || as.Peers[0].Addr != vtepB || as.Peers[0].TxPackets != 2 || as.Peers[0].RxPackets != 1 {
		t.Errorf("a peers %+v", as.Peers)
	}
	if fdb := b.n.FDB(); len(fdb) != 1 || fdb[0].MAC != macA || fdb[0].VTEP != vtepA || fdb[0].Static {
		t.Errorf("b fdb %+v, want macA learned behind a", fdb)
	}
	if fdb := a.n.FDB(); len(fdb) != 1 || !fdb[0].Static || fdb[0].MAC != macB { // static wins over learning
		t.Errorf("a fdb %+v", fdb)
	}
}

func TestBytesOnTheWire(t *testing.T) {
	mn := NewMemNetwork()
	a := newNode(t, mn, vtepA, nil, vtepE)
	e := newRaw(t, mn, vtepE)
	f := udpFrame(packet.Broadcast, macA, 1, 2, 20)
	bufs := withHeadroom(f)
	bufs[0][packet.Headroom-8] = 0xff // stale headroom must be overwritten
	if _, err := a.n.Write(bufs, packet.Headroom); err != nil {
		t.Fatal(err)
	}
	m := e.recv(t, 1)[0]
	want := append([]byte{0x08, 0, 0, 0, 0x00, 0x10, 0x01, 0x00}, f...) // VNI 4097 = 0x001001
	if !bytes.Equal(m.Buf, want) {
		t.Fatalf("datagram\n% x\nwant\n% x", m.Buf, want)
	}
	if m.Addr.Addr() != vtepA || m.Addr.Port() < MemTxPortBase || m.Addr.Port() >= MemTxPortBase+MemTxPorts {
		t.Fatalf("source %s", m.Addr)
	}
	// The datagram was addressed to the data port (the raw endpoint listens
	// on 4789 only); a VTEP with another data port reaches nobody there.
	v2u, _ := mn.Listen(netip.AddrPortFrom(vtepC, 4789))
	v2 := New(Config{Underlay: v2u, DataPort: 8472})
	n2, _ := v2.AddSegment(1, 0)
	n2.SetPeers([]netip.Addr{vtepE})
	lost := mn.Lost()
	n2.Write(withHeadroom(f), packet.Headroom)
	if mn.Lost() != lost+1 || e.pending() != 0 {
		t.Fatalf("datagram to port 8472 reached the 4789 listener")
	}
}

func TestFloodReplicatesToEveryPeerOnce(t *testing.T) {
	mn := NewMemNetwork()
	peers := []netip.Addr{vtepB, vtepC, vtepE}
	a := newNode(t, mn, vtepA, nil, peers...)
	raws := []*raw{newRaw(t, mn, vtepB), newRaw(t, mn, vtepC), newRaw(t, mn, vtepE)}
	stranger := newRaw(t, mn, netip.MustParseAddr("192.168.50.200"))
	frames := [][]byte{
		udpFrame(packet.Broadcast, macA, 1, 2, 10),
		udpFrame(packet.MAC{0x01, 0x00, 0x5e, 0, 0, 1}, macA, 1, 2, 10), // multicast
		udpFrame(macB, macA, 1, 2, 10),                                  // unknown unicast
	}
	if n, err := a.n.Write(withHeadroom(frames...), packet.Headroom); n != 3 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	for i, r := range raws {
		got := r.recv(t, 3)
		for j, m := range got {
			if !bytes.Equal(m.Buf[8:], frames[j]) {
				t.Errorf("peer %s frame %d differs", peers[i], j)
			}
		}
		if r.pending() != 0 {
			t.Errorf("peer %s got extra datagrams", peers[i])
		}
	}
	if stranger.pending() != 0 {
		t.Error("a host that is not a peer received a flooded frame")
	}
	st := a.n.Stats()
	if st.TxPackets != 3 || st.TxDatagrams != 9 || st.Flooded != 3 {
		t.Errorf("stats %+v", st)
	}
	for _, p := range st.Peers {
		if p.TxPackets != 3 {
			t.Errorf("peer %s tx %d", p.Addr, p.TxPackets)
		}
	}
	// With no peers, a flood has nowhere to go: nothing to do, not an
	// error and not a drop, counted apart from the frames sent.
	a.n.SetPeers(nil)
	if n, err := a.n.Write(withHeadroom(frames[0]), packet.Headroom); n != 1 || err != nil {
		t.Fatalf("Write without peers = %d, %v; want 1 (taken), no error", n, err)
	}
	if st := a.n.Stats(); st.FloodNoPeers != 1 || len(st.Drops) != 0 || st.TxPackets != 3 {
		t.Errorf("flood-no-peers %d, drops %v, tx %d; want 1, none, 3", st.FloodNoPeers, st.Drops, st.TxPackets)
	}
}

func TestReceiveDropsAreCounted(t *testing.T) {
	mn := NewMemNetwork()
	a := newNode(t, mn, vtepA, nil, vtepB)
	a.run(t)
	b := newRaw(t, mn, vtepB)
	stranger := newRaw(t, mn, netip.MustParseAddr("192.168.50.200"))
	good := udpFrame(macA, macB, 1, 2, 10)
	noI := vxlanDatagram(testVNI, good)
	noI[0] = 0
	mcastSrc := vxlanDatagram(testVNI, udpFrame(macA, packet.Broadcast, 1, 2, 10))
	b.send(t, vtepA, 0,
		vxlanDatagram(testVNI+1, good), // unknown VNI
		noI,                            // malformed: I flag clear
		vxlanDatagram(testVNI, good[:13]),
		mcastSrc, // malformed inner source
		vxlanDatagram(testVNI, good),
	)
	stranger.send(t, vtepA, 0, vxlanDatagram(testVNI, good)) // unknown peer
	a.sink.wait(t, 1)
	waitCount(t, "received datagrams", func() uint64 { return a.v.Stats().RxDatagrams }, 6)
	vs := a.v.Stats()
	ns := vs.Segments[0]
	if vs.RxDatagrams != 6 || vs.Drops["unknown-vni"] != 1 || vs.Drops["malformed"] != 2 {
		t.Errorf("vtep stats %+v", vs)
	}
	if ns.Drops["unknown-peer"] != 1 || ns.Drops["malformed"] != 1 || ns.RxPackets != 1 {
		t.Errorf("network stats %+v", ns)
	}
	if a.sink.count() != 1 {
		t.Errorf("delivered %d frames", a.sink.count())
	}
	// Nothing is learned from a stranger or from dropped frames; the
	// peer's good frame teaches its source, which no static entry names.
	if fdb := a.n.FDB(); len(fdb) != 1 || fdb[0].MAC != macB || fdb[0].VTEP != vtepB || fdb[0].Static {
		t.Errorf("fdb %+v, want macB learned behind %s only", fdb, vtepB)
	}
}

// TestMemberBeforeItIsAPeer: a cluster member that is not (yet) a peer of
// the network (its first endpoint's record has not arrived) is heard, the
// replies to its endpoint go to it alone, and its endpoint's static entry
// takes over when it arrives; a host that is no member stays unheard.
func TestMemberBeforeItIsAPeer(t *testing.T) {
	mn := NewMemNetwork()
	a := newNode(t, mn, vtepA, nil, vtepC)
	b := newRaw(t, mn, vtepB)
	c := newRaw(t, mn, vtepC)
	first := vxlanDatagram(testVNI, udpFrame(macA, macB, 5, 6, 10))
	b.send(t, vtepA, 0, first)
	if err := a.v.receiveOnce(); err != nil {
		t.Fatal(err)
	}
	if d := a.n.Stats().Drops["unknown-peer"]; d != 1 || a.sink.count() != 0 {
		t.Fatalf("before SetMembers: unknown-peer %d, delivered %d; want 1, 0", d, a.sink.count())
	}
	vtepD := netip.MustParseAddr("192.168.50.4") // a member that never sends
	d := newRaw(t, mn, vtepD)
	if err := a.n.SetMembers([]netip.Addr{vtepB, vtepC, vtepD}); err != nil {
		t.Fatal(err)
	}
	b.send(t, vtepA, 0, first)
	if err := a.v.receiveOnce(); err != nil {
		t.Fatal(err)
	}
	a.sink.wait(t, 1)
	if fdb := a.n.FDB(); len(fdb) != 1 || fdb[0].MAC != macB || fdb[0].VTEP != vtepB || fdb[0].Static {
		t.Fatalf("fdb %+v, want macB learned behind the member", fdb)
	}
	// The reply goes to b alone; a broadcast (the container's ARP for
	// the new endpoint's address) goes to the peers and to b, which was
	// heard, not to d.
	a.n.Write(withHeadroom(udpFrame(macB, macA, 6, 5, 10)), packet.Headroom)
	b.recv(t, 1)
	if c.pending() != 0 {
		t.Fatal("the reply to a member's endpoint was flooded")
	}
	a.n.Write(withHeadroom(udpFrame(packet.Broadcast, macA, 6, 5, 10)), packet.Headroom)
	c.recv(t, 1)
	b.recv(t, 1)
	if d.pending() != 0 {
		t.Fatal("a member that was never heard got a flooded frame")
	}
	// The record arrives: b is a peer with a static entry for macB.
	if err := a.n.SetPeers([]netip.Addr{vtepB, vtepC}); err != nil {
		t.Fatal(err)
	}
	if err := a.n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB}); err != nil {
		t.Fatal(err)
	}
	if fdb := a.n.FDB(); len(fdb) != 1 || !fdb[0].Static {
		t.Fatalf("fdb %+v, want the static entry only", fdb)
	}
	// A host that leaves the cluster is unheard again and its learned
	// MACs go with it.
	if err := a.n.SetPeers([]netip.Addr{vtepC}); err != nil {
		t.Fatal(err)
	}
	if err := a.n.SetRemotes(nil); err != nil {
		t.Fatal(err)
	}
	b.send(t, vtepA, 0, vxlanDatagram(testVNI, udpFrame(macA, macX, 5, 6, 10)))
	if err := a.v.receiveOnce(); err != nil {
		t.Fatal(err)
	}
	if err := a.n.SetMembers([]netip.Addr{vtepC}); err != nil {
		t.Fatal(err)
	}
	if fdb := a.n.FDB(); len(fdb) != 0 {
		t.Fatalf("fdb %+v after the member left", fdb)
	}
	b.send(t, vtepA, 0, first)
	if err := a.v.receiveOnce(); err != nil {
		t.Fatal(err)
	}
	if d := a.n.Stats().Drops["unknown-peer"]; d != 2 || a.sink.count() != 2 {
		t.Fatalf("after the member left: unknown-peer %d, delivered %d; want 2, 2", d, a.sink.count())
	}
}

func TestLearningFromExternalVTEPAndAging(t *testing.T) {
	mn := NewMemNetwork()
	clk := newFakeClock()
	a := newNode(t, mn, vtepA, clk, vtepB, vtepE)
	b := newRaw(t, mn, vtepB)
	e := newRaw(t, mn, vtepE)
	// The external VTEP sends a frame from macX, which is not static.
	e.send(t, vtepA, 0, vxlanDatagram(testVNI, udpFrame(macA, macX, 5, 6, 10)))
	if err := a.v.receiveOnce(); err != nil {
		t.Fatal(err)
	}
	if fdb := a.n.FDB(); len(fdb) != 1 || fdb[0].MAC != macX || fdb[0].VTEP != vtepE || fdb[0].Static {
		t.Fatalf("fdb %+v", fdb)
	}
	// Frames to macX go to the external VTEP only.
	toX := withHeadroom(udpFrame(macX, macA, 6, 5, 10))
	a.n.Write(toX, packet.Headroom)
	e.recv(t, 1)
	if b.pending() != 0 {
		t.Fatal("a learned destination was flooded")
	}
	clk.Advance(200 * time.Second)
	if fdb := a.n.FDB(); len(fdb) != 1 || fdb[0].Age != 200*time.Second {
		t.Fatalf("fdb after 200s %+v", fdb)
	}
	// Traffic refreshes the entry.
	e.send(t, vtepA, 0, vxlanDatagram(testVNI, udpFrame(macA, macX, 5, 6, 10)))
	a.v.receiveOnce()
	clk.Advance(200 * time.Second)
	if fdb := a.n.FDB(); len(fdb) != 1 || fdb[0].Age != 200*time.Second {
		t.Fatalf("fdb after refresh %+v", fdb)
	}
	// 300s without traffic: forgotten, and frames to macX flood again.
	clk.Advance(101 * time.Second)
	if fdb := a.n.FDB(); len(fdb) != 0 {
		t.Fatalf("fdb after aging %+v", fdb)
	}
	a.n.Write(toX, packet.Headroom)
	e.recv(t, 1)
	b.recv(t, 1)
	// The receive loop's sweep removes the stale entry from the table.
	e.send(t, vtepA, 0, vxlanDatagram(testVNI, udpFrame(macA, packet.MAC{2, 0, 0, 0, 0, 0x55}, 5, 6, 10)))
	a.v.receiveOnce()
	if lt := a.n.learned; lt.Lookup(macX) != nil || lt.Len() != 1 {
		t.Fatalf("learned table after sweep: %d entries", lt.Len())
	}
	// A static entry wins over learning, and removing a peer forgets what
	// was learned behind it.
	a.n.SetRemotes(map[packet.MAC]netip.Addr{macX: vtepB})
	e.send(t, vtepA, 0, vxlanDatagram(testVNI, udpFrame(macA, macX, 5, 6, 10)))
	a.v.receiveOnce()
	if fdb := a.n.FDB(); len(fdb) != 2 || fdb[1].MAC != macX || !fdb[1].Static || fdb[1].VTEP != vtepB {
		t.Fatalf("fdb with static macX %+v", fdb)
	}
	a.n.SetPeers([]netip.Addr{vtepB})
	if fdb := a.n.FDB(); len(fdb) != 1 || !fdb[0].Static {
		t.Fatalf("fdb after removing the external peer %+v", fdb)
	}
}

func TestMTUDropsAreCounted(t *testing.T) {
	mn := NewMemNetwork()
	a := newNode(t, mn, vtepA, nil, vtepB)
	newRaw(t, mn, vtepB)
	big := udpFrame(packet.Broadcast, macA, 1, 2, DefaultMTU-28+1) // IP packet of MTU+1
	fits := udpFrame(packet.Broadcast, macA, 1, 2, DefaultMTU-28)
	if n, err := a.n.Write(withHeadroom(big, fits), packet.Headroom); n != 1 || err == nil {
		t.Fatalf("Write = %d, %v; want 1 and an error", n, err)
	}
	// The underlay path MTU is smaller than the network believes.
	mn.SetMTU(1400)
	n, err := a.n.Write(withHeadroom(fits), packet.Headroom)
	if n != 0 || !errors.Is(err, ErrMessageSize) {
		t.Fatalf("Write over the underlay MTU = %d, %v", n, err)
	}
	st := a.n.Stats()
	if st.Drops["mtu"] != 2 || st.TxPackets != 1 || st.Peers[0].TxDrops != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestUnderlayMTUDropIsLoggedOnce: datagrams the underlay refuses as over
// its path MTU (an underlay lowered below what the network's MTU needs)
// were only counted, so a connection that stalled across hosts had no
// cause in the log. The first such drop of a network is logged, once; a
// frame over the network's own MTU (a container's doing, refused before
// the underlay) is not.
func TestUnderlayMTUDropIsLoggedOnce(t *testing.T) {
	mn := NewMemNetwork()
	u, err := mn.Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	// A file, which the data path may write while the test reads it.
	logf, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	logs := func() string {
		b, _ := os.ReadFile(logf.Name())
		return string(b)
	}
	v := New(Config{Underlay: u, Logger: slog.New(slog.NewTextHandler(logf, nil))})
	defer v.Close()
	n, err := v.AddSegment(testVNI, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.SetPeers([]netip.Addr{vtepB}); err != nil {
		t.Fatal(err)
	}
	newRaw(t, mn, vtepB)
	fits := udpFrame(packet.Broadcast, macA, 1, 2, DefaultMTU-28)
	big := udpFrame(packet.Broadcast, macA, 1, 2, DefaultMTU-28+1)
	n.Write(withHeadroom(big), packet.Headroom)
	if strings.Contains(logs(), "too large for the underlay") {
		t.Fatalf("a frame over the network's MTU was logged as an underlay drop: %s", logs())
	}
	mn.SetMTU(1400)
	for range 3 {
		n.Write(withHeadroom(fits), packet.Headroom)
	}
	if got := strings.Count(logs(), "too large for the underlay"); got != 1 {
		t.Fatalf("%d log lines for 3 datagrams over the underlay MTU, want 1:\n%s", got, logs())
	}
	if want := fmt.Sprintf("vni=%d mtu=%d", testVNI, DefaultMTU); !strings.Contains(logs(), want) {
		t.Errorf("the line does not name %q:\n%s", want, logs())
	}
	if st := n.Stats(); st.Drops["mtu"] != 4 {
		t.Errorf("mtu drops %d, want 4", st.Drops["mtu"])
	}
}

func TestControlPlaneErrors(t *testing.T) {
	mn := NewMemNetwork()
	u, _ := mn.Listen(netip.AddrPortFrom(vtepA, 4789))
	v := New(Config{Underlay: u})
	if _, err := v.AddSegment(1<<24, 0); err == nil {
		t.Error("VNI 2^24 accepted")
	}
	if _, err := v.AddSegment(5, 20); err == nil {
		t.Error("mtu 20 accepted")
	}
	n, err := v.AddSegment(5, 9000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.AddSegment(5, 0); err == nil {
		t.Error("duplicate VNI accepted")
	}
	if err := n.SetPeers([]netip.Addr{{}}); err == nil {
		t.Error("invalid peer accepted")
	}
	if err := n.SetRemotes(map[packet.MAC]netip.Addr{packet.Broadcast: vtepB}); err == nil {
		t.Error("broadcast remote accepted")
	}
	if v.Segment(5) != n || len(v.Segments()) != 1 {
		t.Error("lookup")
	}
	v.RemoveSegment(5)
	v.RemoveSegment(5)
	if v.Segment(5) != nil {
		t.Error("still there")
	}
	if w, err := n.Write(withHeadroom(udpFrame(macB, macA, 1, 2, 3)), packet.Headroom); w != 0 || err == nil {
		t.Error("removed network accepted a frame")
	}
	if w, err := n.Write(withHeadroom(udpFrame(macB, macA, 1, 2, 3)), 4); w != 0 || err == nil {
		t.Error("offset 4 accepted")
	}
	v.Close()
	if _, err := v.AddSegment(6, 0); err == nil {
		t.Error("AddSegment after Close")
	}
}

func TestFlowHash(t *testing.T) {
	f := udpFrame(macB, macA, 1000, 53, 10)
	h := flowHash(f)
	g := bytes.Clone(f)
	g[50] = 0 // payload does not matter
	if flowHash(g) != h {
		t.Error("payload changed the hash")
	}
	seen := map[uint32]bool{}
	for p := range 64 {
		binary.BigEndian.PutUint16(g[34:], uint16(40000+p))
		seen[flowHash(g)%8] = true
	}
	if len(seen) < 6 {
		t.Errorf("64 flows used %d of 8 buckets", len(seen))
	}
	// Fragments keep the flow's hash without ports.
	frag := bytes.Clone(f)
	frag[20] = 0x20 // MF
	h1 := flowHash(frag)
	binary.BigEndian.PutUint16(frag[34:], 9999)
	if flowHash(frag) != h1 {
		t.Error("ports of a fragment were hashed")
	}
	// Short and odd frames do not panic.
	for _, b := range [][]byte{f[:14], f[:20], f[:34], f[:36]} {
		flowHash(b)
	}
}

// TestHeardMemberAgesOut: a member that was heard (a MAC learned behind
// it before it became a peer) gets the network's floods while the MAC is
// learned, and no more once it has aged out, without waiting for the peers
// to change.
func TestHeardMemberAgesOut(t *testing.T) {
	mn := NewMemNetwork()
	clk := newFakeClock()
	a := newNode(t, mn, vtepA, clk, vtepC)
	b := newRaw(t, mn, vtepB)
	c := newRaw(t, mn, vtepC)
	if err := a.n.SetMembers([]netip.Addr{vtepB, vtepC}); err != nil {
		t.Fatal(err)
	}
	b.send(t, vtepA, 0, vxlanDatagram(testVNI, udpFrame(macA, macB, 5, 6, 10)))
	if err := a.v.receiveOnce(); err != nil {
		t.Fatal(err)
	}
	bcast := withHeadroom(udpFrame(packet.Broadcast, macA, 6, 5, 10))
	a.n.Write(bcast, packet.Headroom)
	c.recv(t, 1)
	b.recv(t, 1)
	// macB ages out; the next datagram's batch sweeps (here one from
	// the peer C).
	clk.Advance(301 * time.Second)
	c.send(t, vtepA, 0, vxlanDatagram(testVNI, udpFrame(macA, macX, 5, 6, 10)))
	if err := a.v.receiveOnce(); err != nil {
		t.Fatal(err)
	}
	a.n.Write(bcast, packet.Headroom)
	c.recv(t, 1)
	if n := b.pending(); n != 0 {
		t.Fatalf("the member behind which nothing is learned any more got %d flooded frames", n)
	}
}

// When two peers' datagrams interleave in one batch, each peer's receive
// counters get exactly its own frames and bytes (a guard for any change
// that batches the counting).
func TestReceivePeerCountersInterleaved(t *testing.T) {
	g := newGROReceiver(t)
	n := g.v.Segment(testVNI)
	n.SetPeers([]netip.Addr{vtepA, vtepC})
	macC := packet.MAC{2, 0x42, 10, 0, 0, 0xc}
	from := []netip.Addr{vtepA, vtepA, vtepC, vtepA, vtepC, vtepC, vtepA}
	want := map[netip.Addr][2]uint64{}
	msgs := g.v.rx.msgs[:len(from)]
	for i, addr := range from {
		src := macA
		if addr == vtepC {
			src = macC
		}
		f := udpFrame(macB, src, uint16(1000+i), 53, 10*i+1)
		msgs[i].N = copy(msgs[i].Buf, vxlanDatagram(testVNI, f))
		msgs[i].GSOSize = 0
		msgs[i].Addr = netip.AddrPortFrom(addr, MemTxPortBase)
		w := want[addr]
		want[addr] = [2]uint64{w[0] + 1, w[1] + uint64(len(f))}
	}
	g.v.receive(&g.v.rx, msgs, false)
	if len(g.frames) != len(from) {
		t.Fatalf("%d frames delivered, want %d", len(g.frames), len(from))
	}
	st := n.Stats()
	if len(st.Peers) != 2 {
		t.Fatalf("peers %+v", st.Peers)
	}
	for _, p := range st.Peers {
		if w := want[p.Addr]; p.RxPackets != w[0] || p.RxBytes != w[1] {
			t.Errorf("peer %s: rx %d packets %d bytes, want %d, %d", p.Addr, p.RxPackets, p.RxBytes, w[0], w[1])
		}
	}
}
