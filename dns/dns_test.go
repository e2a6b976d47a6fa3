package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// fakeSource knows names per asker.
type fakeSource struct {
	names  map[string]map[string]Records // asker -> name -> records
	ptrs   map[string]map[netip.Addr][]string
	ptrTTL map[netip.Addr]uint32 // LocalTTL if absent
	// noEgress names the askers that may not forward (Source.Forwards).
	noEgress map[string]bool
}

func (f fakeSource) LookupName(asker, name string) (Records, bool) {
	r, ok := f.names[asker][name]
	return r, ok
}

func (f fakeSource) Forwards(asker string) bool { return !f.noEgress[asker] }

func (f fakeSource) LookupAddr(asker string, addr netip.Addr) ([]string, uint32) {
	ttl, ok := f.ptrTTL[addr]
	if !ok {
		ttl = LocalTTL
	}
	return f.ptrs[asker][addr], ttl
}

// addrs are A records of a container name (LocalTTL).
func addrs(ips ...string) Records {
	r := Records{TTL: LocalTTL}
	for _, ip := range ips {
		r.Addrs = append(r.Addrs, netip.MustParseAddr(ip))
	}
	return r
}

// webTTL is the TTL of the service web in testSource.
const webTTL = 30

var testSource = fakeSource{
	names: map[string]map[string]Records{
		"c1": {
			"c2":     addrs("10.1.0.3"),
			"c2.web": addrs("10.1.0.3"),
			"db":     addrs("10.1.0.4", "10.1.0.5"),
			"noaddr": addrs(),
			// A service: its VIP, the name SRV records target, and SRV
			// records for its TCP ports; no UDP port.
			"svc":     {Addrs: []netip.Addr{netip.MustParseAddr("10.1.0.10")}, TTL: webTTL},
			"svc.web": {Addrs: []netip.Addr{netip.MustParseAddr("10.1.0.10")}, TTL: webTTL},
			"_tcp.svc": {SRV: []SRV{{Weight: 1, Port: 80, Target: "svc.web"}, {Weight: 1, Port: 443, Target: "svc.web"},
				{Weight: 1, Port: 8080, Target: "gone.web"}}, TTL: webTTL},
			"_udp.svc": {TTL: webTTL},
		},
		"c9": {"c9": addrs("10.2.0.9")},
	},
	ptrs: map[string]map[netip.Addr][]string{
		"c1": {netip.MustParseAddr("10.1.0.3"): {"c2.web"}, netip.MustParseAddr("10.1.0.10"): {"svc.web"}},
	},
	ptrTTL: map[netip.Addr]uint32{netip.MustParseAddr("10.1.0.10"): webTTL},
}

// serve starts s for asker on loopback sockets and returns their address.
func serve(t *testing.T, s *Server, asker string) string {
	t.Helper()
	pc, ln := listenPair(t)
	l := s.Serve(asker, pc, ln)
	t.Cleanup(func() { l.Close() })
	return pc.LocalAddr().String()
}

// listenPair opens a UDP socket and a TCP listener on the same loopback
// port.
func listenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
	}
	t.Fatal("no free port pair")
	return nil, nil
}

// upstream is an in-process DNS server the Server forwards to.
type upstream struct {
	addr netip.AddrPort
	mu   sync.Mutex
	seen []*mdns.Msg
	hits map[string]int // by transport
}

func (u *upstream) record(m *mdns.Msg, network string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.seen = append(u.seen, m.Copy())
	u.hits[network]++
}

func (u *upstream) last() *mdns.Msg {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[len(u.seen)-1]
}

func (u *upstream) count(network string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits[network]
}

