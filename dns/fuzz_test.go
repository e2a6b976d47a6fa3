package dns

import (
	"context"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzServe feeds raw bytes to the query path as the listeners do: what
// parses as a message must get a well-formed response with its ID (or none
// for a response), never a panic, and over UDP one that fits the client's
// buffer.
func FuzzServe(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  bool
	}{
		{"c2.", mdns.TypeA, false}, {"C2.WEB.", mdns.TypeA, true}, {"db.", mdns.TypeANY, false},
		{"c2.", mdns.TypeAAAA, false}, {"3.0.1.10.in-addr.arpa.", mdns.TypePTR, true},
		{"example.com.", mdns.TypeA, true}, {"big.example.com.", mdns.TypeA, false},
		{"nope.example.com.", mdns.TypeMX, false}, {"1.2.3.in-addr.arpa.", mdns.TypePTR, false},
		{"_tcp.svc.", mdns.TypeSRV, false}, {"_TCP.SVC.", mdns.TypeANY, true}, {"_udp.svc.", mdns.TypeSRV, false},
		{"10.0.1.10.in-addr.arpa.", mdns.TypePTR, false},
	} {
		m := new(mdns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns {
			m.SetEdns0(1232, true)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
	}
	// An EDNS version this server does not speak (BADVERS).
	v1 := new(mdns.Msg)
	v1.SetQuestion("c2.", mdns.TypeA)
	v1.SetEdns0(1232, false)
	v1.IsEdns0().SetVersion(1)
	if b, err := v1.Pack(); err == nil {
		f.Add(b, true)
	}
	u := startUpstream(f, nil)
	s := New(Config{Upstreams: []netip.AddrPort{u.addr}}, testSource)
	f.Fuzz(func(t *testing.T, raw []byte, tcp bool) {
		req := new(mdns.Msg)
		if err := req.Unpack(raw); err != nil {
			return // the listener answers FORMERR before the handler
		}
		resp := s.answer(context.Background(), "c1", req, tcp)
		if resp == nil {
			if !req.Response {
				t.Fatalf("no response to query %v", req)
			}
			return
		}
		b, err := resp.Pack()
		if err != nil {
			t.Fatalf("response does not pack: %v\n%v", err, resp)
		}
		back := new(mdns.Msg)
		if err := back.Unpack(b); err != nil {
			t.Fatalf("response does not parse: %v\n%v", err, resp)
		}
		if back.Id != req.Id || !back.Response {
			t.Fatalf("response id %d response %v to query id %d", back.Id, back.Response, req.Id)
		}
		if !tcp && len(b) > udpSize(req) {
			t.Fatalf("UDP response of %d bytes for a client taking %d", len(b), udpSize(req))
		}
	})
}

// FuzzFastPath feeds raw queries to the precomputed-answer path and the
// general path: the fast path must never panic, and whatever it answers,
// the general path must parse as a query and answer the same.
func FuzzFastPath(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  bool
	}{
		{"c2.", mdns.TypeA, false}, {"C2.WEB.", mdns.TypeA, true}, {"db.", mdns.TypeANY, false},
		{"c2.", mdns.TypeAAAA, true}, {"3.0.1.10.in-addr.arpa.", mdns.TypePTR, true},
		{"noaddr.", mdns.TypeA, false}, {"example.com.", mdns.TypeA, true},
		{"svc.", mdns.TypeA, false}, {"_tcp.svc.", mdns.TypeSRV, true}, {"_udp.svc.", mdns.TypeSRV, false},
		{"10.0.1.10.in-addr.arpa.", mdns.TypePTR, false},
	} {
		m := new(mdns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns {
			m.SetEdns0(1232, false)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	src := precomputed(testSource)
	s := New(Config{}, src)
	f.Fuzz(func(t *testing.T, raw []byte) {
		compareFast(t, s, src, "c1", raw)
	})
}
