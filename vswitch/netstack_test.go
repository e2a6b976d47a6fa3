package vswitch

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev/netdevtest/netstack"
	"github.com/vxmesh/vxmesh/packet"
)

// attach connects container c to s through a port with port security and
// runs the port's reader until the container closes.
func attach(t *testing.T, s *Switch, c *netstack.Container, wg *sync.WaitGroup) {
	dev := c.Device()
	r := addPort(t, s, dev, PortConfig{Name: dev.Name(), MAC: c.MAC(), IP: c.Addr(), Security: true})
	wg.Go(func() {
		b := packet.NewBatch(dev.BatchSize())
		for {
			n, err := dev.Read(b.Bufs, b.Sizes, packet.Headroom)
			if err != nil {
				return
			}
			r.Input(b.Bufs[:n], b.Sizes[:n], packet.Headroom)
		}
	})
}

func TestTCPBetweenNetstackContainers(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	var wg sync.WaitGroup
	c1, err := netstack.New("c1", macA, netip.PrefixFrom(ipA, 24))
	if err != nil {
		t.Fatal(err)
	}
	c2, err := netstack.New("c2", macB, netip.PrefixFrom(ipB, 24))
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Wait()
	defer c1.Close()
	defer c2.Close()
	attach(t, s, c1, &wg)
	attach(t, s, c2, &wg)

	ln, err := c2.Listen(8080)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	want := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	type result struct {
		data []byte
		err  error
	}
	got := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer conn.Close()
		data, err := io.ReadAll(conn)
		got <- result{data, err}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := c1.Dial(ctx, netip.AddrPortFrom(ipB, 8080))
	if err != nil {
		t.Fatalf("dial c2 from c1: %v", err)
	}
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := conn.Write(want); err != nil {
		t.Fatalf("write: %v", err)
	}
	conn.Close()
	var res result
	select {
	case res = <-got:
	case <-ctx.Done():
		t.Fatal("transfer did not finish within 60s")
	}
	if res.err != nil {
		t.Fatalf("receive: %v", res.err)
	}
	if !bytes.Equal(res.data, want) {
		t.Fatalf("received %d bytes, not the %d bytes sent", len(res.data), len(want))
	}
	st := s.Stats()
	if st.ARPSuppressed == 0 || st.Drops["port-security"] != 0 {
		t.Errorf("stats %+v: want ARP answered by the switch and no port-security drops", st)
	}
	for _, p := range st.Ports {
		if p.TxBytes < 1<<20 && p.RxBytes < 1<<20 {
			t.Errorf("port %s carried little: %+v", p.Name, p)
		}
	}
	t.Logf("stats: forwarded %d flooded %d arp-suppressed %d drops %v", st.Forwarded, st.Flooded, st.ARPSuppressed, st.Drops)
}

// TestLBNetstackThroughVIP: real TCP stacks connect to a VIP through the
// switch's balancer: each connection is answered by a backend that sees
// the client's own address, and round robin alternates the backends.
func TestLBNetstackThroughVIP(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	s.SetBalancer(newTable(t, webService()))
	var wg sync.WaitGroup
	defer wg.Wait()
	cs := map[string]*netstack.Container{}
	for _, c := range []struct {
		name string
		mac  packet.MAC
		ip   netip.Addr
	}{{"client", macA, ipA}, {"b", macB, ipB}, {"c", macC, ipC}} {
		ctr, err := netstack.New(c.name, c.mac, netip.PrefixFrom(c.ip, 24))
		if err != nil {
			t.Fatal(err)
		}
		defer ctr.Close()
		attach(t, s, ctr, &wg)
		cs[c.name] = ctr
	}
	for _, name := range []string{"b", "c"} {
		ln, err := cs[name].Listen(8080)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				io.WriteString(conn, name+" sees "+conn.RemoteAddr().String())
				conn.Close()
			}
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []string
	for range 4 {
		conn, err := cs["client"].Dial(ctx, netip.AddrPortFrom(vip, 80))
		if err != nil {
			t.Fatalf("dial the VIP: %v", err)
		}
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		b, err := io.ReadAll(conn)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if conn.RemoteAddr().String() != vip.String()+":80" {
			t.Errorf("the client's peer is %s, want the VIP", conn.RemoteAddr())
		}
		conn.Close()
		got = append(got, string(b))
	}
	for i, g := range got {
		name, _, _ := strings.Cut(g, " ")
		if !strings.HasPrefix(g, name+" sees "+ipA.String()+":") || (i > 0 && strings.HasPrefix(got[i-1], name+" ")) {
			t.Errorf("answers %q: want b and c in turn, each seeing %s", got, ipA)
			break
		}
	}
	if st := s.Stats(); st.Translated == 0 || len(st.Drops) != 0 {
		t.Errorf("translated %d, drops %v", st.Translated, st.Drops)
	}
}
