//go:build linux

package netdev

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"

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
	tap, err := newTAP(fds[0], "fake0", TAPOffloads)
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
	frame := func(h []byte, payload string) []byte {
		b := make([]byte, VirtioNetHdrLen+14, VirtioNetHdrLen+14+len(payload))
		copy(b, h)
		b[VirtioNetHdrLen+12], b[VirtioNetHdrLen+13] = 0x88, 0xb5 // local experimental EtherType
		return append(b, payload...)
	}
	send := func(b []byte) {
		if _, err := unix.Write(peer, b); err != nil {
			t.Fatal(err)
		}
	}
	tso := vnet(packet.OffloadNeedsCsum, packet.GSOTCPv4, 54, 1448, 34, 16)
	partial := vnet(packet.OffloadNeedsCsum, packet.GSONone, 0, 0, 14, 2)
	none := vnet(0, packet.GSONone, 0, 0, 0, 0)
	valid := vnet(packet.OffloadDataValid, packet.GSONone, 0, 0, 0, 0)
	send(frame(none, "plain"))
	send(frame(tso, "gso-gso-gso-gso-gso-gso-gso-gso-gso-gso-"))
	send(frame(vnet(0, packet.GSOUDP, 0, 1448, 0, 0), "ufo"))                     // not switched on
	send([]byte{1, 2, 3})                                                         // shorter than the header
	send(frame(vnet(packet.OffloadNeedsCsum, packet.GSONone, 0, 0, 200, 0), "x")) // offsets past the end
	// Partial checksum over the 4 payload bytes at offset 14, stored at 14+2.
	send(frame(partial, "\x12\x34\x00\x00"))
	send(frame(valid, "valid"))

	b := packet.NewBatch(packet.BatchSize)
	for _, buf := range b.Bufs {
		for j := range buf[:packet.Headroom] {
			buf[j] = 0xee // Read must set every slot
		}
	}
	n, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Fatalf("Read = %d frames, want 4 (plain, gso, partial, valid)", n)
	}
	got := func(i int) []byte { return b.Bufs[i][packet.Headroom+14 : packet.Headroom+b.Sizes[i]] }
	slot := func(i int) []byte { return b.Bufs[i][:VirtioNetHdrLen] }
	if string(got(0)) != "plain" || string(got(3)) != "valid" || len(got(1)) != 40 {
		t.Errorf("payloads %q, %q, %q", got(0), got(1), got(3))
	}
	// The metadata is passed on, not acted upon.
	if !bytes.Equal(slot(0), none) || !bytes.Equal(slot(1), tso) || !bytes.Equal(slot(2), partial) || !bytes.Equal(slot(3), valid) {
		t.Errorf("slots % x, % x, % x, % x", slot(0), slot(1), slot(2), slot(3))
	}
	if want := []byte{0x12, 0x34, 0x00, 0x00}; !bytes.Equal(got(2), want) {
		t.Errorf("partial-checksum payload % x, want % x (unchanged)", got(2), want)
	}
	if b.Bufs[0][VirtioNetHdrLen] != 0xee || b.Bufs[0][packet.Headroom-1] != 0xee {
		t.Error("Read wrote into the headroom behind the slot")
	}
	st := tap.Stats()
	if st.RxFrames != 4 || st.RxGSO != 1 || st.RxDropGSO != 1 || st.RxDropBad != 2 {
		t.Errorf("stats %+v, want 4 frames (1 GSO), 1 GSO drop, 2 bad", st)
	}
	if _, err := tap.Read(b.Bufs, b.Sizes, VirtioNetHdrLen-1); err == nil {
		t.Error("Read with offset < VirtioNetHdrLen succeeded")
	}
}

func TestTAPReadGSOWithoutOffloads(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	tap, err := newTAP(fds[0], "fake0", 0) // the kernel refused TUNSETOFFLOAD
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	defer unix.Close(fds[1])
	f := make([]byte, VirtioNetHdrLen+60)
	copy(f, vnet(0, packet.GSOTCPv6, 0, 1000, 0, 0))
	unix.Write(fds[1], f)
	unix.Write(fds[1], make([]byte, VirtioNetHdrLen+60))
	b := packet.NewBatch(2)
	if n, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom); n != 1 || err != nil {
		t.Fatalf("Read = %d, %v; want the plain frame only", n, err)
	}
	if st := tap.Stats(); st.RxDropGSO != 1 {
		t.Errorf("stats %+v, want 1 GSO drop", st)
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

// TestTAPReadBatchStopsAtTheByteBudget checks that a read batch ends once
// its frames hold the byte budget, though more frames wait and buffers
// are free, and that the next Read takes the rest.
func TestTAPReadBatchStopsAtTheByteBudget(t *testing.T) {
	tap, peer := seqpacketTAP(t)
	if tap.rxBudget != TAPBatchBytes {
		t.Fatalf("budget %d, want TAPBatchBytes", tap.rxBudget)
	}
	tap.rxBudget = 100 << 10
	f := make([]byte, VirtioNetHdrLen+40<<10)
	for i := range 5 {
		if _, err := unix.Write(peer, f); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	b := packet.NewBatch(TAPBatchSize)
	// 40 + 40 + 40 KiB reach 100 KiB: three frames, two left queued.
	if n, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom); n != 3 || err != nil {
		t.Fatalf("first Read = %d, %v; want the 3 frames that reach the budget", n, err)
	}
	if n, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom); n != 2 || err != nil {
		t.Fatalf("second Read = %d, %v; want the 2 frames left", n, err)
	}
}

