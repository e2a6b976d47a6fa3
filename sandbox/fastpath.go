//go:build linux

package sandbox

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The published-port fast path (EnableFastPath, FastSockets): the daemon
// dials a published connection's backend from inside the container's own
// namespace, from a transparent socket bound to the outside client's
// address and marked FastPathMark. The backend's accepted socket inherits
// the mark (net.ipv4.tcp_fwmark_accept=1), and so do the kernel's own
// replies to marked packets, such as the reset of a port nothing listens
// on (net.ipv4.fwmark_reflect=1); so these replies, addressed to a
// non-local client, match the rule FastPathRulePref (fwmark FastPathMark
// lookup FastPathTable), whose only route (local 0.0.0.0/0 dev lo)
// delivers them to the daemon's socket on lo. Unmarked traffic (the
// container's own, connections over eth0) never matches the rule.
const (
	// FastPathMark is the fast path's socket mark ("vx").
	FastPathMark = 0x7678
	// FastPathTable is the routing table of the fast path's one route.
	FastPathTable = 30312
	// FastPathRulePref is the preference of the fast path's rule: after
	// the local table's (0), before main's (32766).
	FastPathRulePref = 1000
	// fastPathProto is the route protocol (rtm_protocol) of the fast
	// path's route, plus 1<<i for each of fastPathSysctls[i] that was 0
	// and EnableFastPath set (DisableFastPath restores those): the route
	// remembers them over a daemon restart.
	fastPathProto = 0xf0
)

// fastPathSysctls are the namespace's settings the fast path needs at 1
// (paths under /proc/sys).
var fastPathSysctls = [...]string{
	"net/ipv4/tcp_fwmark_accept",
	"net/ipv4/fwmark_reflect",
}

// EnableFastPath sets up the fast path in the namespace at nsPath:
// tcp_fwmark_accept=1, the rule and the route. It is idempotent: what
// is there already (a daemon restart) is kept.
func EnableFastPath(nsPath string) error {
	h, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	routes, err := fastPathRoutes(h)
	if err != nil {
		return fmt.Errorf("netns %q: fast path: %w", nsPath, err)
	}
	if len(routes) == 0 {
		proto := fastPathProto
		err := RunInNetns(nsPath, func() error {
			ps := openProcSys()
			defer ps.Close()
			for i, s := range fastPathSysctls {
				v, err := ps.read(s)
				if err != nil {
					return err
				}
				if v == "0" {
					if err := ps.write(s, "1\n"); err != nil {
						return err
					}
					proto |= 1 << i
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("netns %q: fast path: sysctl: %w", nsPath, err)
		}
		r := fastPathRoute(h)
		r.Protocol = netlink.RouteProtocol(proto)
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("netns %q: fast path: route local 0.0.0.0/0 dev lo table %d: %w", nsPath, FastPathTable, err)
		}
	}
	rules, err := fastPathRules(h)
	if err != nil {
		return fmt.Errorf("netns %q: fast path: %w", nsPath, err)
	}
	if len(rules) == 0 {
		if err := h.RuleAdd(fastPathRule()); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("netns %q: fast path: rule fwmark %#x lookup %d: %w", nsPath, FastPathMark, FastPathTable, err)
		}
	}
	return nil
}

// DisableFastPath removes what EnableFastPath set up in the namespace at
// nsPath: the rule, the route and the settings EnableFastPath changed.
// A namespace without them is no error.
func DisableFastPath(nsPath string) error {
	h, err := handleAt(nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	rules, err := fastPathRules(h)
	errs = append(errs, err)
	for i := range rules {
		if err := h.RuleDel(&rules[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule: %w", err))
		}
	}
	routes, err := fastPathRoutes(h)
	errs = append(errs, err)
	restore := 0
	for i := range routes {
		if pr := int(routes[i].Protocol); pr&^3 == fastPathProto {
			restore |= pr & 3
		}
		if err := h.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route: %w", err))
		}
	}
	if restore != 0 {
		errs = append(errs, RunInNetns(nsPath, func() error {
			ps := openProcSys()
			defer ps.Close()
			var errs []error
			for i, s := range fastPathSysctls {
				if restore&(1<<i) != 0 {
					errs = append(errs, ps.write(s, "0\n"))
				}
			}
			return errors.Join(errs...)
		}))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netns %q: fast path: %w", nsPath, err)
	}
	return nil
}

func fastPathRule() *netlink.Rule {
	r := netlink.NewRule()
	r.Family = unix.AF_INET
	r.Priority = FastPathRulePref
	r.Mark = FastPathMark
	r.Table = FastPathTable
	return r
}

// fastPathRules lists the rules of the fast path's table at its
// preference.
func fastPathRules(h *netlink.Handle) ([]netlink.Rule, error) {
	rules, err := h.RuleListFiltered(unix.AF_INET, fastPathRule(), netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PRIORITY)
	if err != nil {
		return nil, fmt.Errorf("list rules: %w", err)
	}
	return rules, nil
}

func fastPathRoute(h *netlink.Handle) *netlink.Route {
	lo := 1 // the loopback device is always index 1 in a namespace
	if l, err := h.LinkByName("lo"); err == nil {
		lo = l.Attrs().Index
	}
	return &netlink.Route{
		LinkIndex: lo, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Table: FastPathTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST, Family: unix.AF_INET,
	}
}

// fastPathRoutes lists the routes of the fast path's table.
func fastPathRoutes(h *netlink.Handle) ([]netlink.Route, error) {
	routes, err := h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: FastPathTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of table %d: %w", FastPathTable, err)
	}
	return routes, nil
}

// FastSockets makes the fast path's TCP sockets in one namespace: a
// goroutine on a locked thread that entered the namespace once (and is
// discarded with it) keeps a few sockets ready, so taking one costs no
// namespace switch. Each is a non-blocking, close-on-exec IPv4 TCP socket
// with IP_TRANSPARENT (it may bind a non-local address), SO_MARK
// FastPathMark and SO_REUSEADDR, and whatever the prep function set.
type FastSockets struct {
	diag  *sockDiag // made in the namespace (EndTimeWait)
	ready chan fastSocket
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

type fastSocket struct {
	fd  int
	err error
}

// fastSocketsReady is how many sockets a FastSockets keeps made.
const fastSocketsReady = 4

// errFastSocketsClosed is Socket's error once Close was called.
var errFastSocketsClosed = errors.New("fast path closed")

// NewFastSockets starts making sockets in the namespace at nsPath, each
// passed to prep (nil: none) before it is handed out.
func NewFastSockets(nsPath string, prep func(fd int) error) (*FastSockets, error) {
	target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netns %q: %w", nsPath, err)
	}
	f := &FastSockets{ready: make(chan fastSocket, fastSocketsReady), done: make(chan struct{})}
	errc := make(chan error, 1)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		// Never unlocked: the thread leaves the namespace by ending (and
		// back in its own namespace, should it be the main thread).
		defer lockThreadForGood()()
		err := unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err == nil {
			f.diag, err = newSockDiag()
		}
		errc <- err
		if err == nil {
			f.make(prep)
		}
	}()
	if err := <-errc; err != nil {
		f.wg.Wait()
		return nil, fmt.Errorf("netns %q: enter: %w", nsPath, err)
	}
	return f, nil
}

