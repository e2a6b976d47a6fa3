package e2e

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// The tests in this file cover encrypted networks (README "Encrypted
// networks", docs/architecture.md):
// ESP in UDP on port 4500 between hosts, refusals, and key rotation.

func TestEncryptedNetworkAcrossThreeHosts(t *testing.T) {
	es := newCluster(t, 3)
	h1, h2, h3 := es[0], es[1], es[2]
	h1.network("sec", "10.73.0.0/24", "--encrypted")
	var n api.Network
	h1.json(&n, "network", "inspect", "sec")
	// 1500 - 50 (outer IPv4, UDP, VXLAN, inner Ethernet) - 8 (inner UDP)
	// - 37 (the most ESP adds): no encrypted datagram exceeds 1500.
	if !n.Encrypted || n.Cipher != "aes128-gcm" || n.MTU != 1405 {
		t.Fatalf("inspect: encrypted %v cipher %q mtu %d; want true, aes128-gcm, 1405", n.Encrypted, n.Cipher, n.MTU)
	}
	if out := h1.cli("network", "inspect", "sec"); !strings.Contains(out, "Encrypted: aes128-gcm") {
		t.Errorf("inspect table does not say the network is encrypted:\n%s", out)
	}
	for _, e := range []*env{h2, h3} {
		e.waitNetwork("sec")
	}
	h1.run("c1", "sec")
	h2.run("c2", "sec")
	h3.run("c3", "sec")
	c1, c2, c3 := h1.endpoint("c1"), h2.endpoint("c2"), h3.endpoint("c3")
	h1.waitRemote("sec", c2, h2.h.Addr)
	h1.waitRemote("sec", c3, h3.h.Addr)
	h2.waitRemote("sec", c1, h1.h.Addr)
	h3.waitRemote("sec", c1, h1.h.Addr)

	// Everything h1 sends and receives is captured on its underlay port.
	capture := startCapture(t, h1.tb.Underlay, h1.h.Name, 200000, "udp", "port", "4789", "or", "udp", "port", "4500")
	ctrs := []struct {
		e    *env
		name string
	}{{h1, "c1"}, {h2, "c2"}, {h3, "c3"}}
	for _, a := range ctrs {
		for _, b := range ctrs {
			if a != b {
				a.e.mustPing(a.name, b.e.ip(b.name))
			}
		}
	}
	moveBytes(t, h1, "c1", h2, "c2", 4<<20, 11)
	moveBytes(t, h3, "c3", h1, "c1", 1<<20, 12)
	dgrams := capture.datagrams()

	// No cleartext VXLAN of the network crossed the underlay; ESP in UDP
	// from port 4500 to port 4500 did, both ways.
	var esp12 []udpDatagram
	espFrom, espTo, notFrom4500 := 0, 0, 0
	for _, d := range dgrams {
		if d.DstPort == 4789 || d.SrcPort == 4789 {
			if len(d.Payload) >= 8 && uint32(d.Payload[4])<<16|uint32(d.Payload[5])<<8|uint32(d.Payload[6]) == n.VNI {
				t.Fatalf("cleartext VXLAN of the encrypted network on the underlay: %v", d)
			}
			continue
		}
		if d.DstPort != 4500 {
			continue
		}
		if d.SrcPort != 4500 {
			notFrom4500++
		}
		if d.Src.String() == h1.h.Addr {
			espFrom++
			if d.Dst.String() == h2.h.Addr {
				esp12 = append(esp12, d)
			}
		} else {
			espTo++
		}
	}
	if espFrom == 0 || espTo == 0 || len(esp12) == 0 {
		t.Fatalf("captured %d ESP datagrams from h1 and %d to it (%d to h2), want some each way", espFrom, espTo, len(esp12))
	}
	if notFrom4500 > 0 {
		t.Errorf("%d of %d ESP datagrams not sent from port 4500", notFrom4500, espFrom+espTo)
	}

	// Inspect on h2 shows the SAs with h1 and h3 with their counters.
	h2.json(&n, "network", "inspect", "sec")
	var in21 api.SA
	for _, sa := range n.SAs {
		if sa.Node == "h1" && sa.Direction == "in" && sa.State == "primary" {
			in21 = sa
		}
	}
	if in21.Packets == 0 || in21.SPI == "" || in21.Cipher != "aes128-gcm" {
		t.Fatalf("inspect on h2: inbound primary SA from h1 is %+v; all: %+v", in21, n.SAs)
	}

	// A captured ESP datagram sent again (from h1's namespace, to h2's ESP
	// port) is refused as a replay and counted; nothing is delivered.
	var before api.Stats
	h2.json(&before, "stats")
	replay := esp12[len(esp12)-1]
	sendUDPFromNetns(t, h1.h.NetnsPath, replay.Dst, 4500, replay.Payload)
	eventually(t, 10*time.Second, func() error {
		var st api.Stats
		h2.json(&st, "stats")
		if got := st.TunnelDrops["esp-replay"]; got <= before.TunnelDrops["esp-replay"] {
			return fmt.Errorf("esp-replay drops on h2: %d", got)
		}
		return nil
	}, "replayed ESP datagram counted on h2")
	h2.json(&n, "network", "inspect", "sec")
	replays := uint64(0)
	for _, sa := range n.SAs {
		replays += sa.Drops["replay"]
	}
	if replays == 0 {
		t.Errorf("inspect on h2: no SA counts the replay: %+v", n.SAs)
	}

	// The explicit export prints this node's SAs for Wireshark.
	exp := h1.cli("key", "export", "--wireshark")
	if !strings.Contains(exp, fmt.Sprintf(`"IPv4","%s","%s"`, h1.h.Addr, h2.h.Addr)) || !strings.Contains(exp, "AES-GCM with 16 octet ICV [RFC4106]") {
		t.Errorf("key export --wireshark:\n%s", exp)
	}
	// The exported key and salt of the SA h1 -> h2 decrypt a datagram
	// captured on the wire, as Wireshark would.
	spi := binary.BigEndian.Uint32(esp12[0].Payload)
	var keyHex string
	for _, line := range strings.Split(exp, "\n") {
		f := strings.Split(line, ",")
		if len(f) == 8 && f[1] == strconv.Quote(h1.h.Addr) && f[2] == strconv.Quote(h2.h.Addr) && f[3] == fmt.Sprintf(`"0x%08x"`, spi) {
			keyHex = strings.Trim(f[5], `"`)
		}
	}
	km, err := hex.DecodeString(strings.TrimPrefix(keyHex, "0x"))
	if err != nil || len(km) != 16+4 {
		t.Fatalf("key export has no usable line for SPI 0x%08x from h1 to h2:\n%s", spi, exp)
	}
	in, err := esp.NewInbound(spi, km[:16], km[16:])
	if err != nil {
		t.Fatal(err)
	}
	buf := append(make([]byte, esp.ScratchLen), esp12[0].Payload...)
	if _, _, nh, err := in.Open(buf, esp.ScratchLen, len(buf)); err != nil || nh != esp.ProtoUDP {
		t.Errorf("the exported SA does not open a captured datagram: %v (next header %d)", err, nh)
	}
	// Nothing else shows keys: inspect has SPIs, not key material.
	if out := h1.cli("network", "inspect", "sec", "--format", "json"); strings.Contains(out, "key\":\"0x") {
		t.Errorf("inspect shows key material:\n%s", out)
	}
}

