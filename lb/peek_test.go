package lb

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// Peek answers with the backend Translate then picks for the same frame,
// for every scheduler, and peeking moves nothing: repeated peeks agree,
// no connection or counter appears, and the translated frame is the one
// Translate writes.
func TestPeekPredictsTranslate(t *testing.T) {
	for _, sched := range []Scheduler{RoundRobin, WeightedRoundRobin, LeastConns, Maglev} {
		for _, aff := range []time.Duration{0, time.Minute} {
			t.Run(fmt.Sprintf("%v/affinity=%v", sched, aff), func(t *testing.T) {
				tb := newTest(t, Config{Max: 1024}, Service{Scheduler: sched, Affinity: aff}, 3)
				for n := range 7 {
					f := toVIP(packet.ProtoTCP, 40000+uint16(n), 80, header.TCPFlagSyn).build()
					peeked := bytes.Clone(f)
					p := tb.Peek(peeked, nil, t0)
					if again := tb.Peek(bytes.Clone(f), nil, t0); again.Backend != p.Backend {
						t.Fatalf("connection %d: peeks disagree: %v then %v", n, p.Backend, again.Backend)
					}
					if tb.ct.Len() != n || tb.Stats(t0)[0].NewConns != uint64(n) {
						t.Fatalf("connection %d: peek created state: %d entries, %d new", n, tb.ct.Len(), tb.Stats(t0)[0].NewConns)
					}
					if p.Verdict != Forward || p.Existing || p.Service != "web" || p.VIP != vip || p.Scheduler != sched {
						t.Fatalf("connection %d: peek %+v", n, p)
					}
					if v := tb.Translate(f, nil, t0); v != Forward {
						t.Fatalf("connection %d: Translate %v", n, v)
					}
					got := parseFields(f)
					if got.dst != p.Backend || got.dstMAC != p.BackendMAC || got.dport != p.BackendPort {
						t.Fatalf("connection %d: peek said %v %v :%d, Translate chose %v %v :%d", n, p.Backend, p.BackendMAC, p.BackendPort, got.dst, got.dstMAC, got.dport)
					}
					if !bytes.Equal(peeked, f) {
						t.Fatalf("connection %d: the peeked frame differs from the translated one", n)
					}
				}
			})
		}
	}
}

// A packet of an existing connection is peeked to that connection's
// backend; refusals carry Translate's reasons and change no counter.
func TestPeekExistingAndRefusals(t *testing.T) {
	tb := newTest(t, Config{Max: 1024}, Service{Ports: []Port{{Proto: packet.ProtoTCP, Port: 80, Target: 8080}}}, 2)
	syn := toVIP(packet.ProtoTCP, 41000, 80, header.TCPFlagSyn).build()
	if v := tb.Translate(syn, nil, t0); v != Forward {
		t.Fatalf("SYN: %v", v)
	}
	be := parseFields(syn).dst
	p := tb.Peek(toVIP(packet.ProtoTCP, 41000, 80, header.TCPFlagAck).build(), nil, t0+1)
	if p.Verdict != Forward || !p.Existing || p.Backend != be || p.BackendPort != 8080 {
		t.Fatalf("ACK of the connection: %+v, want forward to %v:8080 (existing)", p, be)
	}
	before := tb.Reasons()
	for _, tc := range []struct {
		f      flow
		v      Verdict
		reason Reason
	}{
		{toVIP(packet.ProtoTCP, 41001, 81, header.TCPFlagSyn), Reject, ReasonPort},
		{toVIP(packet.ProtoTCP, 41002, 80, header.TCPFlagAck), Reject, ReasonNoConn},
		{toVIP(packet.ProtoTCP, 41003, 80, header.TCPFlagRst), Drop, ReasonNoConn},
	} {
		if p := tb.Peek(tc.f.build(), nil, t0+1); p.Verdict != tc.v || p.Reason != tc.reason || p.Service != "web" {
			t.Fatalf("%+v: peek %v/%v, want %v/%v", tc.f, p.Verdict, p.Reason, tc.v, tc.reason)
		}
	}
	other := toVIP(packet.ProtoTCP, 1, 80, header.TCPFlagSyn)
	other.dst = beIP(1)
	if p := tb.Peek(other.build(), nil, t0); p.Verdict != Pass || p.Service != "" {
		t.Fatalf("frame to a non-VIP: %+v", p)
	}
	for k, n := range tb.Reasons() {
		if before[k] != n {
			t.Fatalf("peek counted reason %s", k)
		}
	}
	if st := tb.Stats(t0)[0]; st.Rejects != 0 || st.NewConns != 1 {
		t.Fatalf("peek moved counters: %+v", st)
	}

	empty := newTest(t, Config{Max: 1024}, Service{}, 0)
	if p := empty.Peek(toVIP(packet.ProtoUDP, 5000, 53, 0).build(), nil, t0); p.Verdict != Reject || p.Reason != ReasonNoBackend {
		t.Fatalf("service without backends: %+v", p)
	}
}
