package vswitch

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

func TestUnknownUnicastFloodsThenLearnedIsForwarded(t *testing.T) {
	s := New(Config{Name: "web"})
	recs, refs := recorders(t, s, 3)
	// A (on port 0) talks to B, which the switch does not know yet.
	input(refs[0], ipv4Frame(macB, macA, ipA, ipB))
	if got := counts(recs); !slices.Equal(got, []int{0, 1, 1}) {
		t.Fatalf("unknown unicast reached %v, want flooded to the two other ports only", got)
	}
	resetAll(recs)
	// B answers from port 1: A is known, so only port 0 gets it.
	input(refs[1], ipv4Frame(macA, macB, ipB, ipA))
	if got := counts(recs); !slices.Equal(got, []int{1, 0, 0}) {
		t.Fatalf("reply to learned MAC reached %v, want port 0 only", got)
	}
	resetAll(recs)
	// Now both are learned: A to B goes to port 1 only.
	input(refs[0], ipv4Frame(macB, macA, ipA, ipB))
	if got := counts(recs); !slices.Equal(got, []int{0, 1, 0}) {
		t.Fatalf("frame to learned MAC reached %v, want port 1 only", got)
	}
	st := s.Stats()
	if st.Flooded != 1 || st.Forwarded != 2 {
		t.Errorf("flooded %d forwarded %d, want 1 and 2", st.Flooded, st.Forwarded)
	}
	e, ok := findFDB(s, macA)
	if !ok || e.Kind != KindLearned || e.Port != "aport" {
		t.Errorf("FDB entry for A = %+v, %v", e, ok)
	}
}

func TestLearningAgingAndMove(t *testing.T) {
	clk := newFakeClock()
	s := New(Config{Name: "web", AgingTime: time.Minute, Now: clk.Now})
	recs, refs := recorders(t, s, 3)
	input(refs[0], ipv4Frame(packet.Broadcast, macA, ipA, ipB))
	clk.Advance(40 * time.Second)
	e, ok := findFDB(s, macA)
	if !ok || e.Age != 40*time.Second {
		t.Fatalf("after 40s: entry %+v, %v; want learned with age 40s", e, ok)
	}
	// Traffic refreshes the entry; it survives past the first minute.
	input(refs[0], ipv4Frame(packet.Broadcast, macA, ipA, ipB))
	clk.Advance(40 * time.Second)
	if e, ok := findFDB(s, macA); !ok || e.Age != 40*time.Second {
		t.Fatalf("refreshed entry: %+v, %v", e, ok)
	}
	// Silent for longer than the aging time: gone, and frames to A flood.
	clk.Advance(21 * time.Second)
	if e, ok := findFDB(s, macA); ok {
		t.Fatalf("entry survived aging: %+v", e)
	}
	resetAll(recs)
	input(refs[2], ipv4Frame(macA, macC, ipC, ipA))
	if got := counts(recs); !slices.Equal(got, []int{1, 1, 0}) {
		t.Fatalf("frame to aged-out MAC reached %v, want flood", got)
	}
	// A moves to port 1: the switch follows it.
	input(refs[1], ipv4Frame(packet.Broadcast, macA, ipA, ipB))
	resetAll(recs)
	input(refs[2], ipv4Frame(macA, macC, ipC, ipA))
	if got := counts(recs); !slices.Equal(got, []int{0, 1, 0}) {
		t.Fatalf("frame to moved MAC reached %v, want port 1", got)
	}
	if e, _ := findFDB(s, macA); e.Port != "bport" {
		t.Fatalf("moved MAC on %q", e.Port)
	}
}

func TestFloodingStaysWithinSwitch(t *testing.T) {
	s1, s2 := New(Config{Name: "one"}), New(Config{Name: "two"})
	recs1, refs1 := recorders(t, s1, 3)
	recs2, refs2 := recorders(t, s2, 3)
	input(refs1[0], ipv4Frame(packet.Broadcast, macA, ipA, ipB))
	input(refs1[1], ipv4Frame(macC, macB, ipB, ipC)) // unknown unicast
	input(refs1[2], ether(packet.MAC{0x01, 0x00, 0x5e, 0, 0, 1}, macC, packet.EtherTypeIPv4, make([]byte, 20)))
	if got := counts(recs1); !slices.Equal(got, []int{2, 2, 2}) {
		t.Errorf("switch one ports got %v, want 2 each (never their own)", got)
	}
	if got := counts(recs2); !slices.Equal(got, []int{0, 0, 0}) {
		t.Errorf("switch two leaked %v", got)
	}
	for i, rec := range recs1 {
		for _, f := range rec.Frames() {
			if packet.Ethernet(f).Src() == []packet.MAC{macA, macB, macC}[i] {
				t.Errorf("port %d got its own frame back", i)
			}
		}
	}
	_ = refs2
}

