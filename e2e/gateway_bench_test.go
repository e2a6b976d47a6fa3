package e2e

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
)

// TestGatewayEgressThroughput measures egress TCP throughput (iperf3, 5 s)
// from a container to a server in an outside namespace, and from a
// slirp4netns namespace (rootless Podman's egress) with the container's
// MTU run in the same host namespace, and logs both. It checks that
// egress carries data; the numbers are for the report (the goal
// is at least 2x slirp4netns).
func TestGatewayEgressThroughput(t *testing.T) {
	if _, err := exec.LookPath("slirp4netns"); err != nil {
		t.Skip("slirp4netns not installed (.ci/deps installs it)")
	}
	e := newEnv(t)
	peer, err := e.tb.AddUnderlayPeer("outside")
	if err != nil {
		t.Fatal(err)
	}
	e.network("web", "10.93.0.0/24")
	e.run("c1", "web")
	var n api.Network
	e.json(&n, "network", "inspect", "web")
	mtu := n.MTU
	iperf := func(name string, client func(args ...string) *exec.Cmd) testbed.IperfResult {
		t.Helper()
		srv := startBackground(t, exec.Command("ip", "netns", "exec", peer.Netns, "iperf3", "-s", "-1", "-B", peer.Addr))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := testbed.WaitTCPListen(ctx, peer.NetnsPath, 5201); err != nil {
			t.Fatalf("iperf3 server: %v", err)
		}
		o, err := client("iperf3", "-c", peer.Addr, "-t", "5", "-J").Output()
		if err != nil {
			t.Fatalf("%s iperf3: %v\n%s", name, err, o)
		}
		r, err := testbed.ParseIperf3JSON(o)
		if err != nil {
			t.Fatalf("%s iperf3 output: %v", name, err)
		}
		srv.wait(10 * time.Second)
		return r
	}
	vx := iperf("vxmesh", func(args ...string) *exec.Cmd {
		return e.h.Command(context.Background(), append([]string{"exec", "c1", "--"}, args...)...)
	})

	// slirp4netns in the host's namespace, for a namespace of its own.
	ns := startBackground(t, exec.Command("ip", "netns", "exec", e.h.Netns, "unshare", "--net", "--", "sleep", "120"))
	pid := strconv.Itoa(ns.cmd.Process.Pid)
	startBackground(t, exec.Command("ip", "netns", "exec", e.h.Netns, "slirp4netns", "--configure", "--mtu", strconv.Itoa(mtu), "--disable-host-loopback", pid, "tap0"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		o, _ := exec.Command("nsenter", "-t", pid, "-n", "ip", "-4", "addr", "show", "tap0").Output()
		if strings.Contains(string(o), "10.0.2.100") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("slirp4netns did not configure tap0")
		}
		time.Sleep(100 * time.Millisecond)
	}
	sl := iperf("slirp4netns", func(args ...string) *exec.Cmd {
		return exec.Command("nsenter", append([]string{"-t", pid, "-n"}, args...)...)
	})
	t.Logf("egress TCP, MTU %d, iperf3 -t 5: vxmesh gateway %.2f Gbit/s, slirp4netns %.2f Gbit/s (%.1fx)", mtu, vx.Gbps(), sl.Gbps(), vx.Gbps()/sl.Gbps())
	if vx.Gbps() <= 0 || sl.Gbps() <= 0 {
		t.Errorf("no throughput measured: vxmesh %v, slirp4netns %v", vx.Gbps(), sl.Gbps())
	}
}
