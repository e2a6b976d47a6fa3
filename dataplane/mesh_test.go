package dataplane

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/netdev/netdevtest/netstack"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
	"github.com/vxmesh/vxmesh/vswitch"
)

// meshHosts are two data planes on one in-memory underlay: I (at local),
// an ingress host with no endpoint on the network, and H (at remoteB),
// whose container b (a netstack, listening on 8080) is the only backend
// of the service web (VIP ip(100), port 80 to 8080).
type meshHosts struct {
	i, h   *Dataplane
	ci, ch Config
	b      *netstack.Container
}

func newMeshHosts(t *testing.T) *meshHosts {
	t.Helper()
	mn := tunnel.NewMemNetwork()
	start := func(addr netip.Addr) *Dataplane {
		u, err := mn.Listen(netip.AddrPortFrom(addr, packet.VXLANPort))
		if err != nil {
			t.Fatal(err)
		}
		dp := New(Options{Tunnel: tunnel.Config{Underlay: u, LocalAddr: addr}})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); dp.Run(ctx) }()
		t.Cleanup(func() { cancel(); dp.Close(); <-done })
		return dp
	}
	m := &meshHosts{i: start(local), h: start(remoteB)}
	var err error
	if m.b, err = netstack.New("b", mac(3), netip.PrefixFrom(ip(3), 24)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.b.Close)
	m.b.SetDefaultRoute(ip(1))

	web := lb.Service{Name: "web", VIP: ip(100), Ports: []lb.Port{{Proto: packet.ProtoTCP, Port: 80, Target: 8080}},
		Backends: []lb.Backend{{IP: ip(3), MAC: mac(3)}}}
	base := testNetwork("web", 4096, 1)
	base.Subnet = netip.MustParsePrefix("10.0.1.0/24")
	base.Services = []lb.Service{web}
	gwI := Remote{MAC: mac(250), IP: ip(250), VTEP: local, Gateway: true}
	gwH := Remote{MAC: mac(251), IP: ip(251), VTEP: remoteB, Gateway: true}

	ni := base
	ni.GatewayHost, ni.GatewayHostMAC = gwI.IP, gwI.MAC
	ni.Remotes = []Remote{{MAC: mac(3), IP: ip(3), VTEP: remoteB}, gwH}
	ni.Peers = []netip.Addr{remoteB}
	nh := base
	nh.GatewayHost, nh.GatewayHostMAC = gwH.IP, gwH.MAC
	nh.Ports = []PortConfig{{Name: "b/eth0", Device: m.b.Device(), MAC: mac(3), IP: ip(3)}}
	nh.Remotes = []Remote{gwI}
	nh.Peers = []netip.Addr{local}
	m.ci, m.ch = Config{Networks: []NetworkConfig{ni}}, Config{Networks: []NetworkConfig{nh}}
	if err := m.i.Reconfig(m.ci); err != nil {
		t.Fatal(err)
	}
	if err := m.h.Reconfig(m.ch); err != nil {
		t.Fatal(err)
	}
	return m
}

// serveOnce accepts one connection on ln, sends back the client's address
// as the backend saw it, then echoes what it reads.
func serveOnce(t *testing.T, ln net.Listener) <-chan error {
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		if _, err := io.WriteString(c, c.RemoteAddr().String()+"\n"); err != nil {
			done <- err
			return
		}
		_, err = io.Copy(c, c)
		done <- err
	}()
	return done
}

