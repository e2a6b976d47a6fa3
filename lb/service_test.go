package lb

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

func TestServiceValidate(t *testing.T) {
	good := func() Service {
		return Service{Name: "web", VIP: vip, Backends: []Backend{{IP: beIP(1), MAC: beMAC(1)}}}
	}
	for _, tc := range []struct {
		want string
		edit func(*Service)
	}{
		{"not a unicast IPv4", func(s *Service) { s.VIP = netip.MustParseAddr("fd00::1") }},
		{"unknown scheduler", func(s *Service) { s.Scheduler = 9 }},
		{"negative affinity", func(s *Service) { s.Affinity = -1 }},
		{"want a non-zero tcp or udp port", func(s *Service) { s.Ports = []Port{{Proto: 1, Port: 80}} }},
		{"listed twice", func(s *Service) { s.Ports = []Port{{Proto: 6, Port: 80}, {Proto: 6, Port: 80}} }},
		{"other than the VIP", func(s *Service) { s.Backends[0].IP = vip }},
		{"not a unicast address", func(s *Service) { s.Backends[0].MAC = packet.Broadcast }},
		{"weight", func(s *Service) { s.Backends[0].Weight = MaxWeight + 1 }},
		{"listed twice", func(s *Service) { s.Backends = append(s.Backends, s.Backends[0]) }},
	} {
		s := good()
		tc.edit(&s)
		_, err := NewSnapshot([]Service{s})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), `service "web"`) {
			t.Errorf("want an error naming service \"web\" and %q, got %v", tc.want, err)
		}
	}
	if _, err := NewSnapshot([]Service{good(), func() Service { s := good(); s.Name = "api"; return s }()}); err == nil ||
		!strings.Contains(err.Error(), "already used by service") {
		t.Errorf("duplicate VIP: %v", err)
	}
	if _, err := NewSnapshot([]Service{good()}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"", "rr", "wrr", "lc", "p2c", "maglev"} {
		if s, err := ParseScheduler(n); err != nil || (n != "" && s.String() != n) {
			t.Errorf("ParseScheduler(%q) = %v, %v", n, s, err)
		}
	}
	if _, err := ParseScheduler("sh"); err == nil {
		t.Error("ParseScheduler accepted sh")
	}
}
