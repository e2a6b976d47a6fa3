package lb

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// client returns the outside client address port p of a mesh connection.
func meshClient(p uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("192.0.2.7"), p)
}

func backendStats(tb *Table, ip netip.Addr) BackendStats {
	for _, s := range tb.Stats(t0) {
		for _, b := range s.Backends {
			if b.IP == ip {
				return b
			}
		}
	}
	return BackendStats{}
}

// Connections opened by Open and SYNs through Translate share one
// round-robin: alternating the two, every backend gets its share, and
// every connection is counted once.
func TestOpenSharesTheSchedulerWithTranslate(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	seen := map[netip.Addr]int{}
	for i := range 40 {
		port := uint16(2000 + i)
		if i%2 == 0 {
			c, ok := tb.Open(meshClient(port), netip.AddrPortFrom(vip, 80), t0)
			if !ok {
				t.Fatalf("Open %d: refused", i)
			}
			seen[c.Backend.Addr()]++
			c.Connected(t0)
		} else {
			seen[synTo(t, tb, port, t0)]++
		}
	}
	if seen[beIP(1)] != 20 || seen[beIP(2)] != 20 {
		t.Fatalf("40 connections, half opened, half SYNs: %v, want 20 each", seen)
	}
	st := tb.Stats(t0)[0]
	if st.NewConns != 40 || st.Active != 40 {
		t.Fatalf("service: %d new, %d active, want 40 and 40", st.NewConns, st.Active)
	}
	// Opens alone move the round robin too.
	clear(seen)
	for i := range 10 {
		c, _ := tb.Open(meshClient(uint16(2100+i)), netip.AddrPortFrom(vip, 80), t0)
		seen[c.Backend.Addr()]++
	}
	if seen[beIP(1)] != 5 || seen[beIP(2)] != 5 {
		t.Fatalf("10 connections opened in a row: %v, want 5 each", seen)
	}
}

// A connection opened with Open counts as active until Closed, so
// least-connections sends the next ones elsewhere while it is held.
func TestOpenHeldCountsForLeastConns(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{Scheduler: LeastConns}, 2)
	var held []Conn
	for i := range 3 {
		c, ok := tb.Open(meshClient(uint16(3000+i)), netip.AddrPortFrom(vip, 80), t0)
		if !ok {
			t.Fatal("Open refused")
		}
		c.Connected(t0)
		held = append(held, c)
	}
	// 3 held: 2 on one backend, 1 on the other; the next SYN goes to the
	// one with 1.
	n := map[netip.Addr]int{}
	for _, c := range held {
		n[c.Backend.Addr()]++
	}
	var fewer netip.Addr
	for ip, k := range n {
		if k == 1 {
			fewer = ip
		}
	}
	if len(n) != 2 || !fewer.IsValid() {
		t.Fatalf("3 held connections by least-connections: %v", n)
	}
	if got := synTo(t, tb, 4000, t0); got != fewer {
		t.Fatalf("SYN with %v held: went to %v, want %v", n, got, fewer)
	}
	if a := backendStats(tb, fewer).Active; a != 2 {
		t.Fatalf("backend %v: %d active, want 2", fewer, a)
	}
	// Closing the held ones takes them out of the active counts.
	for _, c := range held {
		c.Closed(t0)
		c.Closed(t0) // twice is once
	}
	if a := activeConns(tb, t0); a != 1 {
		t.Fatalf("after closing the 3 opened: %d active, want 1 (the SYN's)", a)
	}
}

// A frame of the flow Open made, through Translate (the caller dialled
// the VIP after all), follows Open's backend and is not counted again.
func TestOpenThenTranslateFollowsThePick(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 3)
	for i := range 6 {
		port := uint16(5000 + i)
		c, ok := tb.Open(meshClient(port), netip.AddrPortFrom(vip, 80), t0)
		if !ok {
			t.Fatal("Open refused")
		}
		syn := toVIP(packet.ProtoTCP, port, 80, header.TCPFlagSyn)
		syn.src = meshClient(port).Addr()
		f := syn.build()
		if v := tb.Translate(f, nil, t0+1); v != Forward {
			t.Fatalf("SYN after Open: verdict %d", v)
		}
		if got := parseFields(f); got.dst != c.Backend.Addr() || got.dstMAC != c.MAC {
			t.Fatalf("SYN after Open to %v went to %v", c.Backend, got.dst)
		}
	}
	if st := tb.Stats(t0)[0]; st.NewConns != 6 || st.Active != 6 {
		t.Fatalf("6 connections opened then dialled: %d new, %d active", st.NewConns, st.Active)
	}
}

