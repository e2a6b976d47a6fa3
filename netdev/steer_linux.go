package netdev

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/packet"
)

// Steering of published TCP ports off the host's uplinks (the routing
// mesh's per-packet NAT, gateway.NAT): on every uplink, a tc clsact
// ingress u32 filter per (host address, port) redirects the matching
// segments (IPv4 with no options, not a fragment, TCP, to that address
// and port) to a TAP device the daemon owns (one per uplink, named
// SteerTAPPrefix + the uplink's ifindex), which the daemon reads; the
// replies the daemon writes to that TAP are redirected by a match-all
// filter on the TAP's own ingress to the uplink's egress. The kernel
// never sees a steered segment; everything else (the host's own
// clients on lo, IP options, fragments, uplinks not hooked) reaches the
// published port's listener as before.
//
// The filters live in two priorities of their own (SteerPriorities): a
// change of ports, addresses or uplinks adds the new set in the other
// priority before it deletes the old one, so no segment of a steered
// flow reaches the kernel in between. Whatever carries those
// priorities, or a TAP with the prefix, is the daemon's: a crashed
// daemon's are removed at start (CleanSteer).

// SteerTAPPrefix starts the name of every steering TAP.
const SteerTAPPrefix = "vxn"

// SteerPriorities are the tc filter priorities the steering filters use
// on the uplinks' clsact ingress (0x7678 is "vx").
var SteerPriorities = [2]uint16{0x7678, 0x7679}

// Steer hooks the host's uplinks: every link of the daemon's namespace
// that is up, not loopback, not a TUN/TAP device, with an IPv4 address.
// Its frames go to the function given NewSteer.
type Steer struct {
	in func(ifindex int, bufs [][]byte, sizes []int, offset int)

	mu    sync.Mutex
	links map[int]*steerLink
	gen   int    // SteerPriorities[gen] holds the filters now
	sig   string // the set they steer
	ports []uint16
	// stop ends the watcher of the host's links and addresses (nil:
	// none runs), which re-syncs at once when they change.
	stop chan struct{}
	// taps maps uplink ifindexes to their TAPs for Write, lock-free.
	taps atomic.Pointer[map[int]*TAP]
	wg   sync.WaitGroup
}

type steerLink struct {
	index int
	name  string
	tap   *TAP
}

// NewSteer returns a Steer that hooks nothing yet (see Sync); in gets
// each uplink's steered frames, read in batches at packet.Headroom, from
// one goroutine per uplink.
func NewSteer(in func(ifindex int, bufs [][]byte, sizes []int, offset int)) *Steer {
	s := &Steer{in: in, links: map[int]*steerLink{}}
	s.taps.Store(&map[int]*TAP{})
	return s
}

// CleanSteer removes steering filters and TAPs left by a daemon that did
// not stop cleanly (see SteerPriorities, SteerTAPPrefix).
func CleanSteer() error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("steering: list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if strings.HasPrefix(a.Name, SteerTAPPrefix) && l.Type() == "tuntap" {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("steering: delete %s: %w", a.Name, err))
			}
			continue
		}
		for _, prio := range SteerPriorities {
			delFilters(a.Index, prio)
		}
	}
	return errors.Join(errs...)
}

// delFilters deletes the steering filters of priority prio on link's
// ingress (none there is fine).
func delFilters(link int, prio uint16) {
	_ = netlink.FilterDel(&netlink.U32{FilterAttrs: netlink.FilterAttrs{
		LinkIndex: link, Parent: netlink.HANDLE_MIN_INGRESS, Priority: prio, Protocol: unix.ETH_P_IP}})
}

// hostState is what the steering depends on: the uplinks and the host's
// addresses.
func hostState() (uplinks []netlink.Link, addrs []netip.Addr, err error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("steering: list links: %w", err)
	}
	all, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, nil, fmt.Errorf("steering: list addresses: %w", err)
	}
	has := map[int]bool{}
	for _, a := range all {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || ip.IsLoopback() {
			continue
		}
		has[a.LinkIndex] = true
		if !slices.Contains(addrs, ip) {
			addrs = append(addrs, ip)
		}
	}
	for _, l := range links {
		a := l.Attrs()
		if !has[a.Index] || a.Flags&unix.IFF_UP == 0 || a.Flags&unix.IFF_LOOPBACK != 0 || l.Type() == "tuntap" ||
			strings.HasPrefix(a.Name, SteerTAPPrefix) {
			continue
		}
		uplinks = append(uplinks, l)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return uplinks, addrs, nil
}

