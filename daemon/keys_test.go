package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/tunnel"
)

// ringOf returns the ring a daemon has installed, under its lock.
func primaryOf(d *Daemon) (primary uint32, keys int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.keys.ring == nil {
		return 0, 0
	}
	return d.keys.ring.PrimaryID, len(d.keys.ring.Keys)
}

func secretsOf(d *Daemon) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, k := range d.keys.ring.Keys {
		out = append(out, hex.EncodeToString(k.Secret[:]))
	}
	for _, o := range d.keys.sas {
		out = append(out, hex.EncodeToString(o.spec.Key))
	}
	return out
}

func TestEncryptedNetworkKeysAndRotation(t *testing.T) {
	ds, _ := threeNodes(t)
	if _, err := ds[1].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Cipher: "aes256-gcm"}); err == nil {
		t.Fatal("a cipher without --encrypted was accepted")
	}
	if _, err := ds[1].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Encrypted: true, VTEPs: []string{"192.0.2.9"}}); err == nil {
		t.Fatal("an encrypted network with an external VTEP was accepted")
	}
	n, err := ds[1].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Subnet: "10.9.0.0/24", Encrypted: true})
	if err != nil {
		t.Fatal(err)
	}
	// 1500 - 50 (outer IPv4, UDP, VXLAN, inner Ethernet) - 8 (inner UDP)
	// - 37 (ESP header, padding, trailer, ICV).
	if !n.Encrypted || n.Cipher != "aes128-gcm" || n.MTU != 1405 {
		t.Fatalf("created %+v; want encrypted aes128-gcm with MTU 1405", n)
	}
	// h1, the lowest name, creates the ring; every node installs key 1.
	for _, d := range ds {
		waitFor(t, "key 1 installed everywhere", func() bool {
			k := d.Keys()
			if k.Primary != 1 || len(k.Nodes) != 3 {
				return false
			}
			for _, kn := range k.Nodes {
				if kn.Installed != 1 {
					return false
				}
			}
			return k.Rotator == "h1"
		})
	}
	// SAs: h1's outbound SA to h2 is h2's inbound SA from h1.
	var spi1to2 string
	waitFor(t, "SAs on h1 and h2", func() bool {
		a, _ := ds[0].Network("sec")
		b, _ := ds[1].Network("sec")
		spi1to2 = ""
		for _, sa := range a.SAs {
			if sa.Node == "h2" && sa.Direction == "out" {
				spi1to2 = sa.SPI
			}
		}
		for _, sa := range b.SAs {
			if sa.Node == "h1" && sa.Direction == "in" && sa.SPI == spi1to2 && sa.Cipher == "aes128-gcm" && sa.State == "primary" {
				return len(a.SAs) == 4 && len(b.SAs) == 4
			}
		}
		return false
	})

	// A rotation asked for on h3 is served by h1; it returns once key 2
	// is primary, with key 1 kept for receiving.
	k, err := ds[2].RotateKey(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if k.Primary != 2 || len(k.Keys) != 2 || k.Keys[1].State != "secondary" {
		t.Fatalf("after rotate: %+v", k)
	}
	for _, d := range ds {
		waitFor(t, "key 2 primary everywhere", func() bool { p, n := primaryOf(d); return p == 2 && n == 2 })
	}
	// Two more rotations: the ring keeps three keys.
	for want := uint32(3); want <= 4; want++ {
		if k, err = ds[0].RotateKey(context.Background()); err != nil || k.Primary != want {
			t.Fatalf("rotate to %d: %+v, %v", want, k, err)
		}
	}
	if len(k.Keys) != 3 || k.Keys[2].ID != 2 {
		t.Fatalf("ring after four keys: %+v", k.Keys)
	}

	// Keys never show in API output or the state file; the explicit
	// export has them.
	secrets := secretsOf(ds[0])
	inspect, _ := ds[0].Network("sec")
	keys := ds[0].Keys()
	var out strings.Builder
	for _, v := range []any{inspect, keys, ds[0].Stats(), ds[0].Nodes()} {
		b, _ := json.Marshal(v)
		out.Write(b)
	}
	state, err := os.ReadFile(filepath.Join(ds[0].cfg.StateDir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	out.Write(state)
	for _, s := range secrets {
		if strings.Contains(strings.ToLower(out.String()), s) {
			t.Fatal("key material in API output or state file")
		}
	}
	exp, err := ds[0].ExportWireshark()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(exp), "\n")
	// Per peer: one outbound SA and one inbound SA per key of the ring.
	if len(lines) != 2*(1+3) {
		t.Fatalf("export has %d lines, want 8:\n%s", len(lines), exp)
	}
	found := false
	for _, s := range secrets {
		found = found || strings.Contains(exp, s)
	}
	if !found || !strings.Contains(exp, `"127.0.0.1","127.0.0.2"`) {
		t.Fatalf("export lacks this node's keys or addresses:\n%s", exp)
	}
}

func TestKeyRotationOnInterval(t *testing.T) {
	ds, _ := threeNodes(t)
	for _, d := range ds {
		d.mu.Lock()
		d.cfg.KeyRotationInterval = time.Second
		d.mu.Unlock()
	}
	// The CLI prefixes "vxmesh key rotate: "; the message says why only.
	if _, err := ds[0].RotateKey(context.Background()); err == nil || !strings.HasPrefix(err.Error(), "there are no data keys yet") {
		t.Fatalf("rotate without any data key: %v", err)
	}
	if _, err := ds[2].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Encrypted: true, Cipher: "aes256-gcm"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "a rotation on the interval", func() bool { p, _ := primaryOf(d); return p >= 3 })
	}
}

