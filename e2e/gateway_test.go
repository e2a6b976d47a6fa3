package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/sandbox"
)

// helperGet fetches url (10s timeout) and prints the body.
func helperGet(url string) error {
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}

// outsideServers runs, in an underlay namespace outside the overlay, an
// HTTP server on :8080 that answers with the client's address and a DNS
// server on :53 that knows egress.test (A 192.0.2.99).
func outsideServers(t *testing.T, peer *testbed.UnderlayPeer) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := sandbox.RunInNetns(peer.NetnsPath, func() error {
		var err error
		if ln, err = net.Listen("tcp4", peer.Addr+":8080"); err != nil {
			return err
		}
		if pc, err = net.ListenPacket("udp4", peer.Addr+":53"); err != nil {
			ln.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("servers in %s: %v", peer.Netns, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "hello %s", host)
	})}
	go srv.Serve(ln)
	a, _ := mdns.NewRR("egress.test. 60 IN A 192.0.2.99")
	ds := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if strings.EqualFold(r.Question[0].Name, "egress.test.") {
			m.Answer = []mdns.RR{a}
		}
		w.WriteMsg(m)
	})}
	go ds.ActivateAndServe()
	t.Cleanup(func() {
		srv.Close()
		ds.Shutdown()
	})
}

// TestGatewayEgress: a container reaches an HTTP server and a DNS server
// outside the overlay through its gateway (the server sees the host's
// underlay address), pings its gateway, and a container on an --internal
// network gets a clear, quick refusal instead.
func TestGatewayEgress(t *testing.T) {
	e := newEnv(t)
	peer, err := e.tb.AddUnderlayPeer("outside")
	if err != nil {
		t.Fatal(err)
	}
	outsideServers(t, peer)
	e.network("web", "10.91.0.0/24")
	e.network("sealed", "10.92.0.0/24", "--internal")
	e.run("c1", "web")
	e.run("c2", "sealed")

	url := "http://" + peer.Addr + ":8080/"
	out, err := e.h.Exec("c1", suite.self, helperArg, "get", url)
	if err != nil {
		t.Fatalf("egress HTTP from c1: %v", err)
	}
	if want := "hello " + e.h.Addr; out != want {
		t.Errorf("outside server answered %q, want %q (the host's address)", out, want)
	}
	if r, err := e.dig("c1", "@"+peer.Addr, "egress.test", "A"); err != nil || r.status != "NOERROR" || len(r.answers) != 1 || r.answers[0] != "192.0.2.99" {
		t.Errorf("DNS through egress: %v %+v", err, r)
	}
	if out, err := e.h.Exec("c1", "ping", "-c", "1", "-W", "3", peer.Addr); err != nil {
		t.Errorf("c1 ping outside %s: %v\n%s", peer.Addr, err, out)
	}
	if out, err := e.h.Exec("c2", "ping", "-c", "1", "-W", "1", peer.Addr); err == nil {
		t.Errorf("internal network's c2 pinged outside %s:\n%s", peer.Addr, out)
	}
	for _, c := range []struct{ ctr, gw string }{{"c1", "10.91.0.1"}, {"c2", "10.92.0.1"}} {
		if out, err := e.h.Exec(c.ctr, "ping", "-c", "1", "-W", "3", c.gw); err != nil {
			t.Errorf("%s ping gateway %s: %v\n%s", c.ctr, c.gw, err, out)
		}
	}

	start := time.Now()
	out, err = e.h.Exec("c2", suite.self, helperArg, "get", url)
	if err == nil || !strings.Contains(out+err.Error(), "refused") {
		t.Errorf("internal network's HTTP to outside: %q, %v; want connection refused", out, err)
	}
	if r, err := e.dig("c2", "@"+peer.Addr, "egress.test", "A"); err == nil && r.status == "NOERROR" {
		t.Errorf("internal network resolved through egress: %+v", r)
	}
	// Nor through the embedded resolver's upstreams: DNS is no way out.
	if r, err := e.dig("c2", "@127.0.0.11", "egress.test", "A"); err != nil || r.status != "SERVFAIL" {
		t.Errorf("internal network's outside name at 127.0.0.11: %v %+v, want SERVFAIL", err, r)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("internal network's refusals took %v", d)
	}

	var st api.Stats
	e.json(&st, "stats")
	if st.DNS.NoEgress < 1 {
		t.Errorf("stats dns %+v: want the internal network's outside query counted no_egress", st.DNS)
	}
	if st.Egress.Total < 2 || st.Egress.Refused["internal"] < 2 || st.Egress.MaxFlows != 65536 {
		t.Errorf("stats egress %+v: want at least 2 flows, 2 internal refusals, max 65536", st.Egress)
	}
	var n api.Network
	e.json(&n, "network", "inspect", "sealed")
	if !n.Internal {
		t.Error("network inspect does not show sealed as internal")
	}
	if ls := e.cli("network", "ls"); !strings.Contains(ls, "INTERNAL") || !strings.Contains(ls, "yes") {
		t.Errorf("network ls does not show the internal network:\n%s", ls)
	}
	_ = context.Background
}

