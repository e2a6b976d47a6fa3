package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

// tcpSinkPy accepts one connection on port 5000 and prints the byte count
// and SHA-256 of everything it received.
const tcpSinkPy = `import socket, hashlib
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5000)); s.listen(1); c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest())`

// tcpSourcePy connects to argv[1]:5000 (retrying while the sink starts),
// sends 48 MiB of seeded random bytes and prints their count and SHA-256.
const tcpSourcePy = `import socket, hashlib, random, sys, time
data = random.Random(7).randbytes(48 << 20)
for _ in range(100):
    try:
        c = socket.create_connection((sys.argv[1], 5000)); break
    except OSError:
        time.sleep(0.1)
c.sendall(data); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()
print(len(data), hashlib.sha256(data).hexdigest())`

// containerPair creates network (subnet) on h1, container c1 on it on h1
// and c2 on h2, waits until each host knows the other's container and
// c1 pings c2.
func containerPair(h1, h2 *env, network, subnet string) (c1, c2 api.Endpoint) {
	h1.t.Helper()
	h1.network(network, subnet)
	h2.waitNetwork(network)
	h1.run("c1", network)
	h2.run("c2", network)
	c1, c2 = h1.endpoint("c1"), h2.endpoint("c2")
	h1.waitRemote(network, c2, h2.h.Addr)
	h2.waitRemote(network, c1, h1.h.Addr)
	h1.mustPing("c1", addrOnly(c2.IP))
	return c1, c2
}

// TestKernelTunnelCarriesTCPIntactAcrossHosts: with --kernel-tunnel, a
// bulk TCP transfer between containers on two hosts arrives byte for byte
// (a sender-side hash against the receiver's), and the daemons' stats show
// that super-segments went through the kernel whole and arrived whole (the
// testbed's underlay veths carry tunnel GSO packets, as kernel VXLAN's).
func TestKernelTunnelCarriesTCPIntactAcrossHosts(t *testing.T) {
	testenv.RequireCommand(t, "python3", "python3")
	es := newCluster(t, 2, "--kernel-tunnel")
	h1, h2 := es[0], es[1]
	_, c2 := containerPair(h1, h2, "bulk", "10.73.0.0/24")

	type result struct {
		out string
		err error
	}
	sink := make(chan result, 1)
	go func() {
		out, err := h2.h.Exec("c2", "python3", "-c", tcpSinkPy)
		sink <- result{out, err}
	}()
	sent, err := h1.h.Exec("c1", "python3", "-c", tcpSourcePy, addrOnly(c2.IP))
	if err != nil {
		t.Fatalf("source in c1: %v\n%s", err, sent)
	}
	var got result
	select {
	case got = <-sink:
	case <-time.After(60 * time.Second):
		t.Fatal("the sink in c2 did not finish")
	}
	if got.err != nil {
		t.Fatalf("sink in c2: %v\n%s", got.err, got.out)
	}
	if strings.TrimSpace(got.out) != strings.TrimSpace(sent) {
		t.Errorf("c2 received %q, c1 sent %q", strings.TrimSpace(got.out), strings.TrimSpace(sent))
	}
	var s1, s2 api.Stats
	h1.json(&s1, "stats")
	h2.json(&s2, "stats")
	if s1.KernelTunnel == nil || s1.KernelTunnel.TxSupers == 0 || s2.KernelTunnel == nil || s2.KernelTunnel.RxSupers == 0 {
		t.Errorf("no super-segments through the kernel: h1 %+v, h2 %+v", s1.KernelTunnel, s2.KernelTunnel)
	}
}

// notified bounds how long an auto daemon takes to follow an nftables
// change: it subscribes to the changes (fwprobe.Watch) and checks again at
// once, well inside the re-check interval, which the test sets to
// recheckSlow (the default, 1 s, would hide a broken subscription).
const notified = 3 * time.Second

// recheckSlow is the test's --kernel-tunnel-recheck.
const recheckSlow = "1m"

// kernelTunnel returns e's kernel tunnel stats (never nil: fails instead).
func (e *env) kernelTunnel() api.KernelTunnelStats {
	e.t.Helper()
	var s api.Stats
	e.json(&s, "stats")
	if s.KernelTunnel == nil {
		e.t.Fatalf("%s: stats show no kernel tunnel with the default --kernel-tunnel=auto", e.h.Name)
	}
	return *s.KernelTunnel
}

// waitKernelTunnel polls e's stats until the kernel tunnel is active (or
// not) for a reason containing reason, and returns them.
func (e *env) waitKernelTunnel(active bool, reason string, timeout time.Duration) api.KernelTunnelStats {
	e.t.Helper()
	var k api.KernelTunnelStats
	eventually(e.t, timeout, func() error {
		if k = e.kernelTunnel(); k.Active != active || !strings.Contains(k.Reason, reason) {
			return fmt.Errorf("%s: %+v", e.h.Name, k)
		}
		return nil
	}, "kernel tunnel active %v for %q", active, reason)
	return k
}