// lossCounters sums what would show a lost or refused packet on a node:
// ESP refusals, tunnel drops of the network and SA drops.
func lossCounters(t *testing.T, d *Daemon, network string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for r, v := range d.dp.TunnelStats().Drops {
		out["vtep "+r] += v
	}
	n, err := d.Network(network)
	if err != nil {
		t.Fatal(err)
	}
	for r, v := range n.Drops {
		out["net "+r] += v
	}
	for _, sa := range n.SAs {
		for r, v := range sa.Drops {
			out["sa "+r] += v
		}
	}
	return out
}

func TestEncryptedTCPAcrossTheOverlayWithRotation(t *testing.T) {
	ds, sbs := threeNodes(t)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Subnet: "10.4.0.0/24", Encrypted: true, Cipher: "aes256-gcm"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "the network and key 1 everywhere", func() bool {
			_, err := d.Network("sec")
			k := d.Keys()
			return err == nil && k.Primary == 1 && len(k.Nodes) == 3
		})
	}
	var eps []api.Endpoint
	for i, d := range ds {
		eps = append(eps, mustAttach(t, d, api.AttachRequest{Network: "sec", Name: fmt.Sprintf("c%d", i+1), Create: true}))
	}
	for _, d := range ds {
		waitFor(t, "remote endpoints and SAs with both peers", func() bool {
			f, _ := d.FDB("sec")
			remote := 0
			for _, e := range f {
				if e.Kind == "remote" && e.VTEP != "" {
					remote++
				}
			}
			n, _ := d.Network("sec")
			return remote == 2 && len(n.SAs) == 4
		})
	}
	before := [3]map[string]uint64{}
	for i, d := range ds {
		before[i] = lossCounters(t, d, "sec")
	}

	c1 := sbs[0].iface("/run/netns/c1", "eth0").stack
	c3 := sbs[2].iface("/run/netns/c3", "eth0").stack
	ln, err := c3.Listen(5001)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := make([]byte, 8<<20)
	rand.Read(data)
	rx := receiveAll(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := c1.Dial(ctx, netip.AddrPortFrom(netip.MustParseAddr(eps[2].IP), 5001))
	if err != nil {
		t.Fatal(err)
	}
	// Two rotations, asked for on h2 and h3, while the stream runs; each
	// is bounded by RotateKey's own wait.
	rotated := make(chan error, 1)
	go func() {
		for _, d := range []*Daemon{ds[1], ds[2]} {
			if _, err := d.RotateKey(context.Background()); err != nil {
				rotated <- err
				return
			}
		}
		rotated <- nil
	}()
	sent := make(chan error, 1)
	go func() {
		defer conn.Close()
		for off := 0; off < len(data); off += 64 << 10 {
			if _, err := conn.Write(data[off : off+64<<10]); err != nil {
				sent <- err
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		if err := <-rotated; err != nil {
			sent <- err
			return
		}
		// RotateKey returned once h2's and h3's primary moved on; the
		// sender h1 learns it through the cluster.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if p, _ := primaryOf(ds[0]); p == 3 {
				break
			}
			if time.Now().After(deadline) {
				sent <- errors.New("h1's primary key is not 3 10 s after the rotations")
				return
			}
		}
		// Some more traffic under the newest key, then the end of the stream.
		_, err := conn.Write(data[:1<<20])
		sent <- err
	}()
	want := append(bytes.Clone(data), data[:1<<20]...)
	b := rx.wait(t, len(want), func() {
		for _, d := range ds {
			t.Logf("%s: losses %v", d.cfg.Node, lossCounters(t, d, "sec"))
		}
	})
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("received %d bytes, not the %d sent", len(b), len(want))
	}
	// RotateKey returns once the asking node's primary moved on; the
	// others learn it through the cluster, so each is polled.
	for _, d := range ds {
		waitFor(t, fmt.Sprintf("key 3 primary on %s after two rotations", d.cfg.Node), func() bool {
			p, _ := primaryOf(d)
			return p == 3
		})
	}
	// Nothing was refused or dropped on the way: every receiver had each
	// key before any sender used it.
	for i, d := range ds {
		after := lossCounters(t, d, "sec")
		for r, v := range after {
			if v != before[i][r] {
				t.Errorf("%s: %s went from %d to %d during the rotations", d.cfg.Node, r, before[i][r], v)
			}
		}
	}
	// The stream went through SAs of key 3 both ways between h1 and h3.
	n, _ := ds[2].Network("sec")
	used := false
	for _, sa := range n.SAs {
		if sa.Node == "h1" && sa.Direction == "in" && sa.Key == 3 && sa.Packets > 0 && sa.Cipher == "aes256-gcm" {
			used = true
		}
	}
	if !used {
		t.Fatalf("h3 received nothing from h1 under key 3: %+v", n.SAs)
	}
}