// startUpstream serves, over UDP and TCP on one port: example.com A
// 192.0.2.1, big.example.com with 40 A records, NXDOMAIN for anything
// else under example.com, and calls handle (when set) for the other names.
func startUpstream(t testing.TB, handle func(w mdns.ResponseWriter, r *mdns.Msg) bool) *upstream {
	t.Helper()
	pc, ln := listenPair(t)
	u := &upstream{addr: netip.MustParseAddrPort(pc.LocalAddr().String()), hits: map[string]int{}}
	exampleA := mustRR(t, "example.com. 60 IN A 192.0.2.1")
	var bigA []mdns.RR
	for i := range 40 {
		bigA = append(bigA, mustRR(t, "big.example.com. 60 IN A 192.0.2."+strconv.Itoa(i+1)))
	}
	h := func(network string) mdns.HandlerFunc {
		return func(w mdns.ResponseWriter, r *mdns.Msg) {
			u.record(r, network)
			if handle != nil && handle(w, r) {
				return
			}
			m := new(mdns.Msg)
			m.SetReply(r)
			q := r.Question[0]
			switch strings.ToLower(q.Name) {
			case "example.com.":
				m.Answer = append(m.Answer, exampleA)
			case "big.example.com.":
				m.Answer = append(m.Answer, bigA...)
			default:
				m.Rcode = mdns.RcodeNameError
			}
			if o := r.IsEdns0(); o != nil {
				m.SetEdns0(o.UDPSize(), o.Do())
			}
			if network == "udp" {
				m.Truncate(udpSize(r))
			}
			w.WriteMsg(m)
		}
	}
	for _, srv := range []*mdns.Server{
		{PacketConn: pc, Handler: h("udp")},
		{Listener: ln, Handler: h("tcp")},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

func mustRR(t testing.TB, s string) mdns.RR {
	t.Helper()
	rr, err := mdns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return rr
}

// query asks addr over network and fails the test on a transport error.
func query(t *testing.T, network, addr, name string, qtype uint16, edns bool) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(4096, true)
	}
	c := &mdns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, mdns.TypeToString[qtype], err)
	}
	if r.Id != m.Id || !r.Response {
		t.Fatalf("%s %s: response id %d response %v, want id %d", network, name, r.Id, r.Response, m.Id)
	}
	return r
}

func answers(r *mdns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *mdns.A:
			out = append(out, v.A.String())
		case *mdns.PTR:
			out = append(out, v.Ptr)
		default:
			out = append(out, rr.String())
		}
	}
	slices.Sort(out)
	return out
}

func TestLocalNamesAreAnsweredForTheirAsker(t *testing.T) {
	s := New(Config{}, testSource)
	c1 := serve(t, s, "c1")
	c9 := serve(t, s, "c9")
	for _, tc := range []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"c2.", mdns.TypeA, []string{"10.1.0.3"}},
		{"C2.", mdns.TypeA, []string{"10.1.0.3"}},
		{"c2.web.", mdns.TypeA, []string{"10.1.0.3"}},
		{"c2.WEB.", mdns.TypeA, []string{"10.1.0.3"}},
		{"db.", mdns.TypeA, []string{"10.1.0.4", "10.1.0.5"}},
		{"c2.", mdns.TypeAAAA, nil},
		{"c2.", mdns.TypeMX, nil},
		{"noaddr.", mdns.TypeA, nil},
		{"3.0.1.10.in-addr.arpa.", mdns.TypePTR, []string{"c2.web."}},
	} {
		for _, network := range []string{"udp", "tcp"} {
			r := query(t, network, c1, tc.name, tc.qtype, false)
			if r.Rcode != mdns.RcodeSuccess || !r.Authoritative || !slices.Equal(answers(r), tc.want) {
				t.Errorf("c1 asks %s %s over %s: rcode %s aa %v answers %v, want NOERROR aa %v",
					tc.name, mdns.TypeToString[tc.qtype], network, mdns.RcodeToString[r.Rcode], r.Authoritative, answers(r), tc.want)
			}
			for _, rr := range r.Answer {
				if rr.Header().Ttl != LocalTTL || rr.Header().Name != tc.name {
					t.Errorf("%s: record %v, want owner %s and ttl %d", tc.name, rr, tc.name, LocalTTL)
				}
			}
		}
	}
	// c9 does not share c1's names: with no upstream, they are SERVFAIL,
	// not answered; its own name is.
	if r := query(t, "udp", c9, "c2.", mdns.TypeA, false); r.Rcode != mdns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Errorf("c9 asks c2: %v, want SERVFAIL without answer (not local for c9, no upstream)", r)
	}
	if r := query(t, "udp", c9, "c9.", mdns.TypeA, false); !slices.Equal(answers(r), []string{"10.2.0.9"}) {
		t.Errorf("c9 asks c9: %v", r)
	}
	// EDNS0 is echoed on local answers.
	if r := query(t, "udp", c1, "c2.", mdns.TypeA, true); r.IsEdns0() == nil {
		t.Errorf("local answer to an EDNS0 query lacks OPT: %v", r)
	}
	st := s.Stats()
	if st.Local != 2*9+2 || st.Forwarded != 0 || st.ServFail != 1 || st.Queries != st.Local+1 {
		t.Errorf("stats %+v, want 20 local, 1 servfail, 21 queries", st)
	}
}

