package dataplane

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

var (
	local   = netip.MustParseAddr("192.168.60.1")
	remoteB = netip.MustParseAddr("192.168.60.2")
	remoteC = netip.MustParseAddr("192.168.60.3")
	extE    = netip.MustParseAddr("192.168.60.99")
)

func mac(last byte) packet.MAC { return packet.MAC{0x02, 0x42, 10, 0, 1, last} }

func ip(last byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 1, last}) }

// testbed is a data plane on an in-memory underlay, with a listener at
// remoteB standing for the other host.
type testbed struct {
	dp     *Dataplane
	remote *tunnel.MemUnderlay
}

func newTestbed(t *testing.T) *testbed {
	t.Helper()
	mn := tunnel.NewMemNetwork()
	u, err := mn.Listen(netip.AddrPortFrom(local, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	r, err := mn.Listen(netip.AddrPortFrom(remoteB, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	dp := New(Options{Tunnel: tunnel.Config{Underlay: u, LocalAddr: local}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); dp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		dp.Close()
		r.Close()
		<-done
	})
	return &testbed{dp: dp, remote: r}
}

// pipe returns a device for the data plane and the container's end.
func pipe(t *testing.T, name string) (dpSide, ctrSide *netdevtest.Device) {
	a, b := netdevtest.NewPipe(name, name+"-ctr", netdevtest.DefaultQueue)
	t.Cleanup(func() { b.Close() })
	return a, b
}

func testNetwork(name string, vni uint32, gw byte) NetworkConfig {
	return NetworkConfig{Name: name, VNI: vni, MTU: 1450, Gateway: ip(gw), GatewayMAC: mac(gw), StormLimit: -1}
}

// fullConfig is two networks with ports, remotes, peers and an external
// VTEP; devs are the data plane's ends of the ports' devices.
func fullConfig(devs ...*netdevtest.Device) Config {
	a := testNetwork("a", 4096, 1)
	a.Ports = []PortConfig{{Name: "c1/eth0", Device: devs[0], MAC: mac(2), IP: ip(2)}}
	a.Remotes = []Remote{{MAC: mac(3), IP: ip(3), VTEP: remoteB}, {MAC: mac(4), IP: ip(4), VTEP: remoteC}}
	a.Peers = []netip.Addr{remoteB, remoteC}
	a.External = []netip.Addr{extE}
	a.Services = []lb.Service{{Name: "web", VIP: ip(100), Scheduler: lb.Maglev,
		Ports:    []lb.Port{{Proto: packet.ProtoTCP, Port: 80}},
		Backends: []lb.Backend{{IP: ip(3), MAC: mac(3)}, {IP: ip(4), MAC: mac(4), Weight: 2}}}}
	b := testNetwork("b", 4097, 100)
	b.Ports = []PortConfig{{Name: "c1/eth1", Device: devs[1], MAC: mac(102), IP: ip(102)}}
	b.Remotes = []Remote{{MAC: mac(103), IP: ip(103), VTEP: remoteB}}
	return Config{Networks: []NetworkConfig{a, b}}
}

// udpFrame is an Ethernet/IPv4/UDP frame from src to dst.
func udpFrame(dst, src packet.MAC, from, to netip.Addr) []byte {
	f := make([]byte, packet.Headroom+14+20+8+16)
	e := packet.Ethernet(f[packet.Headroom:])
	e.SetDst(dst)
	e.SetSrc(src)
	binary.BigEndian.PutUint16(e[12:], packet.EtherTypeIPv4)
	h := packet.IPv4(e[14:])
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], 20+8+16)
	h[8], h[9] = 64, packet.ProtoUDP
	h.SetSrc(from)
	h.SetDst(to)
	h.SetChecksum(h.HeaderChecksum())
	binary.BigEndian.PutUint16(e[34:], 1000)
	binary.BigEndian.PutUint16(e[36:], 2000)
	binary.BigEndian.PutUint16(e[38:], 8+16)
	return f
}

// readRemote waits for one datagram at the remote listener.
func readRemote(t *testing.T, u *tunnel.MemUnderlay) tunnel.Message {
	t.Helper()
	got := make(chan tunnel.Message, 1)
	go func() {
		msgs := []tunnel.Message{{Buf: make([]byte, packet.BufferSize)}}
		if n, err := u.ReadBatch(msgs); err == nil && n == 1 {
			got <- msgs[0]
		}
	}()
	select {
	case m := <-got:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no datagram reached the remote host")
	}
	return tunnel.Message{}
}

func TestReconfigFullStateAndBackToEmpty(t *testing.T) {
	tb := newTestbed(t)
	d0, c0 := pipe(t, "p0")
	d1, c1 := pipe(t, "p1")
	if err := tb.dp.Reconfig(fullConfig(d0, d1)); err != nil {
		t.Fatalf("Reconfig(full): %v", err)
	}
	// The switch has the local and remote entries, the tunnel the
	// remotes, and a frame from the container to a remote MAC reaches
	// that remote's host only.
	sw, tn, ok := tb.dp.FDB("a")
	if !ok {
		t.Fatal("network a is missing")
	}
	kinds := map[packet.MAC]string{}
	for _, e := range sw {
		kinds[e.MAC] = e.Port + "/" + e.Kind
	}
	if kinds[mac(2)] != "c1/eth0/local" || kinds[mac(3)] != TunnelPortName+"/static" || kinds[mac(4)] != TunnelPortName+"/static" {
		t.Fatalf("switch FDB of a: %v", kinds)
	}
	vteps := map[packet.MAC]netip.Addr{}
	for _, e := range tn {
		vteps[e.MAC] = e.VTEP
	}
	if vteps[mac(3)] != remoteB || vteps[mac(4)] != remoteC || len(vteps) != 2 {
		t.Fatalf("tunnel FDB of a: %v", vteps)
	}
	_, ts, _ := tb.dp.NetworkStats("a")
	if len(ts.Peers) != 3 {
		t.Fatalf("a floods to %d peers, want 3 (two hosts and the external VTEP): %+v", len(ts.Peers), ts.Peers)
	}
	if s := tb.dp.PortState("a", "c1/eth0"); s != "up" {
		t.Fatalf("port state %q, want up", s)
	}
	if _, err := c0.Write([][]byte{udpFrame(mac(3), mac(2), ip(2), ip(3))}, packet.Headroom); err != nil {
		t.Fatal(err)
	}
	m := readRemote(t, tb.remote)
	if vni := binary.BigEndian.Uint32(m.Buf[4:8]) >> 8; vni != 4096 {
		t.Fatalf("datagram with VNI %d, want 4096", vni)
	}

	if err := tb.dp.Reconfig(Config{}); err != nil {
		t.Fatalf("Reconfig(empty): %v", err)
	}
	for _, name := range []string{"a", "b"} {
		if _, _, ok := tb.dp.NetworkStats(name); ok {
			t.Errorf("network %s still exists", name)
		}
	}
	if nets := tb.dp.vtep.Segments(); len(nets) != 0 {
		t.Errorf("the VTEP still serves %d networks", len(nets))
	}
	if len(tb.dp.ports) != 0 || len(tb.dp.nets) != 0 || len(tb.dp.lbs) != 0 {
		t.Errorf("left %d ports, %d networks and %d balancers", len(tb.dp.ports), len(tb.dp.nets), len(tb.dp.lbs))
	}
	// The devices were closed: the containers' ends see it.
	for _, c := range []*netdevtest.Device{c0, c1} {
		if _, err := c.Write([][]byte{udpFrame(mac(3), mac(2), ip(2), ip(3))}, packet.Headroom); err == nil {
			t.Errorf("%s: the data plane's end is still open", c.Name())
		}
	}
}

func TestReconfigSameConfigTwiceChangesNothing(t *testing.T) {
	tb := newTestbed(t)
	d0, _ := pipe(t, "p0")
	d1, _ := pipe(t, "p1")
	cfg := fullConfig(d0, d1)
	if err := tb.dp.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	before := tb.dp.changes
	if err := tb.dp.Reconfig(fullConfig(d0, d1)); err != nil {
		t.Fatal(err)
	}
	if tb.dp.changes != before {
		t.Fatalf("applying the applied state again made %d changes", tb.dp.changes-before)
	}
	if s := tb.dp.PortState("a", "c1/eth0"); s != "up" {
		t.Fatalf("port state %q after the second apply", s)
	}
}

func TestReconfigFailedStepIsNamedAndTheRestApplied(t *testing.T) {
	tb := newTestbed(t)
	d0, _ := pipe(t, "p0")
	d1, _ := pipe(t, "p1")
	d2, _ := pipe(t, "p2")
	cfg := fullConfig(d0, d1)
	// A second port with c1/eth0's MAC, and a remote with it too.
	a := &cfg.Networks[0]
	a.Ports = append(a.Ports, PortConfig{Name: "c2/eth0", Device: d2, MAC: mac(2), IP: ip(9)})
	a.Remotes = append(a.Remotes, Remote{MAC: mac(2), IP: ip(2), VTEP: remoteC})
	err := tb.dp.Reconfig(cfg)
	if err == nil {
		t.Fatal("Reconfig accepted two ports with one MAC")
	}
	var de *Error
	if !errors.As(err, &de) {
		t.Fatalf("error %v is not a *dataplane.Error", err)
	}
	for _, want := range []string{`network "a": port c2/eth0:`, `network "a": remote ` + mac(2).String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if s := tb.dp.PortState("a", "c2/eth0"); !strings.HasPrefix(s, "down: ") {
		t.Errorf("conflicting port state %q", s)
	}
	// Everything else is applied.
	if s := tb.dp.PortState("a", "c1/eth0"); s != "up" {
		t.Errorf("port c1/eth0: %q", s)
	}
	if s := tb.dp.PortState("b", "c1/eth1"); s != "up" {
		t.Errorf("port c1/eth1: %q", s)
	}
	sw, _, _ := tb.dp.FDB("a")
	statics := 0
	for _, e := range sw {
		if e.Kind == "static" {
			statics++
		}
	}
	if statics != 2 {
		t.Errorf("network a has %d remote statics, want 2: %+v", statics, sw)
	}
	// The next Reconfig, without the conflict, succeeds.
	a.Ports = a.Ports[:1]
	a.Remotes = a.Remotes[:2]
	if err := tb.dp.Reconfig(cfg); err != nil {
		t.Fatalf("Reconfig without the conflicts: %v", err)
	}
}

// A remote the switch refuses as a static entry (its MAC is a local
// port's) must not be in the tunnel either: otherwise the tunnel would
// send frames for it to a VTEP that the switch floods.
func TestTunnelRemoteOnlyWithSwitchStatic(t *testing.T) {
	tb := newTestbed(t)
	d0, _ := pipe(t, "p0")
	a := testNetwork("a", 4096, 1)
	a.Ports = []PortConfig{{Name: "c1/eth0", Device: d0, MAC: mac(2), IP: ip(2)}}
	a.Remotes = []Remote{
		{MAC: mac(2), IP: ip(20), VTEP: remoteB}, // the local port's MAC
		{MAC: mac(5), IP: ip(1), VTEP: remoteB},  // the gateway's IP
		{MAC: mac(6), IP: ip(6), VTEP: remoteB},
	}
	if err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{a}}); err == nil {
		t.Fatal("conflicting remotes accepted")
	}
	sw, tn, _ := tb.dp.FDB("a")
	static := map[packet.MAC]bool{}
	for _, e := range sw {
		if e.Port == TunnelPortName {
			static[e.MAC] = true
		}
	}
	for _, e := range tn {
		if e.Static && !static[e.MAC] {
			t.Errorf("tunnel remote %s has no switch static", e.MAC)
		}
	}
	if !static[mac(6)] {
		t.Errorf("the valid remote %s is missing", mac(6))
	}
	// Removing a remote takes it out of both.
	a.Remotes = nil
	if err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{a}}); err != nil {
		t.Fatal(err)
	}
	sw, tn, _ = tb.dp.FDB("a")
	for _, e := range sw {
		if e.Port == TunnelPortName {
			t.Errorf("switch static %s left", e.MAC)
		}
	}
	if len(tn) != 0 {
		t.Errorf("tunnel remotes left: %+v", tn)
	}
}