// saPairs reports whether the SAs of nodes a and b with each other under
// key are one pair, as network inspect shows them on each: a's inbound SA
// from b has the SPI b's outbound SA to a seals with, and the other way
// round. Each run chooses its inbound SPIs at random, so they pair only
// once both sides derived the SAs of the other's current run, whatever
// traffic went through them.
func saPairs(na, nb api.Network, a, b string, key uint32) bool {
	spis := func(n api.Network, peer string) (in, out string) {
		for _, sa := range n.SAs {
			if sa.Node != peer || sa.Key != key {
				continue
			}
			if sa.Direction == "in" {
				in = sa.SPI
			} else {
				out = sa.SPI
			}
		}
		return in, out
	}
	aIn, aOut := spis(na, b)
	bIn, bOut := spis(nb, a)
	return aIn != "" && aOut != "" && aIn == bOut && bIn == aOut
}

// heldStream opens a TCP stream from the container in fromNS to port of
// dst, the container in toNS, and returns the accepted end, left open.
func heldStream(t *testing.T, from, to *fakeSandbox, fromNS, toNS string, dst netip.Addr, port uint16) net.Conn {
	t.Helper()
	ln, err := to.iface(toNS, "eth0").stack.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := from.iface(fromNS, "eth0").stack.Dial(ctx, netip.AddrPortFrom(dst, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	select {
	case c := <-accepted:
		if c == nil {
			t.Fatal("accepting the held stream failed")
		}
		return c
	case <-ctx.Done():
		t.Fatal("the held stream was not accepted")
	}
	return nil
}

// recvSYN reads frames from dev until a TCP SYN from src to port of dst
// arrives. Other frames of the same sender (segments of its earlier
// streams) are skipped; a frame of another sender, or no SYN within
// 30 s, fails the test.
func recvSYN(t *testing.T, dev *netdevtest.Device, srcMAC, dstMAC packet.MAC, src, dst netip.Addr, port uint16) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatalf("no TCP SYN from %s to %s port %d within 30 s", src, dst, port)
		}
		f := packet.Ethernet(recv(t, dev))
		if f.Src() != srcMAC || f.Dst() != dstMAC {
			t.Fatalf("received a frame %s -> %s, want %s's", f.Src(), f.Dst(), srcMAC)
		}
		if f.EtherType() != packet.EtherTypeIPv4 {
			continue
		}
		ip := packet.IPv4(f.Payload())
		if !ip.Valid() || ip.Protocol() != 6 || ip.Src() != src || ip.Dst() != dst || len(ip) < ip.HeaderLen()+14 {
			continue
		}
		tcp := ip[ip.HeaderLen():]
		if binary.BigEndian.Uint16(tcp[2:4]) == port && tcp[13]&0x12 == 0x02 {
			return
		}
	}
}

