package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/netdev/netdevtest/netstack"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/vswitch"
)

var (
	gwAddr  = netip.MustParsePrefix("10.0.1.1/24")
	gwMAC   = packet.MAC{0x02, 0x42, 10, 0, 1, 1}
	ctrMAC  = packet.MAC{0x02, 0x42, 10, 0, 1, 2}
	ctrAddr = netip.MustParsePrefix("10.0.1.2/24")
	// outside is the address containers dial; the test's Dial sends it
	// to a loopback server (the host's own sockets).
	outside = netip.MustParseAddr("192.0.2.10")
)

// harness is a switch with one netstack container and a gateway port.
type harness struct {
	sw  *vswitch.Switch
	gw  *Gateway
	eg  *Egress
	ctr *netstack.Container
	rec *recorder // the container's port: what the switch sends it
	// cport is the container's switch port.
	cport *vswitch.Port
	wg    sync.WaitGroup
}

// redirect makes a Dial that sends connections for outside:port to
// 127.0.0.1:to[port].
func redirect(to map[uint16]uint16) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, err
		}
		if p, ok := to[ap.Port()]; ok && ap.Addr() == outside {
			addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p).String()
		}
		return d.DialContext(ctx, network, addr)
	}
}

func newHarness(t testing.TB, internal bool, ecfg EgressConfig) *harness {
	t.Helper()
	return newHarnessWith(t, Config{Internal: internal}, ecfg)
}

// newHarnessWith is newHarness with cfg's Internal, HostAddr and
// HostMAC (the switch answers ARP for the host address too).
func newHarnessWith(t testing.TB, cfg Config, ecfg EgressConfig) *harness {
	t.Helper()
	h := &harness{sw: vswitch.New(vswitch.Config{Name: "web", GatewayIP: gwAddr.Addr(), GatewayMAC: gwMAC, MTU: 1500})}
	h.eg = NewEgress(ecfg)
	gw, err := New(Config{Name: "web", Addr: gwAddr, MAC: gwMAC, MTU: 1500, Internal: cfg.Internal, Egress: h.eg, HostAddr: cfg.HostAddr, HostMAC: cfg.HostMAC})
	if err != nil {
		t.Fatal(err)
	}
	h.gw = gw
	ref, err := h.sw.AddGateway(gw.Device(), "gateway")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HostAddr.IsValid() {
		if err := h.sw.SetGatewayHost(cfg.HostAddr, cfg.HostMAC); err != nil {
			t.Fatal(err)
		}
	}
	gw.Attach(ref)
	c, err := netstack.New("c1", ctrMAC, ctrAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDefaultRoute(gwAddr.Addr())
	h.ctr = c
	h.rec = &recorder{Device: c.Device()}
	cref, err := h.sw.AddPort(h.rec, vswitch.PortConfig{Name: "c1", MAC: ctrMAC, IP: ctrAddr.Addr(), Security: true})
	if err != nil {
		t.Fatal(err)
	}
	h.loop(c.Device(), cref)
	h.cport = cref
	t.Cleanup(func() {
		c.Close()
		gw.Close()
		h.wg.Wait()
	})
	return h
}

// loop reads dev into its switch port until it closes.
func (h *harness) loop(dev netdev.Device, ref *vswitch.Port) {
	h.wg.Go(func() {
		b := packet.NewBatch(dev.BatchSize())
		for {
			n, err := dev.Read(b.Bufs, b.Sizes, packet.Headroom)
			if err != nil {
				return
			}
			ref.Input(b.Bufs[:n], b.Sizes[:n], packet.Headroom)
		}
	})
}

func (h *harness) dial(t *testing.T, dst netip.AddrPort) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return h.ctr.Dial(ctx, dst)
}

// poll waits up to 10s for cond.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func listenTCP(t *testing.T) (*net.TCPListener, uint16) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln, uint16(ln.Addr().(*net.TCPAddr).Port)
}

// TestTCPEgress: a container's connection to an outside address reaches a
// host socket; data flows both ways, and each side's half-close reaches
// the other while the other direction keeps working.
func TestTCPEgress(t *testing.T) {
	ln, port := listenTCP(t)
	h := newHarness(t, false, EgressConfig{Dial: redirect(map[uint16]uint16{80: port})})
	request := bytes.Repeat([]byte("request "), 64<<10)
	served := make(chan error, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		got, err := io.ReadAll(c) // ends with the container's half-close
		if err == nil && !bytes.Equal(got, request) {
			err = errors.New("server got other bytes than the container sent")
		}
		if err == nil {
			_, err = c.Write([]byte("response after your FIN"))
		}
		served <- err
	}()
	conn, err := h.dial(t, netip.AddrPortFrom(outside, 80))
	if err != nil {
		t.Fatalf("container dial outside: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write(request); err != nil {
		t.Fatal(err)
	}
	conn.(interface{ CloseWrite() error }).CloseWrite()
	resp, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	if string(resp) != "response after your FIN" {
		t.Fatalf("container read %q", resp)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	poll(t, "the flow to end", func() bool { return h.eg.Stats().ActiveTCP == 0 })
	st := h.eg.Stats()
	if st.Total != 1 || st.BytesOut != uint64(len(request)) || st.BytesIn != uint64(len(resp)) {
		t.Errorf("stats %+v", st)
	}
}

// TestTCPEgressRefused: an outside connect that is refused resets the
// container's connection at once.
func TestTCPEgressRefused(t *testing.T) {
	ln, port := listenTCP(t)
	ln.Close()
	h := newHarness(t, false, EgressConfig{Dial: redirect(map[uint16]uint16{80: port})})
	start := time.Now()
	_, err := h.dial(t, netip.AddrPortFrom(outside, 80))
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial to a closed outside port: %v, want connection refused", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refusal took %v", d)
	}
	if got := h.eg.Stats().Refused[RefuseConnect]; got != 1 {
		t.Errorf("refused[connect] = %d, want 1", got)
	}
}

