package dataplane

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

var (
	vip    = ip(100)
	vipMAC = lb.VIPMAC(vip)
)

// newHost is a data plane at addr on mn, running until the test ends.
func newHost(t *testing.T, mn *tunnel.MemNetwork, addr netip.Addr, opts Options) *Dataplane {
	t.Helper()
	u, err := mn.Listen(netip.AddrPortFrom(addr, packet.VXLANPort))
	if err != nil {
		t.Fatal(err)
	}
	opts.Tunnel = tunnel.Config{Underlay: u, LocalAddr: addr}
	dp := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); dp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		dp.Close()
		<-done
	})
	return dp
}

// ctr is a container's end of a port's device, with its frames read in
// the background.
type ctr struct {
	dev    *netdevtest.Device
	mac    packet.MAC
	ip     netip.Addr
	frames chan []byte
}

func newCtr(t *testing.T, name string, last byte) (*ctr, *netdevtest.Device) {
	d, c := pipe(t, name)
	r := &ctr{dev: c, mac: mac(last), ip: ip(last), frames: make(chan []byte, 64)}
	go func() {
		b := packet.NewBatch(c.BatchSize())
		for {
			n, err := c.Read(b.Bufs, b.Sizes, packet.Headroom)
			for i := range n {
				r.frames <- append([]byte(nil), b.Bufs[i][packet.Headroom:packet.Headroom+b.Sizes[i]]...)
			}
			if err != nil {
				return
			}
		}
	}()
	return r, d
}

func (c *ctr) port(name string, dev *netdevtest.Device) PortConfig {
	return PortConfig{Name: name, Device: dev, MAC: c.mac, IP: c.ip}
}

func (c *ctr) send(t *testing.T, frame []byte) {
	t.Helper()
	buf := make([]byte, packet.Headroom+len(frame))
	copy(buf[packet.Headroom:], frame)
	if _, err := c.dev.Write([][]byte{buf}, packet.Headroom); err != nil {
		t.Fatal(err)
	}
}

// recv returns the next frame the container gets that is not IPv6 (the
// fake containers' stacks send none, but be safe).
func (c *ctr) recv(t *testing.T, what string) []byte {
	t.Helper()
	select {
	case f := <-c.frames:
		return f
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no frame", what)
	}
	return nil
}

// none fails if the container gets a frame within a short while.
func (c *ctr) none(t *testing.T, what string) {
	t.Helper()
	select {
	case f := <-c.frames:
		t.Fatalf("%s: unexpected frame % x", what, f)
	case <-time.After(100 * time.Millisecond):
	}
}

// tcpSeg builds an IPv4/TCP frame with complete checksums (gopacket),
// with 5 bytes of data unless it is a SYN.
func tcpSeg(srcMAC, dstMAC packet.MAC, src, dst netip.Addr, sport, dport uint16, syn, ack, rst bool) []byte {
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr(srcMAC[:]), DstMAC: net.HardwareAddr(dstMAC[:]), EthernetType: layers.EthernetTypeIPv4}
	iph := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: 1000, SYN: syn, ACK: ack, RST: rst, Window: 500}
	tcp.SetNetworkLayerForChecksum(iph)
	payload := gopacket.Payload("hello")
	if syn {
		payload = nil // a SYN carries no data (lb re-sends only such SYNs)
	}
	b := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(b, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, iph, tcp, payload); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// tcpInfo is what a test reads back from a TCP frame whose checksums it
// checked.
type tcpInfo struct {
	srcMAC, dstMAC packet.MAC
	src, dst       netip.Addr
	sport, dport   uint16
	flags          uint8
}

func readTCP(t *testing.T, f []byte) tcpInfo {
	t.Helper()
	eth := packet.Ethernet(f)
	ip4 := packet.IPv4(eth.Payload())
	if eth.EtherType() != packet.EtherTypeIPv4 || !ip4.Valid() || !ip4.ChecksumValid() || ip4.Protocol() != packet.ProtoTCP {
		t.Fatalf("not a valid IPv4/TCP frame: % x", f)
	}
	l4 := ip4.Payload()
	if packet.Fold(packet.Sum(l4, packet.PseudoHeaderSum(ip4.Src(), ip4.Dst(), packet.ProtoTCP, len(l4)))) != 0 {
		t.Fatalf("bad TCP checksum: % x", f)
	}
	return tcpInfo{srcMAC: eth.Src(), dstMAC: eth.Dst(), src: ip4.Src(), dst: ip4.Dst(),
		sport: binary.BigEndian.Uint16(l4), dport: binary.BigEndian.Uint16(l4[2:]), flags: l4[13]}
}