// TestServiceRecordsCarryTheirTTLAndSRV asks a service's names over UDP
// (the fast path where it applies) and TCP (the general path): every
// record carries the Source's TTL, SRV records come with the A records of
// their local targets as additional records, and a name without records
// of the asked type is NOERROR with no answer.
func TestServiceRecordsCarryTheirTTLAndSRV(t *testing.T) {
	s := New(Config{}, precomputed(testSource))
	c1 := serve(t, s, "c1")
	for _, tc := range []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"svc.", mdns.TypeA, []string{"10.1.0.10"}},
		{"SVC.web.", mdns.TypeA, []string{"10.1.0.10"}},
		{"10.0.1.10.in-addr.arpa.", mdns.TypePTR, []string{"svc.web."}},
		{"_tcp.svc.", mdns.TypeSRV, []string{"0 1 443 svc.web.", "0 1 80 svc.web.", "0 1 8080 gone.web."}},
		{"_TCP.svc.", mdns.TypeANY, []string{"0 1 443 svc.web.", "0 1 80 svc.web.", "0 1 8080 gone.web."}},
		{"_udp.svc.", mdns.TypeSRV, nil},
		{"_tcp.svc.", mdns.TypeA, nil},
		{"svc.", mdns.TypeSRV, nil},
	} {
		for _, network := range []string{"udp", "tcp"} {
			r := query(t, network, c1, tc.name, tc.qtype, false)
			var got []string
			for _, rr := range r.Answer {
				switch v := rr.(type) {
				case *mdns.SRV:
					got = append(got, fmt.Sprint(v.Priority, " ", v.Weight, " ", v.Port, " ", v.Target))
				case *mdns.A:
					got = append(got, v.A.String())
				case *mdns.PTR:
					got = append(got, v.Ptr)
				}
				if rr.Header().Ttl != webTTL {
					t.Errorf("%s %s over %s: %v, want TTL %d", tc.name, mdns.TypeToString[tc.qtype], network, rr, webTTL)
				}
			}
			slices.Sort(got)
			if r.Rcode != mdns.RcodeSuccess || !r.Authoritative || !slices.Equal(got, tc.want) {
				t.Errorf("%s %s over %s: %s aa %v %v, want NOERROR aa %v", tc.name, mdns.TypeToString[tc.qtype], network,
					mdns.RcodeToString[r.Rcode], r.Authoritative, got, tc.want)
			}
			var extra []string
			for _, rr := range r.Extra {
				if a, ok := rr.(*mdns.A); ok {
					extra = append(extra, a.Hdr.Name+" "+a.A.String())
					if a.Hdr.Ttl != webTTL {
						t.Errorf("%s: additional %v, want TTL %d", tc.name, a, webTTL)
					}
				}
			}
			var wantExtra []string
			if len(tc.want) > 0 && strings.HasPrefix(tc.name, "_") {
				wantExtra = []string{"svc.web. 10.1.0.10"} // once, and none for gone.web (not local)
			}
			if !slices.Equal(extra, wantExtra) {
				t.Errorf("%s %s over %s: additional %v, want %v", tc.name, mdns.TypeToString[tc.qtype], network, extra, wantExtra)
			}
		}
	}
}

// TestHugeLocalAnswerOverTCPIsTruncatedNotDropped asks for more SRV
// records than one DNS message can hold (64 KiB): the TCP client gets the
// records that fit with TC set, not a dropped connection.
func TestHugeLocalAnswerOverTCPIsTruncatedNotDropped(t *testing.T) {
	var big []SRV
	for i := range 5000 {
		big = append(big, SRV{Weight: 1, Port: uint16(i), Target: fmt.Sprintf("backend-%d.web", i)})
	}
	src := fakeSource{names: map[string]map[string]Records{"c1": {"_tcp.big": {SRV: big, TTL: 10}}}}
	c1 := serve(t, New(Config{}, src), "c1")
	r := query(t, "tcp", c1, "_tcp.big.", mdns.TypeSRV, false)
	if r.Rcode != mdns.RcodeSuccess || !r.Truncated || len(r.Answer) < 1000 || len(r.Answer) >= len(big) {
		t.Errorf("5000 SRV records over TCP: %s tc %v with %d records, want NOERROR, TC and as many as fit",
			mdns.RcodeToString[r.Rcode], r.Truncated, len(r.Answer))
	}
}

