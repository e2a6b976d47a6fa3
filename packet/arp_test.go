package packet

import (
	"net/netip"
	"testing"
)

// arpRequest builds "who has 10.0.1.3? tell 10.0.1.2 (02:42:0a:00:01:02)".
func arpRequest() ARP {
	return ARP{
		0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01,
		0x02, 0x42, 0x0a, 0x00, 0x01, 0x02, 10, 0, 1, 2,
		0, 0, 0, 0, 0, 0, 10, 0, 1, 3,
	}
}

func TestARPView(t *testing.T) {
	a := arpRequest()
	if !a.Valid() {
		t.Fatal("request not valid")
	}
	asker := MAC{0x02, 0x42, 0x0a, 0x00, 0x01, 0x02}
	if a.Op() != ARPRequest || a.SenderMAC() != asker || a.SenderIP() != netip.MustParseAddr("10.0.1.2") ||
		!a.TargetMAC().IsZero() || a.TargetIP() != netip.MustParseAddr("10.0.1.3") {
		t.Fatalf("op %d sender %s/%s target %s/%s", a.Op(), a.SenderMAC(), a.SenderIP(), a.TargetMAC(), a.TargetIP())
	}
	owner := MAC{0x02, 0x42, 0x0a, 0x00, 0x01, 0x03}
	a.MakeReply(owner, a.TargetIP())
	if a.Op() != ARPReply || a.SenderMAC() != owner || a.SenderIP() != netip.MustParseAddr("10.0.1.3") ||
		a.TargetMAC() != asker || a.TargetIP() != netip.MustParseAddr("10.0.1.2") {
		t.Fatalf("reply: op %d sender %s/%s target %s/%s", a.Op(), a.SenderMAC(), a.SenderIP(), a.TargetMAC(), a.TargetIP())
	}
}

func TestARPInvalid(t *testing.T) {
	for i, mod := range []func(a ARP) ARP{
		func(a ARP) ARP { return a[:27] },
		func(a ARP) ARP { a[1] = 6; return a },    // hardware type
		func(a ARP) ARP { a[2] = 0x86; return a }, // protocol type
		func(a ARP) ARP { a[4] = 8; return a },    // hardware length
		func(a ARP) ARP { a[5] = 16; return a },   // protocol length
	} {
		if mod(arpRequest()).Valid() {
			t.Errorf("case %d: Valid() = true", i)
		}
	}
}
