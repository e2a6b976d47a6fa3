package lb

import (
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// Data path goroutines, a control-plane Swap loop and Sweep at once (run
// with -race): no race, no deadlock, and the counts balance at the end.
func TestConcurrent(t *testing.T) {
	tb := newTest(t, Config{Max: 512}, Service{Scheduler: WeightedRoundRobin, Affinity: 1e9}, 4)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				port := uint16(g*10000 + i%700)
				f := toVIP(packet.ProtoTCP, port, 80, header.TCPFlagSyn).build()
				if tb.Translate(f, nil, t0+int64(i)) != Forward {
					continue
				}
				flags := header.TCPFlagSyn | header.TCPFlagAck
				if i%5 == 0 {
					flags = header.TCPFlagRst
				}
				tb.Untranslate(reply(parseFields(f), packet.ProtoTCP, flags).build(), nil, t0+int64(i))
				tb.Translate(toVIP(packet.ProtoUDP, port, 53, 0).build(), nil, t0+int64(i))
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 200 {
			svc := Service{Name: "web", VIP: vip, Scheduler: WeightedRoundRobin}
			for j := 1; j <= 4; j++ {
				if (i+j)%4 != 0 {
					svc.Backends = append(svc.Backends, Backend{IP: beIP(j), MAC: beMAC(j), Weight: j})
				}
			}
			snap, err := tb.Snapshot().With(svc)
			if err != nil {
				t.Error(err)
				return
			}
			tb.Swap(snap)
			tb.ct.Sweep(t0 + int64(i))
			tb.Stats(t0)
		}
	}()
	wg.Wait()
	n := tb.ct.Len()
	var active int64
	for _, s := range tb.Stats(t0) {
		active += s.Active
	}
	// Backends dropped by the last swap still hold entries; count them
	// through the conntrack itself.
	var live int
	for k := range tb.ct.shards {
		s := &tb.ct.shards[k]
		for i := 1; i < len(s.e); i++ {
			if s.e[i].expires != 0 {
				live++
			}
		}
	}
	if live != n || active > int64(n) {
		t.Fatalf("len %d, live entries %d, active in stats %d", n, live, active)
	}
	tb.ct.Sweep(t0 + int64(72*3600e9))
	for i := range tb.ct.sources {
		if tb.ct.sources[i].Load() != 0 {
			t.Fatal("source counts do not balance")
		}
	}
}
