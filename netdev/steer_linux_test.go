//go:build linux

package netdev

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// steerFilters counts the steering filters on link's ingress by
// priority.
func steerFilters(t *testing.T, link int) map[uint16]int {
	t.Helper()
	l, err := netlink.LinkByIndex(link)
	if err != nil {
		t.Error(err) // not Fatal: called in another goroutine
		return nil
	}
	fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		t.Error(err)
		return nil
	}
	out := map[uint16]int{}
	for _, f := range fs {
		if u, ok := f.(*netlink.U32); ok && u.Sel != nil && slices.Contains(SteerPriorities[:], u.Priority) {
			out[u.Priority]++
		}
	}
	return out
}

// TestSteerFollowsHost: while ports are steered, a new address, an
// uplink going down and coming back up are followed without another
// Sync (a connection on a new address must not be served by the
// listener until the next reconcile and then lose its segments to the
// NAT); once nothing is steered, nothing follows.
func TestSteerFollowsHost(t *testing.T) {
	requireTAP(t)
	ns := newNetns(t)
	var err error
	inNetns(t, ns, func() { err = steerFollowsHost(t) })
	if err != nil {
		t.Fatal(err)
	}
}

func steerFollowsHost(t *testing.T) error {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up0p"}); err != nil {
		return err
	}
	up, err := netlink.LinkByName("up0")
	if err != nil {
		return err
	}
	peer, err := netlink.LinkByName("up0p")
	if err != nil {
		return err
	}
	for _, l := range []netlink.Link{up, peer} {
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	addr := func(a string) *netlink.Addr {
		ip, n, _ := net.ParseCIDR(a)
		n.IP = ip
		return &netlink.Addr{IPNet: n}
	}
	if err := netlink.AddrAdd(up, addr("192.0.2.1/24")); err != nil {
		return err
	}
	idx := up.Attrs().Index
	total := func() int {
		n := 0
		for _, c := range steerFilters(t, idx) {
			n += c
		}
		return n
	}
	// poll waits (up to 10 s: a condition, not a timing) for want
	// filters on up0.
	poll := func(want int, what string) error {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if total() == want {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: %d filters on up0, want %d", what, total(), want)
			}
		}
	}
	s := NewSteer(func(int, [][]byte, []int, int) {})
	defer s.Close()
	if err := s.Sync([]uint16{8080}); err != nil {
		return err
	}
	if err := poll(1, "after Sync"); err != nil {
		return err
	}
	if err := netlink.AddrAdd(up, addr("192.0.2.9/24")); err != nil {
		return err
	}
	if err := poll(2, "a new address, no Sync"); err != nil {
		return err
	}
	if err := netlink.LinkSetDown(up); err != nil {
		return err
	}
	if err := poll(0, "uplink down, no Sync"); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(up); err != nil {
		return err
	}
	if err := poll(2, "uplink up again, no Sync"); err != nil {
		return err
	}
	if err := s.Sync(nil); err != nil {
		return err
	}
	if err := netlink.AddrAdd(up, addr("192.0.2.10/24")); err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond) // nothing should come: give it the chance
	if n := total(); n != 0 {
		return fmt.Errorf("nothing steered, a new address: %d filters", n)
	}
	return nil
}

// TestSteerLifecycle: Sync adds one filter per host address and port on
// an uplink and its TAP; a new address moves the whole set to the other
// priority and leaves none in the old; the same state changes nothing;
// CleanSteer removes a dead daemon's filters and TAPs; Close removes
// everything.
func TestSteerLifecycle(t *testing.T) {
	requireTAP(t)
	ns := newNetns(t)
	var err error
	inNetns(t, ns, func() { err = steerLifecycle(t) })
	if err != nil {
		t.Fatal(err)
	}
}

// steerLifecycle is TestSteerLifecycle's body, in its namespace: it
// returns the first failure (t.Fatal would stop the wrong goroutine).
func steerLifecycle(t *testing.T) error {
	{
		// An uplink with an address, and one without (not hooked).
		for _, name := range []string{"up0", "noaddr0"} {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
				return err
			}
			for _, n := range []string{name, name + "p"} {
				l, err := netlink.LinkByName(n)
				if err != nil {
					return err
				}
				if err := netlink.LinkSetUp(l); err != nil {
					return err
				}
			}
		}
		up, err := netlink.LinkByName("up0")
		if err != nil {
			return err
		}
		addr := func(l netlink.Link, a string) error {
			ip, n, _ := net.ParseCIDR(a)
			n.IP = ip
			return netlink.AddrAdd(l, &netlink.Addr{IPNet: n})
		}
		if err := addr(up, "192.0.2.1/24"); err != nil {
			return err
		}
		idx := up.Attrs().Index
		tapName := SteerTAPPrefix + strconv.Itoa(idx)
		s := NewSteer(func(int, [][]byte, []int, int) {})
		if err := s.Sync([]uint16{8080, 8081}); err != nil {
			return err
		}
		got := steerFilters(t, idx)
		if len(got) != 1 || got[SteerPriorities[0]]+got[SteerPriorities[1]] != 2 {
			return fmt.Errorf("filters by priority %v, want 2 in one", got)
		}
		if _, err := netlink.LinkByName(tapName); err != nil {
			return fmt.Errorf("no TAP %s: %v", tapName, err)
		}
		var prio uint16
		for p := range got {
			prio = p
		}
		if err := addr(up, "192.0.2.2/24"); err != nil {
			return err
		}
		if err := s.Sync([]uint16{8080, 8081}); err != nil {
			return err
		}
		got = steerFilters(t, idx)
		if got[prio] != 0 || len(got) != 1 {
			return fmt.Errorf("after a new address: filters %v, want 4 in the priority other than %d", got, prio)
		}
		for p, n := range got {
			if n != 4 {
				return fmt.Errorf("after a new address: %d filters in %d, want 4", n, p)
			}
			prio = p
		}
		if err := s.Sync([]uint16{8081, 8080}); err != nil {
			return err
		}
		if again := steerFilters(t, idx); again[prio] != 4 || len(again) != 1 {
			return fmt.Errorf("the same state again: filters %v, want them unchanged", again)
		}
		if _, err := s.Write(idx, [][]byte{make([]byte, 200)}, 128); err != nil {
			// a frame of zeros: the kernel may refuse it; only the path
			// to the TAP is under test
			t.Logf("write: %v", err)
		}
		if err := CleanSteer(); err != nil {
			return err
		}
		if left := steerFilters(t, idx); len(left) != 0 {
			return fmt.Errorf("CleanSteer left filters %v", left)
		}
		if _, err := netlink.LinkByName(tapName); err == nil {
			return fmt.Errorf("CleanSteer left TAP %s", tapName)
		}
		s.Close()

		s = NewSteer(func(int, [][]byte, []int, int) {})
		if err := s.Sync([]uint16{9000}); err != nil {
			return err
		}
		if err := s.Close(); err != nil {
			return err
		}
		if left := steerFilters(t, idx); len(left) != 0 {
			return fmt.Errorf("Close left filters %v", left)
		}
		if _, err := netlink.LinkByName(tapName); err == nil {
			return fmt.Errorf("Close left TAP %s", tapName)
		}
	}
	return nil
}
