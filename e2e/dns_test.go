package e2e

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
	"github.com/vxmesh/vxmesh/sandbox"
)

// testUpstream is where every daemon of the DNS tests forwards: a DNS
// server on the host's own loopback, like a local caching resolver.
const testUpstream = "127.0.0.1:5353"

// startHostUpstream serves, inside host h's namespace on testUpstream,
// outside.test (A 192.0.2.80), big.test (40 A records) and NXDOMAIN for
// every other name.
func startHostUpstream(t *testing.T, h *testbed.Host) {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	err := sandbox.RunInNetns(h.NetnsPath, func() error {
		var err error
		if pc, err = net.ListenPacket("udp4", testUpstream); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp4", testUpstream); err != nil {
			pc.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("upstream in %s: %v", h.Name, err)
	}
	outside, _ := mdns.NewRR("outside.test. 60 IN A 192.0.2.80")
	var big []mdns.RR
	for i := range 40 {
		rr, _ := mdns.NewRR("big.test. 60 IN A 192.0.2." + strconv.Itoa(i+1))
		big = append(big, rr)
	}
	handler := func(udp bool) mdns.HandlerFunc {
		return func(w mdns.ResponseWriter, r *mdns.Msg) {
			m := new(mdns.Msg)
			m.SetReply(r)
			switch strings.ToLower(r.Question[0].Name) {
			case "outside.test.":
				m.Answer = []mdns.RR{outside}
			case "big.test.":
				m.Answer = big
			default:
				m.Rcode = mdns.RcodeNameError
			}
			if udp {
				size := mdns.MinMsgSize
				if o := r.IsEdns0(); o != nil {
					size = int(o.UDPSize())
				}
				m.Truncate(size)
			}
			w.WriteMsg(m)
		}
	}
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: handler(true)}, {Listener: ln, Handler: handler(false)}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
}

// digResult is what dig printed: the status and the A (or PTR) data.
type digResult struct {
	status  string
	answers []string
	out     string
}

var digStatus = regexp.MustCompile(`status: ([A-Z]+)`)

// dig runs dig inside container ctr (whose /etc/resolv.conf points at
// 127.0.0.11) with args.
func (e *env) dig(ctr string, args ...string) (digResult, error) {
	argv := append([]string{"dig", "+tries=1", "+time=3", "+nocmd", "+nostats"}, args...)
	out, err := e.h.Exec(ctr, argv...)
	return parseDig(out), err
}

func parseDig(out string) digResult {
	r := digResult{out: out}
	if m := digStatus.FindStringSubmatch(out); m != nil {
		r.status = m[1]
	}
	inAnswer := false
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, ";; ANSWER SECTION") {
			inAnswer = true
			continue
		}
		if inAnswer && strings.TrimSpace(l) == "" {
			inAnswer = false
		}
		if f := strings.Fields(l); inAnswer && len(f) == 5 && f[2] == "IN" {
			r.answers = append(r.answers, f[4])
		}
	}
	slices.Sort(r.answers)
	return r
}

// wantDig polls dig in ctr until it gives status and answers (nil: no
// answer), within timeout, and returns how long that took.
func (e *env) wantDig(timeout time.Duration, ctr string, status string, answers []string, args ...string) time.Duration {
	e.t.Helper()
	start := time.Now()
	eventually(e.t, timeout, func() error {
		r, err := e.dig(ctr, args...)
		if r.status != status || !slices.Equal(r.answers, answers) {
			return fmt.Errorf("status %q answers %v (err %v), want %s %v:\n%s", r.status, r.answers, err, status, answers, r.out)
		}
		return nil
	}, "dig %s in %s", strings.Join(args, " "), ctr)
	return time.Since(start)
}

func needDig(t *testing.T) {
	t.Helper()
	testenv.RequireCommand(t, "dig", "dnsutils")
}

