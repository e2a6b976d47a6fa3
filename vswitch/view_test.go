package vswitch

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

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
			if !reflect.DeepEqual(got, want) {
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
