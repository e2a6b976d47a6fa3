package tunnel

import (
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

// TestSpoofedSourceAndLearning: a frame whose inner source MAC the cluster
// placed behind one VTEP is dropped when another VTEP sends it
// ("spoofed-src"); a member's frames teach a MAC no one has, an external
// VTEP's frames may move it, a member's may not; datagrams from this
// node's own address are dropped ("own-address").
func TestSpoofedSourceAndLearning(t *testing.T) {
	v, n := newVTEPA(t)
	if err := n.SetPeers([]netip.Addr{vtepA, vtepB, vtepC, vtepE}); err != nil {
		t.Fatal(err)
	}
	if err := n.SetExternal([]netip.Addr{vtepE}); err != nil {
		t.Fatal(err)
	}
	if err := n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB}); err != nil {
		t.Fatal(err)
	}
	var got []packet.MAC
	n.SetInput(func(bufs [][]byte, sizes []int, offset int) {
		for _, b := range bufs {
			got = append(got, packet.Ethernet(b[offset:]).Src())
		}
	})
	send := func(from netip.Addr, src packet.MAC) { receiveFrom(v, from, udpFrame(macA, src, 1, 2, 10)) }
	for _, tc := range []struct {
		what      string
		from      netip.Addr
		src       packet.MAC
		delivered bool
	}{
		{"member C claims B's endpoint", vtepC, macB, false},
		{"external VTEP claims B's endpoint", vtepE, macB, false},
		{"B sends from its endpoint", vtepB, macB, true},
		{"member C sends from an unknown MAC", vtepC, macX, true},
		{"own address", vtepA, macX, false},
	} {
		got = nil
		send(tc.from, tc.src)
		if (len(got) == 1) != tc.delivered {
			t.Errorf("%s: delivered %d frames, want delivered=%v", tc.what, len(got), tc.delivered)
		}
	}
	st := v.Stats()
	if d := st.Segments[0].Drops; d["spoofed-src"] != 2 || len(d) != 1 {
		t.Errorf("network drops %v, want 2 spoofed-src", d)
	}
	if st.Drops["own-address"] != 1 {
		t.Errorf("vtep drops %v, want 1 own-address", st.Drops)
	}
	if fdb := n.FDB(); len(fdb) != 2 || fdb[1].MAC != macX || fdb[1].VTEP != vtepC || fdb[1].Static {
		t.Fatalf("fdb %+v, want macX learned behind member C", fdb)
	}
	send(vtepE, macX) // moves it
	send(vtepC, macX) // does not move it back
	if fdb := n.FDB(); len(fdb) != 2 || fdb[1].MAC != macX || fdb[1].VTEP != vtepE || fdb[1].Static {
		t.Errorf("fdb %+v, want macX learned behind the external VTEP", fdb)
	}
	// A VTEP that may no longer send takes its learned MACs along.
	if err := n.SetPeers([]netip.Addr{vtepA, vtepB, vtepC}); err != nil {
		t.Fatal(err)
	}
	if fdb := n.FDB(); len(fdb) != 1 {
		t.Errorf("fdb %+v after the external VTEP left the peers", fdb)
	}
}

// TestLocalMACFromAVTEP: no VTEP, member or external, may send from one of
// this host's endpoints (SetLocals): the frame is dropped as
// "spoofed-src" and its source is not learned, and a MAC learned before it
// became local is forgotten.
func TestLocalMACFromAVTEP(t *testing.T) {
	v, n := newVTEPA(t)
	if err := n.SetPeers([]netip.Addr{vtepE}); err != nil {
		t.Fatal(err)
	}
	if err := n.SetExternal([]netip.Addr{vtepE}); err != nil {
		t.Fatal(err)
	}
	if err := n.SetMembers([]netip.Addr{vtepC}); err != nil {
		t.Fatal(err)
	}
	delivered := 0
	n.SetInput(func(bufs [][]byte, sizes []int, offset int) { delivered += len(bufs) })
	send := func(from netip.Addr, src packet.MAC) { receiveFrom(v, from, udpFrame(macB, src, 1, 2, 10)) }
	send(vtepC, macA) // learned behind member C: macA is nobody's yet
	if fdb := n.FDB(); len(fdb) != 1 || fdb[0].MAC != macA || fdb[0].VTEP != vtepC {
		t.Fatalf("fdb %+v, want macA learned behind C", fdb)
	}
	if err := n.SetLocals([]packet.MAC{macA}); err != nil {
		t.Fatal(err)
	}
	if fdb := n.FDB(); len(fdb) != 0 {
		t.Fatalf("fdb %+v after macA became local, want empty", fdb)
	}
	delivered = 0
	send(vtepC, macA)
	send(vtepE, macA)
	if delivered != 0 {
		t.Errorf("%d frames from this host's own MAC delivered, want 0", delivered)
	}
	if fdb := n.FDB(); len(fdb) != 0 {
		t.Errorf("fdb %+v, want this host's MAC learned nowhere", fdb)
	}
	if d := n.Stats().Drops; d["spoofed-src"] != 2 {
		t.Errorf("drops %v, want 2 spoofed-src", d)
	}
	if err := n.SetLocals([]packet.MAC{packet.Broadcast}); err == nil {
		t.Error("SetLocals took the broadcast address")
	}
}

// newVTEPA returns a VTEP at vtepA on a fresh MemNetwork, with the segment
// testVNI; it is closed when the test ends.
func newVTEPA(t *testing.T) (*VTEP, *Segment) {
	t.Helper()
	u, err := NewMemNetwork().Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	v := New(Config{Underlay: u, LocalAddr: vtepA})
	t.Cleanup(func() { v.Close() })
	n, err := v.AddSegment(testVNI, 0)
	if err != nil {
		t.Fatal(err)
	}
	return v, n
}

// receiveFrom runs v's receive path on one datagram carrying frame in
// testVNI from the VTEP at from, as the receive loop would.
func receiveFrom(v *VTEP, from netip.Addr, frame []byte) {
	msgs := v.rx.msgs[:1]
	msgs[0].N = copy(msgs[0].Buf, vxlanDatagram(testVNI, frame))
	msgs[0].GSOSize = 0
	msgs[0].Addr = netip.AddrPortFrom(from, MemTxPortBase)
	v.receive(&v.rx, msgs, false)
}