func TestEncryptedNetworkKeyRotationLosesNothing(t *testing.T) {
	es := newCluster(t, 3)
	h1, h2, h3 := es[0], es[1], es[2]
	h1.network("sec", "10.74.0.0/24", "--encrypted", "--cipher", "aes256-gcm")
	// Once the create returns, every host has the network and can seal
	// to every other (TestEncryptedNetworkIsUsableAtOnce): no frame of
	// this test is dropped as no-sa.
	h1.run("c1", "sec")
	h3.run("c3", "sec")
	c1, c3 := h1.endpoint("c1"), h3.endpoint("c3")
	h1.waitRemote("sec", c3, h3.h.Addr)
	h3.waitRemote("sec", c1, h1.h.Addr)
	h1.mustPing("c1", addrOnly(c3.IP))
	var k api.Keys
	h1.json(&k, "key", "ls")
	if k.Primary != 1 || k.Rotator != "h1" {
		t.Fatalf("key ls: %+v", k)
	}

	// A continuous ping and a paced TCP stream c1 -> c3 run while h2
	// forces two rotations.
	const pings = 150
	ping := startBackground(t, h1.h.Command(context.Background(), "exec", "c1", "--", "ping", "-c", strconv.Itoa(pings), "-i", "0.02", "-W", "2", addrOnly(c3.IP)))
	recv := startBackground(t, h3.h.Command(context.Background(), "exec", "c3", "--", suite.self, helperArg, "recv", "0.0.0.0:7000"))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := testbed.WaitTCPListen(ctx, h3.h.ContainerNetnsPath("c3"), 7000); err != nil {
		t.Fatalf("receiver: %v", err)
	}
	const size = 6 << 20
	send := startBackground(t, h1.h.Command(context.Background(), "exec", "c1", "--", suite.self, helperArg, "send", addrOnly(c3.IP)+":7000", strconv.Itoa(size), "21", strconv.Itoa(2<<20)))
	time.Sleep(500 * time.Millisecond)
	for want := uint32(2); want <= 3; want++ {
		h2.json(&k, "key", "rotate")
		if k.Primary != want {
			t.Fatalf("key rotate: primary %d, want %d", k.Primary, want)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if exited, err := send.wait(30 * time.Second); !exited || err != nil {
		t.Fatalf("sender: exited %v, %v: %s", exited, err, send.out.String())
	}
	if exited, err := recv.wait(30 * time.Second); !exited || err != nil {
		t.Fatalf("receiver: exited %v, %v: %s", exited, err, recv.out.String())
	}
	if s, r := strings.TrimSpace(send.out.String()), strings.TrimSpace(recv.out.String()); !strings.HasPrefix(s, fmt.Sprintf("%d ", size)) || s != r {
		t.Fatalf("TCP stream across the rotations: sent %q, received %q", s, r)
	}
	if exited, err := ping.wait(30 * time.Second); !exited || err != nil {
		t.Fatalf("ping across the rotations: exited %v, %v:\n%s", exited, err, ping.out.String())
	}
	if out := ping.out.String(); !strings.Contains(out, fmt.Sprintf("%d packets transmitted, %d received", pings, pings)) {
		t.Fatalf("ping lost packets across the rotations:\n%s", out)
	}
	// No host refused anything, and the newest key carried traffic.
	for _, e := range es {
		var st api.Stats
		e.json(&st, "stats")
		for _, r := range []string{"esp-auth", "esp-unknown-spi", "esp-replay", "esp-malformed"} {
			if st.TunnelDrops[r] != 0 {
				t.Errorf("%s: %s drops %d", e.h.Name, r, st.TunnelDrops[r])
			}
		}
		var n api.Network
		e.json(&n, "network", "inspect", "sec")
		if n.Drops["no-sa"] != 0 || n.Drops["cleartext"] != 0 {
			t.Errorf("%s: network drops %v", e.h.Name, n.Drops)
		}
	}
	var n api.Network
	h3.json(&n, "network", "inspect", "sec")
	used := false
	for _, sa := range n.SAs {
		used = used || (sa.Node == "h1" && sa.Direction == "in" && sa.Key == 3 && sa.Packets > 0 && sa.Cipher == "aes256-gcm")
	}
	if !used {
		t.Errorf("h3 received nothing under key 3 from h1: %+v", n.SAs)
	}
}

// udpDatagram is one captured IPv4/UDP datagram.
type udpDatagram struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Payload          []byte
}

func (d udpDatagram) String() string {
	return fmt.Sprintf("%v:%d > %v:%d len %d", d.Src, d.SrcPort, d.Dst, d.DstPort, len(d.Payload))
}

// datagrams lets tcpdump write what it has, stops it and returns the
// datagrams captured.
func (c *capture) datagrams() []udpDatagram {
	c.t.Helper()
	// Packets may still sit in the capture ring buffer; SIGINT would drop
	// them, and the callers have no count to wait for.
	time.Sleep(500 * time.Millisecond)
	c.halt()
	b, err := os.ReadFile(c.path)
	if err != nil {
		c.t.Fatal(err)
	}
	ds, err := decodeUDPCapture(b)
	if err != nil {
		c.t.Fatal(err)
	}
	return ds
}

// decodeUDPCapture returns the unfragmented IPv4/UDP datagrams of a pcap
// file of Ethernet frames.
func decodeUDPCapture(b []byte) ([]udpDatagram, error) {
	frames, err := pcapFrames(b)
	if err != nil {
		return nil, err
	}
	var out []udpDatagram
	for _, f := range frames {
		if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[0]>>4 != 4 || ip[9] != 17 || len(ip) < ihl+8 || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			continue
		}
		u := ip[ihl:]
		ulen := int(binary.BigEndian.Uint16(u[4:]))
		if ulen < 8 || ulen > len(u) {
			continue // truncated capture
		}
		out = append(out, udpDatagram{
			Src: netip.AddrFrom4([4]byte(ip[12:16])), Dst: netip.AddrFrom4([4]byte(ip[16:20])),
			SrcPort: binary.BigEndian.Uint16(u), DstPort: binary.BigEndian.Uint16(u[2:]),
			Payload: append([]byte(nil), u[8:ulen]...),
		})
	}
	return out, nil
}

