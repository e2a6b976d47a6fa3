package cluster

import (
	"net/netip"
	"testing"
	"time"
)

// TestRejoinFindsANodeThatStartsLater gives a node the address of a node
// that is not running yet, as a restarted daemon does with the members it
// knew: once that node starts (knowing nothing), the two are one cluster.
func TestRejoinFindsANodeThatStartsLater(t *testing.T) {
	key := mustKey(t)
	port := freePort(t)
	n1 := startNode(t, "n1", key, 0)
	n1.Rejoin([]netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))})
	waitFor(t, 5*time.Second, "a failed first attempt", func() bool {
		n1.mu.Lock()
		defer n1.mu.Unlock()
		return len(n1.rejoin) == 1 && !n1.reconnectOn.Load()
	})
	n2 := startNode(t, "n2", key, port)
	waitFor(t, 10*time.Second, "n1 and n2 joined", func() bool {
		return countState(n1.Members(), StateAlive) == 2 && countState(n2.Members(), StateAlive) == 2
	})
	waitFor(t, 5*time.Second, "the rejoin schedule cleared", func() bool {
		n1.mu.Lock()
		defer n1.mu.Unlock()
		return len(n1.rejoin) == 0 && len(n1.rejoinWant) == 0
	})
}

// TestRejoinBacksOff checks the retry schedule of an unreachable address:
// 1 s, then doubling up to ReconnectInterval.
func TestRejoinBacksOff(t *testing.T) {
	key := mustKey(t)
	cfg := testConfig("n1", key, freePort(t), &logSink{})
	cfg.ReconnectInterval = 5 * time.Second
	c, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dead := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freePort(t)))
	c.Rejoin([]netip.AddrPort{dead})
	now := time.Now()
	for _, want := range []time.Duration{2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		waitFor(t, 10*time.Second, "the attempt to end", func() bool { return !c.reconnectOn.Load() })
		c.mu.Lock()
		b := c.rejoin[dead]
		got := b.delay
		c.mu.Unlock()
		if got != want {
			t.Fatalf("after a failure the wait is %v, want %v", got, want)
		}
		now = now.Add(got + time.Second)
		c.reconnect(now) // the next attempt is due
	}
}

// A member that one node alone declared dead for NodeGrace (its probes
// lost on a loaded machine) has its entries expired there, and that node
// refuses its writes meanwhile; the member itself saw nothing wrong, so it
// does not announce its entries again when it is back. The node gets them
// back at once, not at the next periodic push/pull (an hour here). Here the
// node's event delegate is told of the death and the return, as memberlist
// would after a refuted false death.
func TestMemberBackFromGoneGetsItsEntriesBack(t *testing.T) {
	_, cs := memCluster(t, 3, func(c *Config) {
		c.PushPullInterval = time.Hour
		// Patient probes: memberlist's own verdicts on a loaded machine
		// would mix with the ones this test makes.
		c.ProbeInterval, c.ProbeTimeout, c.SuspicionMult = time.Second, 500*time.Millisecond, 6
	})
	w, x := cs[0], cs[1]
	if err := w.Put("endpoints", "before", []byte("v")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every node holds the first entry", func() bool { return allHold(cs, "endpoints", 1) })
	// An old entry: w broadcasts it again no more.
	w.mu.Lock()
	clear(w.regossip)
	w.mu.Unlock()
	d := (*delegate)(x)
	d.NotifyLeave(fakeMember(0))
	waitFor(t, 10*time.Second, "x expired w's entries", func() bool {
		x.mu.Lock()
		defer x.mu.Unlock()
		return x.gone[w.LocalName()]
	})
	if err := w.Put("endpoints", "while", []byte("v")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the third node holds the second entry", func() bool { return allHold(cs[2:], "endpoints", 2) })
	d.NotifyJoin(fakeMember(0))
	deadline := time.Now().Add(10 * time.Second)
	for !allHold(cs, "endpoints", 2) {
		if time.Now().After(deadline) {
			t.Fatalf("10 s after w came back, x lacks w's entries:%s", tableReport(cs, "endpoints", []string{"before", "while"}))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The entries may come back by another way first (under load, x held
	// both with no pull counted yet); the pull runs on a goroutine of its
	// own after a random spread, which a loaded machine delays.
	waitFor(t, 10*time.Second, "x's pull of w's state", func() bool { return x.Drops()["state-pulled"] > 0 })
	if n := x.Drops()["state-pulled"]; n != 1 {
		t.Fatalf("x pulled w's state %d times, want once", n)
	}
}
