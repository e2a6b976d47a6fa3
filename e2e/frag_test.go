package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

// TestFragmentsToVIPAndThroughGateway: datagrams larger than the network
// MTU, which the sender's kernel fragments, reach a service VIP and come
// back whole: a container's 4,000- and 20,000-byte UDP datagrams to a
// VIP whose backend is on another host are echoed back whole; an outside
// client's 4,000-byte datagram to a published UDP port (mode=ingress) on
// the host without the backend is echoed back whole (the backend's host
// steers the reply's fragments back through the ingress host); and ping
// -s 3000 from a container to an outside address is answered. No
// fragment is dropped on the way.
func TestFragmentsToVIPAndThroughGateway(t *testing.T) {
	es := newCluster(t, 2)
	h1, h2 := es[0], es[1]
	peer, err := h1.tb.AddUnderlayPeer("client")
	if err != nil {
		t.Fatal(err)
	}
	h1.network("web", "10.98.0.0/24")
	h2.waitNetwork("web")
	h1.cli("service", "create", "echo", "--network", "web", "--port", "7007/udp",
		"--publish", "published=8090,target=7007,protocol=udp")
	h2.waitService("echo")
	h2.cli("run", "-d", "--network", "web", "--name", "e2", "--service", "echo", "--", suite.self, helperArg, "echo", "7007")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := testbed.WaitTCPListen(ctx, h2.h.ContainerNetnsPath("e2"), 7007); err != nil {
		t.Fatalf("echo backend: %v", err)
	}
	h1.waitBackends("echo", "e2")
	h1.run("c1", "web")
	vip := h1.vip("echo", "web")

	for _, size := range []string{"4000", "20000"} {
		out, err := h1.h.Exec("c1", suite.self, helperArg, "udpecho", vip+":7007", size)
		if err != nil || !strings.Contains(string(out), "echoed "+size) {
			t.Errorf("c1's %s-byte datagram to the VIP %s: %v\n%s", size, vip, err, out)
		}
	}

	h1.waitPublishState("echo", h1.h.Name, "published=8090,", "up")
	c, err := dialFrom(t, peer, "udp4", h1.h.Addr+":8090")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := udpEcho(c, 4000); err != nil {
		t.Errorf("outside client's 4000-byte datagram to %s:8090 (no backend there): %v", h1.h.Addr, err)
	}

	if out, err := h1.h.Exec("c1", "ping", "-c", "2", "-s", "3000", "-W", "3", peer.Addr); err != nil {
		t.Errorf("c1 ping -s 3000 outside %s: %v\n%s", peer.Addr, err, out)
	}

	for _, e := range es {
		if out, _ := e.h.CLI("stats"); t.Failed() {
			t.Logf("stats of %s:\n%s", e.h.Name, out)
		}
	}
}
