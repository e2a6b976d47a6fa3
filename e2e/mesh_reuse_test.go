package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/sandbox"
)

// byeFrom connects from peer's port to addr (a published port), reads the
// serve helper's line, asks the backend to close first ("bye", so the
// backend's side ends in TIME-WAIT), reads its close and closes. It
// returns how long the backend's line took from the start of the connect:
// the client's connect itself completes at the ingress host's kernel at
// once; the line needs the gateway's connection to the backend.
func byeFrom(peer *testbed.UnderlayPeer, port int, addr string) (time.Duration, string, error) {
	var c net.Conn
	start := time.Now()
	err := sandbox.RunInNetns(peer.NetnsPath, func() error {
		d := net.Dialer{
			Timeout:   5 * time.Second,
			LocalAddr: &net.TCPAddr{IP: net.ParseIP(peer.Addr), Port: port},
			Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				err := rc.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
				})
				if err != nil {
					return err
				}
				return serr
			},
		}
		var err error
		c, err = d.Dial("tcp4", addr)
		return err
	})
	if err != nil {
		return 0, "", fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	took := time.Since(start)
	if err != nil {
		return took, "", fmt.Errorf("the backend's line: %w", err)
	}
	if _, err := io.WriteString(c, "bye\n"); err != nil {
		return took, line, err
	}
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		return took, line, fmt.Errorf("after bye: %q, %v; want the backend's close", rest, err)
	}
	return took, strings.TrimSpace(line), nil
}

// timeWait reports whether the kernel of netns path has a TIME-WAIT
// socket to peer:port.
func timeWait(path, peer string, port int) (bool, error) {
	out, err := exec.Command("nsenter", "--net="+path, "ss", "-Htn", "state", "time-wait", "dst", peer+":"+strconv.Itoa(port)).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("ss: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out)) != "", nil
}

// pawsTimewait returns the kernel counter TcpExtPAWSTimewait of netns
// path: SYNs dropped by a TIME-WAIT socket for an old timestamp.
func pawsTimewait(t *testing.T, path string) int {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+path, "cat", "/proc/net/netstat").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "TcpExt:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "PAWSTimewait" && i < len(f) {
				v, err := strconv.Atoi(f[i])
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatalf("no TcpExt PAWSTimewait in /proc/net/netstat of %s", path)
	return 0
}

// TestRoutingMeshClientPortReuse: a client whose connection through one
// host's published port (client-ip=preserve) the backend closed, so that
// the backend's kernel holds it in TIME-WAIT, connects again from the
// same port through another host within seconds: the backend's kernel
// takes the new SYN at once (every host's gateway derives TCP timestamps
// and ISNs from the cluster key and wall-clock time), instead of dropping
// it for an older timestamp (PAWS) until the SYN is retransmitted a
// second later. Both ways between two ingress hosts, backend on a third;
// from one of them to the backend's own host (whose switch must then
// give the backend's replies to its own gateway, not to the previous
// ingress host; there the connection takes the fast path, which ends
// the backend's TIME-WAIT socket first) and from there to the other.
func TestRoutingMeshClientPortReuse(t *testing.T) {
	es := newCluster(t, 3)
	h1, h2, h3 := es[0], es[1], es[2]
	peer, err := h1.tb.AddUnderlayPeer("client")
	if err != nil {
		t.Fatal(err)
	}
	h1.network("web", "10.87.0.0/24")
	for _, e := range es[1:] {
		e.waitNetwork("web")
	}
	h1.cli("service", "create", "api", "--network", "web", "--port", "7000", "--publish", "published=8080,target=7000")
	for _, e := range es[1:] {
		e.waitService("api")
	}
	h3.meshBackend("b3", "web", "api", "serve")
	for _, e := range es {
		e.waitBackends("api", "b3")
		e.waitPublishState("api", e.h.Name, "published=8080,", "up")
	}
	// Every host answers (retried) before the ports under test are used:
	// in one CI run (all three hosts listed b3 active and the port up)
	// both first connections through h3, which was not warmed up, were
	// reset in under 3 ms, the reuse aside (not reproduced in 10 runs).
	for _, e := range es {
		c, _, _ := publishedLine(t, peer, e.h.Addr+":8080")
		c.Close()
	}
	ns := h3.h.ContainerNetnsPath("b3")
	nat := h3.natSteers()
	t.Logf("per-packet NAT on the backend's host: %v", nat)
	for i, path := range [][2]*env{{h1, h2}, {h2, h1}, {h1, h3}, {h3, h2}} {
		port := 41000 + i
		a, b := path[0].h, path[1].h
		took, line, err := byeFrom(peer, port, a.Addr+":8080")
		if err != nil || line != "b3 "+peer.Addr {
			t.Fatalf("port %d through %s: %q, %v; want b3 with the client's address", port, a.Name, line, err)
		}
		t.Logf("port %d through %s: answered in %s", port, a.Name, took)
		// Through b3's own host the connection took the published-port
		// fast path (a kernel socket in b3's namespace), which ends b3's
		// TIME-WAIT socket of it as it ends (gateway.TimeWaitEnder): the
		// kernel's timestamps are not the gateways'. Through another host
		// it stays.
		// With per-packet NAT (--mesh-nat) no flow takes the fast path:
		// the backend's TIME-WAIT stays and the NAT's timestamps, on the
		// cluster's clock, make the next SYN newer.
		want := a != h3.h || nat
		eventually(t, 5*time.Second, func() error {
			if ok, err := timeWait(ns, peer.Addr, port); err != nil || ok != want {
				return fmt.Errorf("TIME-WAIT socket: %v, want %v (%v)", ok, want, err)
			}
			return nil
		}, "b3's kernel after its close of port %d's connection", port)
		paws := pawsTimewait(t, ns)
		took, line, err = byeFrom(peer, port, b.Addr+":8080")
		drops := pawsTimewait(t, ns) - paws
		t.Logf("port %d again through %s: answered in %s (%v), PAWSTimewait drops %d", port, b.Name, took, err, drops)
		// The first SYN retransmission of the gateway's connect is 1 s
		// after the SYN.
		if err != nil || line != "b3 "+peer.Addr || took >= time.Second || drops != 0 {
			t.Errorf("port %d through %s then %s: the second connection answered %q in %s (%v), the backend's kernel dropped %d SYNs for PAWS; want an answer at once",
				port, a.Name, b.Name, line, took, err, drops)
		}
	}
}