func web(backends ...*ctr) lb.Service {
	svc := lb.Service{Name: "web", VIP: vip, Ports: []lb.Port{{Proto: packet.ProtoTCP, Port: 80, Target: 8080}}}
	for _, b := range backends {
		svc.Backends = append(svc.Backends, lb.Backend{IP: b.ip, MAC: b.mac})
	}
	return svc
}

// twoHosts is a client (c, port "client") on host 1 and a backend (b,
// port "b") on host 2, on network "a", both hosts with svcs.
type twoHosts struct {
	h1, h2 *Dataplane
	c, b   *ctr
	cdev   *netdevtest.Device
	bdev   *netdevtest.Device
}

func (e *twoHosts) configs(svcs ...lb.Service) (Config, Config) {
	n1 := testNetwork("a", 4096, 1)
	n1.Ports = []PortConfig{e.c.port("client", e.cdev)}
	n1.Remotes = []Remote{{MAC: e.b.mac, IP: e.b.ip, VTEP: remoteB}}
	n1.Services = svcs
	n2 := testNetwork("a", 4096, 1)
	n2.Ports = []PortConfig{e.b.port("b", e.bdev)}
	n2.Remotes = []Remote{{MAC: e.c.mac, IP: e.c.ip, VTEP: local}}
	n2.Services = svcs
	return Config{Networks: []NetworkConfig{n1}}, Config{Networks: []NetworkConfig{n2}}
}

func newTwoHosts(t *testing.T) *twoHosts {
	mn := tunnel.NewMemNetwork()
	e := &twoHosts{h1: newHost(t, mn, local, Options{}), h2: newHost(t, mn, remoteB, Options{})}
	e.c, e.cdev = newCtr(t, "client", 2)
	e.b, e.bdev = newCtr(t, "b", 3)
	c1, c2 := e.configs(web(e.b))
	if err := e.h1.Reconfig(c1); err != nil {
		t.Fatal(err)
	}
	if err := e.h2.Reconfig(c2); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestServiceAcrossHosts: the client's host answers ARP for the VIP and
// translates the SYN to the backend on the other host, which sees the
// client's address; the reply comes back from the VIP.
func TestServiceAcrossHosts(t *testing.T) {
	e := newTwoHosts(t)
	a := make(packet.ARP, packet.ARPLen)
	copy(a, []byte{0, 1, 8, 0, 6, 4, 0, packet.ARPRequest})
	copy(a[8:14], e.c.mac[:])
	s4, t4 := e.c.ip.As4(), vip.As4()
	copy(a[14:18], s4[:])
	copy(a[24:28], t4[:])
	req := append(make([]byte, 14), a...)
	packet.Ethernet(req).SetDst(packet.Broadcast)
	packet.Ethernet(req).SetSrc(e.c.mac)
	binary.BigEndian.PutUint16(req[12:], packet.EtherTypeARP)
	e.c.send(t, req)
	rep := packet.ARP(packet.Ethernet(e.c.recv(t, "ARP reply")).Payload())
	if rep.Op() != packet.ARPReply || rep.SenderIP() != vip || rep.SenderMAC() != vipMAC {
		t.Fatalf("ARP for the VIP: %s is at %s", rep.SenderIP(), rep.SenderMAC())
	}

	e.c.send(t, tcpSeg(e.c.mac, vipMAC, e.c.ip, vip, 40000, 80, true, false, false))
	got := readTCP(t, e.b.recv(t, "SYN at the backend"))
	if got.dstMAC != e.b.mac || got.dst != e.b.ip || got.dport != 8080 || got.src != e.c.ip || got.srcMAC != e.c.mac || got.sport != 40000 {
		t.Fatalf("the backend got %+v", got)
	}
	e.b.send(t, tcpSeg(e.b.mac, e.c.mac, e.b.ip, e.c.ip, 8080, 40000, true, true, false))
	back := readTCP(t, e.c.recv(t, "SYN-ACK at the client"))
	if back.srcMAC != vipMAC || back.src != vip || back.sport != 80 || back.dst != e.c.ip || back.dport != 40000 {
		t.Fatalf("the client got %+v", back)
	}

	st := e.h1.ServiceStats()
	ns := st.Networks["a"]
	if len(ns.Services) != 1 || ns.Services[0].NewConns != 1 || ns.Services[0].Active != 1 || ns.Services[0].Packets != 2 {
		t.Errorf("host 1 service stats %+v", ns.Services)
	}
	if st.ConntrackEntries != 1 || st.ConntrackMax != lb.DefaultMax {
		t.Errorf("host 1 conntrack %d of %d", st.ConntrackEntries, st.ConntrackMax)
	}
	// Host 2 saw no frame to the VIP: it translated nothing.
	if st2 := e.h2.ServiceStats(); st2.ConntrackEntries != 0 {
		t.Errorf("host 2 has %d connections, want 0", st2.ConntrackEntries)
	}

	// The switch adds a batch's counters after it has delivered the
	// batch, so the count may trail the frame the client already read.
	deadline := time.Now().Add(5 * time.Second)
	sw1, _, _ := e.h1.NetworkStats("a")
	for sw1.Translated < 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		sw1, _, _ = e.h1.NetworkStats("a")
	}
	if sw1.Translated != 1 {
		t.Errorf("host 1 translated %d frames, want 1", sw1.Translated)
	}
}

