package lb

import (
	"fmt"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// BenchmarkTranslateHit: a packet of a known connection, client side
// (Translate) and backend side (Untranslate), 1400-byte frames.
func BenchmarkTranslateHit(b *testing.B) {
	tb := newTest(b, Config{}, Service{}, 4)
	syn := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagSyn).build()
	tb.Translate(syn, nil, t0)
	fl := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagAck)
	fl.payload = 1400 - 54
	f := fl.build()
	b.SetBytes(int64(len(f)))
	b.ReportAllocs()
	for b.Loop() {
		tb.Translate(f, nil, t0)
		copy(f[30:34], vip.AsSlice()) // back to the VIP (the checksums drift, which Translate does not check)
	}
}

func BenchmarkUntranslateHit(b *testing.B) {
	tb := newTest(b, Config{}, Service{}, 4)
	syn := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagSyn).build()
	tb.Translate(syn, nil, t0)
	r := reply(parseFields(syn), packet.ProtoTCP, header.TCPFlagAck)
	r.payload = 1400 - 54
	f := r.build()
	be := f[26:30]
	orig := append([]byte(nil), be...)
	b.ReportAllocs()
	for b.Loop() {
		tb.Untranslate(f, nil, t0)
		copy(be, orig)
	}
}

// BenchmarkTranslatePass: a frame from a client port to a non-VIP
// address (most traffic), with 1000 services on the network.
func BenchmarkTranslatePass(b *testing.B) {
	snap, err := NewSnapshot(manyServices(1000, 2))
	if err != nil {
		b.Fatal(err)
	}
	tb := NewTable(NewConntrack(Config{Max: 1024}), 1)
	tb.Swap(snap)
	fl := toVIP(packet.ProtoTCP, 1, 80, header.TCPFlagAck)
	fl.dst = beIP(1)
	f := fl.build()
	b.ReportAllocs()
	for b.Loop() {
		if tb.Translate(f, nil, t0) != Pass {
			b.Fatal("not Pass")
		}
	}
}

// BenchmarkUntranslateMiss: a frame to a local port that is no reply of a
// translated flow (most traffic) while the table holds connections.
func BenchmarkUntranslateMiss(b *testing.B) {
	tb := newTest(b, Config{}, Service{}, 4)
	for port := uint16(1); port < 1000; port++ {
		tb.Translate(toVIP(packet.ProtoTCP, port, 80, header.TCPFlagSyn).build(), nil, t0)
	}
	fl := flow{srcMAC: packet.MAC{2, 0x42, 10, 0, 0, 9}, dstMAC: clientMAC, src: netip.MustParseAddr("10.0.0.9"), dst: clientIP,
		sport: 80, dport: 1, proto: packet.ProtoTCP, flags: header.TCPFlagAck, payload: 1400 - 54}
	f := fl.build()
	b.ReportAllocs()
	for b.Loop() {
		if tb.Untranslate(f, nil, t0) != Pass {
			b.Fatal("not Pass")
		}
	}
}

// BenchmarkNewConnection: a SYN of a new connection (scheduling, entry
// insert, LRU eviction once the table is full).
func BenchmarkNewConnection(b *testing.B) {
	for _, sch := range []Scheduler{RoundRobin, WeightedRoundRobin, LeastConns, PowerOfTwo, Maglev} {
		b.Run(sch.String(), func(b *testing.B) {
			tb := newTest(b, Config{Max: 65536}, Service{Scheduler: sch}, 16)
			syn := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagSyn).build()
			b.ReportAllocs()
			n := uint32(0)
			for b.Loop() {
				n++
				syn[26], syn[27], syn[34], syn[35] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
				copy(syn[30:34], vip.AsSlice())
				tb.Translate(syn, nil, t0)
			}
		})
	}
}

func manyServices(n, backends int) []Service {
	svcs := make([]Service, n)
	for i := range svcs {
		svcs[i] = Service{Name: fmt.Sprint("s", i), VIP: netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)})}
		for j := range backends {
			svcs[i].Backends = append(svcs[i].Backends, Backend{IP: netip.AddrFrom4([4]byte{10, 200, byte(j >> 8), byte(j + 1)}), MAC: beMAC(j + 1)})
		}
	}
	return svcs
}

// BenchmarkLookupServices: the per-connection cost (a new connection, then
// its hit) as the network's service count grows, connections spread over
// all services round robin (so at 10,000 services every connection meets
// its service's state cold in the CPU caches).
func BenchmarkLookupServices(b *testing.B) { benchServices(b, false) }

// BenchmarkLookupServicesHot is BenchmarkLookupServices with every
// connection to one service: the cost of the lookup structure alone as
// the other services grow.
func BenchmarkLookupServicesHot(b *testing.B) { benchServices(b, true) }