func TestOneWritePerDestinationPerBatch(t *testing.T) {
	s := New(Config{})
	rb, rc := &netdevtest.Recorder{}, &netdevtest.Recorder{}
	a := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA})
	addPort(t, s, rb, PortConfig{Name: "b", MAC: macB})
	addPort(t, s, rc, PortConfig{Name: "c", MAC: macC})
	var frames [][]byte
	for i := range 15 {
		dst := macB
		if i%3 == 0 {
			dst = macC
		}
		f := ipv4Frame(dst, macA, ipA, ipB)
		f[len(f)-1] = byte(i)
		frames = append(frames, f)
	}
	input(a, frames...)
	if rb.Writes() != 1 || rc.Writes() != 1 || len(rb.Frames()) != 10 || len(rc.Frames()) != 5 {
		t.Fatalf("b: %d writes %d frames, c: %d writes %d frames", rb.Writes(), len(rb.Frames()), rc.Writes(), len(rc.Frames()))
	}
	for i, f := range rb.Frames() { // order within a destination is kept
		if want := []byte{1, 2, 4, 5, 7, 8, 10, 11, 13, 14}[i]; f[len(f)-1] != want {
			t.Fatalf("frame %d to b is #%d, want #%d", i, f[len(f)-1], want)
		}
	}
}

