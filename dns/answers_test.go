package dns

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// answerSource is testSource with its answers precomputed.
type answerSource struct {
	fakeSource
	answers *Answers
}

func (a answerSource) Answers() *Answers { return a.answers }

// precomputed returns f with a table of every name and address it knows.
func precomputed(f fakeSource) answerSource {
	a := NewAnswers()
	for asker, names := range f.names {
		var ns []string
		for n := range names {
			ns = append(ns, n)
		}
		var addrs []netip.Addr
		for ip := range f.ptrs[asker] {
			addrs = append(addrs, ip)
		}
		a.Add([]string{asker}, ns, addrs,
			func(n string) (Records, bool) { return f.LookupName(asker, n) },
			func(ip netip.Addr) ([]string, uint32) { return f.LookupAddr(asker, ip) })
	}
	return answerSource{f, a}
}

// sameMeaning fails unless fast and slow are the same response: header,
// question, and sections as sets (several A records come in any order).
func sameMeaning(t *testing.T, what string, fast, slow *mdns.Msg) {
	t.Helper()
	if fast.MsgHdr != slow.MsgHdr {
		t.Errorf("%s: header %+v, general path %+v", what, fast.MsgHdr, slow.MsgHdr)
	}
	if !slices.Equal(fast.Question, slow.Question) {
		t.Errorf("%s: question %v, general path %v", what, fast.Question, slow.Question)
	}
	for _, s := range []struct {
		n          string
		fast, slow []mdns.RR
	}{{"answer", fast.Answer, slow.Answer}, {"authority", fast.Ns, slow.Ns}, {"additional", fast.Extra, slow.Extra}} {
		if a, b := rrStrings(s.fast), rrStrings(s.slow); !slices.Equal(a, b) {
			t.Errorf("%s: %s %q, general path %q", what, s.n, a, b)
		}
	}
}

func rrStrings(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		out = append(out, rr.String())
	}
	slices.Sort(out)
	return out
}

// compareFast answers raw from asker on the fast path and, if it answers,
// checks the general path answers the same. It reports whether the fast
// path answered.
func compareFast(t *testing.T, s *Server, src answerSource, asker string, raw []byte) bool {
	t.Helper()
	out := make([]byte, maxUDPRead)
	n := src.answers.Answer(asker, raw, out)
	if n == 0 {
		return false
	}
	req := new(mdns.Msg)
	if err := req.Unpack(raw); err != nil {
		t.Fatalf("fast path answered a query the general path rejects (%v): %x", err, raw)
	}
	fast := new(mdns.Msg)
	if err := fast.Unpack(out[:n]); err != nil {
		t.Fatalf("fast answer does not parse (%v): %x", err, out[:n])
	}
	if n > udpSize(req) {
		t.Fatalf("fast answer of %d bytes for a client taking %d", n, udpSize(req))
	}
	slow := s.answer(context.Background(), asker, req, false)
	if slow == nil {
		t.Fatalf("fast path answered what the general path ignores: %v", req)
	}
	// Round-trip the general answer through the wire as the listener does.
	b, err := slow.Pack()
	if err != nil {
		t.Fatal(err)
	}
	back := new(mdns.Msg)
	if err := back.Unpack(b); err != nil {
		t.Fatal(err)
	}
	sameMeaning(t, fmt.Sprintf("%s asks %v", asker, req.Question), fast, back)
	return true
}

