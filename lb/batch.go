package lb

import "github.com/vxmesh/vxmesh/packet"

// TranslateBatch runs Translate on frames bufs[i][offset:offset+sizes[i]]
// with their offload metadata packet.OffloadOf(bufs[i]) (the packet.Batch
// layout, offset normally packet.Headroom) and stores each verdict in
// verdicts[i]; len(verdicts) must be at least len(sizes).
func (t *Table) TranslateBatch(bufs [][]byte, sizes []int, offset int, verdicts []Verdict, now int64) {
	for i, n := range sizes {
		verdicts[i] = t.Translate(bufs[i][offset:offset+n], packet.OffloadOf(bufs[i]), now)
	}
}

// UntranslateBatch is TranslateBatch for Untranslate.
func (t *Table) UntranslateBatch(bufs [][]byte, sizes []int, offset int, verdicts []Verdict, now int64) {
	for i, n := range sizes {
		verdicts[i] = t.Untranslate(bufs[i][offset:offset+n], packet.OffloadOf(bufs[i]), now)
	}
}
