package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/sandbox"
)

// fastPathRules counts the fast path's rules (fwmark 0x7678 lookup
// 30312) and the routes of its table in the named namespace.
func fastPathRules(t *testing.T, netns string) (rules, routes int) {
	t.Helper()
	out, err := exec.Command("ip", "-n", netns, "-4", "rule").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s rule: %v: %s", netns, err, out)
	}
	rules = strings.Count(string(out), "fwmark 0x7678 lookup 30312")
	out, err = exec.Command("ip", "-n", netns, "-4", "route", "show", "table", "30312").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "table does not exist") {
		t.Fatalf("ip -n %s route show table 30312: %v: %s", netns, err, out)
	}
	return rules, strings.Count(string(out), "local default dev lo")
}

// inboundFrom counts the container's TCP sockets connected to peer.
func inboundFrom(t *testing.T, netns, peer string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", netns, "ss", "-Htn", "dst", peer).CombinedOutput()
	if err != nil {
		t.Fatalf("ss in %s: %v: %s", netns, err, out)
	}
	return len(strings.Fields(string(out))) / 4
}

// TestPublishedPortFastPath: a `run -p` connection takes the fast path
// (dialled inside the container's namespace; stats count it): the server
// sees the outside client's own address, lines go both ways while another
// container reaches the same port over the overlay, the server's reset
// and close and the client's half-close and reset reach the other side,
// and the container's namespace has one fast-path rule and route. A
// daemon restart uses them again; with --publish-fast-path=false the
// connections take the gateway (still with the client's address); a
// detach from the network removes the rule and route from the
// namespace, which stays.
func TestPublishedPortFastPath(t *testing.T) {
	e := newEnv(t)
	peer, err := e.tb.AddUnderlayPeer("client")
	if err != nil {
		t.Fatal(err)
	}
	e.network("web", "10.88.0.0/24")
	e.cli("run", "-d", "--network", "web", "--name", "c1", "-p", "8096:7000",
		"--", suite.self, helperArg, "serve", "c1", "7000")
	e.run("c2", "web")
	addr := e.h.Addr + ":8096"
	ns := e.h.ContainerNetns("c1")

	c, r, line := publishedLine(t, peer, addr)
	if want := "c1 " + peer.Addr; line != want {
		t.Errorf("published port answered %q, want %q (the outside client's own address)", line, want)
	}
	var st api.Stats
	e.json(&st, "stats")
	if st.Egress.IngressFast < 1 || st.Egress.IngressFastFallback != 0 {
		t.Errorf("stats: %d flows on the fast path, %d fallen back; want at least 1 and 0", st.Egress.IngressFast, st.Egress.IngressFastFallback)
	}
	if ru, ro := fastPathRules(t, ns); ru != 1 || ro != 1 {
		t.Errorf("c1's namespace: %d fast-path rules, %d routes; want 1, 1", ru, ro)
	}
	// Another container, over the overlay, while the published
	// connection is open: unmarked, it is routed as always.
	rep := e.conns("c2", e.ip("c1")+":7000", 20, 4, 0)
	if rep.Counts["c1"] != 20 || rep.Errors != 0 || len(rep.Peers) != 1 || rep.Peers[0] != e.ip("c2") {
		t.Errorf("c2 to c1:7000 over the overlay: %+v; want 20 answers seeing %s", rep, e.ip("c2"))
	}
	io.WriteString(c, "again\n")
	if l, err := r.ReadString('\n'); err != nil || strings.TrimSpace(l) != line {
		t.Errorf("published connection after the overlay ones: %q, %v", l, err)
	}
	// The server's reset reaches the client.
	io.WriteString(c, "reset\n")
	if _, err := io.ReadAll(r); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the server reset: the client got %v, want a reset", err)
	}
	c.Close()
	// The client's half-close reaches the server, whose close reaches
	// the client.
	c, r, _ = publishedLine(t, peer, addr)
	c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Errorf("after the client's half-close: %q, %v; want the server's close (EOF)", rest, err)
	}
	c.Close()
	// The client's reset reaches the server: its socket goes.
	c, _, _ = publishedLine(t, peer, addr)
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	eventually(t, 10*time.Second, func() error {
		if n := inboundFrom(t, ns, peer.Addr); n != 0 {
			return fmt.Errorf("%d connections from %s still in c1's namespace", n, peer.Addr)
		}
		return nil
	}, "the client's reset never reached c1")

	// A restart uses the namespace's rule and route again.
	restart := func(flags ...string) {
		t.Helper()
		if err := e.h.StopDaemon(); err != nil {
			t.Fatal(err)
		}
		if err := e.h.StartDaemon(flags...); err != nil {
			t.Fatal(err)
		}
	}
	restart()
	c, _, line = publishedLine(t, peer, addr)
	c.Close()
	e.json(&st, "stats")
	if want := "c1 " + peer.Addr; line != want || st.Egress.IngressFast != 1 {
		t.Errorf("after a restart: %q, %d flows on the fast path; want %q, 1", line, st.Egress.IngressFast, want)
	}
	if ru, ro := fastPathRules(t, ns); ru != 1 || ro != 1 {
		t.Errorf("after a restart: %d fast-path rules, %d routes; want 1, 1", ru, ro)
	}

	// Off: the gateway's path, with the client's address.
	restart("--publish-fast-path=false")
	c, _, line = publishedLine(t, peer, addr)
	c.Close()
	e.json(&st, "stats")
	if want := "c1 " + peer.Addr; line != want || st.Egress.IngressFast != 0 || st.Egress.IngressTotal != 1 {
		t.Errorf("fast path off: %q, %d of %d flows on the fast path; want %q, 0 of 1", line, st.Egress.IngressFast, st.Egress.IngressTotal, want)
	}

	restart()
	c, _, _ = publishedLine(t, peer, addr)
	c.Close()
	e.cli("detach", "c1", "--network", "web")
	if ru, ro := fastPathRules(t, ns); ru != 0 || ro != 0 {
		t.Errorf("after detach: %d fast-path rules, %d routes left in c1's namespace; want none", ru, ro)
	}
}

