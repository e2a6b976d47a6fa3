package vswitch

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

// TestFloodsKeepLittleStatePerPortPair: every port of a big network
// floods one frame (as each container does when it comes up). Each input
// port keeps a queue per destination it ever sent to, so this state grows
// with the square of the ports; a one-frame flood must not reserve a
// full batch (64 frames) per destination, which made 400 idle containers
// cost hundreds of MB.
// discard is a Sink that takes every frame and keeps none.
type discard struct{}

func (discard) WriteFrames(f packet.Frames) (int, error) { return f.Len(), nil }

func TestFloodsKeepLittleStatePerPortPair(t *testing.T) {
	const ports = 200
	_, before, after := floodFromEveryPort(t, ports, false)
	pairs := uint64(ports * (ports - 1))
	if per := (after.TotalAlloc - before.TotalAlloc) / pairs; per > 512 {
		t.Errorf("one flood from each of %d ports allocated %d bytes per port pair, want at most 512", ports, per)
	}
}

// TestIdlePortsHoldNoFloodQueues: after every port of a big network
// flooded once and went idle, the switch holds destination queues only
// for the inputs running at once (none here), not one per input port and
// destination: the retained heap grows with the ports, not their square.
// At 1,000 containers the per-pair queues were tens of MB of the
// daemon's RSS.
func TestIdlePortsHoldNoFloodQueues(t *testing.T) {
	const ports = 400
	s, before, after := floodFromEveryPort(t, ports, true)
	held := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if limit := int64(ports * 256); held > limit {
		t.Errorf("after one flood from each of %d idle ports the switch holds %d more bytes of heap (%d per port), want at most %d", ports, held, held/ports, limit)
	}
	if made := s.queuesMade.Load(); made != 1 {
		t.Errorf("%d ports flooding one after another made %d sets of destination queues, want 1 (borrowed and given back)", ports, made)
	}
}

// floodFromEveryPort makes a switch with ports security ports, floods one
// broadcast frame from each in turn and returns the switch with the memory
// statistics read before and after the floods (after a collection when
// gcAfter). It fails t unless every frame was flooded.
func floodFromEveryPort(t *testing.T, ports int, gcAfter bool) (s *Switch, before, after runtime.MemStats) {
	t.Helper()
	s = New(Config{Name: "web"})
	ps := make([]*Port, ports)
	frames := make([][][]byte, ports)
	sizes := make([][]int, ports)
	for i := range ports {
		mac := packet.MAC{2, 0, 0, 0, byte(i >> 8), byte(i)}
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i + 1)})
		ps[i] = addPort(t, s, discard{}, PortConfig{Name: fmt.Sprintf("p%d", i), MAC: mac, IP: ip, Security: true})
		frames[i], sizes[i] = batch(ipv4Frame(packet.Broadcast, mac, ip, netip.MustParseAddr("10.0.255.255")))
	}
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i, p := range ps {
		p.Input(frames[i], sizes[i], off)
	}
	if gcAfter {
		runtime.GC()
	}
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(ps)
	runtime.KeepAlive(frames)
	if st := s.Stats(); st.Flooded != uint64(ports) {
		t.Fatalf("flooded %d frames, want %d", st.Flooded, ports)
	}
	return s, before, after
}