// sendUDPFromNetns sends payload to dst:port from a UDP socket opened in
// the network namespace at nsPath (a host's), as an attacker on that host
// replaying a captured datagram would.
func sendUDPFromNetns(t *testing.T, nsPath string, dst netip.Addr, port int, payload []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// The thread enters the namespace and goes back before it is
		// unlocked; if going back fails it stays locked and exits with the
		// goroutine. (A thread left in another namespace could be the main
		// thread, which makes the whole test process look like a member of
		// that namespace in /proc.)
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		ns, err := os.Open(nsPath)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", nsPath, err)
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Sendto(fd, payload, 0, &unix.SockaddrInet4{Port: port, Addr: dst.As4()})
			unix.Close(fd)
		}
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("sending from %s: %v", nsPath, err)
	}
}

// outboundSAsTo checks that network inspect on e shows an outbound SA to
// every other host of es on network.
func outboundSAsTo(e *env, es []*env, network string) error {
	var n api.Network
	if err := e.h.CLIJSON(&n, "network", "inspect", network); err != nil {
		return err
	}
	for _, o := range es {
		if o == e || slices.ContainsFunc(n.SAs, func(sa api.SA) bool { return sa.Node == o.h.Name && sa.Direction == "out" }) {
			continue
		}
		return fmt.Errorf("no outbound SA to %s", o.h.Name)
	}
	return nil
}