// TestServiceFromTunnelToVIPMACDropped: a frame to a VIP's MAC that
// reaches a host through the tunnel (here flooded by a host that does not
// know the service yet) is dropped there, never translated nor flooded.
func TestServiceFromTunnelToVIPMACDropped(t *testing.T) {
	e := newTwoHosts(t)
	c1, _ := e.configs()
	if err := e.h1.Reconfig(c1); err != nil {
		t.Fatal(err)
	}
	e.c.send(t, tcpSeg(e.c.mac, vipMAC, e.c.ip, vip, 40000, 80, true, false, false))
	deadline := time.Now().Add(5 * time.Second)
	for {
		sw2, _, _ := e.h2.NetworkStats("a")
		if sw2.Drops["vip-remote"] == 1 {
			if sw2.Translated != 0 || sw2.Flooded != 0 {
				t.Errorf("host 2 translated %d, flooded %d", sw2.Translated, sw2.Flooded)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host 2 drops %v, want vip-remote 1", sw2.Drops)
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.b.none(t, "backend")
	if st := e.h2.ServiceStats(); st.ConntrackEntries != 0 {
		t.Errorf("host 2 has %d connections", st.ConntrackEntries)
	}
}

// TestReconfigBadServiceNamedOthersApplied: a refused service is an
// *Error naming network and service; the other services, of that network
// and others, work.
func TestReconfigBadServiceNamedOthersApplied(t *testing.T) {
	tb := newTestbed(t)
	ca, da := newCtr(t, "ca", 2)
	cb, db := newCtr(t, "cb", 102)
	a := testNetwork("a", 4096, 1)
	a.Ports = []PortConfig{ca.port("ca", da)}
	good := lb.Service{Name: "good", VIP: vip, Backends: []lb.Backend{{IP: ip(3), MAC: mac(3)}}}
	bad := lb.Service{Name: "bad", VIP: ip(101), Backends: []lb.Backend{{IP: ip(4)}}} // no MAC
	gw := lb.Service{Name: "gw", VIP: ip(1)}
	a.Services = []lb.Service{bad, good, gw, good}
	b := testNetwork("b", 4097, 1)
	b.Ports = []PortConfig{cb.port("cb", db)}
	b.Services = []lb.Service{{Name: "other", VIP: ip(150), Backends: []lb.Backend{{IP: ip(103), MAC: mac(103)}}}}
	err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{a, b}})
	var objs []string
	for _, e := range flatten(err) {
		var de *Error
		if !errors.As(e, &de) || de.Network != "a" {
			t.Fatalf("error %v is not an *Error of network a", e)
		}
		objs = append(objs, de.Object+": "+de.Err.Error())
	}
	joined := strings.Join(objs, "\n")
	for _, want := range []string{"service bad: backend 10.0.1.4: MAC", "service gw: VIP 10.0.1.1 is also the gateway's address", "service good: named twice"} {
		if !strings.Contains(joined, want) {
			t.Errorf("errors\n%s\nlack %q", joined, want)
		}
	}
	if len(objs) != 3 {
		t.Errorf("%d errors, want 3:\n%s", len(objs), joined)
	}
	arp := func(c *ctr, target netip.Addr) packet.MAC {
		t.Helper()
		a := make(packet.ARP, packet.ARPLen)
		copy(a, []byte{0, 1, 8, 0, 6, 4, 0, packet.ARPRequest})
		copy(a[8:14], c.mac[:])
		s4, t4 := c.ip.As4(), target.As4()
		copy(a[14:18], s4[:])
		copy(a[24:28], t4[:])
		req := append(make([]byte, 14), a...)
		packet.Ethernet(req).SetDst(packet.Broadcast)
		packet.Ethernet(req).SetSrc(c.mac)
		binary.BigEndian.PutUint16(req[12:], packet.EtherTypeARP)
		c.send(t, req)
		return packet.ARP(packet.Ethernet(c.recv(t, "ARP reply")).Payload()).SenderMAC()
	}
	if m := arp(ca, vip); m != vipMAC {
		t.Errorf("ARP for good's VIP: %s", m)
	}
	if m := arp(cb, ip(150)); m != lb.VIPMAC(ip(150)) {
		t.Errorf("ARP for network b's VIP: %s", m)
	}
	st := tb.dp.ServiceStats()
	if n := len(st.Networks["a"].Services); n != 1 {
		t.Errorf("network a has %d services, want 1 (good)", n)
	}

	// An update that breaks good keeps the version applied.
	broken := good
	broken.Scheduler = 99
	a.Services = []lb.Service{broken}
	err = tb.dp.Reconfig(Config{Networks: []NetworkConfig{a, b}})
	var de *Error
	if !errors.As(err, &de) || de.Object != "service good" || !strings.Contains(de.Error(), "unknown scheduler") {
		t.Fatalf("Reconfig(broken good): %v", err)
	}
	if ss := tb.dp.ServiceStats().Networks["a"].Services; len(ss) != 1 || ss[0].Name != "good" {
		t.Errorf("after a refused update: %+v", ss)
	}
}

// flatten lists the errors joined in err.
func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}