// Failed counts a failed attempt and moves the connection to a backend
// that did not fail it; EjectAfter failures eject the backend, which
// Open then skips.
func TestOpenFailedMovesAndEjects(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	bad := beIP(1)
	for i := range EjectAfter {
		var c Conn
		for port := uint16(6000 + 10*i); ; port++ {
			var ok bool
			if c, ok = tb.Open(meshClient(port), netip.AddrPortFrom(vip, 80), t0); !ok {
				t.Fatal("Open refused")
			}
			if c.Backend.Addr() == bad {
				break
			}
			c.Closed(t0)
		}
		if !c.Failed(t0) || c.Backend.Addr() != beIP(2) {
			t.Fatalf("attempt %d failed on %v: moved to %v, want %v", i, bad, c.Backend, beIP(2))
		}
		c.Connected(t0)
	}
	b := backendStats(tb, bad)
	if b.Failures != EjectAfter || !b.Ejected || b.Active != 0 {
		t.Fatalf("backend that failed %d attempts: %+v", EjectAfter, b)
	}
	for i := range 4 {
		c, _ := tb.Open(meshClient(uint16(7000+i)), netip.AddrPortFrom(vip, 80), t0)
		if c.Backend.Addr() == bad {
			t.Fatalf("Open %d picked the ejected backend", i)
		}
	}
	// The retries run out: the last failure closes the connection.
	one := newTest(t, Config{Max: 4096}, Service{}, 1)
	c, _ := one.Open(meshClient(1), netip.AddrPortFrom(vip, 80), t0)
	if c.Failed(t0) {
		t.Fatalf("the only backend failed: moved to %v", c.Backend)
	}
	if a := activeConns(one, t0); a != 0 {
		t.Fatalf("a connection that failed for good: %d active", a)
	}
}

// Open refuses (counting nothing) what Translate would not forward, and
// never picks a draining backend or the client itself.
func TestOpenRefusesAndSkips(t *testing.T) {
	svc := Service{Ports: []Port{{Proto: packet.ProtoTCP, Port: 80, Target: 8080}}}
	tb := newTest(t, Config{Max: 4096}, svc, 2)
	for _, to := range []netip.AddrPort{
		netip.AddrPortFrom(beIP(1), 80),                    // not a VIP
		netip.AddrPortFrom(vip, 81),                        // not a port of the service
		netip.AddrPortFrom(netip.MustParseAddr("::1"), 80), // not IPv4
	} {
		if c, ok := tb.Open(meshClient(1), to, t0); ok {
			t.Errorf("Open to %v: %v, want refused", to, c.Backend)
		}
	}
	c, ok := tb.Open(netip.AddrPortFrom(beIP(1), 999), netip.AddrPortFrom(vip, 80), t0)
	if !ok || c.Backend != netip.AddrPortFrom(beIP(2), 8080) {
		t.Fatalf("Open from backend 1: %v %v, want backend 2 port 8080", c.Backend, ok)
	}
	svc.VIP, svc.Name = vip, "web"
	svc.Backends = []Backend{{IP: beIP(1), MAC: beMAC(1), State: Draining}, {IP: beIP(2), MAC: beMAC(2)}}
	snap, err := NewSnapshot([]Service{svc})
	if err != nil {
		t.Fatal(err)
	}
	tb.Swap(snap)
	for i := range 4 {
		if c, _ := tb.Open(meshClient(uint16(100+i)), netip.AddrPortFrom(vip, 80), t0); c.Backend.Addr() != beIP(2) {
			t.Fatalf("Open %d with backend 1 draining: %v", i, c.Backend)
		}
	}
	svc.Backends[1].State = Draining
	snap, _ = NewSnapshot([]Service{svc})
	tb.Swap(snap)
	if c, ok := tb.Open(meshClient(200), netip.AddrPortFrom(vip, 80), t0); ok {
		t.Fatalf("Open with every backend draining: %v", c.Backend)
	}
	if st := tb.Stats(t0)[0]; st.NewConns != 5 || st.Rejects != 0 {
		t.Fatalf("counters: %d new, %d rejects; want 5 and 0", st.NewConns, st.Rejects)
	}
}

// A flushed backend's connection (the end of a drain) is no longer
// counted, and Closed after it changes nothing.
func TestOpenFlushed(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 1)
	c, _ := tb.Open(meshClient(1), netip.AddrPortFrom(vip, 80), t0)
	c.Connected(t0)
	other, _ := tb.Open(meshClient(2), netip.AddrPortFrom(vip, 80), t0)
	if n := tb.Flush(beIP(1)); n != 2 {
		t.Fatalf("flushed %d, want 2", n)
	}
	c.Closed(t0)
	if a := activeConns(tb, t0); a != 0 {
		t.Fatalf("%d active after the flush", a)
	}
	// The client port's next connection starts over.
	if n, ok := tb.Open(meshClient(1), netip.AddrPortFrom(vip, 80), t0); !ok || activeConns(tb, t0) != 1 {
		t.Fatalf("Open again after the flush: %v, %d active", ok, activeConns(tb, t0))
	} else {
		n.Closed(t0)
	}
	other.Closed(t0)
}

// A client port used again after its connection closed (the closed
// entry lingers) is a new connection, counted again.
func TestOpenReusedPort(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 2)
	for range 3 {
		c, ok := tb.Open(meshClient(9), netip.AddrPortFrom(vip, 80), t0)
		if !ok {
			t.Fatal("Open refused")
		}
		if a := activeConns(tb, t0); a != 1 {
			t.Fatalf("open: %d active", a)
		}
		c.Connected(t0)
		c.Closed(t0)
	}
	if st := tb.Stats(t0)[0]; st.Active != 0 {
		t.Fatalf("after 3 closed: %d active", st.Active)
	}
}

func TestOpenAllocs(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{}, 3)
	to := netip.AddrPortFrom(vip, 80)
	port := uint16(1)
	if n := testing.AllocsPerRun(200, func() {
		c, _ := tb.Open(meshClient(port), to, t0)
		c.Connected(t0)
		c.Closed(t0)
		port++
	}); n != 0 {
		t.Fatalf("Open, Connected, Closed: %v allocations", n)
	}
}