// TestFastAnswersMeanWhatTheGeneralPathAnswers asks many names, spellings,
// types, classes, flags and EDNS variants on both paths: whatever the fast
// path answers, the general path answers the same, and the plain local
// queries do take the fast path.
func TestFastAnswersMeanWhatTheGeneralPathAnswers(t *testing.T) {
	src := precomputed(testSource)
	s := New(Config{}, src) // no upstream: forwarded names get SERVFAIL
	names := []string{"c2.", "C2.", "c2.web.", "C2.wEb.", "db.", "DB.", "noaddr.", "c9.", "unknown.",
		"3.0.1.10.in-addr.arpa.", "3.0.1.10.IN-ADDR.ARPA.", "4.0.1.10.in-addr.arpa.", "example.com.", ".",
		"svc.", "Svc.Web.", "_tcp.svc.", "_udp.svc.", "10.0.1.10.in-addr.arpa."}
	types := []uint16{mdns.TypeA, mdns.TypeAAAA, mdns.TypeANY, mdns.TypePTR, mdns.TypeMX, mdns.TypeTXT, mdns.TypeSRV}
	classes := []uint16{mdns.ClassINET, mdns.ClassANY, mdns.ClassCHAOS}
	type ednsCase struct {
		on      bool
		size    uint16
		do      bool
		version uint8
		cookie  bool
	}
	ednss := []ednsCase{{}, {true, 1232, false, 0, false}, {true, 512, true, 0, false}, {true, 4096, false, 0, false},
		{true, 100, false, 0, false}, {true, 1232, false, 1, false}, {true, 1232, false, 0, true}}
	fast := map[string]int{}
	for _, asker := range []string{"c1", "c9", "stranger"} {
		for _, name := range names {
			for _, qt := range types {
				for _, qc := range classes {
					for _, e := range ednss {
						for _, flags := range []int{0, 1, 2, 3} {
							m := new(mdns.Msg)
							m.SetQuestion(name, qt)
							m.Question[0].Qclass = qc
							m.Id = uint16(len(fast)*7 + flags)
							m.RecursionDesired = flags&1 != 0
							m.CheckingDisabled = flags&2 != 0
							if e.on {
								m.SetEdns0(e.size, e.do)
								m.IsEdns0().SetVersion(e.version)
								if e.cookie {
									m.IsEdns0().Option = append(m.IsEdns0().Option, &mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0102030405060708"})
								}
							}
							raw, err := m.Pack()
							if err != nil {
								t.Fatal(err)
							}
							if compareFast(t, s, src, asker, raw) {
								fast[fmt.Sprint(asker, " ", name, " ", mdns.TypeToString[qt], " ", e.on)]++
							}
						}
					}
				}
			}
		}
	}
	for _, want := range []string{"c1 c2. A false", "c1 C2.wEb. A true", "c1 DB. ANY false", "c1 noaddr. A true",
		"c1 c2. AAAA false", "c1 3.0.1.10.IN-ADDR.ARPA. PTR true", "c9 c9. A false",
		"c1 svc. A false", "c1 Svc.Web. A true", "c1 10.0.1.10.in-addr.arpa. PTR false", "c1 _udp.svc. SRV false"} {
		if fast[want] == 0 {
			t.Errorf("%q did not take the fast path", want)
		}
	}
	for _, never := range []string{"c9 c2. A false", "stranger c2. A false", "c1 c9. A false", "c1 unknown. A false",
		"c1 4.0.1.10.in-addr.arpa. PTR false", "c1 example.com. A true",
		"c1 _tcp.svc. SRV false", "c1 _tcp.svc. ANY false", "c1 _tcp.svc. A false"} {
		if fast[never] != 0 {
			t.Errorf("%q was answered locally on the fast path", never)
		}
	}
}

// TestFastAnswersRotateAddresses checks that a name with several addresses
// is answered with each of them first in turn.
func TestFastAnswersRotateAddresses(t *testing.T) {
	src := precomputed(testSource)
	m := new(mdns.Msg)
	m.SetQuestion("db.", mdns.TypeA)
	raw, _ := m.Pack()
	out := make([]byte, maxUDPRead)
	first := map[string]bool{}
	v := src.answers.view("c1")
	for rot := range uint(4) {
		n := v.answer(raw, out, rot)
		r := new(mdns.Msg)
		if n == 0 || r.Unpack(out[:n]) != nil || len(r.Answer) != 2 {
			t.Fatalf("rotation %d: %d bytes, %v", rot, n, r)
		}
		first[r.Answer[0].(*mdns.A).A.String()] = true
	}
	if len(first) != 2 {
		t.Errorf("first addresses over 4 answers: %v, want both", first)
	}
}

// TestLocalUDPAnswersAllocateNothing asks a local name over a real UDP
// socket: the round trip, server side included, must not allocate.
func TestLocalUDPAnswersAllocateNothing(t *testing.T) {
	s := New(Config{}, precomputed(testSource))
	addr := netip.MustParseAddrPort(serve(t, s, "c1"))
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(mdns.Msg)
	m.SetQuestion("c2.", mdns.TypeA)
	m.SetEdns0(1232, false)
	raw, _ := m.Pack()
	buf := make([]byte, maxUDPRead)
	var got int
	roundTrip := func() {
		if _, err := c.WriteToUDPAddrPort(raw, addr); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || n < headerLen || buf[0] != raw[0] || buf[1] != raw[1] {
			t.Fatalf("answer %x, %v", buf[:n], err)
		}
		got = n
	}
	roundTrip() // the first read allocates the loop's batch
	if a := testing.AllocsPerRun(200, roundTrip); a > 0 {
		t.Errorf("%.1f allocations per local answer over UDP, want 0", a)
	}
	r := new(mdns.Msg)
	if err := r.Unpack(buf[:got]); err != nil || len(r.Answer) != 1 {
		t.Errorf("answer %v, %v", r, err)
	}
}

// BenchmarkLocalAnswer compares one local A answer on the fast path with
// the general path's parse, answer and pack.
func BenchmarkLocalAnswer(b *testing.B) {
	src := precomputed(testSource)
	s := New(Config{}, src)
	m := new(mdns.Msg)
	m.SetQuestion("c2.web.", mdns.TypeA)
	m.SetEdns0(1232, false)
	raw, _ := m.Pack()
	out := make([]byte, maxUDPRead)
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if src.answers.Answer("c1", raw, out) == 0 {
				b.Fatal("not answered")
			}
		}
	})
	b.Run("general", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			req := new(mdns.Msg)
			if err := req.Unpack(raw); err != nil {
				b.Fatal(err)
			}
			if _, err := s.answer(context.Background(), "c1", req, false).PackBuffer(out); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestPatchedViewEqualsNewView: a view patched with the names and
// addresses whose records changed (added, changed, removed) equals the
// view made from scratch of the new records, and the old view is left as
// it was.
func TestPatchedViewEqualsNewView(t *testing.T) {
	type recs struct {
		names map[string][]netip.Addr
		ptrs  map[netip.Addr][]string
	}
	lookups := func(r recs) (func(string) (Records, bool), func(netip.Addr) ([]string, uint32)) {
		return func(name string) (Records, bool) {
				a, ok := r.names[name]
				return Records{Addrs: a, TTL: 600}, ok
			}, func(ip netip.Addr) ([]string, uint32) {
				return r.ptrs[ip], 600
			}
	}
	keys := func(r recs) ([]string, []netip.Addr) {
		var names []string
		var addrs []netip.Addr
		for n := range r.names {
			names = append(names, n)
		}
		for a := range r.ptrs {
			addrs = append(addrs, a)
		}
		return names, addrs
	}
	a1, a2, a3 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	before := recs{
		names: map[string][]netip.Addr{"c1": {a1}, "c2": {a2}, "svc": {a1, a2}},
		ptrs:  map[netip.Addr][]string{a1: {"c1.web"}, a2: {"c2.web"}},
	}
	after := recs{ // c2 gone, c3 new, svc changed, c1 the same
		names: map[string][]netip.Addr{"c1": {a1}, "c3": {a3}, "svc": {a1, a3}},
		ptrs:  map[netip.Addr][]string{a1: {"c1.web"}, a3: {"c3.web"}},
	}
	ln, la := lookups(before)
	n, a := keys(before)
	old := NewAnswerView(n, a, ln, la)
	oldCopy := NewAnswerView(n, a, ln, la)
	ln, la = lookups(after)
	patched := old.Patch([]string{"c2", "c3", "svc"}, []netip.Addr{a2, a3}, ln, la)
	n, a = keys(after)
	if want := NewAnswerView(n, a, ln, la); !reflect.DeepEqual(patched.Flatten(), want.Flatten()) {
		t.Fatalf("patched view differs from a new one:\n got %+v\nwant %+v", patched, want)
	}
	if !reflect.DeepEqual(old, oldCopy) {
		t.Fatal("Patch changed the view it was given")
	}
}

// TestManyPatchesEqualNewView: a view patched again and again (names and
// addresses added, changed and removed, past the point where the changes
// are folded into a new base) answers as the view made from scratch of
// the records at each step, and every earlier view is left as it was.
func TestManyPatchesEqualNewView(t *testing.T) {
	names := map[string][]netip.Addr{}
	ptrs := map[netip.Addr][]string{}
	ln := func(name string) (Records, bool) {
		a, ok := names[name]
		return Records{Addrs: a, TTL: 600}, ok
	}
	la := func(ip netip.Addr) ([]string, uint32) { return ptrs[ip], 600 }
	fresh := func() *AnswerView {
		var ns []string
		var as []netip.Addr
		for n := range names {
			ns = append(ns, n)
		}
		for a := range ptrs {
			as = append(as, a)
		}
		return NewAnswerView(ns, as, ln, la)
	}
	v := fresh()
	type kept struct{ view, flat *AnswerView }
	var old []kept
	for step := range 600 {
		i := (step * 7919) % 150 // names come, change and go
		name := fmt.Sprintf("c%d", i)
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		if _, ok := names[name]; ok && step%3 == 0 {
			delete(names, name)
			delete(ptrs, ip)
		} else {
			names[name] = []netip.Addr{ip, netip.AddrFrom4([4]byte{10, 1, 0, byte(step)})}
			ptrs[ip] = []string{name + ".web"}
		}
		old = append(old, kept{v, v.Flatten()})
		v = v.Patch([]string{name}, []netip.Addr{ip}, ln, la)
		if want := fresh(); !reflect.DeepEqual(v.Flatten(), want) {
			t.Fatalf("step %d: the patched view differs from a new one", step)
		}
	}
	for i, k := range old {
		if !reflect.DeepEqual(k.view.Flatten(), k.flat) {
			t.Fatalf("view %d changed after it was patched", i)
		}
	}
}

// TestPatchCostDoesNotGrowWithTheView: one container's change patches a
// view of 20,000 names without copying all of them: a run on a host with
// many containers must not cost more than one with a few.
func TestPatchCostDoesNotGrowWithTheView(t *testing.T) {
	names := map[string][]netip.Addr{}
	var ns []string
	for i := range 20000 {
		n := fmt.Sprintf("c%d", i)
		names[n] = []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})}
		ns = append(ns, n)
	}
	ln := func(name string) (Records, bool) {
		a, ok := names[name]
		return Records{Addrs: a, TTL: 600}, ok
	}
	la := func(netip.Addr) ([]string, uint32) { return nil, 0 }
	v := NewAnswerView(ns, nil, ln, la)
	const patches = 200
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range patches {
		n := fmt.Sprintf("new%d", i)
		names[n] = []netip.Addr{netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)})}
		v = v.Patch([]string{n}, nil, ln, la)
	}
	runtime.ReadMemStats(&after)
	perPatch := (after.TotalAlloc - before.TotalAlloc) / patches
	if perPatch > 64<<10 {
		t.Errorf("a patch of one name in a view of 20,000 allocates %d bytes, want under 64 KiB (not a copy of the view)", perPatch)
	}
	if _, ok := v.names.lookup([]byte("new199")); !ok {
		t.Error("the last name patched in is not answered")
	}
}

