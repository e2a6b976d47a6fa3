package vswitch

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/netdev/netdevtest/netstack"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

var (
	vtepHere = netip.MustParseAddr("192.0.2.1")
	vtepPeer = netip.MustParseAddr("192.0.2.2")
	macFar   = packet.MAC{0x02, 0x42, 10, 0, 1, 9} // an endpoint behind vtepPeer
)

// encryptedSegment returns an encrypted tunnel segment with vtepPeer as its
// only peer and an outbound SA to it.
func encryptedSegment(t *testing.T, cipher esp.Cipher) *tunnel.Segment {
	t.Helper()
	mn := tunnel.NewMemNetwork()
	u, err := mn.Listen(netip.AddrPortFrom(vtepHere, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	eu, err := mn.Listen(netip.AddrPortFrom(vtepHere, esp.Port))
	if err != nil {
		t.Fatal(err)
	}
	// The peer's underlays exist so that sends succeed.
	for _, port := range []uint16{packet.VXLANPort, esp.Port} {
		if _, err := mn.Listen(netip.AddrPortFrom(vtepPeer, port)); err != nil {
			t.Fatal(err)
		}
	}
	v := tunnel.New(tunnel.Config{Underlay: u, ESPUnderlay: eu})
	t.Cleanup(func() { v.Close() })
	n, err := v.AddSegment(42, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.SetCipher(cipher); err != nil {
		t.Fatal(err)
	}
	if err := n.SetPeers([]netip.Addr{vtepPeer}); err != nil {
		t.Fatal(err)
	}
	if cipher != 0 {
		out, err := esp.NewOutbound(0x1001, bytes.Repeat([]byte{7}, 16), []byte{1, 2, 3, 4})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.SetSAs([]tunnel.OutboundSA{{Peer: vtepPeer, SA: out}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// TestFloodedFrameStaysCleartextWhenTunnelKnowsMoreThanSwitch reproduces
// the control plane setting the tunnel's static remote before the switch's
// static entry: the switch floods a frame the tunnel would send to one
// peer only, and the local ports must still receive it in the clear.
func TestFloodedFrameStaysCleartextWhenTunnelKnowsMoreThanSwitch(t *testing.T) {
	s := New(Config{Name: "enc"})
	seg := encryptedSegment(t, esp.AES128GCM)
	if err := seg.SetRemotes(map[packet.MAC]netip.Addr{macFar: vtepPeer}); err != nil {
		t.Fatal(err)
	}
	addPort(t, s, seg, PortConfig{Name: "tunnel"}) // id 0: written first
	src := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	var local netdevtest.Recorder
	addPort(t, s, &local, PortConfig{Name: "b", MAC: macB, IP: ipB})

	frame := ipv4Frame(macFar, macA, ipA, netip.MustParseAddr("10.0.1.9"))
	input(src, frame)
	got := local.Frames()
	if len(got) != 1 {
		t.Fatalf("local port got %d frames, want the flooded one", len(got))
	}
	if !bytes.Equal(got[0], frame) {
		t.Errorf("local port got\n%x\nwant the cleartext frame\n%x", got[0], frame)
	}
	if st := seg.Stats(); st.TxPackets != 1 {
		t.Errorf("tunnel sent %d frames, want 1", st.TxPackets)
	}
}

// TestFloodedBufferStaysByteEqualForEveryPortKind floods frames (plain,
// with a partial checksum, a TCP super-segment) to one port of each kind
// next to a local port, and checks that the input buffer's frame and
// metadata slot are byte-equal afterwards and that the local port, written
// after the port under test, received the frame as it was sent.
func TestFloodedBufferStaysByteEqualForEveryPortKind(t *testing.T) {
	testFloodedBufferStaysByteEqual(t, []sinkKind{
		{"tap (netdevtest pipe)", func(t *testing.T) Sink {
			a, b := netdevtest.Pipe()
			t.Cleanup(func() { a.Close(); b.Close() })
			return a
		}},
		{"netstack (gVisor) container", func(t *testing.T) Sink {
			c, err := netstack.New("c", macC, netip.PrefixFrom(ipC, 24))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			return c.Device()
		}},
		{"tunnel clear", func(t *testing.T) Sink { return encryptedSegment(t, 0) }},
		{"tunnel esp", func(t *testing.T) Sink { return encryptedSegment(t, esp.AES128GCM) }},
		{"tunnel esp, static remote the switch lacks", func(t *testing.T) Sink {
			seg := encryptedSegment(t, esp.AES128GCM)
			if err := seg.SetRemotes(map[packet.MAC]netip.Addr{macFar: vtepPeer}); err != nil {
				t.Fatal(err)
			}
			return seg
		}},
	})
}

// sinkKind makes a port of one kind for a test.
type sinkKind struct {
	name string
	sink func(t *testing.T) Sink
}

func testFloodedBufferStaysByteEqual(t *testing.T, kinds []sinkKind) {
	plain := ipv4Frame(macFar, macA, ipA, ipC)
	csumSlot := make([]byte, packet.OffloadLen)
	packet.OffloadOf(csumSlot).Set(packet.OffloadNeedsCsum, packet.GSONone, 0, 0, 34, 6)
	tso, tsoSlot := tcpSuperSegment(macFar, macA, ipA, ipC, 4000, 1000)
	frames := []struct {
		name        string
		frame, slot []byte
	}{
		{"plain", plain, make([]byte, packet.OffloadLen)},
		{"partial checksum", plain, csumSlot},
		{"super-segment", tso, tsoSlot},
	}
	for _, k := range kinds {
		for _, fr := range frames {
			t.Run(k.name+"/"+fr.name, func(t *testing.T) {
				s := New(Config{Name: "flood"})
				addPort(t, s, k.sink(t), PortConfig{Name: "under-test"}) // id 0: written first
				src := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA})
				var local netdevtest.Recorder
				addPort(t, s, &local, PortConfig{Name: "b", MAC: macB, IP: ipB})

				bufs, sizes := batchWithSlots([][]byte{fr.frame}, [][]byte{fr.slot})
				src.Input(bufs, sizes, off)
				if got := bufs[0][:packet.OffloadLen]; !bytes.Equal(got, fr.slot) {
					t.Errorf("slot changed: % x, was % x", got, fr.slot)
				}
				if got := bufs[0][off : off+sizes[0]]; !bytes.Equal(got, fr.frame) {
					t.Errorf("frame changed:\n%x\nwas\n%x", got, fr.frame)
				}
				if got := local.Frames(); len(got) != 1 || !bytes.Equal(got[0], fr.frame) {
					t.Errorf("the local port got %d frames, want the frame unchanged", len(got))
				}
				if st := portStats(s, "under-test"); st.TxPackets != 1 {
					t.Errorf("the port under test took %d frames, want 1 (drops %v)", st.TxPackets, st.Drops)
				}
			})
		}
	}
}