// TestGoResolverLooksUpServiceSRV uses Go's own resolver, as a program in
// a container would: net.LookupSRV("", "", "_tcp.NAME") gets the
// service's ports and the name that resolves to its VIP.
func TestGoResolverLooksUpServiceSRV(t *testing.T) {
	s := New(Config{}, testSource)
	c1 := serve(t, s, "c1")
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, c1)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, srvs, err := r.LookupSRV(ctx, "", "", "_tcp.svc")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range srvs {
		got = append(got, fmt.Sprint(v.Target, ":", v.Port))
	}
	slices.Sort(got)
	if want := []string{"gone.web.:8080", "svc.web.:443", "svc.web.:80"}; !slices.Equal(got, want) {
		t.Errorf("LookupSRV _tcp.svc: %v, want %v", got, want)
	}
	if ips, err := r.LookupHost(ctx, "svc.web."); err != nil || !slices.Equal(ips, []string{"10.1.0.10"}) {
		t.Errorf("LookupHost of the SRV target svc.web: %v %v, want the VIP", ips, err)
	}
}

func TestForwardingToUpstream(t *testing.T) {
	u := startUpstream(t, nil)
	s := New(Config{Upstreams: []netip.AddrPort{u.addr}}, testSource)
	c1 := serve(t, s, "c1")

	r := query(t, "udp", c1, "example.com.", mdns.TypeA, true)
	if r.Rcode != mdns.RcodeSuccess || !slices.Equal(answers(r), []string{"192.0.2.1"}) {
		t.Fatalf("example.com through the resolver: %v", r)
	}
	// The client's EDNS0 reached the upstream, and came back.
	if o := u.last().IsEdns0(); o == nil || o.UDPSize() != 4096 || !o.Do() {
		t.Errorf("upstream got %v, want the client's OPT (4096, DO)", u.last())
	}
	if r.IsEdns0() == nil {
		t.Errorf("forwarded answer lost OPT: %v", r)
	}
	// A name unknown to the asker but local to another asker is forwarded.
	if r := query(t, "udp", c1, "c9.", mdns.TypeA, false); r.Rcode != mdns.RcodeNameError {
		t.Errorf("c9 asked by c1: %v, want the upstream's NXDOMAIN", r)
	}
	if r := query(t, "udp", c1, "nope.example.com.", mdns.TypeA, false); r.Rcode != mdns.RcodeNameError || len(r.Answer) != 0 {
		t.Errorf("nope.example.com: %v, want NXDOMAIN passed through", r)
	}
	// PTR for an address the Source does not know goes upstream too.
	if r := query(t, "udp", c1, "9.9.9.10.in-addr.arpa.", mdns.TypePTR, false); r.Rcode != mdns.RcodeNameError {
		t.Errorf("unknown PTR: %v, want the upstream's NXDOMAIN", r)
	}
	st := s.Stats()
	if st.Forwarded != 4 || st.NXDomain != 3 || st.Local != 0 || st.Upstream.Count != 4 || st.Upstream.Max <= 0 || st.Upstream.Sum < st.Upstream.Max {
		t.Errorf("stats %+v, want 4 forwarded, 3 nxdomain, 4 upstream round trips", st)
	}
	var n uint64
	for _, b := range st.Upstream.Buckets {
		n += b
	}
	if n != st.Upstream.Count || len(st.Upstream.Buckets) != len(st.Upstream.Bounds)+1 {
		t.Errorf("latency buckets %v (bounds %v) do not add up to %d", st.Upstream.Buckets, st.Upstream.Bounds, st.Upstream.Count)
	}
}

