package tunnel

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

// TestExternalVTEPChecksumsFinished: a Linux VTEP with checksum offload
// over a veth sends inner UDP/TCP checksums holding only the
// pseudo-header sum; frames from an external VTEP are delivered with the
// checksum finished (the container's kernel would drop them otherwise),
// while a member's frames are passed on untouched.
func TestExternalVTEPChecksumsFinished(t *testing.T) {
	v, n := newVTEPA(t)
	if err := n.SetPeers([]netip.Addr{vtepB, vtepE}); err != nil {
		t.Fatal(err)
	}
	if err := n.SetExternal([]netip.Addr{vtepE}); err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	n.SetInput(func(bufs [][]byte, sizes []int, offset int) {
		for i, b := range bufs {
			got = append(got, bytes.Clone(b[offset:offset+sizes[i]]))
		}
	})
	full := udpFrame(macA, macX, 5000, 53, 100)
	ip := packet.IPv4(full[packet.EthernetHeaderLen:])
	udp := ip[20:]
	pseudo := packet.PseudoHeaderSum(ip.Src(), ip.Dst(), packet.ProtoUDP, len(udp))
	binary.BigEndian.PutUint16(udp[6:], packet.Fold(packet.Sum(udp, pseudo)))
	partial := bytes.Clone(full)
	binary.BigEndian.PutUint16(partial[packet.EthernetHeaderLen+20+6:], ^packet.Fold(pseudo))

	receiveFrom(v, vtepE, partial)
	if len(got) != 1 || !bytes.Equal(got[0], full) {
		t.Fatalf("from the external VTEP: got %d frames, want one with the checksum finished", len(got))
	}
	if c := packet.Fold(packet.Sum(got[0][packet.EthernetHeaderLen+20:], pseudo)); c != 0 {
		t.Errorf("delivered UDP checksum does not verify (%#04x)", c)
	}
	got = nil
	fromB := bytes.Clone(partial)
	packet.Ethernet(fromB).SetSrc(macB)
	receiveFrom(v, vtepB, fromB)
	if len(got) != 1 || !bytes.Equal(got[0], fromB) {
		t.Errorf("from a member: got %d frames, want it passed on as sent", len(got))
	}
}