func benchServices(b *testing.B, hot bool) {
	for _, n := range []int{1, 10, 100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			snap, err := NewSnapshot(manyServices(n, 4))
			if err != nil {
				b.Fatal(err)
			}
			tb := NewTable(NewConntrack(Config{Max: 65536}), 1)
			tb.Swap(snap)
			syn := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagSyn).build()
			b.ReportAllocs()
			i := uint32(0)
			for b.Loop() {
				i++
				s := i % uint32(n)
				if hot {
					s = uint32(n / 2)
				}
				syn[26], syn[27], syn[34], syn[35] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
				copy(syn[30:34], []byte{10, 100, byte(s >> 8), byte(s)})
				tb.Translate(syn, nil, t0) // new connection
				copy(syn[30:34], []byte{10, 100, byte(s >> 8), byte(s)})
				tb.Translate(syn, nil, t0) // hit
			}
		})
	}
}

// BenchmarkLookupServicesEstablished: a packet of an established
// connection as the service count grows: 65536 connections spread over
// all services, visited in a scattered order, so that the conntrack entry
// is cold at every service count and the service's state is cold only
// when there are many services.
func BenchmarkLookupServicesEstablished(b *testing.B) {
	const conns = 1 << 16
	for _, n := range []int{1, 10, 100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			snap, err := NewSnapshot(manyServices(n, 4))
			if err != nil {
				b.Fatal(err)
			}
			tb := NewTable(NewConntrack(Config{Max: 2 * conns}), 1)
			tb.Swap(snap)
			syn := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagSyn).build()
			ack := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagAck).build()
			address := func(f []byte, i uint32) {
				s := i % uint32(n)
				f[28], f[29] = byte(i>>8), byte(i)
				copy(f[30:34], []byte{10, 100, byte(s >> 8), byte(s)})
			}
			for i := range uint32(conns) {
				address(syn, i)
				if tb.Translate(syn, nil, t0) != Forward {
					b.Fatal("SYN not forwarded")
				}
			}
			b.ReportAllocs()
			i := uint32(0)
			for b.Loop() {
				i++
				address(ack, (i*40503)%conns) // an odd step: every connection, scattered
				tb.Translate(ack, nil, t0)
			}
		})
	}
}

// BenchmarkAddBackend: publishing one service with one more backend, as
// the network's service count grows (Snapshot.With copies one 2 KiB node
// of the VIP index and the 2 KiB top level: the same at any count).
func BenchmarkAddBackend(b *testing.B) {
	for _, n := range []int{1, 10, 100, 1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			svcs := manyServices(n, 4)
			snap, err := NewSnapshot(svcs)
			if err != nil {
				b.Fatal(err)
			}
			tb := NewTable(NewConntrack(Config{Max: 1024}), 1)
			tb.Swap(snap)
			svc := svcs[n/2]
			b.ReportAllocs()
			j := 0
			for b.Loop() {
				j++
				s := svc
				s.Backends = append(s.Backends[:4:4], Backend{IP: netip.AddrFrom4([4]byte{10, 201, byte(j >> 8), byte(j)}), MAC: beMAC(9)})
				next, err := tb.Snapshot().With(s)
				if err != nil {
					b.Fatal(err)
				}
				tb.Swap(next)
			}
		})
	}
}

// BenchmarkFragments: a 4,000-byte UDP datagram in three fragments
// (1500-byte IP packets) to the VIP of a known flow, then the backend's
// as large reply in three fragments back: ns/op is per fragment, the
// first fragments' conntrack lookups and fragment-table entries included.
func BenchmarkFragments(b *testing.B) {
	tb := newTest(b, Config{}, Service{}, 4)
	req := bigFlow(packet.ProtoUDP, 1000, 4000)
	frags := fragment(req, 1500, 1)
	orig := fragment(req, 1500, 1)
	tb.Translate(frags[0], nil, t0)
	rf := reply(parseFields(frags[0]), packet.ProtoUDP, 0)
	rf.payload = 4000
	rfrags := fragment(rf.build(), 1500, 2)
	rorig := fragment(rf.build(), 1500, 2)
	for i := range frags {
		copy(frags[i], orig[i])
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		for i := range frags {
			tb.Translate(frags[i], nil, t0)
			copy(frags[i][:34], orig[i][:34]) // headers back to the VIP
		}
		for i := range rfrags {
			tb.Untranslate(rfrags[i], nil, t0)
			copy(rfrags[i][:34], rorig[i][:34])
		}
		n += len(frags) + len(rfrags)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/fragment")
}
