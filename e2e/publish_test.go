package e2e

import (
	"bufio"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/sandbox"
)

// dialFrom opens a TCP (or UDP) socket in peer's namespace to addr.
func dialFrom(t *testing.T, peer *testbed.UnderlayPeer, proto, addr string) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	err := sandbox.RunInNetns(peer.NetnsPath, func() error {
		var err error
		c, err = net.DialTimeout(proto, addr, 5*time.Second)
		return err
	})
	if c != nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	return c, err
}

// publishedLine connects from peer to addr and reads the serve helper's
// "NAME PEER" line, retrying until the helper listens.
func publishedLine(t *testing.T, peer *testbed.UnderlayPeer, addr string) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	var last error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		c, err := dialFrom(t, peer, "tcp4", addr)
		if err != nil {
			last = err
			continue
		}
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			c.Close()
			last = err
			continue
		}
		return c, r, strings.TrimSpace(line)
	}
	t.Fatalf("published port %s never answered: %v", addr, last)
	return nil, nil, ""
}

// TestPublishedPort: `run -p` publishes a container's TCP and UDP port on
// its host; a client in an outside namespace on the underlay reaches it
// at the host's address and the server in the container sees the
// client's own address; a line and the client's half-close reach the
// server, whose close reaches the client; a host port already in use is
// refused and nothing is created; ps and stats show the port and its
// flows; the port survives a daemon restart; rm closes it.
func TestPublishedPort(t *testing.T) {
	e := newEnv(t)
	peer, err := e.tb.AddUnderlayPeer("client")
	if err != nil {
		t.Fatal(err)
	}
	e.network("web", "10.94.0.0/24")
	e.cli("run", "-d", "--network", "web", "--name", "c1", "-p", "8081:7000", "-p", e.h.Addr+":8082:7000/udp",
		"--", suite.self, helperArg, "serve", "c1", "7000")
	addr := e.h.Addr + ":8081"

	c, r, line := publishedLine(t, peer, addr)
	if want := "c1 " + peer.Addr; line != want {
		t.Errorf("published TCP port answered %q, want %q (the outside client's own address)", line, want)
	}
	io.WriteString(c, "again\n")
	if l, err := r.ReadString('\n'); err != nil || strings.TrimSpace(l) != line {
		t.Errorf("second line: %q, %v", l, err)
	}
	c.(*net.TCPConn).CloseWrite()
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Errorf("after the client's half-close: %q, %v; want the server's close (EOF)", rest, err)
	}
	c.Close()

	u, err := dialFrom(t, peer, "udp4", e.h.Addr+":8082")
	if err != nil {
		t.Fatal(err)
	}
	u.Write([]byte("hi"))
	buf := make([]byte, 256)
	n, err := u.Read(buf)
	if want := "c1 " + peer.Addr; err != nil || strings.TrimSpace(string(buf[:n])) != want {
		t.Errorf("published UDP port answered %q, %v; want %q", buf[:n], err, want)
	}
	u.Close()

	e.cliFails([]string{"c2", "8081", "already in use"}, "run", "-d", "--network", "web", "--name", "c2", "-p", "8081:80", "--", "sleep", "infinity")
	if e.hasEndpoint("c2") {
		t.Error("c2 was created although its port was refused")
	}
	e.cliFails([]string{"-p", "publish"}, "run", "-d", "--network", "web", "--name", "c3", "-p", "8083:0", "--", "sleep", "infinity")

	if ps := e.cli("ps"); !strings.Contains(ps, "8081:7000/tcp,"+e.h.Addr+":8082:7000/udp") || !strings.Contains(ps, "PUBLISHED") {
		t.Errorf("ps does not show the published ports:\n%s", ps)
	}
	var st api.Stats
	e.json(&st, "stats")
	if st.Egress.IngressTotal < 2 || st.Egress.IngressSNAT != 0 || st.Egress.IngressBytesIn == 0 {
		t.Errorf("stats: %+v; want the published flows counted, none from the gateway address", st.Egress)
	}

	if err := e.h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := e.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	c, _, line = publishedLine(t, peer, addr)
	c.Close()
	if want := "c1 " + peer.Addr; line != want {
		t.Errorf("after a daemon restart, published TCP port answered %q, want %q", line, want)
	}

	e.cli("rm", "c1")
	if c, err := dialFrom(t, peer, "tcp4", addr); err == nil {
		c.Close()
		t.Error("published port still open after rm")
	}
}

// TestGatewayDNS: the resolver answers at each network's gateway address
// (UDP and TCP), for the container the query comes from: c1 resolves c2
// on their network's gateway, c3 (on another network) does not get web's
// names from its own gateway, and a container attached after the gateway
// started serving is known there too.
func TestGatewayDNS(t *testing.T) {
	e := newEnv(t)
	e.network("web", "10.95.0.0/24")
	e.network("db", "10.96.0.0/24")
	e.run("c1", "web")
	e.run("c2", "web")
	e.run("c3", "db")
	c2 := e.endpoint("c2").IP
	for _, proto := range []string{"+notcp", "+tcp"} {
		if r, err := e.dig("c1", "@10.95.0.1", proto, "c2", "A"); err != nil || r.status != "NOERROR" || !slices.Equal(r.answers, []string{c2}) {
			t.Errorf("c1 dig @10.95.0.1 %s c2: %v %+v; want %s", proto, err, r, c2)
		}
	}
	if r, _ := e.dig("c3", "@10.96.0.1", "c2.web", "A"); r.status == "NOERROR" && len(r.answers) > 0 {
		t.Errorf("c3 on db resolved c2.web at its gateway: %+v", r)
	}
	e.run("c4", "web")
	if r, err := e.dig("c4", "@10.95.0.1", "c1", "A"); err != nil || !slices.Equal(r.answers, []string{e.endpoint("c1").IP}) {
		t.Errorf("c4 (attached later) dig @10.95.0.1 c1: %v %+v", err, r)
	}
}