// Sync steers TCP segments to ports (and any address of the host) on
// every uplink from now on; no ports unhooks everything. While ports are
// steered, a change of the host's links or addresses re-syncs at once
// (not only at the caller's next Sync): a connection the listener
// accepts on a new address before its filters would lose its later
// segments to the NAT.
func (s *Steer) Sync(ports []uint16) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ports = slices.Clone(ports)
	switch {
	case len(ports) > 0 && s.stop == nil:
		s.stop = make(chan struct{})
		s.watch(s.stop)
	case len(ports) == 0 && s.stop != nil:
		close(s.stop)
		s.stop = nil
	}
	return s.sync(ports)
}

// watch re-syncs s with its last ports whenever a link or an address of
// the calling thread's namespace changes, until stop closes.
func (s *Steer) watch(stop chan struct{}) {
	ns, err := netns.Get()
	if err != nil {
		return // the caller's Syncs still follow the host
	}
	go func() {
		defer ns.Close()
		// Sync lists links and addresses of the thread's namespace:
		// this goroutine's thread joins the caller's for good (a thread
		// locked at exit is discarded).
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			return
		}
		addrs := make(chan netlink.AddrUpdate, 64)
		links := make(chan netlink.LinkUpdate, 64)
		if netlink.AddrSubscribeWithOptions(addrs, stop, netlink.AddrSubscribeOptions{Namespace: &ns}) != nil ||
			netlink.LinkSubscribeWithOptions(links, stop, netlink.LinkSubscribeOptions{Namespace: &ns}) != nil {
			return
		}
		for {
			select {
			case <-stop:
				return
			case _, ok := <-addrs:
				if !ok {
					return
				}
			case _, ok := <-links:
				if !ok {
					return
				}
			}
			// One Sync for a burst of changes.
		drain:
			for {
				select {
				case _, ok := <-addrs:
					if !ok {
						break drain
					}
				case _, ok := <-links:
					if !ok {
						break drain
					}
				default:
					break drain
				}
			}
			s.mu.Lock()
			if s.stop == stop {
				_ = s.sync(s.ports) // errors show at the caller's next Sync
			}
			s.mu.Unlock()
		}
	}()
}

// sync is Sync's work; s.mu is held.
func (s *Steer) sync(ports []uint16) error {
	var uplinks []netlink.Link
	var addrs []netip.Addr
	if len(ports) > 0 {
		var err error
		if uplinks, addrs, err = hostState(); err != nil {
			return err
		}
	}
	ports = slices.Sorted(slices.Values(ports))
	want := map[int]netlink.Link{}
	for _, l := range uplinks {
		want[l.Attrs().Index] = l
	}
	var errs []error
	for idx, l := range want {
		if s.links[idx] != nil {
			continue
		}
		sl, err := s.hook(l)
		if err != nil {
			errs = append(errs, err)
			delete(want, idx)
			continue
		}
		s.links[idx] = sl
	}
	sig := fmt.Sprint(slices.Sorted(mapsKeys(want)), addrs, ports)
	if sig != s.sig {
		next := 1 - s.gen
		for idx := range want {
			if err := addFilters(idx, SteerPriorities[next], s.links[idx].tap, addrs, ports); err != nil {
				errs = append(errs, err)
			}
		}
		for idx := range s.links {
			delFilters(idx, SteerPriorities[s.gen])
		}
		s.gen, s.sig = next, sig
	}
	for idx, sl := range s.links {
		if _, ok := want[idx]; !ok {
			delFilters(idx, SteerPriorities[s.gen])
			s.unhook(sl)
			delete(s.links, idx)
		}
	}
	taps := make(map[int]*TAP, len(s.links))
	for idx, sl := range s.links {
		taps[idx] = sl.tap
	}
	s.taps.Store(&taps)
	return errors.Join(errs...)
}