// proxyLine connects from peer to addr, sends head (28 bytes, unless the
// published port sends a PROXY header) and returns the proxy helper's
// "NAME PEER HEX" line and the connection's addresses.
func proxyLine(t *testing.T, peer *testbed.UnderlayPeer, addr string, head []byte) (line string, local, remote netip.AddrPort) {
	t.Helper()
	var last error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		c, err := dialFrom(t, peer, "tcp4", addr)
		if err != nil {
			last = err
			continue
		}
		c.Write(head)
		l, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil {
			last = err
			continue
		}
		return strings.TrimSpace(l), c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
	}
	t.Fatalf("published port %s never answered: %v", addr, last)
	return "", netip.AddrPort{}, netip.AddrPort{}
}

// TestRoutingMeshHostFastPath: a mode=host published port whose backend
// is a container attached with --netns (a namespace the user manages)
// takes the fast path: with client-ip=preserve the backend sees the
// outside client's address, with client-ip=proxy-v2 the connection starts
// with the PROXY header naming the client and the address it dialled,
// byte-exact, from the host's gateway address. Detaching the container
// leaves its namespace without the fast path's rule and route.
func TestRoutingMeshHostFastPath(t *testing.T) {
	e := newEnv(t)
	peer, err := e.tb.AddUnderlayPeer("client")
	if err != nil {
		t.Fatal(err)
	}
	e.network("web", "10.89.0.0/24")
	e.cli("service", "create", "hst", "--network", "web", "--port", "7000",
		"--publish", "published=8097,target=7000,mode=host", "--publish", "published=8098,target=7000,mode=host,client-ip=proxy-v2")
	nsName := e.h.ContainerNetns("user")
	nsPath, err := sandbox.CreateNamedNetns(nsName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sandbox.DeleteNamedNetns(nsName) })
	e.cli("attach", "--network", "web", "--name", "a1", "--netns", nsPath, "--service", "hst")
	srv := exec.Command("ip", "netns", "exec", nsName, suite.self, helperArg, "proxy", "a1", "7000")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	e.waitBackends("hst", "a1")

	line, _, _ := proxyLine(t, peer, e.h.Addr+":8097", make([]byte, 28))
	if f := strings.Fields(line); len(f) != 3 || f[0] != "a1" || f[1] != peer.Addr {
		t.Errorf("mode=host, client-ip=preserve: backend answered %q, want a1 seeing %s", line, peer.Addr)
	}
	line, local, remote := proxyLine(t, peer, e.h.Addr+":8098", nil)
	if f := strings.Fields(line); len(f) != 3 || f[0] != "a1" || f[2] != proxyV2Hex(local, remote) || f[1] == peer.Addr {
		t.Errorf("mode=host, client-ip=proxy-v2: backend answered %q, want a1, the host's address, header %s", line, proxyV2Hex(local, remote))
	}
	var st api.Stats
	e.json(&st, "stats")
	if st.Egress.IngressFast != 2 || st.Egress.IngressFastFallback != 0 {
		t.Errorf("stats: %d flows on the fast path, %d fallen back; want 2, 0", st.Egress.IngressFast, st.Egress.IngressFastFallback)
	}
	if ru, ro := fastPathRules(t, nsName); ru != 1 || ro != 1 {
		t.Errorf("a1's namespace: %d fast-path rules, %d routes; want 1, 1", ru, ro)
	}
	e.cli("detach", "a1")
	if ru, ro := fastPathRules(t, nsName); ru != 0 || ro != 0 {
		t.Errorf("after detach: %d fast-path rules, %d routes left in a1's namespace; want none", ru, ro)
	}
}