// Changing a network's MTU rebuilds it; its ports stay open and join the
// new switch.
func TestReconfigRebuildKeepsPorts(t *testing.T) {
	tb := newTestbed(t)
	d0, c0 := pipe(t, "p0")
	d1, _ := pipe(t, "p1")
	cfg := fullConfig(d0, d1)
	if err := tb.dp.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Networks[0].MTU = 1400
	if err := tb.dp.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	if n := tb.dp.nets["a"]; n == nil || n.tn.MTU() != 1400 {
		t.Fatal("network a was not rebuilt with MTU 1400")
	}
	if s := tb.dp.PortState("a", "c1/eth0"); s != "up" {
		t.Fatalf("port after the rebuild: %q", s)
	}
	if _, err := c0.Write([][]byte{udpFrame(mac(3), mac(2), ip(2), ip(3))}, packet.Headroom); err != nil {
		t.Fatal(err)
	}
	readRemote(t, tb.remote)
}

func outboundSA(t *testing.T, spi uint32) *esp.Outbound {
	t.Helper()
	sa, err := esp.NewOutboundSA(esp.SA{SPI: spi, Cipher: esp.AES128GCM, Key: make([]byte, 16)})
	if err != nil {
		t.Fatal(err)
	}
	return sa
}

// SAs the VTEP refuses (two outbound SAs to one peer for one cipher) are
// reported as such, the rest is applied, and the next Reconfig tries
// again; once they are fixed, applying them again changes nothing.
func TestReconfigReportsRefusedSAs(t *testing.T) {
	tb := newTestbed(t)
	d0, _ := pipe(t, "p0")
	d1, _ := pipe(t, "p1")
	cfg := fullConfig(d0, d1)
	cfg.Networks[0].Cipher = esp.AES128GCM
	cfg.Outbound = []tunnel.OutboundSA{{Peer: remoteB, SA: outboundSA(t, 0x1000)}, {Peer: remoteB, SA: outboundSA(t, 0x1001)}}
	for range 2 {
		err := tb.dp.Reconfig(cfg)
		if err == nil || !strings.Contains(err.Error(), "SAs: ") {
			t.Fatalf("Reconfig with colliding SAs: %v", err)
		}
		if s := tb.dp.PortState("a", "c1/eth0"); s != "up" {
			t.Fatalf("port c1/eth0: %q", s)
		}
	}
	cfg.Outbound = cfg.Outbound[:1]
	if err := tb.dp.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	before := tb.dp.changes
	if err := tb.dp.Reconfig(cfg); err != nil || tb.dp.changes != before {
		t.Fatalf("second apply: %v, %d changes", err, tb.dp.changes-before)
	}
}