// transferStall is how long a test's TCP stream may make no progress
// before the test fails: netstack's retransmission timeout starts at
// 200 ms and doubles, so 30 s without a byte means about seven losses of
// the same segment in a row, a broken path. A fixed bound on the whole
// transfer failed instead on slow, intact ones: race-instrumented daemons
// sharing a loaded machine took from 7 s to over a minute for 9 MiB.
const transferStall = 30 * time.Second

// receiver reads one accepted stream to its end in the background.
type receiver struct {
	got chan []byte
	n   atomic.Int64 // bytes read so far
}

// receiveAll accepts one connection on ln and reads it until the sender
// closes it.
func receiveAll(ln interface{ Accept() (net.Conn, error) }) *receiver {
	r := &receiver{got: make(chan []byte, 1)}
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			r.got <- nil
			return
		}
		defer conn.Close()
		b, _ := io.ReadAll(io.TeeReader(conn, r))
		r.got <- b
	}()
	return r
}

// Write counts what the stream delivered.
func (r *receiver) Write(p []byte) (int, error) {
	r.n.Add(int64(len(p)))
	return len(p), nil
}

// wait returns the whole stream once the sender closed it; it fails the
// test, after calling explain, when no byte arrived for transferStall.
func (r *receiver) wait(t *testing.T, total int, explain func()) []byte {
	t.Helper()
	last, since := r.n.Load(), time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case b := <-r.got:
			return b
		case now := <-tick.C:
			if n := r.n.Load(); n != last {
				last, since = n, now
			} else if now.Sub(since) > transferStall {
				if explain != nil {
					explain()
				}
				t.Fatalf("transfer stalled: %d of %d bytes received, none for %v", n, total, transferStall)
			}
		}
	}
}

// tcpOnce moves size random bytes from stack a to b's port over TCP and
// fails unless they arrive intact.
func tcpOnce(t *testing.T, from, to *fakeSandbox, fromNS, toNS string, dst netip.Addr, port uint16, size int) {
	t.Helper()
	src := from.iface(fromNS, "eth0").stack
	ln, err := to.iface(toNS, "eth0").stack.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data := make([]byte, size)
	rand.Read(data)
	rx := receiveAll(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := src.Dial(ctx, netip.AddrPortFrom(dst, port))
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan error, 1)
	go func() {
		defer conn.Close()
		_, err := conn.Write(data)
		sent <- err
	}()
	b := rx.wait(t, len(data), nil)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, data) {
		t.Fatalf("received %d bytes, not the %d sent", len(b), len(data))
	}
}