// TestServiceSwapKeepsFlowsUntilFlush: changing the services keeps the
// connections going, through a rebuild of the network too; a backend
// that left keeps its TCP connection until FlushBackend.
func TestServiceSwapKeepsFlowsUntilFlush(t *testing.T) {
	tb := newTestbed(t)
	n, c, b1, b2 := clientAndTwo(t)
	n.Services = []lb.Service{web(b1)}
	cfg := Config{Networks: []NetworkConfig{n}}
	if err := tb.dp.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	c.send(t, tcpSeg(c.mac, vipMAC, c.ip, vip, 40000, 80, true, false, false))
	if got := readTCP(t, b1.recv(t, "SYN")); got.dst != b1.ip {
		t.Fatalf("SYN went to %s", got.dst)
	}
	b1.send(t, tcpSeg(b1.mac, c.mac, b1.ip, c.ip, 8080, 40000, true, true, false))
	readTCP(t, c.recv(t, "SYN-ACK"))

	// b1 leaves the service, b2 joins; the MTU changes (a rebuild).
	n.Services = []lb.Service{web(b2)}
	n.MTU = 1400
	cfg = Config{Networks: []NetworkConfig{n}}
	if err := tb.dp.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	c.send(t, tcpSeg(c.mac, vipMAC, c.ip, vip, 40000, 80, false, true, false))
	if got := readTCP(t, b1.recv(t, "ACK of the established connection")); got.dst != b1.ip || got.dport != 8080 {
		t.Fatalf("established flow after the swap: %+v", got)
	}
	b1.send(t, tcpSeg(b1.mac, c.mac, b1.ip, c.ip, 8080, 40000, false, true, false))
	if got := readTCP(t, c.recv(t, "reply after the swap")); got.src != vip || got.srcMAC != vipMAC {
		t.Fatalf("reply after the swap: %+v", got)
	}
	c.send(t, tcpSeg(c.mac, vipMAC, c.ip, vip, 40001, 80, true, false, false))
	if got := readTCP(t, b2.recv(t, "new SYN")); got.dst != b2.ip {
		t.Fatalf("a new connection went to %s, want b2", got.dst)
	}

	if n := tb.dp.FlushBackend("a", b1.ip); n != 1 {
		t.Errorf("FlushBackend(b1) = %d, want 1", n)
	}
	if n := tb.dp.FlushBackend("nope", b1.ip); n != 0 {
		t.Errorf("FlushBackend on an unknown network = %d", n)
	}
	c.send(t, tcpSeg(c.mac, vipMAC, c.ip, vip, 40000, 80, false, true, false))
	if got := readTCP(t, c.recv(t, "after the flush")); got.flags&0x04 == 0 || got.src != vip {
		t.Fatalf("after the flush the client got %+v, want a RST from the VIP", got)
	}
	b1.none(t, "b1 after the flush")
}