// TestMemberHeardBeforeItsRecord: a host whose endpoint's record has not
// reached this one yet (it is a cluster member, not yet a peer of the
// network) is heard, and the container's reply goes back to it; with
// Members empty its frame is dropped as from an unknown peer.
func TestMemberHeardBeforeItsRecord(t *testing.T) {
	for _, members := range [][]netip.Addr{nil, {remoteB}} {
		tb := newTestbed(t)
		c, d := newCtr(t, "m0", 2)
		w := testNetwork("a", 4096, 1)
		w.Ports = []PortConfig{c.port("c1/eth0", d)}
		w.Members = members
		if err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{w}}); err != nil {
			t.Fatal(err)
		}
		// The new endpoint mac(9) on remoteB sends to the container.
		frame := udpFrame(c.mac, mac(9), ip(9), c.ip)[packet.Headroom:]
		dgram := append(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 0x08000000), 4096<<8), frame...)
		if _, err := tb.remote.WriteBatch([]tunnel.Message{{Buf: dgram, Addr: netip.AddrPortFrom(local, packet.VXLANPort)}}); err != nil {
			t.Fatal(err)
		}
		if members == nil {
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
				if _, ts, _ := tb.dp.NetworkStats("a"); ts.Drops["unknown-peer"] == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the frame of a host that is no member was not counted as unknown-peer")
				}
			}
			if len(c.frames) != 0 {
				t.Fatal("a frame from a host that is no member reached the container")
			}
			continue
		}
		if got := c.recv(t, "the member's frame"); packet.Ethernet(got).Src() != mac(9) {
			t.Fatalf("got a frame from %s", packet.Ethernet(got).Src())
		}
		c.send(t, udpFrame(mac(9), c.mac, c.ip, ip(9))[packet.Headroom:])
		m := readRemote(t, tb.remote)
		if got := packet.Ethernet(m.Buf[packet.VXLANHeaderLen:m.N]).Dst(); got != mac(9) {
			t.Fatalf("the reply went to %s", got)
		}
	}
}

