//go:build linux

package vswitch

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/internal/testenv"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

// onNetnsThread runs fn on a locked thread in namespace ns (or in a new
// one if ns < 0, whose descriptor is returned) and switches the thread
// back afterwards.
func onNetnsThread(t *testing.T, ns int, fn func()) int {
	t.Helper()
	type res struct {
		fd  int
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- res{-1, err}
			return // the thread stays locked and is discarded
		}
		defer unix.Close(orig)
		fd := ns
		if ns < 0 {
			err = unix.Unshare(unix.CLONE_NEWNET)
			if err == nil {
				fd, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			}
		} else {
			err = unix.Setns(ns, unix.CLONE_NEWNET)
		}
		if err == nil {
			fn()
		}
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- res{fd, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.fd
}

// tapContainer is a TAP device moved into a namespace of its own and
// configured there like a container's interface (MTU 1450).
type tapContainer struct {
	tap *netdev.TAP
	ns  int
	mac packet.MAC
	ip  netip.Addr
}

func newTAPContainer(t *testing.T, ip netip.Addr) *tapContainer {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "vxs" + hex.EncodeToString(b)
	tap, err := netdev.CreateTAP(name, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	ns := onNetnsThread(t, -1, func() {})
	t.Cleanup(func() { unix.Close(ns) })
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(link, ns); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(netns.NsHandle(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if link, err = h.LinkByName(name); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetMTU(link, 1450); err != nil {
		t.Fatal(err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(link, addr); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	return &tapContainer{tap: tap, ns: ns, mac: packet.MAC(link.Attrs().HardwareAddr), ip: ip}
}

// TestTAPToTAPWithOffloads runs a kernel TCP connection between two
// namespaces whose TAP devices are switched like the daemon does it (one
// reader per TAP calling Input, port security on). With TSO on, the
// sender's kernel hands over super-segments, which must reach the
// receiver's kernel as they are (metadata slot included) and be accepted.
func TestTAPToTAPWithOffloads(t *testing.T) {
	testenv.RequireTUN(t)
	c1 := newTAPContainer(t, netip.MustParseAddr("10.79.0.2"))
	c2 := newTAPContainer(t, netip.MustParseAddr("10.79.0.3"))
	if c1.tap.Offloads() != netdev.TAPOffloads {
		t.Fatalf("offloads %#x, want %#x", c1.tap.Offloads(), netdev.TAPOffloads)
	}
	s := New(Config{Name: "tso"})
	var wg sync.WaitGroup
	for _, c := range []*tapContainer{c1, c2} {
		r, err := s.AddPort(c.tap, PortConfig{Name: c.tap.Name(), MAC: c.mac, IP: c.ip, Security: true})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			b := packet.NewBatch(c.tap.BatchSize())
			for {
				n, err := c.tap.Read(b.Bufs, b.Sizes, packet.Headroom)
				if err != nil {
					return
				}
				r.Input(b.Bufs[:n], b.Sizes[:n], packet.Headroom)
			}
		})
	}
	defer wg.Wait()
	defer c1.tap.Close()
	defer c2.tap.Close()

	var ln net.Listener
	onNetnsThread(t, c2.ns, func() {
		var err error
		ln, err = net.Listen("tcp4", "10.79.0.3:5001")
		if err != nil {
			t.Error(err)
		}
	})
	if ln == nil {
		t.FailNow()
	}
	defer ln.Close()
	const size = 64 << 20
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	got := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- [32]byte{}
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		got <- [32]byte(h.Sum(nil))
	}()
	var conn net.Conn
	onNetnsThread(t, c1.ns, func() {
		var err error
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err = d.Dial("tcp4", "10.79.0.3:5001")
		if err != nil {
			t.Error(err)
		}
	})
	if conn == nil {
		t.FailNow()
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(conn, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	select {
	case h := <-got:
		if h != want {
			t.Fatal("received data differs")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("transfer timed out")
	}
	s1, s2 := c1.tap.Stats(), c2.tap.Stats()
	t.Logf("sender TAP: %d frames read, %d super-segments; receiver TAP: %d frames written, %d super-segments",
		s1.RxFrames, s1.RxGSO, s2.TxFrames, s2.TxGSO)
	if s1.RxGSO == 0 || s2.TxGSO == 0 {
		t.Error("no super-segment went through: TSO is not in effect")
	}
	if s2.TxErrors != 0 || s1.RxDropGSO != 0 || s1.RxDropBad != 0 {
		t.Errorf("TAP errors: sender %+v receiver %+v", s1, s2)
	}
	st := s.Stats()
	delete(st.Drops, "mld-report") // the kernels' own MLD reports as the links come up: dropped by design
	if len(st.Drops) != 0 {
		t.Errorf("switch drops %v", st.Drops)
	}
}

// TestFloodedBufferStaysByteEqualOnRealTAP is
// TestFloodedBufferStaysByteEqualForEveryPortKind with a kernel TAP
// device (offloads on) as the port under test.
func TestFloodedBufferStaysByteEqualOnRealTAP(t *testing.T) {
	testenv.RequireTUN(t)
	testFloodedBufferStaysByteEqual(t, []sinkKind{{"tap (kernel)", func(t *testing.T) Sink {
		return newTAPContainer(t, netip.MustParseAddr("10.79.1.2")).tap
	}}})
}
