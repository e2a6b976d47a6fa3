package gateway

import (
	"bufio"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestPublishMaxFlows: published connections take slots of the host's
// flow bound (--egress-max-flows), shared with egress: beyond it a
// connection is reset and counted as refused, and an egress flow is
// refused too; a closed connection frees its slot.
func TestPublishMaxFlows(t *testing.T) {
	h := newHarness(t, false, EgressConfig{MaxFlows: 1})
	ha := publicAddr(t)
	serveEcho(t, h, 80)
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp"}
	h.publish(t, spec)
	addr := netip.AddrPortFrom(ha, spec.HostPort).String()
	connect := func() (net.Conn, error) {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	first, err := connect()
	if err != nil {
		t.Fatalf("first connection: %v", err)
	}
	if c, err := connect(); err == nil {
		c.Close()
		t.Fatal("a second connection beyond MaxFlows 1 reached the container")
	}
	if _, err := h.dial(t, netip.AddrPortFrom(outside, 80)); err == nil {
		t.Fatal("an egress flow beyond MaxFlows 1 was admitted while a published one held the slot")
	}
	st := h.eg.Stats()
	if st.Refused[RefuseIngressLimit] != 1 || st.Refused[RefuseLimit] != 1 || st.IngressTCP != 1 {
		t.Errorf("stats %+v: want one ingress-limit and one limit refusal, one published flow", st)
	}
	first.Close()
	poll(t, "the published flow to end", func() bool { return h.eg.Stats().IngressTCP == 0 })
	again, err := connect()
	if err != nil {
		t.Fatalf("a connection after the first closed: %v", err)
	}
	again.Close()
}
