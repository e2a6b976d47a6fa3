package gateway

import (
	"net/netip"
	"slices"
	"strings"
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

// FuzzParsePublish checks that every accepted publish spec is valid and
// round-trips through String, and that errors name the spec.
func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{"8080:80", "127.0.0.1:8080:80/udp", "0.0.0.0:53:53/udp", "1:65535/tcp", "::1:80:80", "80:80/sctp", "080:0080", "+1:2", "65536:1", ":80", "1.2.3.4:5:6:7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePublish(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "publish ") {
				t.Fatalf("error %q does not name the spec", err)
			}
			return
		}
		if p.HostPort == 0 || p.Port == 0 || (p.Proto != "tcp" && p.Proto != "udp") || p.HostIP.IsValid() && (!p.HostIP.Is4() || p.HostIP.IsUnspecified()) {
			t.Fatalf("ParsePublish(%q) = %+v: invalid result", s, p)
		}
		q, err := ParsePublish(p.String())
		if err != nil || q != p {
			t.Fatalf("round trip of %q: %+v -> %q -> %+v, %v", s, p, p.String(), q, err)
		}
	})
}
