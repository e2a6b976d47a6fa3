package vswitch

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

func TestForwardDoesNotAllocate(t *testing.T) {
	s := New(Config{Name: "web"})
	var cb netdevtest.Counter
	a := addPort(t, s, &netdevtest.Counter{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(t, s, &cb, PortConfig{Name: "b", MAC: macB, IP: ipB, Security: true})
	b2 := addPort(t, s, &netdevtest.Counter{}, PortConfig{Name: "c"})
	frames := make([][]byte, packet.BatchSize)
	for i := range frames {
		frames[i] = ipv4Frame(macB, macA, ipA, ipB)
	}
	bufs, sizes := batch(frames...)
	// A learned MAC as destination, refreshed every batch, exercises the
	// lock-free timestamp update too.
	learned := packet.MAC{2, 0, 0, 0, 0, 0x77}
	input(b2, ipv4Frame(macA, learned, ipC, ipA))
	lbufs, lsizes := batch(ipv4Frame(macA, learned, ipC, ipA))
	allocs := testing.AllocsPerRun(200, func() {
		a.Input(bufs, sizes, off)
		b2.Input(lbufs, lsizes, off)
	})
	if allocs != 0 {
		t.Errorf("known-unicast forward allocates %.1f times per batch", allocs)
	}
	if w, f, _ := cb.Counts(); w != 201 || f != 201*packet.BatchSize {
		t.Errorf("b saw %d writes, %d frames; want one write per batch", w, f)
	}
}

func TestARPSuppressionDoesNotAllocate(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	var ca netdevtest.Counter
	a := addPort(t, s, &ca, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(t, s, &netdevtest.Counter{}, PortConfig{Name: "b", MAC: macB, IP: ipB})
	bufs, sizes := batch(arpFrame(macA, ipA, ipB))
	req := append([]byte(nil), bufs[0]...)
	allocs := testing.AllocsPerRun(200, func() {
		copy(bufs[0], req) // the previous run rewrote it into a reply
		a.Input(bufs, sizes, off)
	})
	if allocs != 0 {
		t.Errorf("ARP suppression allocates %.1f times per batch", allocs)
	}
	rep := packet.ARP(packet.Ethernet(ca.Last()).Payload())
	if rep.Op() != packet.ARPReply || rep.SenderMAC() != macB {
		t.Errorf("last frame to a is not the reply: op %d sender %s", rep.Op(), rep.SenderMAC())
	}
	if st := s.Stats(); st.ARPSuppressed != 201 {
		t.Errorf("arp-suppressed %d", st.ARPSuppressed)
	}
}

// TestConcurrentInputAndControlPlane runs every port's reader at once while
// the control plane churns static entries and ports (run with -race).
func TestConcurrentInputAndControlPlane(t *testing.T) {
	s := New(Config{Name: "web", GatewayIP: ipGW, GatewayMAC: macGW})
	const ports = 4
	refs := make([]*Port, ports)
	for i := range refs {
		mac := packet.MAC{2, 0, 0, 0, 1, byte(i)}
		refs[i] = addPort(t, s, &netdevtest.Counter{}, PortConfig{Name: string(rune('a' + i)), MAC: mac,
			IP: netip.AddrFrom4([4]byte{10, 0, 1, byte(10 + i)})})
	}
	var wg, started sync.WaitGroup
	stop := make(chan struct{})
	started.Add(ports)
	for i, r := range refs {
		wg.Go(func() {
			var frames [][]byte
			for j := range 16 {
				dst := packet.MAC{2, 0, 0, 0, 1, byte((i + j) % ports)}
				if j%4 == 0 {
					dst = packet.MAC{2, 0, 0, 0, 2, byte(j)} // unknown
				}
				frames = append(frames, ether(dst, packet.MAC{2, 0, 0, 0, 3, byte(j)}, packet.EtherTypeIPv6, make([]byte, 40)))
			}
			frames = append(frames, arpFrame(packet.MAC{2, 0, 0, 0, 1, byte(i)}, ipA, ipGW))
			bufs, sizes := batch(frames...)
			r.Input(bufs, sizes, off)
			started.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r.Input(bufs, sizes, off)
			}
		})
	}
	started.Wait() // every reader is running before the churn starts
	for i := range 300 {
		mac := packet.MAC{2, 0, 0, 0, 2, byte(i % 8)}
		if err := s.AddStatic(mac, netip.Addr{}, refs[i%ports]); err != nil {
			t.Error(err)
		}
		if i%10 == 0 {
			extra := addPort(t, s, &netdevtest.Counter{}, PortConfig{Name: "extra"})
			s.FDB()
			s.Stats()
			s.RemovePort(extra)
		}
		s.RemoveStatic(mac)
	}
	close(stop)
	wg.Wait()
	st := s.Stats()
	var rx uint64
	for _, p := range st.Ports {
		rx += p.RxPackets
	}
	var inDrops uint64
	for k, v := range st.Drops {
		if k != "tx-error" {
			inDrops += v
		}
	}
	if rx == 0 || rx != st.Forwarded+st.Flooded+st.ARPSuppressed+inDrops {
		t.Errorf("rx %d != forwarded %d + flooded %d + suppressed %d + dropped %d",
			rx, st.Forwarded, st.Flooded, st.ARPSuppressed, inDrops)
	}
}

// FuzzInput feeds arbitrary frames from arbitrary ports into a switch with
// port security, a gateway, static entries and learning. The input is a
// sequence of records: port index byte, 2-byte length, frame.
func FuzzInput(f *testing.F) {
	f.Add(append([]byte{0, 0, byte(len(arpFrame(macA, ipA, ipB)))}, arpFrame(macA, ipA, ipB)...))
	// IPv6 under the ND guard: an RA behind a fragment header, an NA.
	ra := ipv6Frame(mcastA, macA, llA, allNodes, packet.ProtoFragment, cat(frag(packet.ProtoICMPv6, 0), ndMsg(packet.ICMPv6RouterAdvert, netip.Addr{}, llOpt(1, macA))))
	na := ipv6Frame(mcastA, macA, llA, allNodes, packet.ProtoDestOpts, cat(ext(packet.ProtoICMPv6), ndMsg(packet.ICMPv6NeighborAdvert, llA, llOpt(2, macA))))
	f.Add(cat([]byte{0, 0, byte(len(ra))}, ra, []byte{0, 0, byte(len(na))}, na))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := New(Config{Name: "fuzz", GatewayIP: ipGW, GatewayMAC: macGW, MaxLearned: 4, MTU: 1000, StormLimit: 5})
		recs := []*netdevtest.Recorder{{}, {}, {}}
		refs := []*Port{
			addPort(t, s, recs[0], PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true}),
			addPort(t, s, recs[1], PortConfig{Name: "b", MAC: macB, IP: ipB}),
			addPort(t, s, recs[2], PortConfig{Name: "tunnel"}),
		}
		if err := s.AddStatic(macC, ipC, refs[2]); err != nil {
			t.Fatal(err)
		}
		var total int
		for len(data) >= 3 {
			port := int(data[0]) % len(refs)
			n := min(int(binary.BigEndian.Uint16(data[1:3])), len(data)-3)
			frame := data[3 : 3+n]
			data = data[3+n:]
			bufs, sizes := batch(frame)
			refs[port].Input(bufs, sizes, off)
			total++
		}
		st := s.Stats()
		var rx, tx uint64
		for _, p := range st.Ports {
			rx += p.RxPackets
			tx += p.TxPackets
		}
		var inDrops, txDrops uint64
		for k, v := range st.Drops {
			if k == "tx-error" {
				txDrops += v
			} else {
				inDrops += v
			}
		}
		if rx != uint64(total) || rx != st.Forwarded+st.Flooded+st.ARPSuppressed+inDrops || txDrops != 0 {
			t.Fatalf("rx %d of %d: forwarded %d flooded %d suppressed %d dropped %d tx-dropped %d",
				rx, total, st.Forwarded, st.Flooded, st.ARPSuppressed, inDrops, txDrops)
		}
		var delivered int
		for _, r := range recs {
			delivered += len(r.Frames())
		}
		if uint64(delivered) != tx || st.Forwarded+st.ARPSuppressed > tx {
			t.Fatalf("delivered %d, tx %d, forwarded %d, suppressed %d", delivered, tx, st.Forwarded, st.ARPSuppressed)
		}
		if len(s.FDB()) > 3+4 {
			t.Fatalf("FDB has %d entries despite MaxLearned 4", len(s.FDB()))
		}
	})
}

// BenchmarkForward measures frames per second through Input for a known
// unicast destination, one batch of packet.BatchSize frames per Input.
func BenchmarkForward(b *testing.B) {
	s := New(Config{Name: "bench"})
	a := addPort(b, s, &netdevtest.Counter{}, PortConfig{Name: "a", MAC: macA, IP: ipA, Security: true})
	addPort(b, s, &netdevtest.Counter{}, PortConfig{Name: "b", MAC: macB, IP: ipB})
	frames := make([][]byte, packet.BatchSize)
	for i := range frames {
		frames[i] = ipv4Frame(macB, macA, ipA, ipB)
	}
	bufs, sizes := batch(frames...)
	b.ReportAllocs()
	for b.Loop() {
		a.Input(bufs, sizes, off)
	}
	b.ReportMetric(float64(b.N*packet.BatchSize)/b.Elapsed().Seconds(), "frames/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*packet.BatchSize), "ns/frame")
}
