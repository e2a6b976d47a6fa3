package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
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

// TestKernelTunnelCarriesTCPIntactAcrossHosts: with --kernel-tunnel, a
// bulk TCP transfer between containers on two hosts arrives byte for byte
// (a sender-side hash against the receiver's), and the daemons' stats show
// that super-segments went through the kernel whole and arrived whole (the
// testbed's underlay veths carry tunnel GSO packets, as kernel VXLAN's).
func TestKernelTunnelCarriesTCPIntactAcrossHosts(t *testing.T) {
	testenv.RequireCommand(t, "python3", "python3")
	es := newCluster(t, 2, "--kernel-tunnel")
	h1, h2 := es[0], es[1]
	h1.network("bulk", "10.73.0.0/24")
	h2.waitNetwork("bulk")
	h1.run("c1", "bulk")
	h2.run("c2", "bulk")
	c1, c2 := h1.endpoint("c1"), h2.endpoint("c2")
	h1.waitRemote("bulk", c2, h2.h.Addr)
	h2.waitRemote("bulk", c1, h1.h.Addr)
	h1.mustPing("c1", addrOnly(c2.IP))

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
