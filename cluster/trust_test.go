package cluster

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"net/netip"
	"testing"
	"time"
)

// inject hands raw gossip bytes to n as memberlist would deliver them.
func inject(n *testNode, m *message) {
	(*delegate)(n.Cluster).NotifyMsg(m.encode())
}

func valueOf(n *testNode, table, key string) string {
	e, ok := n.Get(table, key)
	if !ok {
		return ""
	}
	return string(e.Value)
}

// TestHugeVersionDoesNotFreezeTables: one entry at version 2^64-1 (or a
// push/pull clock there) must not wrap the Lamport clock, after which every
// later write would lose to the older ones everywhere.
func TestHugeVersionDoesNotFreezeTables(t *testing.T) {
	nodes := startCluster(t, mustKey(t), 2)
	n1, n2 := nodes[0], nodes[1]
	if err := n1.Put("networks", "web", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "v1 on n2", func() bool { return valueOf(n2, "networks", "web") == "v1" })

	inject(n1, &message{Type: msgEntries, From: "evil", Entries: []Entry{
		{Table: "networks", Key: "evil", Value: []byte("x"), Owner: "evil", Version: math.MaxUint64},
	}})
	(*delegate)(n2.Cluster).MergeRemoteState((&message{Type: msgState, From: "evil", Clock: math.MaxUint64}).encode(), false)
	if _, ok := n1.Get("networks", "evil"); ok {
		t.Fatal("an entry 2^64-1 ahead of the clock was accepted")
	}
	if n1.Drops()["version-ahead"] == 0 {
		t.Fatalf("refused entry not counted: %v", n1.Drops())
	}

	for i, n := range []*testNode{n1, n2, n1} {
		v := []byte{'w', byte('2' + i)}
		if err := n.Put("networks", "web", v); err != nil {
			t.Fatal(err)
		}
		for _, m := range nodes {
			waitFor(t, 5*time.Second, "a later write everywhere", func() bool { return valueOf(m, "networks", "web") == string(v) })
		}
	}
}

