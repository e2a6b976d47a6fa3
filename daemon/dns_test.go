package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/dns"
	"github.com/vxmesh/vxmesh/lb"
	"github.com/vxmesh/vxmesh/packet"
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

// dnsPair is two nodes of one cluster that answer DNS (h2 joined h1), with
// their sandboxes and h1's state directory.
type dnsPair struct {
	h1, h2   *Daemon
	sb1, sb2 *dnsSandbox
	dir1     string
}

// newDNSPair starts a dnsPair forwarding to up.
func newDNSPair(t *testing.T, mem *tunnel.MemNetwork, up netip.AddrPort) dnsPair {
	t.Helper()
	dir1, dir2 := t.TempDir(), t.TempDir()
	p := dnsPair{
		sb1:  &dnsSandbox{fakeSandbox: newFakeSandbox(), addrs: map[string]string{}},
		sb2:  &dnsSandbox{fakeSandbox: newFakeSandbox(), addrs: map[string]string{}},
		dir1: dir1,
	}
	p.h1 = newDNSNode(t, mem, "h1", netip.MustParseAddr("127.0.0.1"), p.sb1, dir1, []netip.AddrPort{up})
	key, _ := readFile(dir1 + "/cluster.key")
	writeFile(t, dir2+"/cluster.key", key)
	p.h2 = newDNSNode(t, mem, "h2", netip.MustParseAddr("127.0.0.2"), p.sb2, dir2, []netip.AddrPort{up},
		fmt.Sprintf("127.0.0.1:%d", p.h1.cfg.GossipPort))
	return p
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
	p := newDNSPair(t, mem, up)
	h1, h2, sb1, dir1 := p.h1, p.h2, p.sb1, p.dir1
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

// serveIndex serves x to each asker on loopback sockets, forwarding to up,
// and returns each asker's resolver address.
func serveIndex(t *testing.T, x *dnsIndex, up netip.AddrPort, askers ...string) map[string]string {
	t.Helper()
	src := &dnsSource{}
	src.index.Store(x)
	srv := dns.New(dns.Config{Upstreams: []netip.AddrPort{up}, Timeout: time.Second}, src)
	sb := &dnsSandbox{addrs: map[string]string{}}
	out := map[string]string{}
	for _, a := range askers {
		pc, ln, err := sb.ListenDNS(a)
		if err != nil {
			t.Fatal(err)
		}
		l := srv.Serve(a, pc, ln)
		t.Cleanup(func() { l.Close() })
		out[a] = sb.addr(a)
	}
	return out
}

// askRRs asks name over network ("udp" or "tcp") and returns the rcode and
// the answer and additional records as "RDATA TTL", sorted.
func askRRs(t *testing.T, network, addr, name string, qtype uint16) (rcode string, answer, extra []string) {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	r, _, err := (&mdns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(m, addr)
	if err != nil {
		t.Fatalf("asking %s over %s: %v", name, network, err)
	}
	str := func(rrs []mdns.RR) []string {
		var out []string
		for _, rr := range rrs {
			ttl := rr.Header().Ttl
			switch v := rr.(type) {
			case *mdns.A:
				out = append(out, fmt.Sprintf("%s %s %d", v.Hdr.Name, v.A, ttl))
			case *mdns.PTR:
				out = append(out, fmt.Sprintf("%s %d", v.Ptr, ttl))
			case *mdns.SRV:
				out = append(out, fmt.Sprintf("%d %d %d %s %d", v.Priority, v.Weight, v.Port, v.Target, ttl))
			}
		}
		slices.Sort(out)
		return out
	}
	return mdns.RcodeToString[r.Rcode], str(r.Answer), str(r.Extra)
}

// serviceFixture is a cluster seen from h1: asker c1 on web, d1 on db,
// both on web and db; backends b1, b2, b3 on web (b3 not healthy), a
// container api on web; services shop (VIP, ports, on web and db), pg
// (dnsrr), idle (VIP, no task), idlerr (dnsrr, no task), api (a VIP, named
// like the container) and ledger (db only).
func serviceFixture() ([]epRecord, []dnsService) {
	ip := netip.MustParseAddr
	recs := []epRecord{
		{Name: "c1", Network: "web", IP: "10.0.0.2", Node: "h1"},
		{Name: "d1", Network: "db", IP: "10.1.0.2", Node: "h1"},
		{Name: "both", Network: "web", IP: "10.0.0.3", Node: "h1"},
		{Name: "both", Network: "db", IP: "10.1.0.3", Node: "h1"},
		{Name: "B1", Network: "web", IP: "10.0.0.11", Node: "h2"},
		{Name: "b2", Network: "web", IP: "10.0.0.12", Node: "h2"},
		{Name: "b3", Network: "web", IP: "10.0.0.13", Node: "h2"},
		{Name: "api", Network: "web", IP: "10.0.0.20", Node: "h2"},
	}
	tasks := []netip.Addr{ip("10.0.0.11"), ip("10.0.0.12")}
	svcs := []dnsService{
		{Name: "shop", Network: "web", VIP: ip("10.0.0.100"), TTL: 30 * time.Second, Tasks: tasks, Ports: []lb.Port{
			{Proto: packet.ProtoTCP, Port: 80, Target: 8080}, {Proto: packet.ProtoTCP, Port: 443}, {Proto: packet.ProtoUDP, Port: 53}}},
		{Name: "shop", Network: "db", VIP: ip("10.1.0.100"), TTL: 30 * time.Second},
		{Name: "pg", Network: "web", TTL: 10 * time.Second, Tasks: tasks, Ports: []lb.Port{{Proto: packet.ProtoTCP, Port: 5432}}},
		{Name: "idle", Network: "web", VIP: ip("10.0.0.101"), TTL: 1500 * time.Millisecond},
		{Name: "idlerr", Network: "web", TTL: 20 * time.Second},
		{Name: "api", Network: "web", VIP: ip("10.0.0.102"), TTL: 60 * time.Second, Tasks: []netip.Addr{ip("10.0.0.13")}},
		{Name: "ledger", Network: "db", VIP: ip("10.1.0.101"), TTL: 30 * time.Second, Tasks: []netip.Addr{ip("10.1.0.3")},
			Ports: []lb.Port{{Proto: packet.ProtoTCP, Port: 5000}}},
	}
	return recs, svcs
}

// TestDNSServiceNames asks a real dns.Server answering from the index, over
// UDP (the precomputed fast path where it applies) and TCP (the general
// path), about every kind of service name, and checks answers, additional
// records, TTLs and scope.
func TestDNSServiceNames(t *testing.T) {
	recs, svcs := serviceFixture()
	r := serveIndex(t, buildDNSIndex("h1", recs, svcs), nxUpstream(t), "c1", "d1", "both")
	shopSRV := []string{"shop.web. 10.0.0.100 30"}
	for _, q := range []struct {
		asker, name   string
		qtype         uint16
		rcode         string
		answer, extra []string
	}{
		// The VIP, unqualified and qualified, any case; tasks. has the
		// healthy tasks (not b3), with the service's TTL.
		{"c1", "shop", mdns.TypeA, "NOERROR", []string{"shop. 10.0.0.100 30"}, nil},
		{"c1", "SHOP.Web", mdns.TypeA, "NOERROR", []string{"SHOP.Web. 10.0.0.100 30"}, nil},
		{"c1", "tasks.shop", mdns.TypeA, "NOERROR", []string{"tasks.shop. 10.0.0.11 30", "tasks.shop. 10.0.0.12 30"}, nil},
		{"c1", "tasks.shop.web", mdns.TypeA, "NOERROR", []string{"tasks.shop.web. 10.0.0.11 30", "tasks.shop.web. 10.0.0.12 30"}, nil},
		{"c1", "shop", mdns.TypeAAAA, "NOERROR", nil, nil},
		{"c1", "shop", mdns.TypeSRV, "NOERROR", nil, nil},
		// SRV: _PROTO.NAME targets the VIP's name with the VIP's port;
		// _PROTO.tasks.NAME each task's name with the backend's port.
		{"c1", "_tcp.shop", mdns.TypeSRV, "NOERROR", []string{"0 1 443 shop.web. 30", "0 1 80 shop.web. 30"}, shopSRV},
		{"c1", "_tcp.shop.web", mdns.TypeSRV, "NOERROR", []string{"0 1 443 shop.web. 30", "0 1 80 shop.web. 30"}, shopSRV},
		{"c1", "_udp.shop", mdns.TypeSRV, "NOERROR", []string{"0 1 53 shop.web. 30"}, shopSRV},
		{"c1", "_tcp.tasks.shop", mdns.TypeSRV, "NOERROR", []string{"0 1 443 b1.web. 30", "0 1 443 b2.web. 30",
			"0 1 8080 b1.web. 30", "0 1 8080 b2.web. 30"}, []string{"b1.web. 10.0.0.11 5", "b2.web. 10.0.0.12 5"}},
		{"c1", "_tcp.shop", mdns.TypeA, "NOERROR", nil, nil},
		// PTR for the VIP.
		{"c1", reverse("10.0.0.100"), mdns.TypePTR, "NOERROR", []string{"shop.web. 30"}, nil},
		// dnsrr: the name answers the tasks, SRV targets them.
		{"c1", "pg", mdns.TypeA, "NOERROR", []string{"pg. 10.0.0.11 10", "pg. 10.0.0.12 10"}, nil},
		{"c1", "tasks.pg", mdns.TypeA, "NOERROR", []string{"tasks.pg. 10.0.0.11 10", "tasks.pg. 10.0.0.12 10"}, nil},
		{"c1", "_tcp.pg", mdns.TypeSRV, "NOERROR", []string{"0 1 5432 b1.web. 10", "0 1 5432 b2.web. 10"},
			[]string{"b1.web. 10.0.0.11 5", "b2.web. 10.0.0.12 5"}},
		// No healthy task: the VIP still answers (TTL rounded up to
		// whole seconds); tasks. and dnsrr are empty, not NXDOMAIN.
		{"c1", "idle", mdns.TypeA, "NOERROR", []string{"idle. 10.0.0.101 2"}, nil},
		{"c1", "tasks.idle", mdns.TypeA, "NOERROR", nil, nil},
		{"c1", "idlerr", mdns.TypeA, "NOERROR", nil, nil},
		{"c1", "_tcp.idle", mdns.TypeSRV, "NOERROR", nil, nil},
		// A container and a service of one name: both answer, with the
		// smaller TTL (one TTL per record set).
		{"c1", "api", mdns.TypeA, "NOERROR", []string{"api. 10.0.0.102 5", "api. 10.0.0.20 5"}, nil},
		{"c1", "tasks.api", mdns.TypeA, "NOERROR", []string{"tasks.api. 10.0.0.13 60"}, nil},
		// Scope: services of a network the asker is not on are forwarded.
		{"c1", "ledger", mdns.TypeA, "NXDOMAIN", nil, nil},
		{"c1", "ledger.db", mdns.TypeA, "NXDOMAIN", nil, nil},
		{"c1", "tasks.ledger", mdns.TypeA, "NXDOMAIN", nil, nil},
		{"c1", "_tcp.ledger", mdns.TypeSRV, "NXDOMAIN", nil, nil},
		{"c1", "shop.db", mdns.TypeA, "NXDOMAIN", nil, nil},
		{"c1", reverse("10.1.0.101"), mdns.TypePTR, "NXDOMAIN", nil, nil},
		{"d1", "ledger", mdns.TypeA, "NOERROR", []string{"ledger. 10.1.0.101 30"}, nil},
		{"d1", "_tcp.tasks.ledger", mdns.TypeSRV, "NOERROR", []string{"0 1 5000 both.db. 30"}, []string{"both.db. 10.1.0.3 5"}},
		{"d1", "shop", mdns.TypeA, "NOERROR", []string{"shop. 10.1.0.100 30"}, nil},
		{"d1", "pg", mdns.TypeA, "NXDOMAIN", nil, nil},
		{"d1", reverse("10.0.0.100"), mdns.TypePTR, "NXDOMAIN", nil, nil},
		// An asker on both networks sees the service's VIP on each.
		{"both", "shop", mdns.TypeA, "NOERROR", []string{"shop. 10.0.0.100 30", "shop. 10.1.0.100 30"}, nil},
		{"both", "shop.db", mdns.TypeA, "NOERROR", []string{"shop.db. 10.1.0.100 30"}, nil},
	} {
		for _, network := range []string{"udp", "tcp"} {
			rcode, answer, extra := askRRs(t, network, r[q.asker], q.name, q.qtype)
			if rcode != q.rcode || !slices.Equal(answer, q.answer) || !slices.Equal(extra, q.extra) {
				t.Errorf("%s asks %s %s over %s: %s %q additional %q, want %s %q additional %q", q.asker, q.name,
					mdns.TypeToString[q.qtype], network, rcode, answer, extra, q.rcode, q.answer, q.extra)
			}
		}
	}
}

// TestDNSServiceRoundRobinSpreadsFirstAddress asks a dnsrr service (and
// tasks.NAME) repeatedly over both paths: every healthy task comes first
// in some answer, and no other address ever shows.
func TestDNSServiceRoundRobinSpreadsFirstAddress(t *testing.T) {
	recs, svcs := serviceFixture()
	r := serveIndex(t, buildDNSIndex("h1", recs, svcs), nxUpstream(t), "c1")
	for _, name := range []string{"pg.", "tasks.shop."} {
		for _, network := range []string{"udp", "tcp"} {
			first := map[string]int{}
			for range 40 {
				m := new(mdns.Msg)
				m.SetQuestion(name, mdns.TypeA)
				resp, _, err := (&mdns.Client{Net: network, Timeout: 5 * time.Second}).Exchange(m, r["c1"])
				if err != nil || len(resp.Answer) != 2 {
					t.Fatalf("%s over %s: %v %v", name, network, resp, err)
				}
				first[resp.Answer[0].(*mdns.A).A.String()]++
			}
			if len(first) != 2 || first["10.0.0.11"] == 0 || first["10.0.0.12"] == 0 {
				t.Errorf("%s over %s: first addresses %v, want both healthy tasks first in some answers", name, network, first)
			}
		}
	}
}

// TestDNSFastAnswersOfServicesMatchTheLookups checks the precomputed
// answers against the index's lookups for service names, TTL included:
// the names with addresses (VIP, tasks., dnsrr, empty ones) take the fast
// path with their service's TTL, SRV names never do, and a name of a
// network the asker is not on is never answered there.
func TestDNSFastAnswersOfServicesMatchTheLookups(t *testing.T) {
	recs, svcs := serviceFixture()
	var s dnsSource
	s.index.Store(buildDNSIndex("h1", recs, svcs))
	fast := func(asker, name string, qtype uint16) ([]string, bool) {
		m := new(mdns.Msg)
		m.SetQuestion(mdns.Fqdn(name), qtype)
		raw, _ := m.Pack()
		out := make([]byte, 4096)
		n := s.Answers().Answer(asker, raw, out)
		if n == 0 {
			return nil, false
		}
		r := new(mdns.Msg)
		if err := r.Unpack(out[:n]); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, rr := range r.Answer {
			switch v := rr.(type) {
			case *mdns.A:
				got = append(got, fmt.Sprint(v.A, " ", v.Hdr.Ttl))
			case *mdns.PTR:
				got = append(got, fmt.Sprint(v.Ptr, " ", v.Hdr.Ttl))
			}
		}
		slices.Sort(got)
		return got, true
	}
	var names []string
	for _, n := range []string{"shop", "pg", "idle", "idlerr", "api", "ledger", "nosuch"} {
		for _, form := range []string{"%s", "tasks.%s", "_tcp.%s", "_udp.%s", "_tcp.tasks.%s"} {
			names = append(names, fmt.Sprintf(form, n), fmt.Sprintf(form, n)+".web", fmt.Sprintf(form, n)+".db")
		}
	}
	fastNames := map[string]bool{}
	for _, asker := range []string{"c1", "d1", "both"} {
		for _, name := range names {
			rec, local := s.LookupName(asker, name)
			got, isFast := fast(asker, name, mdns.TypeA)
			if isFast {
				fastNames[asker+" "+name] = true
			}
			if !local || len(rec.SRV) > 0 {
				if isFast {
					t.Errorf("%s asks %s: fast answer %v, want the general path (local %v, %d SRV)", asker, name, got, local, len(rec.SRV))
				}
				continue
			}
			var want []string
			for _, a := range rec.Addrs {
				want = append(want, fmt.Sprint(a, " ", rec.TTL))
			}
			slices.Sort(want)
			if !isFast || !slices.Equal(got, want) {
				t.Errorf("%s asks %s: fast %v %v, lookup %v", asker, name, got, isFast, want)
			}
		}
		for _, ip := range []string{"10.0.0.100", "10.1.0.100", "10.1.0.101", "10.0.0.102", "10.0.0.11"} {
			ptrs, ttl := s.LookupAddr(asker, netip.MustParseAddr(ip))
			got, isFast := fast(asker, reverse(ip), mdns.TypePTR)
			var want []string
			for _, n := range ptrs {
				want = append(want, fmt.Sprint(n, ". ", ttl))
			}
			if len(want) == 0 && isFast || len(want) > 0 && (!isFast || !slices.Equal(got, want)) {
				t.Errorf("%s asks PTR %s: fast %v %v, lookup %v", asker, ip, got, isFast, want)
			}
		}
	}
	for _, want := range []string{"c1 shop", "c1 shop.web", "c1 tasks.shop", "c1 pg", "c1 idle", "c1 idlerr", "c1 tasks.idle",
		"c1 api", "c1 _udp.pg", "d1 ledger", "both shop", "both shop.db"} {
		if !fastNames[want] {
			t.Errorf("%q did not take the fast path", want)
		}
	}
}

// TestDNSServiceNamesWithDig asks with dig, as a user would: SRV of a
// service's TCP ports (with the VIP as additional record) and its tasks,
// each with the service's TTL.
func TestDNSServiceNamesWithDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("dig not installed (make deps installs dnsutils)")
	}
	recs, svcs := serviceFixture()
	r := serveIndex(t, buildDNSIndex("h1", recs, svcs), nxUpstream(t), "c1")
	host, port, _ := net.SplitHostPort(r["c1"])
	for _, q := range []struct {
		args []string
		want []string
	}{
		{[]string{"SRV", "_tcp.shop"}, []string{"_tcp.shop. 30 IN SRV 0 1 443 shop.web.", "_tcp.shop. 30 IN SRV 0 1 80 shop.web.",
			"shop.web. 30 IN A 10.0.0.100"}},
		{[]string{"+tcp", "SRV", "_tcp.tasks.pg.web"}, []string{"_tcp.tasks.pg.web. 10 IN SRV 0 1 5432 b1.web.",
			"_tcp.tasks.pg.web. 10 IN SRV 0 1 5432 b2.web.", "b1.web. 5 IN A 10.0.0.11", "b2.web. 5 IN A 10.0.0.12"}},
		{[]string{"A", "tasks.shop"}, []string{"tasks.shop. 30 IN A 10.0.0.11", "tasks.shop. 30 IN A 10.0.0.12"}},
		{[]string{"-x", "10.0.0.100"}, []string{"100.0.0.10.in-addr.arpa. 30 IN PTR shop.web."}},
	} {
		args := append([]string{"@" + host, "-p", port, "+time=5", "+tries=1", "+noall", "+answer", "+additional"}, q.args...)
		out, err := exec.Command(dig, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", q.args, err, out)
		}
		t.Logf("dig %s:\n%s", strings.Join(q.args, " "), out)
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" {
				got = append(got, strings.Join(strings.Fields(line), " "))
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, q.want) {
			t.Errorf("dig %v:\n%s\nwant %q", q.args, out, q.want)
		}
	}
}

