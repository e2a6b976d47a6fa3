package lb

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

func TestRoundRobinEven(t *testing.T) {
	tb := newTest(t, Config{Max: 8192}, Service{}, 3)
	count := map[netip.Addr]int{}
	for port := uint16(1); port <= 3000; port++ {
		count[synTo(t, tb, port, t0)]++
	}
	for i := 1; i <= 3; i++ {
		if count[beIP(i)] != 1000 {
			t.Fatalf("3000 connections over 3 backends: %v", count)
		}
	}
}

func TestWeightedRoundRobinSmooth(t *testing.T) {
	svc := Service{Name: "w", VIP: vip, Scheduler: WeightedRoundRobin, Backends: []Backend{
		{IP: beIP(1), MAC: beMAC(1), Weight: 5}, {IP: beIP(2), MAC: beMAC(2), Weight: 1}, {IP: beIP(3), MAC: beMAC(3), Weight: 1}}}
	tb := newTest(t, Config{Max: 8192}, svc, 0)
	var seq []int
	count := map[int]int{}
	for port := uint16(1); port <= 700; port++ {
		b := backendIndex(synTo(t, tb, port, t0))
		count[b]++
		if port <= 7 {
			seq = append(seq, b)
		}
	}
	// nginx's smooth sequence for weights 5,1,1: a a b a c a a.
	want := []int{1, 1, 2, 1, 3, 1, 1}
	for i := range want {
		if seq[i] != want[i] {
			t.Fatalf("first picks %v, want %v", seq, want)
		}
	}
	if count[1] != 500 || count[2] != 100 || count[3] != 100 {
		t.Fatalf("700 connections with weights 5,1,1: %v", count)
	}
}

func TestLeastConnsAndP2C(t *testing.T) {
	for _, sch := range []Scheduler{LeastConns, PowerOfTwo} {
		tb := newTest(t, Config{Max: 8192}, Service{Scheduler: sch}, 4)
		// Load backend 1 with long-lived connections (made while it was
		// the only backend).
		snap, _ := NewSnapshot([]Service{{Name: "web", VIP: vip, Scheduler: sch, Backends: []Backend{{IP: beIP(1), MAC: beMAC(1)}}}})
		tb.Swap(snap)
		for port := uint16(1); port <= 100; port++ {
			synTo(t, tb, port, t0)
		}
		snap, _ = NewSnapshot([]Service{{Name: "web", VIP: vip, Scheduler: sch, Backends: []Backend{
			{IP: beIP(1), MAC: beMAC(1)}, {IP: beIP(2), MAC: beMAC(2)}, {IP: beIP(3), MAC: beMAC(3)}, {IP: beIP(4), MAC: beMAC(4)}}}})
		tb.Swap(snap)
		count := map[int]int{}
		for port := uint16(1000); port < 1150; port++ {
			count[backendIndex(synTo(t, tb, port, t0))]++
		}
		// While the others have fewer connections than backend 1, lc
		// never picks it, and p2c never does either: its two samples are
		// distinct, so backend 1 always meets a less loaded one.
		if count[1] != 0 || count[2]+count[3]+count[4] != 150 {
			t.Fatalf("%v: loaded backend got connections: %v", sch, count)
		}
		if sch == LeastConns && (count[2] != 50 || count[3] != 50) {
			t.Fatalf("lc did not balance the idle backends: %v", count)
		}
	}
}

func maglevOf(t *testing.T, ips []netip.Addr) (*service, []uint16) {
	t.Helper()
	svc := Service{Name: "m", VIP: vip, Scheduler: Maglev}
	for _, ip := range ips {
		a := ip.As4()
		svc.Backends = append(svc.Backends, Backend{IP: ip, MAC: packet.MAC{2, 0x42, a[0], a[1], a[2], a[3]}})
	}
	c, err := compile(&svc)
	if err != nil {
		t.Fatal(err)
	}
	return c, c.maglev
}