// TestClockNeverWraps: at the end of the clock a write fails with an error
// instead of wrapping to a version that every older entry beats.
func TestClockNeverWraps(t *testing.T) {
	n := startNode(t, "n1", mustKey(t), 0)
	if err := n.Put("networks", "web", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	n.clock = maxVersion
	n.mu.Unlock()
	if err := n.Put("networks", "web", []byte("v2")); err == nil {
		t.Fatal("a write past the end of the clock succeeded")
	}
	if e, _ := n.Get("networks", "web"); string(e.Value) != "v1" || e.Version == 0 {
		t.Fatalf("entry after refused write: %+v", e)
	}
}

// sealV0 encrypts plain as memberlist's encryption version 0 (AES-GCM with
// PKCS#7 padding) would, but without padding: the last plaintext byte
// is then taken as a pad length larger than the message.
func sealV0(t *testing.T, key, plain, ad []byte) []byte {
	t.Helper()
	blk, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	gcm, err := cipher.NewGCM(blk)
	if err != nil {
		t.Fatal(err)
	}
	out := []byte{0} // encryption version 0
	nonce := make([]byte, gcm.NonceSize())
	rand.Read(nonce)
	out = append(out, nonce...)
	return gcm.Seal(out, nonce, plain, ad)
}

// TestGossipVersion0BadPadDoesNotCrash sends the packet and the stream that
// make memberlist v0.5.4 panic in pkcs7decode: valid AES-GCM under the
// cluster key, encryption version 0, a pad byte longer than the plaintext.
// The node must drop both, count them and keep working.
func TestGossipVersion0BadPadDoesNotCrash(t *testing.T) {
	key := mustKey(t)
	nodes := startCluster(t, key, 2)
	n1 := nodes[0]
	plain := bytes.Repeat([]byte{0xff}, 32)

	udp, err := net.Dial("udp", n1.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	if _, err := udp.Write(sealV0(t, key, plain, nil)); err != nil {
		t.Fatal(err)
	}

	ct := sealV0(t, key, plain, nil)
	hdr := []byte{10, 0, 0, 0, 0} // memberlist's encryptMsg type, then the length
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(ct)))
	ct = sealV0(t, key, plain, hdr) // the stream's header is the additional data
	tcp, err := net.Dial("tcp", n1.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	if _, err := tcp.Write(append(hdr, ct...)); err != nil {
		t.Fatal(err)
	}

	waitFor(t, 5*time.Second, "both refused", func() bool { return n1.Drops()["gossip-version"] >= 2 })
	if err := n1.Put("networks", "after", []byte("ok")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "replication after the attack", func() bool { return valueOf(nodes[1], "networks", "after") == "ok" })
}

// TestMemberlistLogRateLimited: memberlist logs every malformed packet; a
// peer sending garbage (from ever-changing ports or addresses) must not
// flood the daemon's log.
func TestMemberlistLogRateLimited(t *testing.T) {
	n := startNode(t, "n1", mustKey(t), 0)
	b := &logBridge{c: n.Cluster}
	for i := range 200 {
		fmt.Fprintf(b, "[ERR] memberlist: Failed to decode ping: msgpack decode error [pos %d]: EOF from=10.0.%d.%d:%d\n", i, i/250, i%250, 1000+i)
	}
	if got := n.logs.count("Failed to decode ping"); got != 1 {
		t.Fatalf("200 garbage packets gave %d log lines, want 1", got)
	}
	fmt.Fprintf(b, "[ERR] memberlist: Push/Pull with n2 failed: dial tcp: connection refused\n")
	if got := n.logs.count("Push/Pull with n2 failed"); got != 1 {
		t.Fatalf("another message was suppressed too (%d lines)", got)
	}
}

// TestReplayAfterTombstoneReaped: a recorded broadcast replayed after the
// delete's tombstone was reaped must not resurrect the entry, on the node
// that reaped it nor on a node that joins afterwards.
func TestReplayAfterTombstoneReaped(t *testing.T) {
	key := mustKey(t)
	cfg := testConfig("n1", key, freePort(t), &logSink{})
	cfg.TombstoneTTL = 50 * time.Millisecond
	c, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.DefineTable("networks", TableOptions{})
	if err := c.Put("networks", "web", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	recorded := (*delegate)(c).GetBroadcasts(0, 64<<10)
	if len(recorded) != 1 {
		t.Fatalf("%d broadcasts queued, want 1", len(recorded))
	}
	if err := c.Delete("networks", "web"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the tombstone reaped", func() bool { return !c.Known("networks", "web") })

	(*delegate)(c).NotifyMsg(recorded[0])
	if _, ok := c.Get("networks", "web"); ok {
		t.Fatal("a replayed broadcast resurrected a deleted entry")
	}
	if c.Drops()["replayed"] == 0 {
		t.Fatalf("replay not counted: %v", c.Drops())
	}

	// A node joining later learns the watermark with the state, and then
	// refuses the replay too; later writes still spread.
	n2 := startNode(t, "n2", key, 0)
	if _, err := n2.Join([]string{net.JoinHostPort("127.0.0.1", itoa(cfg.GossipPort))}); err != nil {
		t.Fatal(err)
	}
	(*delegate)(n2.Cluster).NotifyMsg(recorded[0])
	if _, ok := n2.Get("networks", "web"); ok {
		t.Fatal("a replayed broadcast resurrected a deleted entry on a node that joined later")
	}
	if err := c.Put("networks", "db", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a new entry on n2", func() bool { return valueOf(n2, "networks", "db") == "v2" })
}

// TestEntryBelowWatermarkIsRestamped: a node holding an entry that others
// lack and whose version is below their watermark (it wrote it while
// partitioned, or before a restart) writes it again above the watermark
// when it learns the watermark, so the entry still spreads.
func TestEntryBelowWatermarkIsRestamped(t *testing.T) {
	key := mustKey(t)
	cfg := testConfig("n1", key, freePort(t), &logSink{})
	cfg.TombstoneTTL = 50 * time.Millisecond
	c, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.DefineTable("networks", TableOptions{})
	for range 5 {
		c.Put("networks", "tmp", []byte("x"))
	}
	c.Delete("networks", "tmp")
	waitFor(t, 5*time.Second, "the tombstone reaped", func() bool { return !c.Known("networks", "tmp") })

	n2 := startNode(t, "n2", key, 0) // its clock is far behind n1's watermark
	if err := n2.Put("networks", "db", []byte("mine")); err != nil {
		t.Fatal(err)
	}
	if _, err := n2.Join([]string{net.JoinHostPort("127.0.0.1", itoa(cfg.GossipPort))}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "n2's entry on n1", func() bool {
		e, ok := c.Get("networks", "db")
		return ok && string(e.Value) == "mine"
	})
}

// TestCloseWhilePacketsArrive: the guarded transport must keep draining
// memberlist's listener while it shuts down, or Close hangs when a packet
// is in flight.
func TestCloseWhilePacketsArrive(t *testing.T) {
	key := mustKey(t)
	n := startNode(t, "n1", key, 0)
	udp, err := net.Dial("udp", n.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	stop := make(chan struct{})
	go func() {
		pkt := sealV0(t, key, []byte("x"), nil)
		pkt[0] = mlEncryptVersion // passes the filter, fails to decrypt
		for {
			select {
			case <-stop:
				return
			default:
				udp.Write(pkt)
			}
		}
	}()
	defer close(stop)
	time.Sleep(50 * time.Millisecond) // let the flood start; not a synchronisation
	done := make(chan struct{})
	go func() { n.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung while packets arrived")
	}
}

// TestClaimedBlocksInOrder: with a block claimed for an explicit address
// (ClaimBlockAt) above the first one, the lowest block still comes first,
// so the next automatic address is the lowest free one.
func TestClaimedBlocksInOrder(t *testing.T) {
	n := startNode(t, "n1", mustKey(t), 0)
	subnet := netip.MustParsePrefix("10.50.0.0/24")
	if _, err := n.ClaimBlock("web", subnet, 28); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"10.50.0.48/28", "10.50.0.240/28", "10.50.0.112/28"} {
		if err := n.ClaimBlockAt("web", netip.MustParsePrefix(b)); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 {
		got := n.ClaimedBlocks("web")
		if len(got) != 4 || got[0].String() != "10.50.0.0/28" || got[3].String() != "10.50.0.240/28" {
			t.Fatalf("claimed blocks %v, want them in address order", got)
		}
	}
}