func TestLargeAnswersOverTCPAndTruncatedOverUDP(t *testing.T) {
	u := startUpstream(t, nil)
	s := New(Config{Upstreams: []netip.AddrPort{u.addr}}, testSource)
	c1 := serve(t, s, "c1")

	// Over UDP without EDNS0 the 40 records do not fit in 512 bytes: the
	// client gets TC and what fits.
	r := query(t, "udp", c1, "big.example.com.", mdns.TypeA, false)
	if !r.Truncated || len(r.Answer) >= 40 {
		t.Errorf("big over UDP: tc %v with %d answers, want truncated", r.Truncated, len(r.Answer))
	}
	// Over TCP the client gets all of them: the resolver retried its
	// truncated UDP answer over TCP.
	r = query(t, "tcp", c1, "big.example.com.", mdns.TypeA, false)
	if r.Truncated || len(r.Answer) != 40 {
		t.Errorf("big over TCP: tc %v with %d answers, want 40", r.Truncated, len(r.Answer))
	}
	if u.count("tcp") != 1 {
		t.Errorf("upstream got %d TCP queries, want 1 (the retry of a truncated answer)", u.count("tcp"))
	}
	// With a large EDNS0 buffer everything fits in one UDP answer.
	r = query(t, "udp", c1, "big.example.com.", mdns.TypeA, true)
	if r.Truncated || len(r.Answer) != 40 {
		t.Errorf("big over UDP with EDNS0 4096: tc %v with %d answers, want 40", r.Truncated, len(r.Answer))
	}
}

func TestDeadUpstreamsGiveServfailAndAliveOnesAreTried(t *testing.T) {
	dead := deadAddr(t)
	u := startUpstream(t, nil)
	s := New(Config{Upstreams: []netip.AddrPort{dead, u.addr}, Timeout: 2 * time.Second}, testSource)
	c1 := serve(t, s, "c1")
	if r := query(t, "udp", c1, "example.com.", mdns.TypeA, false); !slices.Equal(answers(r), []string{"192.0.2.1"}) {
		t.Errorf("with the first upstream dead: %v, want the second's answer", r)
	}
	if st := s.Stats(); st.UpstreamErrors == 0 {
		t.Errorf("stats %+v: the dead upstream's failure is not counted", st)
	}

	s = New(Config{Upstreams: []netip.AddrPort{dead, deadAddr(t)}}, testSource)
	c1 = serve(t, s, "c1")
	start := time.Now()
	if r := query(t, "udp", c1, "example.com.", mdns.TypeA, false); r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("every upstream dead: %v, want SERVFAIL", r)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("SERVFAIL for refusing upstreams took %v; a refused port fails at once", d)
	}
	// An upstream that answers SERVFAIL counts as failing too.
	bad := startUpstream(t, func(w mdns.ResponseWriter, r *mdns.Msg) bool {
		m := new(mdns.Msg)
		m.SetRcode(r, mdns.RcodeServerFailure)
		w.WriteMsg(m)
		return true
	})
	s = New(Config{Upstreams: []netip.AddrPort{bad.addr, u.addr}}, testSource)
	c1 = serve(t, s, "c1")
	if r := query(t, "udp", c1, "example.com.", mdns.TypeA, false); !slices.Equal(answers(r), []string{"192.0.2.1"}) {
		t.Errorf("first upstream answering SERVFAIL: %v, want the second's answer", r)
	}
}

// deadAddr returns a loopback UDP address nobody listens on.
func deadAddr(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	return a
}

// blackhole is an upstream that reads queries and never answers; got
// receives one value per query read.
func blackhole(t *testing.T) (netip.AddrPort, chan struct{}) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	got := make(chan struct{}, 100)
	go func() {
		b := make([]byte, 4096)
		for {
			if _, _, err := pc.ReadFrom(b); err != nil {
				return
			}
			got <- struct{}{}
		}
	}()
	return netip.MustParseAddrPort(pc.LocalAddr().String()), got
}

func TestSilentUpstreamIsBoundedByTimeout(t *testing.T) {
	hole, got := blackhole(t)
	const timeout = 600 * time.Millisecond
	s := New(Config{Upstreams: []netip.AddrPort{hole}, Timeout: timeout, Attempts: 3}, testSource)
	c1 := serve(t, s, "c1")
	start := time.Now()
	r := query(t, "udp", c1, "example.com.", mdns.TypeA, false)
	d := time.Since(start)
	if r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("silent upstream: %v, want SERVFAIL", r)
	}
	if d < timeout-50*time.Millisecond || d > timeout+400*time.Millisecond {
		t.Errorf("silent upstream answered after %v, want about the %v timeout", d, timeout)
	}
	if len(got) != 3 {
		t.Errorf("silent upstream got %d tries, want 3 (Attempts)", len(got))
	}
	if st := s.Stats(); st.ServFail != 1 || st.UpstreamErrors != 3 || st.Inflight != 0 {
		t.Errorf("stats %+v, want 1 servfail, 3 upstream errors, none in flight", st)
	}
}

