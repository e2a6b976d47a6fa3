package gateway

import (
	"net/netip"
	"testing"
)

// EgressVerdict answers what the forwarders decide, and counts nothing.
func TestEgressVerdict(t *testing.T) {
	src := netip.AddrPortFrom(ctrAddr.Addr(), 40000)
	out := Flow{Proto: 6, Src: src, Dst: netip.MustParseAddrPort("192.0.2.7:443")}
	open := newHarness(t, false, EgressConfig{})
	open.eg.SetOverlay([]netip.Prefix{netip.MustParsePrefix("10.99.0.0/16")})
	for _, tc := range []struct {
		f    Flow
		want string
	}{
		{out, ""},
		{Flow{Proto: 6, Src: src, Dst: netip.MustParseAddrPort("10.99.0.5:80")}, RefuseOverlay},
		{Flow{Proto: 6, Src: src, Dst: netip.AddrPortFrom(gwAddr.Addr(), 80)}, RefuseLocal},
	} {
		if got := open.gw.EgressVerdict(tc.f); got != tc.want {
			t.Fatalf("%v: %q, want %q", tc.f.Dst, got, tc.want)
		}
	}
	if got := newHarness(t, true, EgressConfig{}).gw.EgressVerdict(out); got != RefuseInternal {
		t.Fatalf("internal network: %q", got)
	}
	if st := open.eg.Stats(); st.Total != 0 || len(st.Refused) != 0 {
		t.Fatalf("verdicts were counted: %+v", st)
	}
	g, err := New(Config{Name: "x", Addr: gwAddr, MAC: gwMAC, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got := g.EgressVerdict(out); got != NoEgress {
		t.Fatalf("no egress: %q", got)
	}
}
