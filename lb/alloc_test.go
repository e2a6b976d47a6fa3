package lb

import (
	"testing"
	"unsafe"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// TestEntrySize measures the memory one connection takes: the entry plus
// its share of the two hash indexes (one uint32 bucket head each per
// bucket, buckets = the shard's capacity rounded up to a power of two).
// Measured: 88 bytes for the default Max (80-byte entry + 8), at most 96
// for any Max (when rounding doubles the buckets); budget 128.
func TestEntrySize(t *testing.T) {
	for _, max := range []int{DefaultMax, DefaultMax + Shards, 1000} {
		ct := NewConntrack(Config{Max: max})
		s := &ct.shards[0]
		cap := len(s.e) - 1
		index := float64(unsafe.Sizeof(uint32(0))) * float64(len(s.fwd)+len(s.rev)) / float64(cap)
		per := float64(unsafe.Sizeof(entry{})) + index
		t.Logf("Max %d: entry %d bytes + index %.1f bytes = %.1f bytes per connection", max, unsafe.Sizeof(entry{}), index, per)
		if per > 128 {
			t.Fatalf("Max %d: %.1f bytes per connection, budget 128", max, per)
		}
	}
}

// Steady state allocates nothing: a hit both ways, and new connections
// (with LRU eviction once the table is full).
func TestZeroAllocs(t *testing.T) {
	tb := newTest(t, Config{Max: 4 * Shards}, Service{Affinity: 1e9}, 4)
	syn := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagSyn).build()
	pristine := append([]byte(nil), syn...)
	tb.Translate(syn, nil, t0)
	got := parseFields(syn)
	replyFrame := reply(got, packet.ProtoTCP, header.TCPFlagAck).build()
	replyPristine := append([]byte(nil), replyFrame...)
	ack := toVIP(packet.ProtoTCP, 1000, 80, header.TCPFlagAck).build()
	ackPristine := append([]byte(nil), ack...)
	hit := testing.AllocsPerRun(1000, func() {
		copy(ack, ackPristine)
		if tb.Translate(ack, nil, t0) != Forward {
			t.Fatal("hit not forwarded")
		}
		copy(replyFrame, replyPristine)
		if tb.Untranslate(replyFrame, nil, t0) != Forward {
			t.Fatal("reply not untranslated")
		}
	})
	port := uint16(2000)
	for _, sch := range []Scheduler{RoundRobin, WeightedRoundRobin, LeastConns, PowerOfTwo, Maglev} {
		tb := newTest(t, Config{Max: 4 * Shards}, Service{Scheduler: sch, Affinity: 1e9}, 4)
		fresh := testing.AllocsPerRun(1000, func() {
			copy(syn, pristine)
			port++
			syn[34], syn[35] = byte(port>>8), byte(port) // a new client port; checksum is not checked
			if tb.Translate(syn, nil, t0) != Forward {
				t.Fatal("new connection not forwarded")
			}
		})
		if fresh != 0 {
			t.Fatalf("%v: %.1f allocations per new connection", sch, fresh)
		}
	}
	if hit != 0 {
		t.Fatalf("%.1f allocations per hit", hit)
	}
}
