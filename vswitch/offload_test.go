package vswitch

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

// TestOffloadMetadataPassesThrough switches a frame with GSO metadata from
// one Pipe device to another: the metadata slot arrives unchanged with the
// frame (what TAP-to-TAP forwarding of super-segments relies on), and an
// ARP reply made by the switch has its slot cleared.
func TestOffloadMetadataPassesThrough(t *testing.T) {
	s := New(Config{Name: "n", GatewayIP: netip.MustParseAddr("10.0.0.1"), GatewayMAC: packet.MAC{2, 0, 0, 0, 0, 1}})
	macA, macB := packet.MAC{2, 0x42, 10, 0, 0, 2}, packet.MAC{2, 0x42, 10, 0, 0, 3}
	ipA, ipB := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	devA, ctrA := netdevtest.Pipe()
	devB, ctrB := netdevtest.Pipe()
	ra := addPort(t, s, devA, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(t, s, devB, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})

	// The container behind A sends a "super-segment" and an ARP request,
	// both with stale metadata in the slot for the ARP one.
	big, slot := tcpSuperSegment(macB, macA, ipA, ipB, 3*1398, 1398)
	w := make([]byte, packet.Headroom+len(big))
	copy(w, slot)
	copy(w[packet.Headroom:], big)
	arp := make([]byte, packet.Headroom)
	// Stale metadata (GSO metadata on an ARP frame would be dropped as
	// "gso-invalid").
	packet.OffloadOf(arp).Set(packet.OffloadNeedsCsum, packet.GSONone, 0, 0, 34, 16)
	arp = append(arp, arpFrame(macA, ipA, ipB)...)
	if n, err := ctrA.Write([][]byte{w, arp}, packet.Headroom); n != 2 || err != nil {
		t.Fatal(n, err)
	}
	b := packet.NewBatch(4)
	n, err := devA.Read(b.Bufs, b.Sizes, packet.Headroom)
	if n != 2 || err != nil {
		t.Fatal(n, err)
	}
	if !bytes.Equal(b.Bufs[0][:packet.OffloadLen], slot) {
		t.Fatalf("Pipe lost the slot: % x", b.Bufs[0][:packet.OffloadLen])
	}
	ra.Input(b.Bufs[:n], b.Sizes[:n], packet.Headroom)

	out := packet.NewBatch(4)
	if n, err := ctrB.Read(out.Bufs, out.Sizes, packet.Headroom); n != 1 || err != nil {
		t.Fatalf("B got %d frames, %v", n, err)
	}
	if !bytes.Equal(out.Bufs[0][:packet.OffloadLen], slot) || !bytes.Equal(out.Bufs[0][packet.Headroom:packet.Headroom+out.Sizes[0]], big) {
		t.Errorf("frame or metadata changed on the way: slot % x", out.Bufs[0][:packet.OffloadLen])
	}
	if n, err := ctrA.Read(out.Bufs, out.Sizes, packet.Headroom); n != 1 || err != nil {
		t.Fatalf("A got %d frames (the ARP reply), %v", n, err)
	}
	if !packet.OffloadOf(out.Bufs[0]).IsNone() {
		t.Errorf("ARP reply slot % x, want cleared", out.Bufs[0][:packet.OffloadLen])
	}
	if st := s.Stats(); st.ARPSuppressed != 1 || st.Forwarded != 1 || len(st.Drops) != 0 {
		t.Errorf("stats %+v", st)
	}
}