func TestDNSResolvesContainersAcrossHostsAndForwardsTheRest(t *testing.T) {
	needDig(t)
	es := newCluster(t, 2, "--dns-upstream", testUpstream, "--dns-timeout", "2s")
	h1, h2 := es[0], es[1]
	for _, e := range es {
		startHostUpstream(t, e.h)
	}
	h1.network("web", "10.74.0.0/24")
	h1.network("db", "10.74.1.0/24")
	h2.waitNetwork("web")
	h2.waitNetwork("db")
	h1.run("c1", "web")
	h2.run("c3", "db")

	// A container started on the other host resolves by name and by alias
	// about as soon as it exists, and ping by name works across hosts.
	h2.run("c2", "web", "--alias", "api")
	took := h1.wantDig(5*time.Second, "c1", "NOERROR", []string{h2.ip("c2")}, "c2")
	t.Logf("c2 (on h2) resolved on h1 %v after run", took.Round(10*time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("c2 took %v to resolve on the other host, want about a second", took)
	}
	c2 := h2.ip("c2")
	if out, err := h1.h.Exec("c1", "ping", "-c", "1", "-W", "5", "c2"); err != nil || !strings.Contains(out, c2) {
		t.Errorf("ping c2 by name from c1 on the other host: %v\n%s", err, out)
	}
	h1.wantDig(time.Second, "c1", "NOERROR", []string{c2}, "api")
	h1.wantDig(time.Second, "c1", "NOERROR", []string{c2}, "C2.Web")
	if out, err := h1.h.Exec("c1", "getent", "hosts", "api"); err != nil || !strings.HasPrefix(out, c2+" ") {
		t.Errorf("getent hosts api (c2's alias) in c1: %v %q, want %s", err, out, c2)
	}
	h1.wantDig(time.Second, "c1", "NOERROR", nil, "c2", "AAAA")
	h1.wantDig(time.Second, "c1", "NOERROR", []string{"c2.web."}, "-x", c2)

	// Scope: c1 (web) does not get db's c3, which goes upstream and is
	// NXDOMAIN there; c3 (db) does not get web's names, but its own.
	h1.wantDig(time.Second, "c1", "NXDOMAIN", nil, "c3")
	h1.wantDig(time.Second, "c1", "NXDOMAIN", nil, "c3.db")
	h2.wantDig(time.Second, "c3", "NXDOMAIN", nil, "c1")
	h2.wantDig(time.Second, "c3", "NOERROR", []string{h2.ip("c3")}, "c3")

	// Names that are not containers' go to the upstream on the host's
	// loopback, from the daemon's side; its NXDOMAIN passes through.
	h1.wantDig(time.Second, "c1", "NOERROR", []string{"192.0.2.80"}, "outside.test")
	if out, err := h1.h.Exec("c1", "getent", "hosts", "outside.test"); err != nil || !strings.HasPrefix(out, "192.0.2.80 ") {
		t.Errorf("getent hosts outside.test in c1: %v %q", err, out)
	}
	h1.wantDig(time.Second, "c1", "NXDOMAIN", nil, "nope.test")

	// TCP: a local name, and a forwarded answer too large for UDP.
	h1.wantDig(time.Second, "c1", "NOERROR", []string{c2}, "+tcp", "c2")
	r, err := h1.dig("c1", "+tcp", "big.test")
	if err != nil || r.status != "NOERROR" || len(r.answers) != 40 {
		t.Errorf("dig +tcp big.test: %s with %d answers (err %v), want 40:\n%s", r.status, len(r.answers), err, r.out)
	}
	r, err = h1.dig("c1", "+notcp", "+ignore", "+noedns", "big.test")
	if err != nil || !strings.Contains(r.out, " tc ") && !strings.Contains(r.out, " tc;") {
		t.Errorf("dig over UDP without EDNS for big.test: want the tc flag (err %v):\n%s", err, r.out)
	}

	// An attached namespace gets the resolver as well.
	path, err := h1.tb.AddNetns("att")
	if err != nil {
		t.Fatal(err)
	}
	h1.cli("attach", "--network", "web", "--name", "att", "--netns", path)
	eventually(t, 5*time.Second, func() error {
		out, err := testbed.InNetns(context.Background(), path, "dig", "@127.0.0.11", "+tries=1", "+time=2", "+short", "c2")
		if err != nil || strings.TrimSpace(out) != c2 {
			return fmt.Errorf("%v: %q", err, out)
		}
		return nil
	}, "dig @127.0.0.11 c2 in an attached namespace")

	var st api.Stats
	h1.json(&st, "stats")
	if d := st.DNS; d.Local == 0 || d.Forwarded == 0 || d.NXDomain == 0 || d.Queries < d.Local+d.Forwarded ||
		d.UpstreamLatency.Count == 0 || !slices.Equal(d.Upstreams, []string{testUpstream}) || d.Listeners != 2 {
		t.Errorf("stats on h1: dns %+v", d)
	}
	if out := h1.cli("stats"); !strings.Contains(out, "DNS: ") {
		t.Errorf("stats table lacks the DNS line:\n%s", out)
	}

	// A removed container stops resolving on the other host.
	h2.cli("rm", "c2")
	h1.wantDig(3*time.Second, "c1", "NXDOMAIN", nil, "c2")

	// After a daemon restart, its containers' resolvers answer again, for
	// names on other hosts too.
	h1.run("c4", "db")
	if err := h2.h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := h2.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := h1.tb.WaitCluster(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	h2.wantDig(10*time.Second, "c3", "NOERROR", []string{h1.ip("c4")}, "c4")
	h2.wantDig(time.Second, "c3", "NOERROR", []string{"192.0.2.80"}, "outside.test")
}
