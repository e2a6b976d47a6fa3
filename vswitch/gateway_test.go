package vswitch

import (
	"testing"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

// TestGatewayPort checks the anycast rules of the gateway port: it gets
// frames to the gateway MAC from local endpoints only, never from the
// tunnel; its frames reach local endpoints only, never the tunnel; it is
// not flooded to; and without it the switch drops frames to the gateway
// MAC even when it learned that MAC behind the tunnel.
func TestGatewayPort(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	a, tun, gw := &netdevtest.Recorder{}, &netdevtest.Recorder{}, &netdevtest.Recorder{}
	ra := addPort(t, s, a, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	rt := addPort(t, s, tun, PortConfig{Name: "tunnel"})

	// No gateway port yet: another host's gateway frame teaches the
	// switch the gateway MAC behind the tunnel; a local frame to the
	// gateway MAC must still not cross the tunnel.
	input(rt, ipv4Frame(macA, macGW, ipGW, ipA))
	a.Reset()
	input(ra, ipv4Frame(macGW, macA, ipA, ipB))
	if n := len(tun.Frames()); n != 0 {
		t.Fatalf("frame to the gateway MAC crossed the tunnel without a gateway port (%d frames)", n)
	}
	if got := s.Stats().Drops["no-route"]; got != 1 {
		t.Fatalf("no-route drops = %d, want 1", got)
	}

	rg, err := s.AddGateway(gw, "gateway")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddGateway(&netdevtest.Recorder{}, "gateway2"); err == nil {
		t.Fatal("second gateway port accepted")
	}
	input(ra, ipv4Frame(macGW, macA, ipA, ipB))
	if n := len(gw.Frames()); n != 1 {
		t.Fatalf("gateway port got %d frames from a local endpoint, want 1", n)
	}
	input(rt, ipv4Frame(macGW, macC, ipC, ipB))
	if n := len(gw.Frames()); n != 1 {
		t.Fatalf("gateway port got a frame from the tunnel")
	}
	// Broadcasts from endpoints are not flooded to the gateway port.
	input(ra, ipv4Frame(packet.Broadcast, macA, ipA, ipB))
	if n := len(gw.Frames()); n != 1 {
		t.Fatalf("gateway port got a flooded frame")
	}

	tun.Reset()
	a.Reset()
	input(rg, ipv4Frame(macA, macGW, ipGW, ipA))
	unknown := packet.MAC{0x02, 0x42, 10, 0, 1, 9}
	input(rg, ipv4Frame(unknown, macGW, ipGW, ipC)) // unknown: flooded locally only
	input(rg, ipv4Frame(macC, macGW, ipGW, ipC))    // learned behind the tunnel: refused
	input(rg, ipv4Frame(packet.Broadcast, macGW, ipGW, ipC))
	s.AddStatic(macB, ipB, rt)
	input(rg, ipv4Frame(macB, macGW, ipGW, ipB)) // remote endpoint: refused
	if n := len(a.Frames()); n != 3 {
		t.Errorf("local endpoint got %d frames from the gateway, want 3", n)
	}
	if n := len(tun.Frames()); n != 0 {
		t.Errorf("gateway frames crossed the tunnel: %d", n)
	}
	// ARP from the gateway for a local endpoint is answered by the switch.
	gw.Reset()
	input(rg, arpFrame(macGW, ipGW, ipA))
	if f := gw.Frames(); len(f) != 1 || packet.Ethernet(f[0]).Src() != macA {
		t.Errorf("gateway ARP for a local endpoint not answered: %d frames", len(f))
	}

	s.RemovePort(rg)
	gw.Reset()
	input(ra, ipv4Frame(macGW, macA, ipA, ipB))
	if len(gw.Frames()) != 0 || len(tun.Frames()) != 0 {
		t.Error("frame to the gateway MAC delivered after the gateway port left")
	}
	if _, err := s.AddGateway(gw, "gateway"); err != nil {
		t.Errorf("gateway port cannot come back: %v", err)
	}
}