func TestInflightBound(t *testing.T) {
	release := make(chan struct{})
	held := make(chan struct{}, 10)
	slowA := mustRR(t, "slow.example.com. 60 IN A 192.0.2.7")
	u := startUpstream(t, func(w mdns.ResponseWriter, r *mdns.Msg) bool {
		if r.Question[0].Name != "slow.example.com." {
			return false
		}
		held <- struct{}{}
		<-release
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, slowA)
		w.WriteMsg(m)
		return true
	})
	s := New(Config{Upstreams: []netip.AddrPort{u.addr}, MaxInflight: 2, Timeout: 10 * time.Second}, testSource)
	c1 := serve(t, s, "c1")
	results := make(chan *mdns.Msg, 2)
	for range 2 {
		go func() { results <- query(t, "udp", c1, "slow.example.com.", mdns.TypeA, false) }()
	}
	<-held
	<-held
	// Two forwarded queries are in flight: a third gets SERVFAIL at once,
	// local names still resolve.
	if r := query(t, "udp", c1, "example.com.", mdns.TypeA, false); r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("over the in-flight bound: %v, want SERVFAIL", r)
	}
	if r := query(t, "udp", c1, "c2.", mdns.TypeA, false); !slices.Equal(answers(r), []string{"10.1.0.3"}) {
		t.Errorf("local name while the upstream is saturated: %v", r)
	}
	if st := s.Stats(); st.Overloaded != 1 || st.Inflight != 2 {
		t.Errorf("stats %+v, want 1 overloaded, 2 in flight", st)
	}
	close(release)
	for range 2 {
		if r := <-results; !slices.Equal(answers(r), []string{"192.0.2.7"}) {
			t.Errorf("held query: %v", r)
		}
	}
	if r := query(t, "udp", c1, "example.com.", mdns.TypeA, false); r.Rcode != mdns.RcodeSuccess {
		t.Errorf("after the held queries ended: %v, want an answer", r)
	}
}

func TestCloseStopsServingAndAbortsForwarding(t *testing.T) {
	hole, got := blackhole(t)
	s := New(Config{Upstreams: []netip.AddrPort{hole}, Timeout: time.Minute}, testSource)
	pc, ln := listenPair(t)
	addr := pc.LocalAddr().String()
	l := s.Serve("c1", pc, ln)
	m := new(mdns.Msg)
	m.SetQuestion("example.com.", mdns.TypeA)
	c := &mdns.Client{Timeout: time.Minute}
	go c.Exchange(m, addr)
	<-got // the query is being forwarded
	start := time.Now()
	if err := l.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("close took %v with a forwarded query in flight", d)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Errorf("TCP listener still accepts after Close")
	}
}

func TestUpstreamParsing(t *testing.T) {
	ups, err := ParseUpstreams("192.0.2.1, 192.0.2.2:5353,[2001:db8::1]:53,2001:db8::2")
	want := []string{"192.0.2.1:53", "192.0.2.2:5353", "[2001:db8::1]:53", "[2001:db8::2]:53"}
	var got []string
	for _, u := range ups {
		got = append(got, u.String())
	}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseUpstreams: %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"example.com", "192.0.2.1:0", "192.0.2.1:x"} {
		if _, err := ParseUpstreams(bad); err == nil {
			t.Errorf("ParseUpstreams(%q) succeeded", bad)
		}
	}
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# comment\nnameserver 127.0.0.11\nnameserver 127.0.0.53\nsearch example.com\nnameserver 2001:db8::1\nnameserver bogus\noptions ndots:0\n"), 0o644)
	ups, err = ResolvConfUpstreams(p)
	got = nil
	for _, u := range ups {
		got = append(got, u.String())
	}
	if err != nil || !slices.Equal(got, []string{"127.0.0.53:53", "[2001:db8::1]:53"}) {
		t.Errorf("ResolvConfUpstreams: %v, %v; want 127.0.0.53 and 2001:db8::1 (not 127.0.0.11)", got, err)
	}
	if ups, err := ResolvConfUpstreams(filepath.Join(t.TempDir(), "missing")); err != nil || len(ups) != 0 {
		t.Errorf("missing resolv.conf: %v, %v", ups, err)
	}
}

