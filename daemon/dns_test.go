package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// dnsSandbox is a fakeSandbox whose "namespaces" get their resolver
// sockets on loopback ports, so tests can ask each container's resolver.
type dnsSandbox struct {
	*fakeSandbox
	mu    sync.Mutex
	addrs map[string]string // netns path -> resolver address
}

func (s *dnsSandbox) ListenDNS(nsPath string) (net.PacketConn, net.Listener, error) {
	for range 20 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp4", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		s.mu.Lock()
		s.addrs[nsPath] = pc.LocalAddr().String()
		s.mu.Unlock()
		return pc, ln, nil
	}
	return nil, nil, fmt.Errorf("no free port pair")
}

func (s *dnsSandbox) addr(nsPath string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[nsPath]
}

// newDNSNode is newNode with a dnsSandbox and upstream servers.
func newDNSNode(t *testing.T, mem *tunnel.MemNetwork, name string, addr netip.Addr, sb *dnsSandbox, dir string, ups []netip.AddrPort, join ...string) *Daemon {
	t.Helper()
	cfg := nodeConfig(t, mem, name, addr, sb, dir, join...)
	cfg.DNSUpstreams, cfg.DNSTimeout = ups, time.Second
	return startNode(t, cfg)
}

// nxUpstream answers NXDOMAIN to everything but outside.example.
func nxUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &mdns.A{Hdr: mdns.RR_Header{Name: "outside.example.", Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 80)}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if r.Question[0].Name == "outside.example." {
			m.Answer = []mdns.RR{a}
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// ask queries a container's resolver and returns the rcode and the
// answers (addresses or PTR names), sorted.
func ask(t *testing.T, addr, name string, qtype uint16) (string, []string) {
	t.Helper()
	if addr == "" {
		t.Fatalf("asking %s: the container has no resolver", name)
	}
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	r, _, err := (&mdns.Client{Timeout: 5 * time.Second}).Exchange(m, addr)
	if err != nil {
		t.Fatalf("asking %s at %s: %v", name, addr, err)
	}
	var out []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *mdns.A:
			out = append(out, v.A.String())
		case *mdns.PTR:
			out = append(out, v.Ptr)
		}
	}
	slices.Sort(out)
	return mdns.RcodeToString[r.Rcode], out
}