func ipsN(n int) []netip.Addr {
	var ips []netip.Addr
	for i := range n {
		ips = append(ips, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
	}
	return ips
}

// resolve maps a table of backend indexes to backend addresses.
func resolve(c *service, tab []uint16) []netip.Addr {
	out := make([]netip.Addr, len(tab))
	for i, b := range tab {
		out[i] = netip.AddrFrom4(c.backends[b].ip)
	}
	return out
}

func TestMaglevDeterministic(t *testing.T) {
	ips := ipsN(50)
	c1, t1 := maglevOf(t, ips)
	shuffled := append([]netip.Addr(nil), ips...)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	c2, t2 := maglevOf(t, shuffled)
	a, b := resolve(c1, t1), resolve(c2, t2)
	count := map[netip.Addr]int{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("slot %d: %v vs %v: the table depends on backend order", i, a[i], b[i])
		}
		count[a[i]]++
	}
	// Maglev spreads evenly: every backend within a few slots of M/N.
	for ip, n := range count {
		if n < MaglevSize/50-MaglevSize/50/10 || n > MaglevSize/50+MaglevSize/50/10 {
			t.Fatalf("%v holds %d slots, want about %d", ip, n, MaglevSize/50)
		}
	}
}

func TestMaglevDisruption(t *testing.T) {
	for _, n := range []int{5, 20, 100} {
		ips := ipsN(n + 1)
		cBase, base := maglevOf(t, ips[:n])
		a := resolve(cBase, base)
		for name, other := range map[string][]netip.Addr{
			"remove": append(append([]netip.Addr(nil), ips[:n/2]...), ips[n/2+1:n]...),
			"add":    ips,
		} {
			c, tab := maglevOf(t, other)
			b := resolve(c, tab)
			moved := 0
			for i := range a {
				if a[i] != b[i] {
					moved++
				}
			}
			limit := float64(MaglevSize) * (0.01 + 1/float64(n))
			if float64(moved) > limit {
				t.Fatalf("%d backends, %s one: %d of %d slots moved, limit %.0f", n, name, moved, MaglevSize, limit)
			}
			t.Logf("%d backends, %s one: %.2f%% of slots moved", n, name, 100*float64(moved)/MaglevSize)
		}
	}
}

func TestScheduledBackendMatchesTranslate(t *testing.T) {
	// The same flow on a Maglev service goes where the table says.
	tb := newTest(t, Config{Max: 4096}, Service{Scheduler: Maglev}, 7)
	c := tb.Snapshot().get(vip.As4())
	for port := uint16(1); port < 50; port++ {
		k := flowKey{net: 1, proto: packet.ProtoTCP, client: clientIP.As4(), cport: port, vip: vip.As4(), vport: 80}
		want := netip.AddrFrom4(c.backends[c.maglev[k.maglevHash()%MaglevSize]].ip)
		f := toVIP(packet.ProtoTCP, port, 80, header.TCPFlagSyn).build()
		tb.Translate(f, nil, t0)
		if got := parseFields(f).dst; got != want {
			t.Fatalf("port %d: went to %v, table says %v", port, got, want)
		}
	}
}

func TestMaglevWeights(t *testing.T) {
	svc := Service{Name: "m", VIP: vip, Scheduler: Maglev, Backends: []Backend{
		{IP: beIP(1), MAC: beMAC(1), Weight: 3}, {IP: beIP(2), MAC: beMAC(2), Weight: 1}, {IP: beIP(3), MAC: beMAC(3)}}}
	c, err := compile(&svc)
	if err != nil {
		t.Fatal(err)
	}
	count := map[netip.Addr]int{}
	for _, ip := range resolve(c, c.maglev) {
		count[ip]++
	}
	// Shares 3:1:1 of 65537, within 2%.
	for ip, want := range map[netip.Addr]float64{beIP(1): 0.6, beIP(2): 0.2, beIP(3): 0.2} {
		if got := float64(count[ip]) / MaglevSize; got < want-0.02 || got > want+0.02 {
			t.Fatalf("%v holds %.3f of the table, want %.1f", ip, got, want)
		}
	}
}
