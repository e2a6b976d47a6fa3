package vswitch

import (
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

// floods returns n broadcast frames from port a's container.
func floods(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = ipv4Frame(packet.Broadcast, macA, ipA, ipB)
	}
	return out
}

// TestStormControl: a container port floods at most StormLimit frames per
// second, with a burst of as many; the excess is dropped as "storm".
// Known unicast and the unsecured (tunnel) port are not limited.
func TestStormControl(t *testing.T) {
	clock := newFakeClock()
	s := New(Config{Name: "web", Now: clock.Now, StormLimit: 10})
	var rb netdevtest.Recorder
	a := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(t, s, &rb, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
	tun := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "tunnel"})
	step := func(what string, frames [][]byte, wantDelivered, wantStorm int) {
		t.Helper()
		rb.Reset()
		before := portStats(s, "a").Drops["storm"]
		input(a, frames...)
		if got, storm := len(rb.Frames()), portStats(s, "a").Drops["storm"]-before; got != wantDelivered || storm != uint64(wantStorm) {
			t.Errorf("%s: %d delivered, %d storm drops; want %d and %d", what, got, storm, wantDelivered, wantStorm)
		}
	}
	step("burst", floods(15), 10, 5)
	clock.Advance(500 * time.Millisecond)
	step("half a second later", floods(10), 5, 5)
	clock.Advance(10 * time.Second)
	step("bucket full again", floods(12), 10, 2)
	uni := make([][]byte, 50)
	for i := range uni {
		uni[i] = ipv4Frame(macB, macA, ipA, ipB)
	}
	step("known unicast", uni, 50, 0)
	rb.Reset()
	fromTunnel := make([][]byte, 50)
	for i := range fromTunnel {
		fromTunnel[i] = ipv4Frame(packet.Broadcast, macC, ipC, ipB)
	}
	input(tun, fromTunnel...)
	if len(rb.Frames()) != 50 {
		t.Errorf("tunnel port: %d of 50 floods delivered", len(rb.Frames()))
	}
	if d := s.Stats().Drops["storm"]; d != 12 {
		t.Errorf("switch storm drops %d, want 12", d)
	}

	bufs, sizes := batch(floods(packet.BatchSize)...)
	if allocs := testing.AllocsPerRun(100, func() { a.Input(bufs, sizes, off) }); allocs != 0 {
		t.Errorf("storm-limited flooding allocates %.1f times per batch", allocs)
	}
}

// TestStormLimitDefaultAndUnlimited: 0 means DefaultStormLimit, negative
// means no limit.
func TestStormLimitDefaultAndUnlimited(t *testing.T) {
	for _, tc := range []struct {
		limit, send, want int
	}{
		{0, DefaultStormLimit + 7, DefaultStormLimit},
		{-1, 3 * DefaultStormLimit, 3 * DefaultStormLimit},
	} {
		clock := newFakeClock()
		s := New(Config{Name: "web", Now: clock.Now, StormLimit: tc.limit})
		var cb netdevtest.Counter
		a := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
		addPort(t, s, &cb, PortConfig{Name: "b"})
		all := floods(tc.send)
		for len(all) > 0 {
			k := min(len(all), packet.BatchSize)
			input(a, all[:k]...)
			all = all[k:]
		}
		if _, got, _ := cb.Counts(); got != uint64(tc.want) {
			t.Errorf("storm limit %d: %d of %d floods delivered, want %d", tc.limit, got, tc.send, tc.want)
		}
	}
}

// TestInputMTUAndGSO: a frame longer than the network MTU plus the
// Ethernet header is dropped as "mtu" on any port, as the tunnel does for
// remote ones; a super-segment passes if its segments fit, and one outside
// the GSO bounds is dropped as "gso-invalid".
func TestInputMTUAndGSO(t *testing.T) {
	const mtu = 1450
	plain := func(ipLen int) ([]byte, []byte) {
		f, _ := tcpSuperSegment(macB, macA, ipA, ipB, ipLen-40, 0)
		return f, make([]byte, packet.OffloadLen)
	}
	gso := func(payload, mss int) ([]byte, []byte) {
		return tcpSuperSegment(macB, macA, ipA, ipB, payload, mss)
	}
	udpAsTCP := func() ([]byte, []byte) {
		f, slot := gso(3000, 1400)
		f[14+9] = packet.ProtoUDP
		return f, slot
	}
	for _, tc := range []struct {
		name  string
		frame func() ([]byte, []byte)
		drop  string
	}{
		{"plain at the MTU", func() ([]byte, []byte) { return plain(mtu) }, ""},
		{"plain above the MTU", func() ([]byte, []byte) { return plain(mtu + 1) }, "mtu"},
		{"super-segment whose segments fit", func() ([]byte, []byte) { return gso(20000, mtu-40) }, ""},
		{"super-segment whose segments do not", func() ([]byte, []byte) { return gso(20000, mtu-39) }, "mtu"},
		{"gso_size 1", func() ([]byte, []byte) { return gso(20000, 1) }, "gso-invalid"},
		{"more than 64 segments", func() ([]byte, []byte) { return gso(65*536, 536) }, "gso-invalid"},
		{"metadata not matching the frame", udpAsTCP, "gso-invalid"},
	} {
		for _, secured := range []bool{true, false} {
			s := New(Config{Name: "web", MTU: mtu})
			var rb netdevtest.Recorder
			a := addPort(t, s, &netdevtest.Recorder{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: secured})
			addPort(t, s, &rb, PortConfig{Name: "b", MAC: macB, IP: ipB})
			f, slot := tc.frame()
			bufs, sizes := batchWithSlots([][]byte{f}, [][]byte{slot})
			a.Input(bufs, sizes, off)
			drops := portStats(s, "a").Drops
			if tc.drop == "" && (len(rb.Frames()) != 1 || len(drops) != 0) {
				t.Errorf("%s (secured %v): delivered %d, drops %v; want it forwarded", tc.name, secured, len(rb.Frames()), drops)
			}
			if tc.drop != "" && (len(rb.Frames()) != 0 || drops[tc.drop] != 1) {
				t.Errorf("%s (secured %v): delivered %d, drops %v; want it dropped as %q", tc.name, secured, len(rb.Frames()), drops, tc.drop)
			}
		}
	}
}