func TestDNSAnswersNamesOfSharedNetworksAcrossNodes(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	up := nxUpstream(t)
	dir1, dir2 := t.TempDir(), t.TempDir()
	sb1 := &dnsSandbox{fakeSandbox: newFakeSandbox(), addrs: map[string]string{}}
	sb2 := &dnsSandbox{fakeSandbox: newFakeSandbox(), addrs: map[string]string{}}
	h1 := newDNSNode(t, mem, "h1", netip.MustParseAddr("127.0.0.1"), sb1, dir1, []netip.AddrPort{up})
	key, _ := readFile(dir1 + "/cluster.key")
	writeFile(t, dir2+"/cluster.key", key)
	h2 := newDNSNode(t, mem, "h2", netip.MustParseAddr("127.0.0.2"), sb2, dir2, []netip.AddrPort{up},
		fmt.Sprintf("127.0.0.1:%d", h1.cfg.GossipPort))
	t.Cleanup(h2.Close)
	for _, n := range []api.NetworkCreateRequest{{Name: "web", Subnet: "10.9.1.0/24"}, {Name: "db", Subnet: "10.9.2.0/24"}} {
		if _, err := h1.CreateNetwork(n); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "network "+n.Name+" on h2", func() bool { _, err := h2.Network(n.Name); return err == nil })
	}
	c1 := mustAttach(t, h1, api.AttachRequest{Network: "web", Name: "c1", Create: true, Aliases: []string{"front"}})
	c3 := mustAttach(t, h1, api.AttachRequest{Network: "db", Name: "c3", Create: true})
	c2 := mustAttach(t, h2, api.AttachRequest{Network: "web", Name: "c2", Create: true, Aliases: []string{"API"}})
	c4 := mustAttach(t, h2, api.AttachRequest{Network: "db", Name: "c4", Create: true})
	r1, r3 := sb1.addr("/run/netns/c1"), sb1.addr("/run/netns/c3")

	// c1 (web) sees c2 on the other node as soon as the cluster tells.
	waitFor(t, "c2 in c1's resolver", func() bool {
		_, got := ask(t, r1, "c2", mdns.TypeA)
		return slices.Equal(got, []string{c2.IP})
	})
	for _, q := range []struct {
		asker, name string
		qtype       uint16
		rcode       string
		want        []string
	}{
		{r1, "api", mdns.TypeA, "NOERROR", []string{c2.IP}},
		{r1, "C2.Web.", mdns.TypeA, "NOERROR", []string{c2.IP}},
		{r1, "front", mdns.TypeA, "NOERROR", []string{c1.IP}},
		{r1, "c1.web", mdns.TypeA, "NOERROR", []string{c1.IP}},
		{r1, "c2", mdns.TypeAAAA, "NOERROR", nil},
		{r1, reverse(c2.IP), mdns.TypePTR, "NOERROR", []string{"c2.web."}},
		// Scope: db names are not answered for c1, they go upstream.
		{r1, "c4", mdns.TypeA, "NXDOMAIN", nil},
		{r1, "c4.db", mdns.TypeA, "NXDOMAIN", nil},
		{r1, "c2.db", mdns.TypeA, "NXDOMAIN", nil},
		{r1, reverse(c4.IP), mdns.TypePTR, "NXDOMAIN", nil},
		{r1, "outside.example", mdns.TypeA, "NOERROR", []string{"192.0.2.80"}},
		{r3, "c4", mdns.TypeA, "NOERROR", []string{c4.IP}},
		{r3, "c3", mdns.TypeA, "NOERROR", []string{c3.IP}},
		{r3, "c2", mdns.TypeA, "NXDOMAIN", nil},
	} {
		var rcode string
		var got []string
		// c4's record may still be on its way to h1.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			rcode, got = ask(t, q.asker, q.name, q.qtype)
			if (rcode == q.rcode && slices.Equal(got, q.want)) || time.Now().After(deadline) {
				break
			}
		}
		if rcode != q.rcode || !slices.Equal(got, q.want) {
			t.Errorf("%s asks %s %s: %s %v, want %s %v", q.asker, q.name, mdns.TypeToString[q.qtype], rcode, got, q.rcode, q.want)
		}
	}

	// c1 joins db too: now it sees both networks' names.
	mustAttach(t, h1, api.AttachRequest{Network: "db", Name: "c1", Netns: "/run/netns/c1"})
	if _, got := ask(t, r1, "c4", mdns.TypeA); !slices.Equal(got, []string{c4.IP}) {
		t.Errorf("c1 on db too asks c4: %v, want %s", got, c4.IP)
	}

	// A detached container stops resolving, on its own node and on others.
	if err := h2.Detach("c2", "web"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c2 to stop resolving for c1", func() bool {
		rcode, _ := ask(t, r1, "c2", mdns.TypeA)
		return rcode == "NXDOMAIN"
	})

	st := h1.Stats().DNS
	if st.Queries == 0 || st.Local == 0 || st.Forwarded == 0 || st.NXDomain == 0 || st.Listeners != 2 ||
		!slices.Equal(st.Upstreams, []string{up.String()}) || st.UpstreamLatency.Count == 0 {
		t.Errorf("dns stats on h1: %+v", st)
	}

	// A removed container's resolver is closed.
	if err := h1.RemoveContainer("c3"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := (&mdns.Client{Net: "tcp", Timeout: time.Second}).Exchange(new(mdns.Msg).SetQuestion("c1.", mdns.TypeA), r3); err == nil {
		t.Errorf("c3's resolver still answers after rm")
	}
	if n := h1.Stats().DNS.Listeners; n != 1 {
		t.Errorf("after rm c3: %d listeners, want 1", n)
	}

	// After a restart c1's resolver is back and answers from the cluster.
	h1.Close()
	h1 = newDNSNode(t, mem, "h1", netip.MustParseAddr("127.0.0.1"), sb1, dir1, []netip.AddrPort{up},
		fmt.Sprintf("127.0.0.2:%d", h2.cfg.GossipPort))
	t.Cleanup(h1.Close)
	r1 = sb1.addr("/run/netns/c1")
	waitFor(t, "c4 in c1's resolver after restart", func() bool {
		_, got := ask(t, r1, "c4.db", mdns.TypeA)
		return slices.Equal(got, []string{c4.IP})
	})
	if _, got := ask(t, r1, "front", mdns.TypeA); !slices.Equal(got, []string{c1.IP}) {
		t.Errorf("after restart c1 asks its alias: %v", got)
	}
}

// reverse is the PTR name of an IPv4 address.
func reverse(ip string) string {
	n, _ := mdns.ReverseAddr(ip)
	return n
}

