package gateway

import (
	"net/netip"
	"slices"
	"testing"
)

// FuzzDecide feeds Decide what the stack hands a forwarder (any
// addresses, ports, protocol) and checks that an admitted flow comes from
// the network and never goes to the gateway, an overlay subnet or a
// non-unicast address, and that a refusal names a known reason.
func FuzzDecide(f *testing.F) {
	f.Add([]byte{10, 0, 1, 2}, uint16(40000), []byte{192, 0, 2, 10}, uint16(80), uint8(6), false)
	f.Add([]byte{10, 0, 1, 2}, uint16(40000), []byte{10, 0, 2, 5}, uint16(80), uint8(6), false)
	f.Add([]byte{10, 0, 1, 2}, uint16(5353), []byte{224, 0, 0, 251}, uint16(5353), uint8(17), false)
	f.Add([]byte{10, 0, 1, 2}, uint16(0), []byte{8, 8, 8, 8}, uint16(0), uint8(1), true)
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 1, 2}, uint16(1), []byte{127, 0, 0, 1}, uint16(1), uint8(17), false)
	p := Policy{
		Subnet: netip.MustParsePrefix("10.0.1.0/24"), Gateway: netip.MustParseAddr("10.0.1.1"),
		Overlay: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("10.0.2.0/24")},
	}
	reasons := []string{RefuseInternal, RefuseOverlay, RefuseLocal, RefuseAddress, RefuseSource}
	f.Fuzz(func(t *testing.T, src []byte, sport uint16, dst []byte, dport uint16, proto uint8, internal bool) {
		s, ok1 := netip.AddrFromSlice(src)
		d, ok2 := netip.AddrFromSlice(dst)
		if !ok1 || !ok2 {
			return
		}
		p.Internal = internal
		fl := Flow{Proto: proto, Src: netip.AddrPortFrom(s, sport), Dst: netip.AddrPortFrom(d, dport)}
		why := Decide(&p, fl)
		if why != "" {
			if !slices.Contains(reasons, why) {
				t.Fatalf("unknown reason %q", why)
			}
			return
		}
		d = d.Unmap()
		switch {
		case internal:
			t.Fatal("internal network egressed")
		case !p.Subnet.Contains(s.Unmap()):
			t.Fatalf("flow from %s outside the subnet admitted", s)
		case d == p.Gateway || !d.Is4() || d.IsLoopback() || d.IsMulticast() || d.IsUnspecified():
			t.Fatalf("flow to %s admitted", d)
		}
		for _, o := range p.Overlay {
			if o.Contains(d) {
				t.Fatalf("flow into overlay %s admitted", o)
			}
		}
	})
}