func TestARPSuppression(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	ra, rb, rc := &netdevtest.Recorder{}, &netdevtest.Recorder{}, &netdevtest.Recorder{}
	a := addPort(t, s, ra, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(t, s, rb, PortConfig{Name: "b", MAC: macB, IP: ipB})
	addPort(t, s, rc, PortConfig{Name: "c"})

	for _, tc := range []struct {
		target netip.Addr
		mac    packet.MAC
	}{{ipB, macB}, {ipGW, macGW}} {
		ra.Reset()
		input(a, arpFrame(macA, ipA, tc.target))
		got := ra.Frames()
		if len(got) != 1 {
			t.Fatalf("who-has %s: asker got %d frames, want the reply", tc.target, len(got))
		}
		eth := packet.Ethernet(got[0])
		rep := packet.ARP(eth.Payload())
		if eth.Dst() != macA || eth.Src() != tc.mac || rep.Op() != packet.ARPReply ||
			rep.SenderMAC() != tc.mac || rep.SenderIP() != tc.target || rep.TargetMAC() != macA || rep.TargetIP() != ipA {
			t.Errorf("reply for %s: eth %s->%s op %d %s is-at %s, to %s/%s", tc.target, eth.Src(), eth.Dst(),
				rep.Op(), rep.SenderIP(), rep.SenderMAC(), rep.TargetMAC(), rep.TargetIP())
		}
	}
	if len(rb.Frames())+len(rc.Frames()) != 0 {
		t.Fatal("suppressed requests were flooded")
	}
	// Unknown target and gratuitous ARP are flooded.
	ra.Reset()
	input(a, arpFrame(macA, ipA, netip.MustParseAddr("10.0.1.99")), arpFrame(macA, ipA, ipA))
	if len(ra.Frames()) != 0 || len(rb.Frames()) != 2 || len(rc.Frames()) != 2 {
		t.Fatalf("unknown/gratuitous ARP: a %d b %d c %d, want flood to b and c", len(ra.Frames()), len(rb.Frames()), len(rc.Frames()))
	}
	if st := s.Stats(); st.ARPSuppressed != 2 || st.Flooded != 2 {
		t.Errorf("arp-suppressed %d flooded %d", st.ARPSuppressed, st.Flooded)
	}
}

func TestPortSecurity(t *testing.T) {
	s := New(Config{Name: "web"})
	rb := &netdevtest.Recorder{}
	a := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(t, s, rb, PortConfig{Name: "b", MAC: macB, IP: ipB})
	spoofMAC := packet.MAC{0x02, 0x42, 10, 0, 1, 0x99}

	input(a, ipv4Frame(macB, macA, ipA, ipB)) // allowed
	input(a,
		ipv4Frame(macB, spoofMAC, ipA, ipB),                                      // src MAC changed
		ipv4Frame(macB, macA, ipC, ipB),                                          // src IP not the port's
		ipv4Frame(macB, macA, netip.IPv4Unspecified(), ipB),                      // 0.0.0.0
		arpFrame(macA, ipC, ipB),                                                 // ARP sender IP spoofed
		ether(macB, macA, packet.EtherTypeVLAN, make([]byte, 46)),                // tagged
		ether(macB, macA, packet.EtherTypeIPv4, []byte{0x45, 0, 0, 20, 0, 0, 0}), // truncated IPv4
	)
	ip6 := ipv6Frame(macB, macA, llA, llB, packet.ProtoNoNext, nil)
	input(a, ip6) // IPv6 with the right MAC passes

	if got := len(rb.Frames()); got != 2 {
		t.Fatalf("b received %d frames, want the 2 legitimate ones", got)
	}
	if ps := portStats(s, "a"); ps.Drops["port-security"] != 5 || ps.Drops["malformed"] != 1 || ps.RxPackets != 8 {
		t.Errorf("port a stats %+v, want 5 port-security and 1 malformed drops of 8 received", ps)
	}
	if d := s.Stats().Drops; d["port-security"] != 5 {
		t.Errorf("switch drops %v", d)
	}
	if _, ok := findFDB(s, spoofMAC); ok {
		t.Error("the spoofed MAC was learned")
	}
}

func TestStaticEntries(t *testing.T) {
	s := New(Config{Name: "web"})
	ra, rt, rc := &netdevtest.Recorder{}, &netdevtest.Recorder{}, &netdevtest.Recorder{}
	a := addPort(t, s, ra, PortConfig{Name: "a", MAC: macA, IP: ipA})
	tun := addPort(t, s, rt, PortConfig{Name: "tunnel"})
	addPort(t, s, rc, PortConfig{Name: "c"})
	remote := packet.MAC{0x02, 0x42, 10, 0, 2, 7}
	remoteIP := netip.MustParseAddr("10.0.2.7")
	if err := s.AddStatic(remote, remoteIP, tun); err != nil {
		t.Fatal(err)
	}
	input(a, ipv4Frame(remote, macA, ipA, remoteIP), arpFrame(macA, ipA, remoteIP))
	if len(rt.Frames()) != 1 || len(rc.Frames()) != 0 || len(ra.Frames()) != 1 {
		t.Fatalf("tunnel %d c %d a %d: want the unicast on the tunnel and the ARP reply on a", len(rt.Frames()), len(rc.Frames()), len(ra.Frames()))
	}
	if e, ok := findFDB(s, remote); !ok || e.Kind != KindStatic || e.Port != "tunnel" || e.IP != remoteIP {
		t.Errorf("FDB %+v", e)
	}
	// A static entry does not move when the MAC shows up elsewhere.
	input(a, ipv4Frame(packet.Broadcast, remote, remoteIP, ipA))
	if e, _ := findFDB(s, remote); e.Port != "tunnel" || e.Kind != KindStatic {
		t.Errorf("static entry moved: %+v", e)
	}
	for name, err := range map[string]error{
		"local MAC":    s.AddStatic(macA, netip.Addr{}, tun),
		"used IP":      s.AddStatic(packet.MAC{2, 0, 0, 0, 0, 9}, ipA, tun),
		"multicast":    s.AddStatic(packet.Broadcast, netip.Addr{}, tun),
		"nil port":     s.AddStatic(packet.MAC{2, 0, 0, 0, 0, 9}, netip.Addr{}, nil),
		"other port":   s.AddStatic(packet.MAC{2, 0, 0, 0, 0, 9}, netip.Addr{}, addPort(t, New(Config{}), rc, PortConfig{Name: "x"})),
		"IPv6 for ARP": s.AddStatic(packet.MAC{2, 0, 0, 0, 0, 9}, netip.MustParseAddr("fd00::1"), tun),
	} {
		if err == nil {
			t.Errorf("AddStatic with %s succeeded", name)
		}
	}
	// Replacing a static entry is allowed (the control plane re-announces).
	if err := s.AddStatic(remote, remoteIP, tun); err != nil {
		t.Errorf("re-adding the same static entry: %v", err)
	}
	s.RemoveStatic(remote)
	s.RemoveStatic(macA) // local entries are not removable this way
	rt.Reset()
	rc.Reset()
	input(a, ipv4Frame(remote, macA, ipA, remoteIP))
	if len(rt.Frames()) != 1 || len(rc.Frames()) != 1 {
		t.Fatal("after RemoveStatic the MAC should be unknown and flooded")
	}
	if _, ok := findFDB(s, macA); !ok {
		t.Error("RemoveStatic removed a local entry")
	}
}

// TestStaticEntryReplacesLearned: a MAC learned behind the tunnel port
// (an endpoint's first frames came before its record) is not kept under
// the static entry the record brings: once that goes (the endpoint's host
// died), the MAC is unknown, not learned again from the past.
func TestStaticEntryReplacesLearned(t *testing.T) {
	s := New(Config{Name: "web"})
	ra, rt := &netdevtest.Recorder{}, &netdevtest.Recorder{}
	addPort(t, s, ra, PortConfig{Name: "a", MAC: macA, IP: ipA})
	tun := addPort(t, s, rt, PortConfig{Name: "tunnel"})
	remote := packet.MAC{0x02, 0x42, 10, 0, 2, 7}
	remoteIP := netip.MustParseAddr("10.0.2.7")
	input(tun, ipv4Frame(macA, remote, remoteIP, ipA))
	if e, ok := findFDB(s, remote); !ok || e.Kind != KindLearned || e.Port != "tunnel" {
		t.Fatalf("before the record: %+v, %v; want learned behind the tunnel", e, ok)
	}
	if err := s.AddStatic(remote, remoteIP, tun); err != nil {
		t.Fatal(err)
	}
	s.RemoveStatic(remote)
	if e, ok := findFDB(s, remote); ok {
		t.Fatalf("after the static entry went: %+v; want no entry", e)
	}
}

func TestRemovePort(t *testing.T) {
	s := New(Config{Name: "web"})
	ra, rb := &netdevtest.Recorder{}, &netdevtest.Recorder{}
	a := addPort(t, s, ra, PortConfig{Name: "a", MAC: macA, IP: ipA})
	b := addPort(t, s, rb, PortConfig{Name: "b"})
	learnedMAC := packet.MAC{2, 0, 0, 0, 0, 0x42}
	input(b, ipv4Frame(macA, learnedMAC, ipB, ipA))
	if _, ok := findFDB(s, learnedMAC); !ok {
		t.Fatal("not learned")
	}
	s.RemovePort(b)
	s.RemovePort(b) // idempotent
	for _, e := range s.FDB() {
		if e.Port == "b" {
			t.Errorf("entry of removed port left: %+v", e)
		}
	}
	ra.Reset()
	rb.Reset()
	input(a, ipv4Frame(learnedMAC, macA, ipA, ipB), ipv4Frame(packet.Broadcast, macA, ipA, ipB))
	if len(rb.Frames()) != 0 {
		t.Fatal("removed port still receives")
	}
	input(b, ipv4Frame(macA, learnedMAC, ipB, ipA))
	if len(ra.Frames()) != 0 || s.Stats().Drops["port-down"] != 1 {
		t.Fatalf("input on removed port: a got %d, drops %v", len(ra.Frames()), s.Stats().Drops)
	}
	// Name and MAC are free again; removing a's local entry frees its IP.
	addPort(t, s, rb, PortConfig{Name: "b", MAC: learnedMAC})
	s.RemovePort(a)
	addPort(t, s, ra, PortConfig{Name: "a2", MAC: macA, IP: ipA})
	if got := len(s.Stats().Ports); got != 2 {
		t.Errorf("%d ports in stats, want 2", got)
	}
}

func TestAddPortErrors(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA})
	for _, cfg := range []PortConfig{
		{Name: "a"},
		{Name: ""},
		{Name: "b", MAC: macA},
		{Name: "b", MAC: macB, IP: ipA},
		{Name: "b", MAC: macB, IP: ipGW},
		{Name: "b", MAC: macGW},
		{Name: "b", MAC: packet.Broadcast},
		{Name: "b", Security: true},
		{Name: "b", IP: ipB},
	} {
		if _, err := s.AddPort(&netdevtest.Recorder{}, cfg); err == nil {
			t.Errorf("AddPort(%+v) succeeded", cfg)
		} else if !bytes.Contains([]byte(err.Error()), []byte(`switch "web"`)) {
			t.Errorf("error %q does not name the switch", err)
		}
	}
	if _, err := s.AddPort(nil, PortConfig{Name: "nil"}); err == nil {
		t.Error("AddPort(nil) succeeded")
	}
	s.Close()
	if _, err := s.AddPort(&netdevtest.Recorder{}, PortConfig{Name: "late"}); err == nil {
		t.Error("AddPort after Close succeeded")
	}
}