// TestTCPEgressResets: an outside reset reaches the container as a
// reset, and a container's reset reaches the outside as one.
func TestTCPEgressResets(t *testing.T) {
	ln, port := listenTCP(t)
	h := newHarness(t, false, EgressConfig{Dial: redirect(map[uint16]uint16{80: port})})
	accepted := make(chan *net.TCPConn, 2)
	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()

	conn, err := h.dial(t, netip.AddrPortFrom(outside, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srv := <-accepted
	srv.SetLinger(0)
	srv.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) || isTimeout(err) {
		t.Fatalf("container read after the outside reset: %v, want a reset", err)
	}

	conn2, err := h.dial(t, netip.AddrPortFrom(outside, 80))
	if err != nil {
		t.Fatal(err)
	}
	srv2 := <-accepted
	defer srv2.Close()
	// A close with unread data is a reset (RFC 1122 4.2.2.13).
	srv2.Write([]byte("xy"))
	conn2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn2.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	conn2.Close()
	srv2.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = srv2.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("outside read after the container's reset: %v, want ECONNRESET", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestUDPEgress: a datagram round trip to an outside server, and the flow
// ends after its idle time.
func TestUDPEgress(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo: "), buf[:n]...), from)
		}
	}()
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	h := newHarness(t, false, EgressConfig{Dial: redirect(map[uint16]uint16{53: port}), UDPIdle: 300 * time.Millisecond})
	conn, err := h.ctr.DialUDP(netip.AddrPortFrom(outside, 53))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	for _, msg := range []string{"one", "two"} {
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		n, err := conn.Read(buf)
		if err != nil || string(buf[:n]) != "echo: "+msg {
			t.Fatalf("read %q, %v; want the echo of %q", buf[:n], err, msg)
		}
	}
	if st := h.eg.Stats(); st.ActiveUDP != 1 || st.Total != 1 {
		t.Fatalf("two datagrams of one flow: stats %+v, want one active flow", st)
	}
	// Both directions count while the flow is open (a datagram is counted
	// just after it was sent: poll).
	poll(t, "the open flow's datagrams to count", func() bool {
		st := h.eg.Stats()
		return st.ActiveUDP == 1 && st.BytesOut == 6 && st.BytesIn == 18
	})
	poll(t, "the idle UDP flow to time out", func() bool { return h.eg.Stats().ActiveUDP == 0 })
}

// TestEgressRefusals: the overlay, the flow bound and internal networks
// refuse with a reset, each counted by its reason.
func TestEgressRefusals(t *testing.T) {
	ln, port := listenTCP(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	h := newHarness(t, false, EgressConfig{Dial: redirect(map[uint16]uint16{80: port}), MaxFlows: 1})
	h.eg.SetOverlay([]netip.Prefix{netip.MustParsePrefix("10.0.2.0/24")})
	if _, err := h.dial(t, netip.MustParseAddrPort("10.0.2.5:80")); err == nil {
		t.Fatal("dial into another overlay subnet was egressed")
	}
	if _, err := h.dial(t, netip.AddrPortFrom(gwAddr.Addr(), 80)); err == nil {
		t.Fatal("dial to the gateway's own closed port succeeded")
	}
	first, err := h.dial(t, netip.AddrPortFrom(outside, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := h.dial(t, netip.AddrPortFrom(outside, 80)); err == nil {
		t.Fatal("a second flow beyond MaxFlows 1 was admitted")
	}
	st := h.eg.Stats()
	if st.Refused[RefuseOverlay] != 1 || st.Refused[RefuseLocal] != 1 || st.Refused[RefuseLimit] != 1 || st.ActiveTCP != 1 {
		t.Errorf("stats %+v: want one refusal each for overlay, local and limit, one active flow", st)
	}

	in := newHarness(t, true, EgressConfig{Dial: redirect(map[uint16]uint16{80: port})})
	start := time.Now()
	if _, err := in.dial(t, netip.AddrPortFrom(outside, 80)); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("internal network dial outside: %v, want connection refused", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("refusal took %v", d)
	}
	if got := in.eg.Stats().Refused[RefuseInternal]; got != 1 {
		t.Errorf("refused[internal] = %d, want 1", got)
	}
}