func TestEncryptedNetworkSurvivesRotatorRestart(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	ds, sbs := threeNodesOn(t, mem)
	if _, err := ds[1].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Subnet: "10.5.0.0/24", Encrypted: true}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "key 1 everywhere", func() bool { _, err := d.Network("sec"); return err == nil && d.Keys().Primary == 1 })
	}
	ep1 := mustAttach(t, ds[0], api.AttachRequest{Network: "sec", Name: "c1", Create: true})
	ep3 := mustAttach(t, ds[2], api.AttachRequest{Network: "sec", Name: "c3", Create: true})
	waitFor(t, "SAs and remotes", func() bool {
		n1, _ := ds[0].Network("sec")
		n3, _ := ds[2].Network("sec")
		return len(n1.Endpoints) == 2 && len(n3.Endpoints) == 2 && len(n1.SAs) == 4 && len(n3.SAs) == 4
	})
	tcpOnce(t, sbs[0], sbs[2], "/run/netns/c1", "/run/netns/c3", netip.MustParseAddr(ep3.IP), 5001, 1<<20)
	secret := secretsOf(ds[0])[0]
	// c3 keeps sending to c1 across the restart: it closes a stream from
	// c1 while h1 is down, and its FIN, never acknowledged, is sent again
	// and again, through the restarted run's SAs once they exist. (So did,
	// by chance, the FIN of tcpOnce's stream when it outran h1's Close:
	// a wait for SAs that no packet went through then never ended.)
	held := heldStream(t, sbs[0], sbs[2], "/run/netns/c1", "/run/netns/c3", netip.MustParseAddr(ep3.IP), 5002)
	n3, _ := ds[2].Network("sec")
	oldSPIs := map[string]bool{}
	for _, sa := range n3.SAs {
		oldSPIs[sa.SPI] = true
	}

	// h1, the rotator, restarts with a new run key: the cluster keeps its
	// ring, and traffic resumes under SAs derived for the new run.
	dir, addr := ds[0].cfg.StateDir, ds[0].cfg.Advertise
	ds[0].Close()
	held.Close()
	join := []string{ds[1].cfg.Advertise.String() + ":" + fmt.Sprint(ds[1].cfg.GossipPort)}
	d1 := newNode(t, mem, "h1", addr, sbs[0], dir, join...)
	t.Cleanup(d1.Close)
	waitFor(t, "the restarted h1 with the cluster's ring and new SAs", func() bool {
		n1, _ := d1.Network("sec")
		n3, err := ds[2].Network("sec")
		return err == nil && d1.Keys().Primary == 1 && len(n1.SAs) == 4 && len(n3.SAs) == 4 && saPairs(n1, n3, "h1", "h3", 1)
	})
	n3, _ = ds[2].Network("sec")
	for _, sa := range n3.SAs {
		if sa.Node == "h1" && oldSPIs[sa.SPI] {
			t.Fatalf("h3 kept an SA of h1's previous run: %+v", sa)
		}
	}
	if s := secretsOf(d1)[0]; s != secret {
		t.Fatal("the restarted rotator replaced the cluster's key")
	}
	// The fake sandbox gives c1 a plain pipe after the restart (its
	// netstack cannot be reopened): c1 -> c3 is a frame from the pipe, c3
	// -> c1 a TCP SYN from c3's stack read from it.
	c1 := sbs[0].iface("/run/netns/c1", "eth0").container
	ip1, ip3 := netip.MustParseAddr(ep1.IP), netip.MustParseAddr(ep3.IP)
	mac1, _ := packet.ParseMAC(ep1.MAC)
	mac3, _ := packet.ParseMAC(ep3.MAC)
	send(t, c1, ipv4Frame(mac1, mac3, ip1, ip3, []byte("after restart")))
	waitFor(t, "h3 receiving from the restarted h1", func() bool {
		n3, _ := ds[2].Network("sec")
		for _, sa := range n3.SAs {
			if sa.Node == "h1" && sa.Direction == "in" && sa.Packets > 0 {
				return true
			}
		}
		return false
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sbs[2].iface("/run/netns/c3", "eth0").stack.Dial(ctx, netip.AddrPortFrom(ip1, 9))
	recvSYN(t, c1, mac3, mac1, ip3, ip1, 9)
	for _, d := range []*Daemon{d1, ds[2]} {
		if drops := lossCounters(t, d, "sec"); len(drops) > 0 {
			t.Logf("%s after the restart: %v", d.cfg.Node, drops)
		}
	}
}
