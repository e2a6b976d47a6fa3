package tunnel

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
)

// batchRecorder is an Underlay that keeps every WriteBatch call's ESP
// datagrams (GSO runs split into their datagrams) as one chunk: what one
// Write call had sealed and not yet sent.
type batchRecorder struct {
	mu     sync.Mutex
	chunks [][][]byte
	closed chan struct{}
}

func (r *batchRecorder) ReadBatch([]Message) (int, error) { <-r.closed; return 0, net.ErrClosed }
func (r *batchRecorder) Close() error                     { close(r.closed); return nil }

func (r *batchRecorder) WriteBatch(msgs []Message) (int, error) {
	var chunk [][]byte
	for _, m := range msgs {
		for b := m.Buf; len(b) > 0; {
			l := len(b)
			if m.GSOSize > 0 {
				l = min(l, m.GSOSize)
			}
			chunk = append(chunk, slices.Clone(b[:l]))
			b = b[l:]
		}
	}
	r.mu.Lock()
	r.chunks = append(r.chunks, chunk)
	r.mu.Unlock()
	return len(msgs), nil
}

// TestConcurrentSealersNeverReplay: a Write call takes sequence numbers
// when it seals and sends its datagrams later, so the datagrams of Write
// calls running at the same time reach the peer out of order. The worst
// case the replay window has to absorb: espMaxSealers (63) Write calls each
// hold as many sealed datagrams to the peer as they may (super-segments of
// many small segments, the largest GSO runs), and the one holding the
// lowest sequence numbers sends last, its datagrams in reverse. Not one
// datagram may be refused as a replay, and each is accepted once.
func TestConcurrentSealersNeverReplay(t *testing.T) {
	rec := &batchRecorder{closed: make(chan struct{})}
	v := New(Config{Underlay: rec})
	t.Cleanup(func() { v.Close() })
	n, _ := v.AddSegment(testVNI, 0)
	n.SetCipher(esp.AES128GCM)
	n.SetPeers([]netip.Addr{vtepB})
	n.SetRemotes(map[packet.MAC]netip.Addr{macB: vtepB})
	out, in := testSA(t, 0x5000ab, 9)
	if err := v.SetSAs([]OutboundSA{{vtepB, out}}, nil); err != nil {
		t.Fatal(err)
	}
	// The smallest segments and the most of them that a super-segment may
	// carry (gso_size 536, 64 segments): a Write of a full batch of them seals
	// far more datagrams than fit in one chunk if nothing bounds it.
	frames := make([][]byte, packet.BatchSize)
	for round := 0; round < 3*espMaxSealers; round++ {
		for i := range frames {
			frames[i] = tsoBuffer(macB, macA, false, packet.GSOMaxSegments*536, 536)
		}
		if k, err := n.Write(frames, packet.Headroom); k != len(frames) || err != nil {
			t.Fatalf("Write: %d, %v", k, err)
		}
	}
	chunks := rec.chunks
	biggest := 0
	for _, c := range chunks {
		biggest = max(biggest, len(c))
	}
	if biggest > espMaxHeld {
		t.Fatalf("a Write call held %d sealed datagrams, more than espMaxHeld %d", biggest, espMaxHeld)
	}
	// Deliver each group of espMaxSealers chunks (sealed while the
	// others held theirs) in reverse, each chunk reversed too.
	var order [][]byte
	for g := 0; g < len(chunks); g += espMaxSealers {
		grp := chunks[g:min(g+espMaxSealers, len(chunks))]
		for i := len(grp) - 1; i >= 0; i-- {
			for j := len(grp[i]) - 1; j >= 0; j-- {
				order = append(order, grp[i][j])
			}
		}
	}
	total := 0
	for _, d := range order {
		buf := make([]byte, esp.ScratchLen+len(d))
		copy(buf[esp.ScratchLen:], d)
		if _, _, _, err := in.Open(buf, esp.ScratchLen, len(buf)); err != nil {
			t.Fatalf("datagram %d of %d (seq %d, top %d): %v", total, len(order), binary.BigEndian.Uint32(d[4:]), in.Stats().Seq, err)
		}
		total++
	}
	if want := 3 * espMaxSealers * packet.BatchSize * 64; total != want {
		t.Fatalf("%d datagrams opened, want %d", total, want)
	}
	// And each only once (the last ones, still within the window).
	for _, d := range order[len(order)-100:] {
		buf := make([]byte, esp.ScratchLen+len(d))
		copy(buf[esp.ScratchLen:], d)
		if _, _, _, err := in.Open(buf, esp.ScratchLen, len(buf)); esp.ReasonOf(err) != esp.ReasonReplay {
			t.Fatalf("a datagram opened twice: %v", err)
		}
	}
}

// TestSetSAsInstallsWhatDoesNotCollide: two peers' inbound SAs with the
// same SPI (and a second outbound SA to one peer) are left out and named
// in the error; every other SA is installed, and traffic under them flows.
func TestSetSAsInstallsWhatDoesNotCollide(t *testing.T) {
	mn := NewMemNetwork()
	b := newEncNode(t, mn, vtepB, vtepA, vtepC)
	b.run(t)
	_, fromA := testSA(t, 0x7000aa, 1)
	_, fromC := testSA(t, 0x7000aa, 2) // the same SPI as fromA
	outA, okA := testSA(t, 0x7000ab, 3)
	toA, _ := testSA(t, 0x7000ba, 4)
	toA2, _ := testSA(t, 0x7000bb, 5)
	err := b.v.SetSAs([]OutboundSA{{vtepA, toA}, {vtepA, toA2}}, []InboundSA{{vtepA, fromA}, {vtepC, fromC}, {vtepA, okA}})
	if err == nil || !strings.Contains(err.Error(), "0x007000aa") || !strings.Contains(err.Error(), "second outbound") {
		t.Fatalf("SetSAs with collisions: %v", err)
	}
	st := b.v.sec.Load()
	if st == nil || st.in.Len() != 2 || st.in.Lookup(0x7000ab) != okA || st.in.Lookup(0x7000aa) != fromA || st.outbound(vtepA, esp.AES128GCM) != toA {
		t.Fatalf("installed: %+v", st)
	}
	// A frame sealed by A under the SA that does not collide arrives.
	frame := udpFrame(macB, macA, 5, 6, 100)
	buf := make([]byte, 2048)
	start := esp.ScratchLen + esp.HeaderLen
	u := buf[start:]
	n := udpHeaderLen + packet.VXLANHeaderLen + len(frame)
	packet.PutVXLAN(u[udpHeaderLen:], testVNI)
	copy(u[udpHeaderLen+packet.VXLANHeaderLen:], frame)
	putInnerUDP(u[:n], 1, packet.VXLANPort)
	s0, s1, err := outA.Seal(buf, start, start+n)
	if err != nil {
		t.Fatal(err)
	}
	newRawAt(t, mn, vtepA, 4501).sendTo(t, netip.AddrPortFrom(vtepB, esp.Port), buf[s0:s1])
	if got := b.sink.wait(t, 1); !bytes.Equal(got[0], frame) {
		t.Fatal("frame changed")
	}
}
