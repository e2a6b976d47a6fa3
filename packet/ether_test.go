package packet

import (
	"bytes"
	"testing"
)

func TestEthernetView(t *testing.T) {
	f := Ethernet{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst
		0x02, 0x42, 0x0a, 0x00, 0x01, 0x02, // src
		0x08, 0x06, // ARP
		0xaa, 0xbb,
	}
	if !f.Valid() || Ethernet(f[:13]).Valid() {
		t.Fatal("Valid wrong for 16 and 13 bytes")
	}
	if f.Dst() != Broadcast || !f.Dst().IsMulticast() {
		t.Errorf("dst %s", f.Dst())
	}
	src := MAC{0x02, 0x42, 0x0a, 0x00, 0x01, 0x02}
	if f.Src() != src || f.Src().IsMulticast() || f.Src().IsZero() {
		t.Errorf("src %s", f.Src())
	}
	if f.EtherType() != EtherTypeARP || !bytes.Equal(f.Payload(), []byte{0xaa, 0xbb}) {
		t.Errorf("type %#04x payload %x", f.EtherType(), f.Payload())
	}
	f.SetDst(src)
	f.SetSrc(Broadcast)
	if f.Dst() != src || f.Src() != Broadcast {
		t.Errorf("after Set: dst %s src %s", f.Dst(), f.Src())
	}
	if got := src.String(); got != "02:42:0a:00:01:02" {
		t.Errorf("String() = %q", got)
	}
}

func TestParseMAC(t *testing.T) {
	m, err := ParseMAC("02:42:0A:00:01:02")
	if err != nil || m != (MAC{2, 0x42, 10, 0, 1, 2}) {
		t.Fatalf("ParseMAC = %s, %v", m, err)
	}
	for _, bad := range []string{"", "02:42:0a:00:01", "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", "zz:42:0a:00:01:02"} {
		if _, err := ParseMAC(bad); err == nil {
			t.Errorf("ParseMAC(%q) succeeded", bad)
		}
	}
	if !(MAC{}).IsZero() || !(MAC{0x01, 0, 0x5e, 0, 0, 1}).IsMulticast() {
		t.Error("IsZero/IsMulticast")
	}
}