// TestConntrackSweptAndStopped: expired connections leave the conntrack
// without traffic; Close stops the sweeper.
func TestConntrackSweptAndStopped(t *testing.T) {
	mn := tunnel.NewMemNetwork()
	dp := newHost(t, mn, local, Options{SweepInterval: 10 * time.Millisecond})
	c, dc := newCtr(t, "c", 2)
	b, db := newCtr(t, "b", 3)
	n := testNetwork("a", 4096, 1)
	n.Ports = []PortConfig{c.port("c", dc), b.port("b", db)}
	n.Services = []lb.Service{{Name: "dns", VIP: vip, Backends: []lb.Backend{{IP: b.ip, MAC: b.mac}}}}
	cfg := Config{Networks: []NetworkConfig{n}, Conntrack: lb.Config{Max: 4096, Timeouts: lb.Timeouts{UDP: 50 * time.Millisecond}}}
	if err := dp.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	c.send(t, udpFrame(vipMAC, c.mac, c.ip, vip)[packet.Headroom:])
	b.recv(t, "UDP at the backend")
	if st := dp.ServiceStats(); st.ConntrackEntries != 1 || st.ConntrackMax != 4096 {
		t.Fatalf("conntrack %d of %d, want 1 of 4096", st.ConntrackEntries, st.ConntrackMax)
	}
	deadline := time.Now().Add(5 * time.Second)
	for dp.ServiceStats().ConntrackEntries != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the expired UDP flow was never swept")
		}
		time.Sleep(5 * time.Millisecond)
	}
	dp.Close()
	select {
	case <-dp.sweepDone:
	default:
		t.Error("the sweeper runs after Close")
	}
}

// TestConntrackConfigRefused: the conntrack is made with the first
// service, from a valid configuration only.
func TestConntrackConfigRefused(t *testing.T) {
	tb := newTestbed(t)
	n := testNetwork("a", 4096, 1)
	// Without services the host holds no conntrack.
	if err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{n}}); err != nil {
		t.Fatal(err)
	}
	if tb.dp.ct != nil || tb.dp.sweepStop != nil {
		t.Error("a host without services made a conntrack")
	}
	n.Services = []lb.Service{web()}
	err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{n}, Conntrack: lb.Config{Max: -1}})
	var de *Error
	if !errors.As(err, &de) || de.Object != "conntrack" || !strings.Contains(err.Error(), "max -1") {
		t.Fatalf("Reconfig with Max -1: %v", err)
	}
	if st := tb.dp.ServiceStats(); st.ConntrackMax != 0 || len(st.Networks) != 0 {
		t.Errorf("a refused conntrack config changed something: %+v", st)
	}
	if err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{n}}); err != nil {
		t.Fatalf("Reconfig with the default conntrack: %v", err)
	}
	if st := tb.dp.ServiceStats(); st.ConntrackMax != lb.DefaultMax || len(st.Networks["a"].Services) != 1 {
		t.Errorf("after a good config: %+v", st)
	}
}

// TestServiceRetryAcrossHosts: a backend on another host refuses the SYN
// (RST); the client's host hides the RST and sends the SYN back out of
// the tunnel to the other backend, on that same host.
func TestServiceRetryAcrossHosts(t *testing.T) {
	mn := tunnel.NewMemNetwork()
	h1, h2 := newHost(t, mn, local, Options{}), newHost(t, mn, remoteB, Options{})
	c, dc := newCtr(t, "client", 2)
	b1, d1 := newCtr(t, "b1", 3)
	b2, d2 := newCtr(t, "b2", 4)
	svc := web(b1, b2)
	n1 := testNetwork("a", 4096, 1)
	n1.Ports = []PortConfig{c.port("client", dc)}
	n1.Remotes = []Remote{{MAC: b1.mac, IP: b1.ip, VTEP: remoteB}, {MAC: b2.mac, IP: b2.ip, VTEP: remoteB}}
	n1.Services = []lb.Service{svc}
	n2 := testNetwork("a", 4096, 1)
	n2.Ports = []PortConfig{b1.port("b1", d1), b2.port("b2", d2)}
	n2.Remotes = []Remote{{MAC: c.mac, IP: c.ip, VTEP: local}}
	n2.Services = []lb.Service{svc}
	if err := h1.Reconfig(Config{Networks: []NetworkConfig{n1}}); err != nil {
		t.Fatal(err)
	}
	if err := h2.Reconfig(Config{Networks: []NetworkConfig{n2}}); err != nil {
		t.Fatal(err)
	}
	c.send(t, tcpSeg(c.mac, vipMAC, c.ip, vip, 40000, 80, true, false, false))
	var first, other *ctr
	select {
	case f := <-b1.frames:
		first, other = b1, b2
		readTCP(t, f)
	case f := <-b2.frames:
		first, other = b2, b1
		readTCP(t, f)
	case <-time.After(5 * time.Second):
		t.Fatal("the SYN reached no backend")
	}
	first.send(t, tcpSeg(first.mac, c.mac, first.ip, c.ip, 8080, 40000, false, true, true))
	got := readTCP(t, other.recv(t, "retried SYN"))
	if got.dstMAC != other.mac || got.dst != other.ip || got.src != c.ip || got.sport != 40000 || got.dport != 8080 || got.flags != 0x02 {
		t.Fatalf("the other backend got %+v", got)
	}
	c.none(t, "client (the RST must be hidden)")
	sw1, _, _ := h1.NetworkStats("a")
	if sw1.LBRetries != 1 || sw1.Drops["lb-retry"] != 1 {
		t.Errorf("host 1: retries %d, drops %v", sw1.LBRetries, sw1.Drops)
	}
	st := h1.ServiceStats().Networks["a"]
	if st.Reasons["retried"] != 1 || len(st.Services) != 1 || st.Services[0].Retries != 1 {
		t.Errorf("host 1 service stats: reasons %v, services %+v", st.Reasons, st.Services)
	}
}