// helperUDPProbe sends one datagram to addr from a connected UDP socket
// with IP_RECVERR (as ping and traceroute do: without it Linux reports
// only a port or protocol unreachable to a UDP socket) and waits (10s at
// most) for an answer or an error, printing what came back: "answer", or
// the error the kernel gave the socket.
func helperUDPProbe(addr string) error {
	c, err := net.Dial("udp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	rc, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		return err
	}
	rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_RECVERR, 1) })
	if err != nil {
		return err
	}
	if _, err := c.Write([]byte("probe")); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1500)); err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			fmt.Print(errno.Error())
			return nil
		}
		return err
	}
	fmt.Print("answer")
	return nil
}

// TestGatewayEgressICMPErrors: a container's datagram to a closed port
// outside fails its socket with "connection refused" at once (the
// gateway reflects the port unreachable the host got), a dig to that port
// fails fast instead of timing out, and a datagram to an address nobody
// has on the underlay fails with "no route to host" once the host's ARP
// gave up (for a socket with IP_RECVERR), as behind a kernel NAT, and so
// does a TCP connect there.
func TestGatewayEgressICMPErrors(t *testing.T) {
	e := newEnv(t)
	peer, err := e.tb.AddUnderlayPeer("outside")
	if err != nil {
		t.Fatal(err)
	}
	e.network("web", "10.93.0.0/24")
	e.run("c1", "web")

	start := time.Now()
	out, err := e.h.Exec("c1", suite.self, helperArg, "udpprobe", peer.Addr+":9")
	if err != nil || out != syscall.ECONNREFUSED.Error() {
		t.Errorf("datagram to closed port %s:9: %q, %v; want %q", peer.Addr, out, err, syscall.ECONNREFUSED.Error())
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("refusal took %v", d)
	}
	start = time.Now()
	out, err = e.h.Exec("c1", "dig", "+tries=1", "+time=5", "@"+peer.Addr, "-p", "9", "egress.test")
	if err == nil || !strings.Contains(out, "refused") {
		t.Errorf("dig to a closed port: %v\n%s\nwant a connection refused", err, out)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("dig to a closed port took %v, want it to fail fast", d)
	}
	nobody := peer.Addr[:strings.LastIndexByte(peer.Addr, '.')] + ".253"
	out, err = e.h.Exec("c1", suite.self, helperArg, "udpprobe", nobody+":53")
	if err != nil || out != syscall.EHOSTUNREACH.Error() {
		t.Errorf("datagram to %s, an address nobody has: %q, %v; want %q", nobody, out, err, syscall.EHOSTUNREACH.Error())
	}
	out, err = e.h.Exec("c1", suite.self, helperArg, "get", "http://"+nobody+":8080/")
	if err == nil || !strings.Contains(out+err.Error(), "no route to host") {
		t.Errorf("HTTP to %s, an address nobody has: %q, %v; want no route to host", nobody, out, err)
	}
	var st api.Stats
	e.json(&st, "stats")
	if st.Egress.ICMPErrors < 4 {
		t.Errorf("stats egress %+v: want at least 4 ICMP errors reflected", st.Egress)
	}
}