// make hands out sockets until Close.
func (f *FastSockets) make(prep func(fd int) error) {
	for {
		s := newFastSocket(prep)
		select {
		case f.ready <- s:
		case <-f.done:
			if s.err == nil {
				unix.Close(s.fd)
			}
			return
		}
	}
}

func newFastSocket(prep func(fd int) error) fastSocket {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fastSocket{fd: -1, err: os.NewSyscallError("socket", err)}
	}
	for _, o := range [...][3]int{
		{unix.SOL_IP, unix.IP_TRANSPARENT, 1},
		{unix.SOL_SOCKET, unix.SO_MARK, FastPathMark},
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1},
	} {
		if err == nil {
			err = os.NewSyscallError("setsockopt", unix.SetsockoptInt(fd, o[0], o[1], o[2]))
		}
	}
	if err == nil && prep != nil {
		err = prep(fd)
	}
	if err != nil {
		unix.Close(fd)
		return fastSocket{fd: -1, err: err}
	}
	return fastSocket{fd: fd}
}

// Socket returns a new socket (the caller owns it) or why none could be
// made.
func (f *FastSockets) Socket() (int, error) {
	select {
	case s := <-f.ready:
		return s.fd, s.err
	case <-f.done:
		return -1, errFastSocketsClosed
	}
}

// Close stops making sockets and closes those not handed out.
func (f *FastSockets) Close() {
	f.once.Do(func() { close(f.done) })
	f.wg.Wait()
	if d := f.diag; d != nil {
		d.mu.Lock()
		if d.fd >= 0 {
			unix.Close(d.fd)
			d.fd = -1
		}
		d.mu.Unlock()
	}
	for {
		select {
		case s := <-f.ready:
			if s.err == nil {
				unix.Close(s.fd)
			}
		default:
			return
		}
	}
}