func TestMalformedQueries(t *testing.T) {
	s := New(Config{}, testSource)
	ctx := context.Background()
	two := new(mdns.Msg)
	two.SetQuestion("c2.", mdns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	if r := s.answer(ctx, "c1", two, false); r == nil || r.Rcode != mdns.RcodeFormatError {
		t.Errorf("two questions: %v, want FORMERR", r)
	}
	upd := new(mdns.Msg)
	upd.SetUpdate("web.")
	if r := s.answer(ctx, "c1", upd, false); r == nil || r.Rcode != mdns.RcodeNotImplemented {
		t.Errorf("update: %v, want NOTIMP", r)
	}
	resp := new(mdns.Msg)
	resp.SetQuestion("c2.", mdns.TypeA)
	resp.Response = true
	if r := s.answer(ctx, "c1", resp, false); r != nil {
		t.Errorf("a response got answered: %v", r)
	}
}

// TestEDNSVersionOtherThanZeroGetsBadvers sends EDNS version 1 queries for
// a local name and for a name that would be forwarded: both must be
// answered BADVERS with an OPT record of version 0 (RFC 6891 §6.1.3), and
// the upstream must never see the query.
func TestEDNSVersionOtherThanZeroGetsBadvers(t *testing.T) {
	u := startUpstream(t, nil)
	s := New(Config{Upstreams: []netip.AddrPort{u.addr}}, testSource)
	addr := serve(t, s, "c1")
	for _, name := range []string{"c2.", "example.com."} {
		for _, network := range []string{"udp", "tcp"} {
			m := new(mdns.Msg)
			m.SetQuestion(name, mdns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().SetVersion(1)
			c := &mdns.Client{Net: network, Timeout: 5 * time.Second}
			r, _, err := c.Exchange(m, addr)
			if err != nil {
				t.Fatalf("%s %s: %v", network, name, err)
			}
			opt := r.IsEdns0()
			if r.Rcode != mdns.RcodeBadVers || opt == nil || opt.Version() != 0 || len(r.Answer) != 0 {
				t.Errorf("%s %s with EDNS version 1: rcode %s, opt %v, %d answers; want BADVERS, OPT version 0, none",
					network, name, mdns.RcodeToString[r.Rcode], opt, len(r.Answer))
			}
		}
	}
	if n := u.count("udp") + u.count("tcp"); n != 0 {
		t.Errorf("the upstream saw %d queries of an unsupported EDNS version", n)
	}
	// Version 0 is still answered normally.
	if r := query(t, "udp", addr, "c2.", mdns.TypeA, true); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("EDNS version 0: %v", r)
	}
}

// TestServeFuncPicksTheAskerBySource: on a socket shared by many askers
// (a gateway address), each query is answered for the asker its source
// address names, over UDP and TCP; an unknown source gets no local name,
// only forwarding.
func TestServeFuncPicksTheAskerBySource(t *testing.T) {
	u := startUpstream(t, nil)
	s := New(Config{Upstreams: []netip.AddrPort{u.addr}}, testSource)
	var known atomic.Bool
	known.Store(true)
	var asked atomic.Value
	pc, ln := listenPair(t)
	l := s.ServeFunc(func(src netip.Addr) string {
		asked.Store(src)
		if known.Load() && src == netip.MustParseAddr("127.0.0.1") {
			return "c1"
		}
		return ""
	}, pc, ln)
	t.Cleanup(func() { l.Close() })
	addr := pc.LocalAddr().String()
	for _, network := range []string{"udp", "tcp"} {
		if r := query(t, network, addr, "c2.", mdns.TypeA, false); !slices.Equal(answers(r), []string{"10.1.0.3"}) {
			t.Errorf("c1 (by its source) asks c2 over %s: %v", network, r)
		}
	}
	if a, _ := asked.Load().(netip.Addr); a != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("asker function got source %v, want 127.0.0.1", a)
	}
	known.Store(false)
	for _, network := range []string{"udp", "tcp"} {
		if r := query(t, network, addr, "c2.", mdns.TypeA, false); r.Rcode != mdns.RcodeNameError || len(r.Answer) != 0 {
			t.Errorf("unknown source asks c2 over %s: %v, want the upstream's NXDOMAIN (not local)", network, r)
		}
		if r := query(t, network, addr, "example.com.", mdns.TypeA, false); !slices.Equal(answers(r), []string{"192.0.2.1"}) {
			t.Errorf("unknown source asks example.com over %s: %v, want it forwarded", network, r)
		}
	}
}