func mapsKeys(m map[int]netlink.Link) func(func(int) bool) {
	return func(yield func(int) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// hook makes uplink l's TAP, its reply filter and l's clsact, and starts
// reading it.
func (s *Steer) hook(l netlink.Link) (*steerLink, error) {
	a := l.Attrs()
	name := SteerTAPPrefix + strconv.Itoa(a.Index)
	if old, err := netlink.LinkByName(name); err == nil {
		_ = netlink.LinkDel(old)
	}
	tap, err := CreateTAP(name, false)
	if err != nil {
		return nil, fmt.Errorf("steering %s: %w", a.Name, err)
	}
	fail := func(what string, err error) (*steerLink, error) {
		tap.Close()
		return nil, fmt.Errorf("steering %s: %s: %w", a.Name, what, err)
	}
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/disable_ipv6", []byte("1"), 0o644)
	tl, err := netlink.LinkByName(name)
	if err != nil {
		return fail("tap", err)
	}
	if err := netlink.LinkSetUp(tl); err != nil {
		return fail("tap up", err)
	}
	for _, idx := range []int{tl.Attrs().Index, a.Index} {
		q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
		if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
			return fail("clsact", err)
		}
	}
	back := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: tl.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions:     []netlink.Action{netlink.NewMirredAction(a.Index)},
	}
	if err := netlink.FilterAdd(back); err != nil {
		return fail("reply filter", err)
	}
	sl := &steerLink{index: a.Index, name: a.Name, tap: tap}
	s.wg.Add(1)
	go s.read(sl)
	return sl, nil
}

// addFilters adds uplink idx's filters of prio: one per address and
// port, redirecting to tap.
func addFilters(idx int, prio uint16, tap *TAP, addrs []netip.Addr, ports []uint16) error {
	tl, err := netlink.LinkByName(tap.Name())
	if err != nil {
		return fmt.Errorf("steering: %w", err)
	}
	for _, ip := range addrs {
		a4 := ip.As4()
		for _, p := range ports {
			f := &netlink.U32{
				FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: netlink.HANDLE_MIN_INGRESS, Priority: prio, Protocol: unix.ETH_P_IP},
				Sel: &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Keys: []netlink.TcU32Key{
					{Mask: 0xff000000, Val: 0x45000000, Off: 0}, // IPv4, no options
					{Mask: 0x00003fff, Val: 0, Off: 4},          // not a fragment
					{Mask: 0x00ff0000, Val: uint32(unix.IPPROTO_TCP) << 16, Off: 8},
					{Mask: 0xffffffff, Val: uint32(a4[0])<<24 | uint32(a4[1])<<16 | uint32(a4[2])<<8 | uint32(a4[3]), Off: 16},
					{Mask: 0x0000ffff, Val: uint32(p), Off: 20}, // destination port
				}},
				Actions: []netlink.Action{netlink.NewMirredAction(tl.Attrs().Index)},
			}
			if err := netlink.FilterAdd(f); err != nil {
				return fmt.Errorf("steering: filter %s:%d on link %d: %w", ip, p, idx, err)
			}
		}
	}
	return nil
}

// unhook closes sl's TAP (the kernel deletes it with its filter) and
// waits for its reader.
func (s *Steer) unhook(sl *steerLink) {
	sl.tap.Close()
}

// read hands sl's steered frames to s.in until the TAP closes.
func (s *Steer) read(sl *steerLink) {
	defer s.wg.Done()
	b := packet.NewBatch(TAPBatchSize)
	for {
		n, err := sl.tap.Read(b.Bufs, b.Sizes, packet.Headroom)
		if err != nil {
			return
		}
		s.in(sl.index, b.Bufs[:n], b.Sizes[:n], packet.Headroom)
	}
}

// Write sends replies out of uplink ifindex through its TAP.
func (s *Steer) Write(ifindex int, bufs [][]byte, offset int) (int, error) {
	t := (*s.taps.Load())[ifindex]
	if t == nil {
		return 0, fmt.Errorf("steering: no uplink %d", ifindex)
	}
	return t.Write(bufs, offset)
}

// Close removes every filter and TAP and waits for the readers.
func (s *Steer) Close() error {
	err := s.Sync(nil)
	s.wg.Wait()
	return err
}