func TestDNSIndexIsCaseInsensitiveAndScoped(t *testing.T) {
	x := buildDNSIndex("h1", []epRecord{
		{Name: "C1", Network: "Web", IP: "10.0.0.2", Node: "h1"},
		{Name: "c2", Network: "web", IP: "10.0.0.3", Node: "h2", Aliases: []string{"Svc"}},
		{Name: "c5", Network: "web", IP: "10.0.0.5", Node: "h2", Aliases: []string{"svc"}},
		{Name: "c9", Network: "other", IP: "10.1.0.9", Node: "h2"},
		{Name: "bad", Network: "web", IP: "nope", Node: "h2"},
	}, nil)
	var s dnsSource
	s.index.Store(x)
	if a, ok := s.LookupName("C1", "svc"); !ok || len(a.Addrs) != 2 {
		t.Errorf("svc for C1: %v %v, want both addresses", a, ok)
	}
	if _, ok := s.LookupName("C1", "c9"); ok {
		t.Errorf("c9 (other network) answered for C1")
	}
	if _, ok := s.LookupName("c2", "c1"); ok {
		t.Errorf("a remote container is an asker")
	}
	if _, ok := s.LookupName("C1", "bad"); ok {
		t.Errorf("record with a bad address indexed")
	}
	if got, _ := s.LookupAddr("C1", netip.MustParseAddr("10.0.0.2")); !slices.Equal(got, []string{"c1.web"}) {
		t.Errorf("PTR 10.0.0.2: %v", got)
	}
}

// fastAnswer asks name/qtype of the precomputed answers of s for asker and
// returns the sorted answer data, or ok false when the query would take the
// general path.
func fastAnswer(t *testing.T, s *dnsSource, asker, name string, qtype uint16) (rdata []string, ok bool) {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	raw, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 4096)
	n := s.Answers().Answer(asker, raw, out)
	if n == 0 {
		return nil, false
	}
	r := new(mdns.Msg)
	if err := r.Unpack(out[:n]); err != nil {
		t.Fatal(err)
	}
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *mdns.A:
			rdata = append(rdata, rr.A.String())
		case *mdns.PTR:
			rdata = append(rdata, rr.Ptr)
		}
	}
	slices.Sort(rdata)
	return rdata, true
}

// TestDNSFastAnswersFollowTheIndexAndItsScope checks that the precomputed
// answers are exactly the lookups, per asker (a name of another network is
// never answered locally), and that a new endpoints table replaces them in
// the same snapshot.
func TestDNSFastAnswersFollowTheIndexAndItsScope(t *testing.T) {
	recs := []epRecord{
		{Name: "C1", Network: "Web", IP: "10.0.0.2", Node: "h1"},
		{Name: "c2", Network: "web", IP: "10.0.0.3", Node: "h2", Aliases: []string{"Svc"}},
		{Name: "c5", Network: "web", IP: "10.0.0.5", Node: "h2", Aliases: []string{"svc"}},
		{Name: "c9", Network: "other", IP: "10.1.0.9", Node: "h1"},
		{Name: "both", Network: "web", IP: "10.0.0.7", Node: "h1"},
		{Name: "both", Network: "other", IP: "10.1.0.7", Node: "h1"},
	}
	var s dnsSource
	s.index.Store(buildDNSIndex("h1", recs, nil))
	names := []string{"c1", "C1.WEB", "svc", "c2", "c2.web", "c9", "c9.other", "both", "both.web", "both.other",
		"nobody", "c2.other"}
	for _, asker := range []string{"C1", "c9", "both", "c2"} {
		for _, name := range names {
			want, local := s.LookupName(asker, strings.ToLower(name))
			got, fast := fastAnswer(t, &s, asker, name+".", mdns.TypeA)
			if !local {
				if fast {
					t.Errorf("%s asks %s: fast answer %v for a name that is not local to it", asker, name, got)
				}
				continue
			}
			var w []string
			for _, a := range want.Addrs {
				w = append(w, a.String())
			}
			slices.Sort(w)
			if !fast || !slices.Equal(got, w) {
				t.Errorf("%s asks %s: fast %v %v, lookup %v", asker, name, got, fast, w)
			}
		}
		for _, ip := range []string{"10.0.0.2", "10.0.0.3", "10.1.0.9", "10.0.0.7", "10.1.0.7"} {
			want, _ := s.LookupAddr(asker, netip.MustParseAddr(ip))
			got, fast := fastAnswer(t, &s, asker, reverse(ip), mdns.TypePTR)
			var w []string
			for _, n := range want {
				w = append(w, n+".")
			}
			slices.Sort(w)
			if len(want) == 0 && fast || len(want) > 0 && (!fast || !slices.Equal(got, w)) {
				t.Errorf("%s asks PTR %s: fast %v %v, lookup %v", asker, ip, got, fast, w)
			}
		}
	}
	// c2 moves to another address: the next snapshot answers the new one.
	recs[1].IP = "10.0.0.33"
	s.index.Store(buildDNSIndex("h1", recs, nil))
	if got, _ := fastAnswer(t, &s, "C1", "c2.", mdns.TypeA); !slices.Equal(got, []string{"10.0.0.33"}) {
		t.Errorf("after the table changed, c2 is %v, want 10.0.0.33", got)
	}
}