func TestDropReasons(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	failing := &netdevtest.Recorder{Err: errors.New("device gone")}
	a := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA})
	addPort(t, s, failing, PortConfig{Name: "b", MAC: macB})
	p0, p1 := netdevtest.NewPipe("c", "c-peer", 1)
	defer p1.Close()
	addPort(t, s, p0, PortConfig{Name: "c", MAC: macC})
	input(a,
		[]byte{1, 2, 3}, // runt
		ether(macB, packet.Broadcast, 0x0800, nil), // multicast source
		ipv4Frame(macGW, macA, ipA, ipB),           // to the gateway
		ipv4Frame(macA, macA, ipA, ipA),            // back to itself
		ipv4Frame(macB, macA, ipA, ipB),            // b's Write fails
		ipv4Frame(macC, macA, ipA, ipC),            // fills c's queue
	)
	input(a, ipv4Frame(macC, macA, ipA, ipC)) // c's queue is full
	want := map[string]uint64{"malformed": 2, "no-route": 1, "same-port": 1, "tx-error": 2}
	if got := s.Stats().Drops; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("drops %v, want %v", got, want)
	}
	if d := portStats(s, "b").Drops; d["tx-error"] != 1 {
		t.Errorf("tx-error not charged to port b: %v", d)
	}
	if ps := portStats(s, "c"); ps.TxPackets != 1 || ps.Drops["tx-error"] != 1 {
		t.Errorf("port c %+v", ps)
	}
}

