package gateway

import (
	"bytes"
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/vxmesh/vxmesh/packet"
)

// newSecretGateway is a gateway (no switch) whose egress has secret.
func newSecretGateway(t *testing.T, secret []byte) *Gateway {
	t.Helper()
	g, err := New(Config{Name: "web", Addr: gwAddr, MAC: gwMAC, MTU: 1500, Egress: NewEgress(EgressConfig{TCPSecret: secret})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// synOf dials dst from src in g's stack and returns the SYN it sends:
// its sequence number (the ISN) and timestamp value.
func synOf(t *testing.T, g *Gateway, src, dst netip.AddrPort) (isn, tsval uint32) {
	t.Helper()
	if err := g.stack.AddStaticNeighbor(nicID, ipv4.ProtocolNumber, tcpip.AddrFrom4(dst.Addr().As4()), tcpip.LinkAddress(ctrMAC[:])); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if c, err := g.DialTCP(ctx, src, dst); err == nil {
			c.Close()
		}
	})
	defer wg.Wait()
	defer cancel()
	stop := time.AfterFunc(10*time.Second, g.Close) // a Read that never gets a SYN ends
	defer stop.Stop()
	dev := g.Device()
	b := packet.NewBatch(dev.BatchSize())
	for {
		n, err := dev.Read(b.Bufs, b.Sizes, packet.Headroom)
		if err != nil {
			t.Fatalf("no SYN from the gateway: %v", err)
		}
		for i := range n {
			eth := packet.Ethernet(b.Bufs[i][packet.Headroom : packet.Headroom+b.Sizes[i]])
			if eth.EtherType() != packet.EtherTypeIPv4 {
				continue
			}
			ip := header.IPv4(eth.Payload())
			if ip.TransportProtocol() != header.TCPProtocolNumber {
				continue
			}
			tcp := header.TCP(ip.Payload())
			if tcp.Flags() != header.TCPFlagSyn || tcp.SourcePort() != src.Port() {
				continue
			}
			opts := header.ParseSynOptions(tcp.Options(), false)
			if !opts.TS {
				t.Fatal("the gateway's SYN has no timestamp option")
			}
			return tcp.SequenceNumber(), opts.TSVal
		}
	}
}

// TestTCPSecretAcrossGateways: two gateways (two hosts) with the same
// TCPSecret send the same 4-tuple's SYN with the timestamp and ISN one
// stack would have sent a little later (so a backend's TIME-WAIT for the
// first host's connection takes the second host's SYN); a gateway of
// another secret does not.
func TestTCPSecretAcrossGateways(t *testing.T) {
	secret, err := TCPSecret(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := TCPSecret(bytes.Repeat([]byte{8}, 32))
	a, b, c := newSecretGateway(t, secret), newSecretGateway(t, secret), newSecretGateway(t, other)
	src := netip.MustParseAddrPort("192.0.2.7:40000")
	dst := netip.MustParseAddrPort("10.0.1.100:80")

	start := time.Now()
	isnA, tsA := synOf(t, a, src, dst)
	time.Sleep(20 * time.Millisecond) // the second SYN is later, as a client's next connection
	isnB, tsB := synOf(t, b, src, dst)
	elapsed := time.Since(start)
	if d := int32(tsB - tsA); d < 20 || time.Duration(d)*time.Millisecond > elapsed+time.Millisecond {
		t.Errorf("TSval %d on host A then %d on host B, within %s: want B ahead by the milliseconds between the SYNs (20 ms or more)", tsA, tsB, elapsed)
	}
	// gVisor's ISN clock ticks every 64 ns.
	if d := int64(int32(isnB - isnA)); d < int64(20*time.Millisecond)>>6 || d > int64(elapsed+time.Millisecond)>>6 {
		t.Errorf("ISN %d on host A then %d on host B: %d ticks of 64 ns apart in %s", isnA, isnB, d, elapsed)
	}
	_, tsC := synOf(t, c, src, dst)
	if d := int32(tsC - tsA); d > -100000 && d < 100000 {
		t.Errorf("TSval %d with another secret, %d ms from host A's: want an unrelated offset", tsC, d)
	}
}

// TestTCPSecretDerivation: the secret is the cluster key's HKDF under
// its own label: the same for the same key, another for another key,
// never the key itself; an empty key is refused, and so is a gateway
// given a secret of the wrong length.
func TestTCPSecretDerivation(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	s1, err := TCPSecret(key)
	if err != nil || len(s1) != tcpSecretLen {
		t.Fatalf("TCPSecret: %x, %v", s1, err)
	}
	s2, _ := TCPSecret(key)
	s3, _ := TCPSecret(bytes.Repeat([]byte{2}, 32))
	if !bytes.Equal(s1, s2) || bytes.Equal(s1, s3) || bytes.Equal(s1, key) {
		t.Errorf("secrets %x, %x (same key) and %x (another): want the first two equal, the third not, none the key", s1, s2, s3)
	}
	if _, err := TCPSecret(nil); err == nil {
		t.Error("an empty cluster key: no error")
	}
	_, err = New(Config{Name: "web", Addr: gwAddr, MAC: gwMAC, MTU: 1500, Egress: NewEgress(EgressConfig{TCPSecret: key[:16]})})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("tcp secret of 16 bytes")) {
		t.Errorf("a 16-byte secret: %v, want refused", err)
	}
}

// TestWallClock: the stacks' clock reads wall-clock time and stays
// monotonic: a wall clock stepped forward moves it forward, one stepped
// back does not move it back (it keeps running).
func TestWallClock(t *testing.T) {
	c := newWallClock()
	wall := time.Now().UnixNano()
	if got := int64(c.NowMonotonic().Sub(tcpip.MonotonicTime{})); got < wall-int64(time.Second) || got > wall+int64(time.Second) {
		t.Fatalf("clock reads %d, wall clock %d", got, wall)
	}
	c.off.Store(1000)
	steps := []struct {
		wall, mono, want int64
	}{
		{1100, 100, 1100},   // in step
		{1200, 200, 1200},   // in step
		{5300, 300, 5300},   // wall stepped forward by 4000
		{2400, 400, 5400},   // wall stepped back: keeps running
		{2500, 500, 5500},   // still ahead of the wall by the step
		{10600, 600, 10600}, // forward again
	}
	for _, s := range steps {
		if got := c.reading(s.wall, s.mono); got != s.want {
			t.Errorf("wall %d, monotonic %d: reads %d, want %d", s.wall, s.mono, got, s.want)
		}
	}
}