// clientAndTwo is network "a" with a client c and two more containers
// b1 and b2 on its ports.
func clientAndTwo(t *testing.T) (n NetworkConfig, c, b1, b2 *ctr) {
	c, dc := newCtr(t, "c", 2)
	b1, d1 := newCtr(t, "b1", 3)
	b2, d2 := newCtr(t, "b2", 4)
	n = testNetwork("a", 4096, 1)
	n.Ports = []PortConfig{c.port("c", dc), b1.port("b1", d1), b2.port("b2", d2)}
	return n, c, b1, b2
}

// TestOpenConn: a connection opened before its dial gets the backend the
// switch's balancer would give it, in the same round robin as frames; a
// SYN of that flow through the switch afterwards follows the pick; the
// connections count in ServiceStats, and one closed on its own
// (PickedConn.Closed) leaves the active count.
func TestOpenConn(t *testing.T) {
	tb := newTestbed(t)
	n, c, b1, b2 := clientAndTwo(t)
	n.Services = []lb.Service{web(b1, b2)}
	if err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{n}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := tb.dp.OpenConn("nope", netip.AddrPortFrom(c.ip, 1), netip.AddrPortFrom(vip, 80)); ok {
		t.Fatal("OpenConn on a network without a balancer")
	}
	first, ok := tb.dp.OpenConn("a", netip.AddrPortFrom(c.ip, 40000), netip.AddrPortFrom(vip, 80))
	if !ok {
		t.Fatal("OpenConn refused")
	}
	at, other := b1, b2
	if first.Backend().Addr() == b2.ip {
		at, other = b2, b1
	}
	if first.Backend() != netip.AddrPortFrom(at.ip, 8080) {
		t.Fatalf("picked %v", first.Backend())
	}
	c.send(t, tcpSeg(c.mac, vipMAC, c.ip, vip, 40000, 80, true, false, false))
	if got := readTCP(t, at.recv(t, "the picked flow's SYN")); got.dst != at.ip || got.dport != 8080 {
		t.Fatalf("the picked flow's SYN went to %+v", got)
	}
	second, _ := tb.dp.OpenConn("a", netip.AddrPortFrom(c.ip, 40001), netip.AddrPortFrom(vip, 80))
	if second.Backend().Addr() != other.ip {
		t.Fatalf("second pick %v, want %v (round robin)", second.Backend(), other.ip)
	}
	second.Connected()
	c.send(t, tcpSeg(c.mac, vipMAC, c.ip, vip, 40002, 80, true, false, false))
	readTCP(t, at.recv(t, "the next SYN (round robin)"))
	st := tb.dp.ServiceStats().Networks["a"].Services[0]
	if st.NewConns != 3 || st.Active != 3 {
		t.Fatalf("service stats %+v: want 3 new, 3 active", st)
	}
	second.Closed()
	if st := tb.dp.ServiceStats().Networks["a"].Services[0]; st.Active != 2 {
		t.Fatalf("after one closed: %d active, want 2", st.Active)
	}
	other.none(t, "the closed connection's backend")
}