// An asker that may not forward (a container only on internal networks)
// gets its local names as before and SERVFAIL for every other name, over
// UDP and TCP, without the upstream seeing the query; another asker's
// queries still go out.
func TestNoForwardingForAskersWithoutEgress(t *testing.T) {
	u := startUpstream(t, nil)
	src := testSource
	src.noEgress = map[string]bool{"c1": true}
	s := New(Config{Upstreams: []netip.AddrPort{u.addr}}, src)
	c1 := serve(t, s, "c1")
	other := serve(t, s, "c3")
	if r := query(t, "udp", c1, "c2.", mdns.TypeA, false); r.Rcode != mdns.RcodeSuccess || !slices.Equal(answers(r), []string{"10.1.0.3"}) {
		t.Fatalf("c2 asked by c1 without egress: %v, want its local answer", r)
	}
	for _, network := range []string{"udp", "tcp"} {
		if r := query(t, network, c1, "example.com.", mdns.TypeA, true); r.Rcode != mdns.RcodeServerFailure || len(r.Answer) != 0 {
			t.Errorf("example.com over %s asked by c1 without egress: %v, want SERVFAIL", network, r)
		}
	}
	if n := u.count("udp") + u.count("tcp"); n != 0 {
		t.Fatalf("the upstream saw %d queries of an asker without egress", n)
	}
	if r := query(t, "udp", other, "example.com.", mdns.TypeA, false); r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("example.com asked by c3: %v, want it forwarded", r)
	}
	if st := s.Stats(); st.NoEgress != 2 || st.Forwarded != 1 || st.ServFail != 2 {
		t.Errorf("stats %+v, want 2 not forwarded (no egress), 1 forwarded, 2 servfail", st)
	}
}

// TestPipelinedTCPQueriesAreAllAnswered sends many queries on one TCP
// connection without waiting (RFC 7766 §6.2.1 pipelining, as dnsperf and
// stub resolvers that keep a connection do): every one is answered, and
// the connection is not closed under the client after some count.
func TestPipelinedTCPQueriesAreAllAnswered(t *testing.T) {
	s := New(Config{}, testSource)
	addr := serve(t, s, "c1")
	conn, err := mdns.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	const n = 300
	for i := range n {
		m := new(mdns.Msg)
		m.SetQuestion("c2.", mdns.TypeA)
		m.Id = uint16(i + 1)
		if err := conn.WriteMsg(m); err != nil {
			t.Fatalf("query %d: %v", i+1, err)
		}
	}
	for i := range n {
		r, err := conn.ReadMsg()
		if err != nil {
			t.Fatalf("answer %d of %d pipelined queries: %v", i+1, n, err)
		}
		if r.Id != uint16(i+1) || len(r.Answer) != 1 {
			t.Fatalf("answer %d: id %d, %d records; want id %d, 1 record", i+1, r.Id, len(r.Answer), i+1)
		}
	}
}

// TestDOBitIsCopied: an answer to a query with EDNS0 copies its DO bit
// (RFC 3225 §3: "MUST be copied in the response"), on the fast UDP path
// (a plain A query for a local name), the general path (TCP, PTR, an
// empty answer) and when there is none to copy.
func TestDOBitIsCopied(t *testing.T) {
	s := New(Config{}, precomputed(testSource)) // with the fast UDP path
	addr := serve(t, s, "c1")
	for _, network := range []string{"udp", "tcp"} {
		for _, q := range []struct {
			name  string
			qtype uint16
		}{{"c2.", mdns.TypeA}, {"c2.", mdns.TypeAAAA}, {"3.0.1.10.in-addr.arpa.", mdns.TypePTR}} {
			for _, do := range []bool{true, false} {
				m := new(mdns.Msg)
				m.SetQuestion(q.name, q.qtype)
				m.SetEdns0(1232, do)
				c := &mdns.Client{Net: network, Timeout: 5 * time.Second}
				r, _, err := c.Exchange(m, addr)
				if err != nil {
					t.Fatalf("%s %s: %v", network, q.name, err)
				}
				opt := r.IsEdns0()
				if opt == nil || opt.Do() != do {
					t.Errorf("%s %s %s with DO=%v: answer has OPT %v, DO %v", network, q.name, mdns.TypeToString[q.qtype], do, opt != nil, opt != nil && opt.Do())
				}
			}
		}
	}
}
