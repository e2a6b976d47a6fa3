package dataplane

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/gateway"
	"github.com/vxmesh/vxmesh/netdev/netdevtest/netstack"
	"github.com/vxmesh/vxmesh/tunnel"
)

// TestGatewayEgressWithNetwork: a network with a subnet gets a gateway
// port through which a container reaches an outside server; making the
// network internal rebuilds it without egress; removing the network
// closes the gateway and resets its flows.
func TestGatewayEgressWithNetwork(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello from outside"))
			defer c.Close()
		}
	}()
	var d net.Dialer
	eg := gateway.NewEgress(gateway.EgressConfig{Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, ln.Addr().String()) // every outside address is the test server
	}})
	mn := tunnel.NewMemNetwork()
	u, err := mn.Listen(netip.AddrPortFrom(local, 4789))
	if err != nil {
		t.Fatal(err)
	}
	dp := New(Options{Tunnel: tunnel.Config{Underlay: u, LocalAddr: local}, Egress: eg})
	defer dp.Close()

	ctr, err := netstack.New("c1", mac(2), netip.PrefixFrom(ip(2), 24))
	if err != nil {
		t.Fatal(err)
	}
	defer ctr.Close()
	ctr.SetDefaultRoute(ip(1))
	n := testNetwork("a", 4096, 1)
	n.Subnet = netip.MustParsePrefix("10.0.1.0/24")
	n.Ports = []PortConfig{{Name: "c1/eth0", Device: ctr.Device(), MAC: mac(2), IP: ip(2)}}
	if err := dp.Reconfig(Config{Networks: []NetworkConfig{n}}); err != nil {
		t.Fatal(err)
	}
	if dp.Gateway("a") == nil {
		t.Fatal("network with a subnet has no gateway")
	}
	dst := netip.MustParseAddrPort("192.0.2.10:80")
	dial := func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return ctr.Dial(ctx, dst)
	}
	conn, err := dial()
	if err != nil {
		t.Fatalf("egress dial: %v", err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 18)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "hello from outside" {
		t.Fatalf("read %q, %v", buf, err)
	}

	n.Internal = true
	if err := dp.Reconfig(Config{Networks: []NetworkConfig{n}}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(buf); err == nil || err == io.EOF {
		t.Errorf("flow through the old gateway after the rebuild: %v, want a reset", err)
	}
	conn.Close()
	if c, err := dial(); err == nil {
		c.Close()
		t.Fatal("internal network egressed")
	}
	if got := eg.Stats().Refused[gateway.RefuseInternal]; got != 1 {
		t.Errorf("refused[internal] = %d, want 1", got)
	}

	if err := dp.Reconfig(Config{}); err != nil {
		t.Fatal(err)
	}
	if dp.Gateway("a") != nil {
		t.Error("gateway left behind by its network")
	}
	if st := eg.Stats(); st.ActiveTCP != 0 {
		t.Errorf("active TCP flows after the network left: %d", st.ActiveTCP)
	}
}