// TestLocalMACFromMemberIsSpoofed: a member VTEP that sends from the MAC
// of one of this host's endpoints is refused by the tunnel ("spoofed-src")
// and does not get the MAC learned behind it; once the endpoint has left
// this host, the same frame is an unknown source that is learned.
func TestLocalMACFromMemberIsSpoofed(t *testing.T) {
	tb := newTestbed(t)
	c1, d1 := newCtr(t, "m1", 2)
	c2, d2 := newCtr(t, "m2", 3)
	w := testNetwork("a", 4096, 1)
	w.Ports = []PortConfig{c1.port("c1/eth0", d1), c2.port("c2/eth0", d2)}
	w.Members = []netip.Addr{remoteB}
	if err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{w}}); err != nil {
		t.Fatal(err)
	}
	send := func() {
		t.Helper()
		frame := udpFrame(c1.mac, c2.mac, c2.ip, c1.ip)[packet.Headroom:]
		dgram := append(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 0x08000000), 4096<<8), frame...)
		if _, err := tb.remote.WriteBatch([]tunnel.Message{{Buf: dgram, Addr: netip.AddrPortFrom(local, packet.VXLANPort)}}); err != nil {
			t.Fatal(err)
		}
	}
	send()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, ts, _ := tb.dp.NetworkStats("a"); ts.Drops["spoofed-src"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a member's frame from a local endpoint's MAC was not counted as spoofed-src")
		}
	}
	if _, fdb, _ := tb.dp.FDB("a"); len(fdb) != 0 {
		t.Fatalf("tunnel fdb %+v, want nothing learned", fdb)
	}
	if len(c1.frames) != 0 {
		t.Fatal("the spoofed frame reached the container")
	}
	// c2 leaves (the fast path of a change of ports): its MAC is free.
	w.Ports = w.Ports[:1]
	if err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{w}}); err != nil {
		t.Fatal(err)
	}
	send()
	c1.recv(t, "the frame of an endpoint that moved to the member")
	if _, fdb, _ := tb.dp.FDB("a"); len(fdb) != 1 || fdb[0].MAC != c2.mac || fdb[0].VTEP != remoteB {
		t.Fatalf("tunnel fdb %+v, want c2's MAC learned behind the member", fdb)
	}
}
