package packet

import (
	"bytes"
	"testing"
)

func TestVXLANView(t *testing.T) {
	b := bytes.Repeat([]byte{0xee}, VXLANHeaderLen+2)
	PutVXLAN(b, 0x123456)
	want := []byte{0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xee, 0xee}
	if !bytes.Equal(b, want) {
		t.Fatalf("PutVXLAN wrote % x, want % x", b, want)
	}
	v := VXLAN(b)
	if !v.Valid() || v.VNI() != 0x123456 || v.Flags() != VXLANFlagI || !bytes.Equal(v.Payload(), []byte{0xee, 0xee}) {
		t.Fatalf("valid %v vni %#x flags %#x payload % x", v.Valid(), v.VNI(), v.Flags(), v.Payload())
	}
	PutVXLAN(b, 0xff000001) // bits above 24 are dropped, reserved stays zero
	if v.VNI() != 1 || b[7] != 0 || b[1]|b[2]|b[3] != 0 {
		t.Fatalf("oversized vni: % x", b[:8])
	}
	// Reserved bits and other flags are ignored on receipt; I is required.
	v[1], v[7], v[0] = 0xff, 0xff, 0xff
	if !v.Valid() || v.VNI() != 1 {
		t.Fatalf("reserved bits set: valid %v vni %d", v.Valid(), v.VNI())
	}
	v[0] = 0xf7
	if v.Valid() {
		t.Fatal("valid without the I flag")
	}
	if VXLAN(want[:7]).Valid() {
		t.Fatal("7 bytes valid")
	}
}

func FuzzVXLAN(f *testing.F) {
	f.Add([]byte{0x08, 0, 0, 0, 0, 0x10, 0x01, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		v := VXLAN(b)
		if !v.Valid() {
			if len(b) >= VXLANHeaderLen && b[0]&VXLANFlagI != 0 {
				t.Fatal("header with the I flag not valid")
			}
			return
		}
		vni := v.VNI()
		if vni > VXLANMaxVNI || len(v.Payload()) != len(b)-VXLANHeaderLen {
			t.Fatalf("vni %#x payload %d of %d bytes", vni, len(v.Payload()), len(b))
		}
		orig := bytes.Clone(b)
		PutVXLAN(b, vni)
		if !v.Valid() || v.VNI() != vni || v.Flags() != VXLANFlagI || b[1]|b[2]|b[3]|b[7] != 0 {
			t.Fatalf("rewritten header % x", b[:VXLANHeaderLen])
		}
		if !bytes.Equal(b[VXLANHeaderLen:], orig[VXLANHeaderLen:]) {
			t.Fatal("PutVXLAN touched the payload")
		}
	})
}
