package netdevtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/testenv"
	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

const off = packet.Headroom

func frames(n int, tag string) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = append(make([]byte, off), fmt.Sprintf("%s-frame-%d", tag, i)...)
	}
	return bufs
}

func TestPipeCarriesBatchesBothWays(t *testing.T) {
	a, b := Pipe()
	defer a.Close()
	defer b.Close()
	if n, err := a.Write(frames(3, "ab"), off); n != 3 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if n, err := b.Write(frames(1, "ba"), off); n != 1 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	batch := packet.NewBatch(2)
	// A batch larger than the read buffers is delivered over two Reads,
	// in order, at the requested offset.
	var got []string
	for len(got) < 3 {
		n, err := b.Read(batch.Bufs, batch.Sizes, off)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			got = append(got, string(batch.Bufs[i][off:off+batch.Sizes[i]]))
		}
	}
	if fmt.Sprint(got) != "[ab-frame-0 ab-frame-1 ab-frame-2]" {
		t.Errorf("b read %v", got)
	}
	n, err := a.Read(batch.Bufs, batch.Sizes, off)
	if err != nil || n != 1 || string(batch.Bufs[0][off:off+batch.Sizes[0]]) != "ba-frame-0" {
		t.Errorf("a read %d, %v", n, err)
	}
}

func TestPipeWriteCopies(t *testing.T) {
	a, b := Pipe()
	bufs := frames(1, "x")
	a.Write(bufs, off)
	bufs[0][off] = 'Y' // the writer reuses its buffer at once
	batch := packet.NewBatch(1)
	b.Read(batch.Bufs, batch.Sizes, off)
	if !bytes.Equal(batch.Bufs[0][off:off+batch.Sizes[0]], []byte("x-frame-0")) {
		t.Fatalf("reader saw the writer's later change: %q", batch.Bufs[0][off:off+batch.Sizes[0]])
	}
}

func TestPipeReadMergesQueuedBatches(t *testing.T) {
	a, b := Pipe()
	a.Write(frames(1, "one"), off)
	a.Write(frames(2, "two"), off)
	batch := packet.NewBatch(8)
	if n, _ := b.Read(batch.Bufs, batch.Sizes, off); n != 3 {
		t.Fatalf("Read returned %d frames, want all 3 queued", n)
	}
}

func TestPipeQueueFullDrops(t *testing.T) {
	a, b := NewPipe("a", "b", 1)
	defer b.Close()
	a.Write(frames(1, "x"), off)
	n, err := a.Write(frames(2, "y"), off)
	if n != 0 || err == nil {
		t.Fatalf("Write to full queue = %d, %v", n, err)
	}
	if w, _, d := a.Stats(); w != 1 || d != 2 {
		t.Fatalf("stats written %d dropped %d", w, d)
	}
}

func TestPipeCloseUnblocksRead(t *testing.T) {
	a, b := Pipe()
	errc := make(chan error, 1)
	go func() {
		batch := packet.NewBatch(1)
		_, err := b.Read(batch.Bufs, batch.Sizes, off)
		errc <- err
	}()
	// Close must unblock a Read that is blocked, not one yet to start.
	testenv.WaitBlocked(t, "netdevtest.(*Device).Read", 5*time.Second)
	select {
	case err := <-errc:
		t.Fatalf("Read returned before Close: %v", err)
	default:
	}
	b.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
	if _, err := a.Write(frames(1, "x"), off); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write to closed peer: %v", err)
	}
}

func TestRecorderAndCounter(t *testing.T) {
	var r Recorder
	go r.Write(frames(2, "r"), off)
	got := r.Wait(2, 5*time.Second)
	if len(got) != 2 || string(got[1]) != "r-frame-1" || r.Writes() != 1 {
		t.Fatalf("recorded %q in %d writes", got, r.Writes())
	}
	var c Counter
	bufs := frames(3, "c")
	if allocs := testing.AllocsPerRun(100, func() { c.Write(bufs, off) }); allocs != 0 {
		t.Errorf("Counter.Write allocates %.1f times", allocs)
	}
	w, f, by := c.Counts()
	if w != 101 || f != 303 || by != 303*uint64(len("c-frame-0")) || string(c.Last()) != "c-frame-2" {
		t.Errorf("counts %d %d %d last %q", w, f, by, c.Last())
	}
}

var _ netdev.Device = (*Device)(nil)