// dialThrough dials the VIP from I's gateway with source src and returns
// the connection and the first line the backend sent (the address it
// saw).
func dialThrough(t *testing.T, m *meshHosts, src netip.AddrPort) (net.Conn, string) {
	t.Helper()
	g := m.i.Gateway("web")
	if g == nil {
		t.Fatal("I has no gateway")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := g.DialTCP(ctx, src, netip.AddrPortFrom(ip(100), 80))
	if err != nil {
		t.Fatalf("dial the VIP from I's gateway as %s: %v", src, err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("reading the backend's greeting: %v (so far %q)", err, line)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	return c, string(line)
}

// echo writes msg on c and reads it back.
func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo: read %q, %v; want %q", got, err, msg)
	}
}

// TestMeshAcrossDataplanes: I's gateway dials the service VIP from an
// outside client's address; the backend on H sees that address, data
// flows both ways (the backend's replies, sent to its default gateway,
// go back to I, not to H's gateway), H's switch holds one ingress-return
// entry while the connection lives, and the close reaches both ends.
// Then client-ip=snat: a dial from I's host address needs no entry.
func TestMeshAcrossDataplanes(t *testing.T) {
	m := newMeshHosts(t)
	ln, err := m.b.Listen(8080)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	client := netip.MustParseAddrPort("203.0.113.7:40000")
	done := serveOnce(t, ln)
	c, saw := dialThrough(t, m, client)
	if saw != client.String() {
		t.Fatalf("the backend saw the client as %s, want %s", saw, client)
	}
	big := make([]byte, 200_000) // many segments, both ways
	for i := range big {
		big[i] = byte(i * 13)
	}
	echo(t, c, string(big))
	if st, _, _ := m.h.NetworkStats("web"); st.IngressReturn != 1 {
		t.Fatalf("H's ingress-return entries: %d, want 1 (drops %v)", st.IngressReturn, st.Drops)
	}
	if st, _, _ := m.h.NetworkStats("web"); st.Ports[portIndex(st.Ports, GatewayPortName)].TxPackets != 0 {
		t.Fatalf("H's gateway got frames of the flow")
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("backend: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client's close did not reach the backend")
	}

	// snat: from I's host address (any port).
	g := m.i.Gateway("web")
	if g.HostAddr() != ip(250) {
		t.Fatalf("I's gateway host address %s, want %s", g.HostAddr(), ip(250))
	}
	done = serveOnce(t, ln)
	c, saw = dialThrough(t, m, netip.AddrPortFrom(g.HostAddr(), 0))
	if ap, err := netip.ParseAddrPort(saw); err != nil || ap.Addr() != ip(250) {
		t.Fatalf("the backend saw the snat client as %s, want %s", saw, ip(250))
	}
	echo(t, c, "snat")
	c.Close()
	<-done
	for _, h := range []*Dataplane{m.i, m.h} {
		if st, _, _ := h.NetworkStats("web"); st.Drops["ingress-stray"]+st.Drops["ingress-full"]+st.Drops["no-route"] != 0 {
			t.Errorf("drops %v", st.Drops)
		}
	}
}

func portIndex(ps []vswitch.PortStats, name string) int {
	for i, p := range ps {
		if p.Name == name {
			return i
		}
	}
	return 0
}

// TestMeshGatewayHostInPlace: a change of the gateway host identity is
// applied without rebuilding the network, and the gateway dials from the
// new address.
func TestMeshGatewayHostInPlace(t *testing.T) {
	m := newMeshHosts(t)
	before := m.i.Gateway("web")
	m.ci.Networks[0].GatewayHost, m.ci.Networks[0].GatewayHostMAC = ip(249), mac(249)
	m.ch.Networks[0].Remotes[0].IP, m.ch.Networks[0].Remotes[0].MAC = ip(249), mac(249)
	if err := m.i.Reconfig(m.ci); err != nil {
		t.Fatal(err)
	}
	if err := m.h.Reconfig(m.ch); err != nil {
		t.Fatal(err)
	}
	if g := m.i.Gateway("web"); g != before || g.HostAddr() != ip(249) {
		t.Fatalf("gateway rebuilt (%v) or host address %s, want %s in place", g != before, g.HostAddr(), ip(249))
	}
	ln, err := m.b.Listen(8080)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := serveOnce(t, ln)
	c, saw := dialThrough(t, m, netip.MustParseAddrPort("198.51.100.9:5555"))
	if saw != "198.51.100.9:5555" {
		t.Fatalf("the backend saw %s", saw)
	}
	echo(t, c, "after the move")
	c.Close()
	<-done
	// An address outside the subnet is refused, naming the object.
	m.ci.Networks[0].GatewayHost = netip.MustParseAddr("10.9.9.9")
	if err := m.i.Reconfig(m.ci); err == nil || dataplaneObject(err) != "gateway host" {
		t.Fatalf("a host address outside the subnet: %v", err)
	}
}

// dataplaneObject returns the object of the first *Error in err.
func dataplaneObject(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Object
	}
	return ""
}