// A container only on internal networks gets no upstream DNS (Docker
// 26.0 and later): DNS is no way out of a network without egress. One
// that is also on a network with egress does, and so does an asker the
// index does not know (a query to a gateway from an unknown source).
func TestDNSNoForwardingForInternalOnlyContainers(t *testing.T) {
	x := buildDNSIndex("h1", []epRecord{
		{Name: "inside", Network: "Back", IP: "10.0.0.2", Node: "h1"},
		{Name: "both", Network: "back", IP: "10.0.0.3", Node: "h1"},
		{Name: "both", Network: "front", IP: "10.1.0.3", Node: "h1"},
		{Name: "out", Network: "front", IP: "10.1.0.4", Node: "h1"},
	}, nil)
	var s dnsSource
	s.index.Store(x)
	if !s.Forwards("inside") {
		t.Fatal("forwarding refused before the networks are known")
	}
	s.internal.Store(internalNetworks(map[string]netRecord{
		"back": {Name: "back", Internal: true}, "front": {Name: "front"},
	}))
	for asker, want := range map[string]bool{"inside": false, "both": true, "out": true, "": true, "unknown": true} {
		if got := s.Forwards(asker); got != want {
			t.Errorf("Forwards(%q) = %v, want %v", asker, got, want)
		}
	}
	// A network of the same name but for case with egress keeps it.
	s.internal.Store(internalNetworks(map[string]netRecord{
		"back": {Name: "back", Internal: true}, "Back": {Name: "Back"},
	}))
	if !s.Forwards("inside") {
		t.Error("a container of a network with egress (Back) lost forwarding to an internal network named back")
	}
}
