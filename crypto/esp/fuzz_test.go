package esp

import (
	"bytes"
	"testing"
)

// FuzzOpen feeds arbitrary datagrams to Open: it must never panic, never
// accept a packet it did not see sealed, and never write outside the
// scratch bytes and the packet. Seeds include valid packets so mutations
// explore the trailer checks behind authentication too.
func FuzzOpen(f *testing.F) {
	out, _ := pair(f, testKey16)
	for _, n := range []int{0, 1, 2, 3, 60, 1400} {
		buf, s, e := datagram(n, byte(n))
		es, ee, err := out.Seal(buf, s, e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte{}, buf[es:ee]...), uint32(0))
		f.Add(append([]byte{}, buf[es:ee]...), uint32(es))
	}
	f.Add([]byte{0xff}, uint32(0))
	f.Add(make([]byte, MinLen), uint32(1<<31))
	f.Fuzz(func(t *testing.T, pkt []byte, top uint32) {
		_, in := pair(t, testKey16)
		in.win.top = uint64(top) << 1 // exercise ESN inference from many states
		const lead, tail = 16, 16
		buf := make([]byte, lead+len(pkt)+tail)
		copy(buf[lead:], pkt)
		orig := append([]byte{}, buf...)
		is, ie, _, err := in.Open(buf, lead, lead+len(pkt))
		if !bytes.Equal(buf[:lead], orig[:lead]) || !bytes.Equal(buf[lead+len(pkt):], orig[lead+len(pkt):]) {
			t.Fatal("Open wrote outside the packet")
		}
		if err == nil {
			if is != lead+HeaderLen || ie < is || ie > lead+len(pkt)-ICVLen-2 {
				t.Fatalf("bounds %d..%d for a %d-byte packet", is, ie, len(pkt))
			}
			if !bytes.Equal(buf[lead:lead+HeaderLen], orig[lead:lead+HeaderLen]) {
				t.Fatal("header changed")
			}
			// Accepted once; the same packet again is a replay.
			copy(buf, orig)
			if _, _, _, err := in.Open(buf, lead, lead+len(pkt)); err != ErrReplay {
				t.Fatalf("accepted twice: %v", err)
			}
		} else if ReasonOf(err) == ReasonNone {
			t.Fatal("error without reason")
		}
		// SPIOf and Table.Open take the same bytes.
		tbl, _ := NewTable(in)
		tbl.Open(append([]byte{}, orig...), lead, lead+len(pkt))
		SPIOf(pkt)
	})
}
