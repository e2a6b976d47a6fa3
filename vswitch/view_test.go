package vswitch

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

// merged is v with its overlays merged into its maps (what buildView
// makes).
func (v *view) merged() *view {
	out := *v
	if len(v.fdbAdd)+len(v.arpAdd) > 0 {
		out.fdb, out.arp = maps.Clone(v.fdb), maps.Clone(v.arp)
		maps.Copy(out.fdb, v.fdbAdd)
		maps.Copy(out.arp, v.arpAdd)
	}
	out.fdbAdd, out.arpAdd = nil, nil
	return &out
}

// checkLookups checks that the data path's look-ups in got (port,
// arpMAC) answer what want's maps hold, for every entry of either.
func checkLookups(t *testing.T, got, want *view) {
	t.Helper()
	for _, v := range []*view{got, want} {
		for _, m := range []map[packet.MAC]*Port{v.fdb, v.fdbAdd} {
			for mac := range m {
				if got.port(mac) != want.fdb[mac] {
					t.Fatalf("port(%s) = %v, want %v", mac, got.port(mac), want.fdb[mac])
				}
			}
		}
		for _, m := range []map[netip.Addr]packet.MAC{v.arp, v.arpAdd} {
			for ip := range m {
				mac, ok := got.arpMAC(ip)
				if w, wok := want.arp[ip]; mac != w || ok != wok {
					t.Fatalf("arpMAC(%s) = %s, %v; want %s, %v", ip, mac, ok, w, wok)
				}
			}
		}
	}
}

// TestOverlaysStaySmall adds ports one by one to a switch and checks after
// each that the view equals the one built whole, answers the same
// look-ups, and that the entries kept apart from its maps (copied at
// every add) stay within maxOverlay: an add costs O(sqrt ports), not a
// copy of every entry.
func TestOverlaysStaySmall(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	merges := 0
	for i := range 600 {
		mac := packet.MAC{0x02, 0x42, 10, 1, byte(i >> 8), byte(i)}
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		addPort(t, s, discard{}, PortConfig{Name: fmt.Sprintf("p%d", i), MAC: mac, IP: ip})
		s.mu.Lock()
		got, want := s.view.Load(), s.buildView()
		s.mu.Unlock()
		checkLookups(t, got, want)
		if !reflect.DeepEqual(got.merged(), want) {
			t.Fatalf("port %d: the view differs from the one built whole", i)
		}
		if n := len(got.fdbAdd); n > maxOverlay(len(got.fdb)) {
			t.Fatalf("port %d: %d entries apart from the %d of the map, more than %d", i, n, len(got.fdb), maxOverlay(len(got.fdb)))
		}
		if len(got.fdbAdd) == 1 {
			merges++
		}
	}
	if merges < 5 {
		t.Fatalf("%d merges in 600 adds: the overlays were not merged as they grew", merges)
	}
}

// TestDerivedViewEqualsBuilt makes random changes to a switch (ports
// added, some under HoldViews, and removed; static and remote-gateway
// entries; the gateway port; the host identity; MACs and addresses from
// small pools, so that some changes fail) and checks after each that the
// view the data path reads, derived from the last one when only ports
// were added, equals the view built from every port and entry.
func TestDerivedViewEqualsBuilt(t *testing.T) {
	derived := 0
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 9))
		s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
		tun, err := s.AddPort(&netdevtest.Recorder{}, PortConfig{Name: "vxlan"})
		if err != nil {
			t.Fatal(err)
		}
		ports := map[string]*Port{}
		var release func()
		pick := func() (packet.MAC, netip.Addr) {
			n := byte(2 + rng.IntN(12))
			return packet.MAC{0x02, 0x42, 10, 0, 1, n}, netip.AddrFrom4([4]byte{10, 0, 1, byte(2 + rng.IntN(12))})
		}
		for step := range 300 {
			mac, ip := pick()
			name := fmt.Sprintf("p%d", rng.IntN(16))
			switch r := rng.IntN(30); {
			case r < 12:
				if p, err := s.AddPort(&netdevtest.Recorder{}, PortConfig{Name: name, MAC: mac, IP: ip, Security: true}); err == nil {
					ports[name] = p
				}
			case r < 18:
				if p := ports[name]; p != nil {
					s.RemovePort(p)
					delete(ports, name)
				}
			case r < 20:
				s.AddStatic(mac, ip, tun)
			case r < 21:
				s.AddRemoteGateway(mac, ip, tun)
			case r < 22:
				s.RemoveStatic(mac)
			case r < 23:
				if p, err := s.AddGateway(&netdevtest.Recorder{}, "gw"); err == nil {
					ports["gw"] = p
				}
			case r < 24:
				s.SetGatewayHost(ip, mac)
			case r < 25:
				s.SetGatewayHost(netip.Addr{}, packet.MAC{})
			case r < 28:
				if release == nil {
					release = s.HoldViews()
				}
			default:
				if release != nil {
					release()
					release = nil
				}
			}
			if release != nil {
				continue // the view is the one from before the hold
			}
			s.mu.Lock()
			got, want := s.view.Load(), s.buildView()
			s.mu.Unlock()
			checkLookups(t, got, want)
			if got := got.merged(); !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d step %d: the published view differs from the one built whole\n got %+v\nwant %+v", seed, step, got, want)
			}
		}
		s.mu.Lock()
		derived += s.derivedViews
		s.mu.Unlock()
	}
	if derived == 0 {
		t.Fatal("no view was derived: the test checked only whole builds")
	}
	t.Logf("%d views derived", derived)
}