// TestHoldViewsPublishesOnce: ports added under HoldViews reach the data
// path together when it is released, with one new view instead of one per
// port (a restart with 1,000 containers copied the table 1,000 times).
func TestHoldViewsPublishesOnce(t *testing.T) {
	s := New(Config{Name: "web"})
	addPort(t, s, discard{}, PortConfig{Name: "first", MAC: packet.MAC{2, 0, 0, 0, 0, 1}})
	before := s.view.Load()
	release := s.HoldViews()
	inner := s.HoldViews()
	for i := range 100 {
		addPort(t, s, discard{}, PortConfig{Name: fmt.Sprintf("p%d", i), MAC: packet.MAC{2, 0, 0, 0, 1, byte(i)}})
	}
	inner()
	inner() // idempotent: must not release the outer hold
	if s.view.Load() != before {
		t.Fatal("a view was published while held")
	}
	release()
	v := s.view.Load()
	if v == before || len(v.ports) != 101 || len(v.fdb)+len(v.fdbAdd) != 101 {
		t.Fatalf("after release: new view %v, %d ports, %d FDB entries; want a new view with 101 of each", v != before, len(v.ports), len(v.fdb)+len(v.fdbAdd))
	}
	addPort(t, s, discard{}, PortConfig{Name: "after", MAC: packet.MAC{2, 0, 0, 0, 2, 1}})
	if s.view.Load() == v {
		t.Fatal("a change after the release was not published")
	}
}

// TestAddressIndexFollowsEntries: an address is refused while a port or a
// static entry holds it, and free again once that entry is gone (its
// port removed, the static removed or given another address), whichever
// way it went.
func TestAddressIndexFollowsEntries(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	r := &netdevtest.Recorder{}
	a := addPort(t, s, r, PortConfig{Name: "a", MAC: macA, IP: ipA})
	if _, err := s.AddPort(r, PortConfig{Name: "x", MAC: macC, IP: ipA}); err == nil {
		t.Fatal("a second port with a's address was added")
	}
	s.RemovePort(a)
	b := addPort(t, s, r, PortConfig{Name: "b", MAC: macB, IP: ipA}) // a's address, freed
	// A static entry takes an address; moving it to another frees the
	// first, removing it frees the second.
	if err := s.AddStatic(macC, ipB, b); err != nil {
		t.Fatal(err)
	}
	if err := s.AddStatic(macA, ipB, b); err == nil {
		t.Fatal("a second static with the address of another was added")
	}
	if err := s.AddStatic(macC, ipC, b); err != nil {
		t.Fatal(err)
	}
	if err := s.AddStatic(macA, ipB, b); err != nil {
		t.Fatalf("the address the static moved from: %v", err)
	}
	s.RemoveStatic(macA)
	s.RemoveStatic(macC)
	if _, err := s.AddPort(r, PortConfig{Name: "c", MAC: macC, IP: ipC}); err != nil {
		t.Fatalf("the address of a removed static: %v", err)
	}
	// A failed change of a static keeps its address taken.
	if err := s.AddStatic(packet.MAC{0x02, 0x42, 10, 0, 1, 9}, ipB, b); err != nil {
		t.Fatal(err)
	}
	if err := s.AddStatic(packet.MAC{0x02, 0x42, 10, 0, 1, 9}, ipC, b); err == nil {
		t.Fatal("a static moved onto port c's address")
	}
	if _, err := s.AddPort(r, PortConfig{Name: "d", MAC: packet.MAC{0x02, 0x42, 10, 0, 1, 10}, IP: ipB}); err == nil {
		t.Fatal("a port took the address of a static whose change failed")
	}
}
