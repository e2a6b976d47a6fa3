package tunnel

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
)

// A trace names the peer and the SA WriteFrames seals with, or the drop
// it counts, and seals, sends and counts nothing itself.
func TestTraceEncryptedSegment(t *testing.T) {
	mn := NewMemNetwork()
	a := newEncNode(t, mn, vtepA, vtepB, vtepC)
	macC := packet.MAC{0x02, 0x42, 0x0a, 0, 1, 4}
	if err := a.n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB, macC: vtepC}); err != nil {
		t.Fatal(err)
	}
	ab, _ := testSA(t, 0x1000ab, 1)
	if err := a.v.SetSAs([]OutboundSA{{vtepB, ab}}, nil); err != nil {
		t.Fatal(err)
	}
	tr := a.n.Trace(udpFrame(macB, macA, 1000, 80, 100))
	if tr.Drop != "" || !slices.Equal(tr.Peers, []netip.Addr{vtepB}) || tr.Flood || tr.Learned || tr.Cipher != esp.AES128GCM ||
		len(tr.SAs) != 1 || !tr.SAs[0].Found || tr.SAs[0].SPI != 0x1000ab {
		t.Fatalf("unicast to B: %+v", tr)
	}
	if tr := a.n.Trace(udpFrame(packet.Broadcast, macA, 1000, 80, 100)); tr.Drop != "" || !tr.Flood ||
		!slices.Equal(tr.Peers, []netip.Addr{vtepB, vtepC}) || len(tr.SAs) != 2 || tr.SAs[1].Found {
		t.Fatalf("broadcast: %+v", tr)
	}
	toC := udpFrame(macC, macA, 1000, 80, 100)
	if tr := a.n.Trace(toC); tr.Drop != "no-sa" {
		t.Fatalf("to C without an SA: %+v", tr)
	}
	big := udpFrame(macB, macA, 1000, 80, DefaultMTU-28+1)
	if tr := a.n.Trace(big); tr.Drop != "mtu" || tr.MTU != DefaultMTU {
		t.Fatalf("frame over the MTU: %+v", tr)
	}
	if ab.Stats().Seq != 0 || len(a.n.Stats().Drops) != 0 && a.n.Stats().Drops["no-sa"]+a.n.Stats().Drops["mtu"] != 0 {
		t.Fatalf("trace sealed or counted: seq %d, drops %v", ab.Stats().Seq, a.n.Stats().Drops)
	}
	// The real path agrees on both drops.
	a.n.Write(withHeadroom(toC, big), packet.Headroom)
	if d := a.n.Stats().Drops; d["no-sa"] != 1 || d["mtu"] != 1 {
		t.Fatalf("Write dropped %v", d)
	}
}
