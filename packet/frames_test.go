package packet_test

import (
	"bytes"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

func TestFramesOwnership(t *testing.T) {
	bufs := [][]byte{make([]byte, 40), make([]byte, 40)}
	for i := range bufs[1] {
		bufs[1][i] = byte(i)
	}
	f := packet.NewFrames(bufs, 20, []bool{false, true})
	if f.Owned(0) == nil || f.Shared(0) {
		t.Error("frame 0 is owned")
	}
	if f.Owned(1) != nil || !f.Shared(1) {
		t.Error("frame 1 is shared: Owned must not hand it out")
	}
	if h := f.Headroom(1); len(h) != 20-packet.OffloadLen {
		t.Errorf("headroom %d bytes", len(h))
	}
	c := f.CopyTo(1, make([]byte, 64))
	if len(c) != 40 || !bytes.Equal(c[:packet.OffloadLen], bufs[1][:packet.OffloadLen]) || !bytes.Equal(c[20:], bufs[1][20:]) {
		t.Errorf("copy % x", c)
	}
	if o := packet.OwnedFrames(bufs, 20); o.Owned(1) == nil {
		t.Error("OwnedFrames shares a frame")
	}
}

func TestOffloadFieldsRoundTrip(t *testing.T) {
	slot := make([]byte, packet.OffloadLen)
	o := packet.OffloadOf(slot)
	o.Set(packet.OffloadNeedsCsum, packet.GSOTCPv4|packet.GSOECN, 54, 1448, 34, 16)
	if o.Flags() != packet.OffloadNeedsCsum || o.GSOType() != packet.GSOTCPv4|packet.GSOECN || o.HdrLen() != 54 ||
		o.GSOSize() != 1448 || o.CsumStart() != 34 || o.CsumOffset() != 16 || !o.NeedsCsum() || !o.IsGSO() {
		t.Errorf("fields of % x", slot)
	}
	if !o.CsumFits(52) || o.CsumFits(51) {
		t.Error("CsumFits: checksum field at 50..52")
	}
}
