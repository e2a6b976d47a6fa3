package gateway

import (
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/vxmesh/vxmesh/packet"
)

// TestReadNoAllocs: reading the stack's frames into the switch's batch
// allocates nothing per frame (the frames are queued beforehand: the
// stack's own queueing is not the device's).
func TestReadNoAllocs(t *testing.T) {
	gw, err := New(Config{Name: "web", Addr: gwAddr, MAC: gwMAC, MTU: 1500})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	const runs = 200
	frame := make([]byte, 100)
	for range runs + 1 {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		var l stack.PacketBufferList
		l.PushBack(pkt)
		if _, err := gw.ep.WritePackets(l); err != nil {
			t.Fatal(err)
		}
		pkt.DecRef()
	}
	b := packet.NewBatch(1)
	dev := gw.Device()
	read := func() {
		if n, err := dev.Read(b.Bufs, b.Sizes, packet.Headroom); n != 1 || err != nil || b.Sizes[0] != len(frame) {
			t.Fatalf("Read: %d frames (%d bytes), %v; want 1 of %d bytes", n, b.Sizes[0], err, len(frame))
		}
	}
	if n := testing.AllocsPerRun(runs, read); n != 0 {
		t.Errorf("Read: %v allocations per frame, want 0", n)
	}
}
