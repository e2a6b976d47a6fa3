package lb

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

func TestBatch(t *testing.T) {
	tb := newTest(t, Config{Max: 4096}, Service{Ports: []Port{{Proto: packet.ProtoTCP, Port: 80}}}, 2)
	b := packet.NewBatch(3)
	frames := [][]byte{
		toVIP(packet.ProtoTCP, 1, 80, header.TCPFlagSyn).build(),
		toVIP(packet.ProtoTCP, 2, 81, header.TCPFlagSyn).build(),
		flow{srcMAC: clientMAC, dstMAC: beMAC(1), src: clientIP, dst: beIP(1), proto: packet.ProtoUDP, sport: 3, dport: 4}.build(),
	}
	for i, f := range frames {
		packet.ClearOffload(b.Bufs[i])
		b.Sizes[i] = copy(b.Bufs[i][packet.Headroom:], f)
	}
	// The first frame carries a partial checksum in its metadata slot.
	o := makePartial(b.Bufs[0][packet.Headroom : packet.Headroom+b.Sizes[0]])
	copy(b.Bufs[0], o)
	v := make([]Verdict, 3)
	tb.TranslateBatch(b.Bufs, b.Sizes, packet.Headroom, v, t0)
	if v[0] != Forward || v[1] != Reject || v[2] != Pass {
		t.Fatalf("verdicts %v, want Forward Reject Pass", v)
	}
	f := b.Bufs[0][packet.Headroom : packet.Headroom+b.Sizes[0]]
	completePartial(f, packet.OffloadOf(b.Bufs[0]))
	checkSums(t, f)
	r := reply(parseFields(f), packet.ProtoTCP, header.TCPFlagSyn|header.TCPFlagAck).build()
	b.Sizes = b.Sizes[:1]
	packet.ClearOffload(b.Bufs[0])
	b.Sizes[0] = copy(b.Bufs[0][packet.Headroom:], r)
	tb.UntranslateBatch(b.Bufs, b.Sizes, packet.Headroom, v, t0)
	if v[0] != Forward || parseFields(b.Bufs[0][packet.Headroom:]).src != vip {
		t.Fatalf("reply verdict %d", v[0])
	}
}