// TestNextLeavesEarlierTablesAlone derives tables from one another with
// Next, each changing a few askers' views (SetView, Remove), and checks
// after each that every table kept gives each asker the view it was
// given, as a plain map told the same changes does: a derived table
// shares its askers with the one it came from, and writing its own
// changes must not reach any other.
func TestNextLeavesEarlierTablesAlone(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	views := make([]*AnswerView, 4)
	for i := range views {
		views[i] = NewAnswerView(nil, nil, func(string) (Records, bool) { return Records{}, false }, func(netip.Addr) ([]string, uint32) { return nil, 0 })
	}
	type table struct {
		a    *Answers
		want map[string]*AnswerView
	}
	tables := []table{{NewAnswers(), map[string]*AnswerView{}}}
	for step := range 400 {
		from := tables[rng.IntN(len(tables))]
		a, want := from.a.Next(), maps.Clone(from.want)
		for range 1 + rng.IntN(3) {
			asker := fmt.Sprintf("c%d", rng.IntN(200))
			if rng.IntN(3) == 0 {
				a.Remove(asker)
				delete(want, asker)
			} else {
				v := views[rng.IntN(len(views))]
				a.SetView([]string{asker}, v)
				want[asker] = v
			}
		}
		tables = append(tables, table{a, want})
		if len(tables) > 20 {
			tables = tables[1:]
		}
		for i, tb := range tables {
			if got := tb.a.Askers(); !slices.Equal(got, slices.Sorted(maps.Keys(tb.want))) {
				t.Fatalf("step %d: table %d lists %d askers, want %d", step, i, len(got), len(tb.want))
			}
			for asker, v := range tb.want {
				if tb.a.View(asker) != v {
					t.Fatalf("step %d: table %d gives %s another view", step, i, asker)
				}
			}
		}
	}
}