func TestTAPWriteMetadataSlot(t *testing.T) {
	tap, peer := seqpacketTAP(t)
	buf := make([]byte, packet.Headroom+64)
	for i := range buf {
		buf[i] = byte(i)
	}
	plain := bytes.Clone(buf)
	packet.ClearOffload(plain)
	gso := bytes.Clone(buf)
	hdr := vnet(packet.OffloadNeedsCsum, packet.GSOTCPv6, 74, 1388, 54, 16)
	copy(gso, hdr)
	before := bytes.Clone(gso)
	want := bytes.Clone(buf[packet.Headroom:])
	if n, err := tap.Write([][]byte{plain, gso}, packet.Headroom); n != 2 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	got := make([]byte, 200)
	for i, wantHdr := range [][]byte{make([]byte, packet.OffloadLen), hdr} {
		m, err := unix.Read(peer, got)
		if err != nil {
			t.Fatal(err)
		}
		if m != VirtioNetHdrLen+64 {
			t.Fatalf("wrote %d bytes, want %d (slot + frame, not the headroom)", m, VirtioNetHdrLen+64)
		}
		if h := got[:VirtioNetHdrLen]; !bytes.Equal(h, wantHdr) {
			t.Errorf("frame %d: vnet header % x, want % x (the slot)", i, h, wantHdr)
		}
		if !bytes.Equal(got[VirtioNetHdrLen:m], want) {
			t.Error("frame bytes changed")
		}
	}
	if !bytes.Equal(gso, before) {
		t.Error("Write modified the buffer")
	}
	if st := tap.Stats(); st.TxFrames != 2 || st.TxBytes != 128 || st.TxGSO != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestTAPAllocsFake(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	tap, peer := seqpacketTAP(t)
	wb := [][]byte{make([]byte, packet.Headroom+60)}
	b := packet.NewBatch(TAPBatchSize)
	echo := make([]byte, 200)
	allocs := testing.AllocsPerRun(1000, func() {
		tap.Write(wb, packet.Headroom)
		m, _ := unix.Read(peer, echo)
		unix.Write(peer, echo[:m])
		tap.WaitRead()
		tap.Read(b.Bufs, b.Sizes, packet.Headroom)
	})
	if allocs != 0 {
		t.Errorf("Write+WaitRead+Read allocate %.1f times per frame, want 0", allocs)
	}
}

// vnet returns a metadata slot (struct virtio_net_hdr) with the given
// fields, written through packet.Offload.
func vnet(flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset int) []byte {
	b := make([]byte, packet.OffloadLen)
	packet.OffloadOf(b).Set(flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset)
	return b
}

// TestTAPWaitReadWaitsForAFrameWithoutReadingIt: a reader can wait for
// frames holding no buffers; the frame is still there for Read, and Close
// ends the wait.
func TestTAPWaitReadWaitsForAFrameWithoutReadingIt(t *testing.T) {
	tap, peer := seqpacketTAP(t)
	done := make(chan error, 1)
	go func() { done <- tap.WaitRead() }()
	select {
	case err := <-done:
		t.Fatalf("WaitRead returned %v with nothing to read", err)
	case <-time.After(50 * time.Millisecond):
	}
	f := make([]byte, VirtioNetHdrLen+60)
	unix.Write(peer, f)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := tap.WaitRead(); err != nil { // the frame is still there
		t.Fatal(err)
	}
	b := packet.NewBatch(TAPBatchSize)
	if n, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom); n != 1 || err != nil || b.Sizes[0] != 60 {
		t.Fatalf("Read after WaitRead = %d, %v (size %d), want the 60-byte frame", n, err, b.Sizes[0])
	}
	go func() { done <- tap.WaitRead() }()
	tap.Close()
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("WaitRead after Close = %v, want os.ErrClosed", err)
	}
}