// TestEncryptedNetworkIsUsableAtOnce: once `network create --encrypted`
// returns on h1, every host can seal frames to every other, so containers
// started at once on h2 and h3 reach each other with their first packets:
// one echo request is answered (ping sends no second), the first TCP
// connection the other way carries its bytes, and no host drops a frame
// as no-sa. Before, the SAs
// followed the create by gossip and the first frames were dropped.
func TestEncryptedNetworkIsUsableAtOnce(t *testing.T) {
	es := newCluster(t, 3)
	h1, h2, h3 := es[0], es[1], es[2]
	start := time.Now()
	h1.network("sec", "10.75.0.0/24", "--encrypted")
	t.Logf("network create --encrypted took %v", time.Since(start))
	// What network inspect shows on the hosts at once: outbound SAs to
	// every other host.
	for _, e := range []*env{h2, h3, h1} {
		if err := outboundSAsTo(e, es, "sec"); err != nil {
			t.Errorf("network inspect on %s right after the create on h1: %v", e.h.Name, err)
		}
	}
	h2.run("c2", "sec")
	h3.run("c3", "sec")
	c2, c3 := h2.endpoint("c2"), h3.endpoint("c3")
	// Endpoint records travel by gossip (as with Docker's NetworkDB):
	// until h2 has c3's, c2's ARP for it goes unanswered.
	h2.waitRemote("sec", c3, h3.h.Addr)
	h3.waitRemote("sec", c2, h2.h.Addr)
	start = time.Now()
	if err := h2.pingOnce("c2", addrOnly(c3.IP)); err != nil {
		t.Errorf("the first echo request from c2 to c3 got no reply: %v", err)
	}
	t.Logf("the first ping from c2 to c3 took %v", time.Since(start))
	start = time.Now()
	moveBytes(t, h3, "c3", h2, "c2", 64<<10, 13)
	t.Logf("the first TCP connection from c3 to c2 (64 KiB) took %v", time.Since(start))
	for _, e := range es {
		var n api.Network
		e.json(&n, "network", "inspect", "sec")
		if n.Drops["no-sa"] != 0 {
			t.Errorf("%s dropped %d frames as no-sa", e.h.Name, n.Drops["no-sa"])
		}
	}
}