// TestKernelTunnelAutoFollowsTheForwardFirewall: with --kernel-tunnel=auto
// (the default) and a re-check interval of a minute, two hosts whose namespaces have no firewall send
// TCP super-segments through the kernel; an nftables forward chain added
// in the sending host's namespace makes its daemon fall back to the
// userspace split at once (it is notified of nftables changes, not only
// re-checking every interval), and its removal switches it back, while one paced TCP transfer between the hosts runs throughout
// and arrives byte for byte.
func TestKernelTunnelAutoFollowsTheForwardFirewall(t *testing.T) {
	testenv.RequireCommand(t, "nft", "nftables")
	es := newCluster(t, 2, "--kernel-tunnel-recheck", recheckSlow)
	h1, h2 := es[0], es[1]
	_, c2 := containerPair(h1, h2, "fw", "10.74.0.0/24")
	k := h1.kernelTunnel()
	if k.Mode != "auto" || !k.Active {
		t.Fatalf("h1 with the default mode in a namespace without a firewall: %+v; want auto and active", k)
	}
	nft := func(cmd string) {
		t.Helper()
		if out, err := exec.Command("ip", "netns", "exec", h1.h.Netns, "nft", cmd).CombinedOutput(); err != nil {
			t.Fatalf("nft %s in %s: %v\n%s", cmd, h1.h.Netns, err, out)
		}
	}

	// 120 MB at 4 MB/s: about 30 s, longer than two re-check intervals.
	const size, bps = 120 << 20, 4 << 20
	recv := startBackground(t, h2.h.Command(context.Background(), "exec", "c2", "--", suite.self, helperArg, "recv", "0.0.0.0:7000"))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := testbed.WaitTCPListen(ctx, h2.h.ContainerNetnsPath("c2"), 7000); err != nil {
		t.Fatalf("receiver in c2: %v: %s", err, recv.out.String())
	}
	send := startBackground(t, h1.h.Command(context.Background(), "exec", "c1", "--", suite.self, helperArg, "send",
		addrOnly(c2.IP)+":7000", strconv.Itoa(size), "11", strconv.Itoa(bps)))
	growing := func(what string, from uint64) uint64 {
		t.Helper()
		var n uint64
		eventually(t, 10*time.Second, func() error {
			if n = h1.kernelTunnel().TxSupers; n <= from {
				return fmt.Errorf("%d super-packets sent", n)
			}
			return nil
		}, "%s: the transfer's super-segments through the kernel", what)
		return n
	}
	growing("before the firewall", k.TxSupers)

	nft("add table inet f")
	nft("add chain inet f fw { type filter hook forward priority 0; policy drop; }")
	off := h1.waitKernelTunnel(false, `nftables chain "inet f fw" on the forward hook`, notified)
	// The transfer goes on, split in userspace: c2 keeps receiving while
	// no super-packet is sent.
	rx := func() uint64 {
		var s api.Stats
		h2.json(&s, "stats")
		for _, n := range s.Networks {
			for _, p := range n.Ports {
				if p.Name == "c2/eth0" {
					return p.TxBytes
				}
			}
		}
		return 0
	}
	before := rx()
	eventually(t, 15*time.Second, func() error {
		if got := rx(); got < before+8<<20 {
			return fmt.Errorf("c2 got %d bytes since the switch", got-before)
		}
		return nil
	}, "the transfer with the firewall in place")
	if now := h1.kernelTunnel().TxSupers; now != off.TxSupers {
		t.Errorf("%d super-packets sent through the kernel while it was switched off", now-off.TxSupers)
	}

	nft("delete table inet f")
	on := h1.waitKernelTunnel(true, "no nftables chain", notified)
	growing("after the firewall", on.TxSupers)

	exited, err := send.wait(90 * time.Second)
	if !exited || err != nil {
		t.Fatalf("sender in c1: exited %v, %v: %s", exited, err, send.out.String())
	}
	if exited, err := recv.wait(30 * time.Second); !exited || err != nil {
		t.Fatalf("receiver in c2: exited %v, %v: %s", exited, err, recv.out.String())
	}
	if sent, got := strings.TrimSpace(send.out.String()), strings.TrimSpace(recv.out.String()); !strings.HasPrefix(sent, strconv.Itoa(size)+" ") || got != sent {
		t.Errorf("c2 received %q, c1 sent %q", got, sent)
	}
	if !strings.Contains(h1.h.LogTail(200), `msg="kernel tunnel segmentation off: segmenting in userspace" mode=auto reason="nftables chain`) {
		t.Errorf("h1's log does not say why it switched off:\n%s", h1.h.LogTail(40))
	}
}
