package tunnel

import (
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

// FuzzDecap feeds arbitrary datagrams, from a peer or a stranger, to the
// receive path: it must not panic, and every datagram must be accounted
// for exactly once (delivered or dropped for one reason).
func FuzzDecap(f *testing.F) {
	f.Add(vxlanDatagram(testVNI, udpFrame(macA, macX, 1, 2, 10)), true)
	f.Add(vxlanDatagram(testVNI, udpFrame(macA, macX, 1, 2, 10)), false)
	f.Add(vxlanDatagram(7, udpFrame(macA, macX, 1, 2, 10)), true)
	f.Add([]byte{0x08, 0, 0, 0, 0, 0x10, 0x01, 0}, true)
	f.Add([]byte{}, true)
	mn := NewMemNetwork()
	u, _ := mn.Listen(netip.AddrPortFrom(vtepA, packet.VXLANPort))
	v := New(Config{Underlay: u, MaxLearned: 16})
	n, _ := v.AddSegment(testVNI, 0)
	n.SetPeers([]netip.Addr{vtepE})
	delivered := 0
	n.SetInput(func(bufs [][]byte, sizes []int, offset int) {
		for i := range bufs {
			if sizes[i] < packet.EthernetHeaderLen || offset+sizes[i] > len(bufs[i]) {
				panic("bad frame size delivered")
			}
		}
		delivered += len(bufs)
	})
	f.Fuzz(func(t *testing.T, d []byte, fromPeer bool) {
		before := n.learned.Len()
		m := &v.rx.msgs[0]
		m.N = len(d)
		copy(m.Buf, d)
		m.Addr = netip.AddrPortFrom(vtepE, 40000)
		if !fromPeer {
			m.Addr = netip.AddrPortFrom(vtepC, 40000)
		}
		v.receive(&v.rx, v.rx.msgs[:1], false)
		st := v.Stats()
		var drops uint64
		for _, c := range st.Drops {
			drops += c
		}
		for _, c := range st.Segments[0].Drops {
			drops += c
		}
		if st.RxDatagrams != drops+uint64(delivered) || st.Segments[0].RxPackets != uint64(delivered) {
			t.Fatalf("rx %d, dropped %d, delivered %d", st.RxDatagrams, drops, delivered)
		}
		if !fromPeer && n.learned.Len() > before {
			t.Fatal("learned from a stranger")
		}
		for _, e := range n.FDB() {
			if e.VTEP != vtepE {
				t.Fatalf("learned %s behind %s", e.MAC, e.VTEP)
			}
		}
	})
}
