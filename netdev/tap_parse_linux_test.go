//go:build linux

package netdev

import (
	"bytes"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/packet"
)

// seqpacketTAP returns a TAP whose descriptor is one end of a
// SOCK_SEQPACKET pair (which, like a TAP, keeps one frame per read and
// write) and the other end, so the vnet header handling can be tested
// without root.
func seqpacketTAP(t *testing.T) (*TAP, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	tap, err := newTAP(fds[0], "fake0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		tap.Close()
		unix.Close(fds[1])
	})
	return tap, fds[1]
}

func TestTAPReadVnetHeader(t *testing.T) {
	tap, peer := seqpacketTAP(t)
	frame := func(h VirtioNetHdr, payload string) []byte {
		b := make([]byte, VirtioNetHdrLen+14, VirtioNetHdrLen+14+len(payload))
		h.Encode(b)
		b[VirtioNetHdrLen+12], b[VirtioNetHdrLen+13] = 0x88, 0xb5 // local experimental EtherType
		return append(b, payload...)
	}
	send := func(b []byte) {
		if _, err := unix.Write(peer, b); err != nil {
			t.Fatal(err)
		}
	}
	send(frame(VirtioNetHdr{}, "plain"))
	send(frame(VirtioNetHdr{GSOType: VirtioNetHdrGSOTCPv4, GSOSize: 1448, HdrLen: 54}, "gso"))
	send([]byte{1, 2, 3})                                                         // shorter than the header
	send(frame(VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: 200}, "x")) // offsets past the end
	// Partial checksum over the 4 payload bytes at offset 14, stored at 14+2.
	send(frame(VirtioNetHdr{Flags: VirtioNetHdrFNeedsCsum, CsumStart: 14, CsumOffset: 2}, "\x12\x34\x00\x00"))
	send(frame(VirtioNetHdr{Flags: VirtioNetHdrFDataValid}, "valid"))

	b := packet.NewBatch(packet.BatchSize)
	n, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("Read = %d frames, want 3 (plain, checksummed, valid)", n)
	}
	got := func(i int) []byte { return b.Bufs[i][packet.Headroom+14 : packet.Headroom+b.Sizes[i]] }
	if string(got(0)) != "plain" || string(got(2)) != "valid" {
		t.Errorf("payloads %q, %q", got(0), got(2))
	}
	if want := []byte{0x12, 0x34, 0xed, 0xcb}; !bytes.Equal(got(1), want) {
		t.Errorf("checksummed payload % x, want % x", got(1), want)
	}
	st := tap.Stats()
	if st.RxFrames != 3 || st.RxDropGSO != 1 || st.RxDropBad != 2 {
		t.Errorf("stats %+v, want 3 frames, 1 GSO drop, 2 bad", st)
	}
	if _, err := tap.Read(b.Bufs, b.Sizes, VirtioNetHdrLen-1); err == nil {
		t.Error("Read with offset < VirtioNetHdrLen succeeded")
	}
}

func TestTAPReadBatchLimit(t *testing.T) {
	tap, peer := seqpacketTAP(t)
	f := make([]byte, VirtioNetHdrLen+60)
	for range 5 {
		unix.Write(peer, f)
	}
	b := packet.NewBatch(packet.BatchSize)
	if n, err := tap.Read(b.Bufs[:2], b.Sizes, packet.Headroom); n != 2 || err != nil {
		t.Fatalf("Read into 2 buffers = %d, %v", n, err)
	}
	if n, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom); n != 3 || err != nil {
		t.Fatalf("Read of the rest = %d, %v", n, err)
	}
	if b.Sizes[0] != 60 {
		t.Errorf("size %d, want 60", b.Sizes[0])
	}
}

func TestTAPWriteHeaderInPlace(t *testing.T) {
	tap, peer := seqpacketTAP(t)
	buf := make([]byte, packet.Headroom+64)
	for i := range buf {
		buf[i] = byte(i)
	}
	want := bytes.Clone(buf[packet.Headroom:])
	if n, err := tap.Write([][]byte{buf, buf}, packet.Headroom); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	got := make([]byte, 200)
	for range 2 {
		m, err := unix.Read(peer, got)
		if err != nil {
			t.Fatal(err)
		}
		if m != VirtioNetHdrLen+64 {
			t.Fatalf("wrote %d bytes, want %d", m, VirtioNetHdrLen+64)
		}
		if h := got[:VirtioNetHdrLen]; !bytes.Equal(h, make([]byte, VirtioNetHdrLen)) {
			t.Errorf("vnet header % x, want zeros", h)
		}
		if !bytes.Equal(got[VirtioNetHdrLen:m], want) {
			t.Error("frame bytes changed")
		}
	}
	if st := tap.Stats(); st.TxFrames != 2 || st.TxBytes != 128 {
		t.Errorf("stats %+v", st)
	}
}

func TestTAPAllocsFake(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	tap, peer := seqpacketTAP(t)
	wb := [][]byte{make([]byte, packet.Headroom+60)}
	b := packet.NewBatch(packet.BatchSize)
	echo := make([]byte, 200)
	allocs := testing.AllocsPerRun(1000, func() {
		tap.Write(wb, packet.Headroom)
		m, _ := unix.Read(peer, echo)
		unix.Write(peer, echo[:m])
		tap.Read(b.Bufs, b.Sizes, packet.Headroom)
	})
	if allocs != 0 {
		t.Errorf("Write+Read allocate %.1f times per frame, want 0", allocs)
	}
}
