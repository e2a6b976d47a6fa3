package dataplane

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

// waitingDevice is a pipe end that, like a TAP, can wait for frames
// without reading them (netdev.ReadWaiter) and reads TAP-sized batches.
type waitingDevice struct {
	*netdevtest.Device
	ready     chan struct{} // a token per frame sent to it
	closeOnce sync.Once
	closed    chan struct{}
}

func newWaitingDevice(t *testing.T, name string) (*waitingDevice, *netdevtest.Device) {
	a, b := pipe(t, name)
	return &waitingDevice{Device: a, ready: make(chan struct{}, 64), closed: make(chan struct{})}, b
}

func (d *waitingDevice) BatchSize() int { return netdev.TAPBatchSize }

func (d *waitingDevice) WaitRead() error {
	select {
	case <-d.ready:
		return nil
	case <-d.closed:
		return os.ErrClosed
	}
}

func (d *waitingDevice) Close() error {
	d.closeOnce.Do(func() { close(d.closed) })
	return d.Device.Close()
}

// TestIdlePortsHoldNoReadBuffers: ports whose devices wait for frames (as
// TAPs do) hold no read batch while idle, so a hundred idle containers
// do not cost a hundred 1 MiB batches; frames still flow, through batches
// lent for the read.
func TestIdlePortsHoldNoReadBuffers(t *testing.T) {
	if pooledBatch != netdev.TAPBatchSize {
		t.Fatalf("pooled batches of %d, TAP batches of %d", pooledBatch, netdev.TAPBatchSize)
	}
	tb := newTestbed(t)
	n := testNetwork("a", 4096, 1)
	devs := make([]*waitingDevice, 100)
	ctrs := make([]*netdevtest.Device, 100)
	for i := range devs {
		devs[i], ctrs[i] = newWaitingDevice(t, fmt.Sprintf("c%d", i))
		n.Ports = append(n.Ports, PortConfig{Name: fmt.Sprintf("c%d/eth0", i), Device: devs[i], MAC: mac(byte(10 + i)), IP: ip(byte(10 + i))})
	}
	if err := tb.dp.Reconfig(Config{Networks: []NetworkConfig{n}}); err != nil {
		t.Fatal(err)
	}
	if made := tb.dp.batches.made.Load(); made != 0 {
		t.Fatalf("100 idle ports allocated %d read batches, want none", made)
	}
	// c0 sends to c1 (flooded: c1 is not learned yet), ten times.
	f := udpFrame(mac(11), mac(10), ip(10), ip(11))
	for range 10 {
		if _, err := ctrs[0].Write([][]byte{f}, len(f)-14-20-8-16); err != nil {
			t.Fatal(err)
		}
		devs[0].ready <- struct{}{}
	}
	got := 0
	for deadline := time.Now().Add(5 * time.Second); got < 10 && time.Now().Before(deadline); {
		written, _, _ := devs[1].Stats() // what the switch wrote to c1
		got = int(written)
		time.Sleep(time.Millisecond)
	}
	if got < 10 {
		t.Fatalf("c1 got %d of 10 frames", got)
	}
	if made := tb.dp.batches.made.Load(); made != 1 {
		t.Errorf("one port reading allocated %d read batches, want 1 (then reused)", made)
	}
}

// TestBatchPoolLendsTheWarmestBatch: the pool lends the batch given back
// last, whose buffers were just written out and are still in the CPU's
// cache, so a busy reader keeps reusing one batch while others sit idle
// in the pool, and it never keeps more than poolKeep.
func TestBatchPoolLendsTheWarmestBatch(t *testing.T) {
	bp := newBatchPool()
	a, b, c := bp.get(), bp.get(), bp.get()
	bp.put(a)
	bp.put(b)
	bp.put(c)
	for range 5 {
		got := bp.get()
		if got != c {
			t.Fatalf("lent a batch given back earlier, want the last one given back")
		}
		bp.put(got)
	}
	if got := bp.get(); got != c {
		t.Fatal("lent another batch than the last one given back")
	}
	if got := bp.get(); got != b {
		t.Fatal("second get: want the batch given back before the last")
	}
	if made := bp.made.Load(); made != 3 {
		t.Fatalf("made %d batches, want 3", made)
	}
	for range poolKeep + 5 {
		bp.put(packet.NewBatch(pooledBatch))
	}
	if n := len(bp.free); n != poolKeep {
		t.Fatalf("pool keeps %d free batches, want at most %d", n, poolKeep)
	}
}

func TestBatchPoolDoesNotAllocate(t *testing.T) {
	bp := newBatchPool()
	bp.put(bp.get())
	if n := testing.AllocsPerRun(1000, func() { bp.put(bp.get()) }); n != 0 {
		t.Fatalf("get and put allocate %v times, want 0", n)
	}
}
