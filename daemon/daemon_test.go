package daemon

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/netdev/netdevtest/netstack"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/sandbox"
	"github.com/vxmesh/vxmesh/tunnel"
	"golang.org/x/sys/unix"
)

// fakeSandbox stands in for network namespaces: a namespace is a path in
// a set, an interface is a netdevtest pipe whose far end plays the
// container's kernel.
type fakeSandbox struct {
	mu       sync.Mutex
	ns       map[string]uint64     // path -> inode
	ifaces   map[string]*fakeIface // path + "/" + ifname
	nextIno  uint64
	failPlug error
	// pids are the processes in each namespace (by inode); killed and
	// deleted record what KillNetns, Unplug and DeleteNamedNetns touched.
	pids          map[uint64][]int
	killed        []uint64
	unplugs       []string
	defaultRoutes []string // DefaultRoute calls: "NSPATH/IFNAME via GW"
	deleted       []string
	taps          []string // unused half-made TAPs of the daemon's namespace
	killWait      time.Duration
	scans         int // calls of NetnsPIDs
	pins          int // calls of PinNetns (each opens the namespace)
	// useNetstack makes Plug give each interface a gVisor netstack
	// container instead of a bare pipe end.
	useNetstack bool
	// dockerPID, if set, answers DockerPID.
	dockerPID func(container string) (int, error)
	// sandboxes are Docker's namespaces (sandbox keys) that dockerMove
	// made.
	sandboxes map[string]bool
	// conns are the open inbound TCP connections InboundTCPConns reports,
	// by namespace path (none if absent).
	conns map[string]int
	// slow, if set, is called first by KillNetns ("kill"), Unplug
	// ("unplug") and DeleteNamedNetns ("delete"), without f.mu: the
	// kernel's slow part of a removal, for a test to hold.
	slow func(op string)
}

// waitSlow calls f.slow, if set, for op.
func (f *fakeSandbox) waitSlow(op string) {
	f.mu.Lock()
	slow := f.slow
	f.mu.Unlock()
	if slow != nil {
		slow(op)
	}
}

func (f *fakeSandbox) setConns(nsPath string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		f.conns = map[string]int{}
	}
	f.conns[nsPath] = n
}

func (f *fakeSandbox) InboundTCPConns(nsPath string, ip netip.Addr, listening map[uint16]bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.ns[nsPath]; !ok {
		return 0, fmt.Errorf("netns %q: %w", nsPath, os.ErrNotExist)
	}
	return f.conns[nsPath], nil
}

type fakeIface struct {
	cfg       sandbox.IfaceConfig
	container *netdevtest.Device
	stack     *netstack.Container
}

func newFakeSandbox() *fakeSandbox {
	return &fakeSandbox{ns: map[string]uint64{}, ifaces: map[string]*fakeIface{}, nextIno: 100, pids: map[uint64][]int{}}
}

func (f *fakeSandbox) addNetns(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextIno++
	f.ns[path] = f.nextIno
}

func (f *fakeSandbox) CreateNamedNetns(name string) (string, error) {
	p := "/run/netns/" + name
	f.mu.Lock()
	_, dup := f.ns[p]
	f.mu.Unlock()
	if dup {
		return "", fmt.Errorf("netns %q: already exists", name)
	}
	f.addNetns(p)
	return p, nil
}

func (f *fakeSandbox) DeleteNamedNetns(name string) error {
	f.waitSlow("delete")
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.ns["/run/netns/"+name]; !ok {
		return fmt.Errorf("netns %q: %w", name, os.ErrNotExist)
	}
	delete(f.ns, "/run/netns/"+name)
	f.deleted = append(f.deleted, name)
	return nil
}

// replaceNetns puts a new namespace with processes pids at path, as `ip
// netns del` and `ip netns add` of the same name would (or a reboot).
func (f *fakeSandbox) replaceNetns(path string, pids ...int) uint64 {
	f.addNetns(path)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pids[f.ns[path]] = pids
	return f.ns[path]
}

func (f *fakeSandbox) PinNetns(path string, dev, ino uint64) (string, func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pins++
	got, ok := f.ns[path]
	if !ok {
		return "", nil, fmt.Errorf("netns %q: %w", path, os.ErrNotExist)
	}
	if dev != 1 || got != ino {
		return "", nil, fmt.Errorf("netns %q: %w", path, sandbox.ErrNetnsReplaced)
	}
	return path, func() {}, nil
}

func (f *fakeSandbox) NetnsIs(path string, dev, ino uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	got, ok := f.ns[path]
	return ok && dev == 1 && got == ino
}

func (f *fakeSandbox) NamedNetns(prefix string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for p := range f.ns {
		if name, ok := strings.CutPrefix(p, "/run/netns/"); ok && strings.HasPrefix(name, prefix) {
			out = append(out, name)
		}
	}
	return out, nil
}

func (f *fakeSandbox) RemoveUnusedTAPs() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.taps
	f.taps = nil
	return out, nil
}

func (f *fakeSandbox) NetnsIdentity(path string) (uint64, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ino, ok := f.ns[path]
	if !ok {
		return 0, 0, os.ErrNotExist
	}
	return 1, ino, nil
}

func (f *fakeSandbox) Plug(nsPath string, cfg sandbox.IfaceConfig) (netdev.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failPlug != nil {
		return nil, f.failPlug
	}
	key := nsPath + "/" + cfg.IfName
	if _, ok := f.ifaces[key]; ok {
		return nil, fmt.Errorf("netns %s: interface %q already exists", nsPath, cfg.IfName)
	}
	if f.useNetstack {
		st, err := netstack.NewWithMTU(nsPath, packet.MAC(cfg.MAC), cfg.Addr, cfg.MTU)
		if err != nil {
			return nil, err
		}
		f.ifaces[key] = &fakeIface{cfg: cfg, stack: st}
		return st.Device(), nil
	}
	host, ctr := netdevtest.NewPipe("tap", cfg.IfName, netdevtest.DefaultQueue)
	f.ifaces[key] = &fakeIface{cfg: cfg, container: ctr}
	return host, nil
}

func (f *fakeSandbox) Reopen(nsPath, ifname string) (netdev.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, ok := f.ifaces[nsPath+"/"+ifname]
	if !ok {
		return nil, fmt.Errorf("netns %s: interface %q: %w", nsPath, ifname, os.ErrNotExist)
	}
	host, ctr := netdevtest.NewPipe("tap", ifname, netdevtest.DefaultQueue)
	fi.container = ctr
	return host, nil
}

func (f *fakeSandbox) Unplug(nsPath, ifname string) error {
	f.waitSlow("unplug")
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ifaces, nsPath+"/"+ifname)
	f.unplugs = append(f.unplugs, nsPath+"/"+ifname)
	return nil
}

func (f *fakeSandbox) DefaultRoute(nsPath, ifname string, addr netip.Prefix, gw netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.defaultRoutes = append(f.defaultRoutes, nsPath+"/"+ifname+" via "+gw.String())
	return nil
}

func (f *fakeSandbox) KillNetns(path string, grace time.Duration) error {
	f.waitSlow("kill")
	time.Sleep(f.killWait)
	f.mu.Lock()
	defer f.mu.Unlock()
	ino, ok := f.ns[path]
	if !ok {
		return fmt.Errorf("netns %q: %w", path, os.ErrNotExist)
	}
	f.killed = append(f.killed, ino)
	delete(f.pids, ino)
	return nil
}

func (f *fakeSandbox) NetnsPIDs() (map[sandbox.NetnsID][]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scans++
	m := map[sandbox.NetnsID][]int{}
	for ino, pids := range f.pids {
		if len(pids) > 0 {
			m[sandbox.NetnsID{Dev: 1, Ino: ino}] = pids
		}
	}
	return m, nil
}
func (f *fakeSandbox) DockerPID(c string) (int, error) {
	if f.dockerPID != nil {
		return f.dockerPID(c)
	}
	return 0, errors.New("docker: no engine")
}
func (f *fakeSandbox) iface(ns, ifname string) *fakeIface {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ifaces[ns+"/"+ifname]
}

func newTestDaemon(t testing.TB, sb *fakeSandbox, dir string) *Daemon {
	t.Helper()
	return newNode(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, dir)
}

// newNode starts a daemon whose VTEP sits on the in-memory underlay mem at
// addr and whose gossip listens on addr with fast test timing.
func newNode(t testing.TB, mem *tunnel.MemNetwork, name string, addr netip.Addr, sb *fakeSandbox, dir string, join ...string) *Daemon {
	t.Helper()
	return startNode(t, nodeConfig(t, mem, name, addr, sb, dir, join...))
}

// nodeConfig is the Config of a test daemon: VXLAN and ESP on the
// in-memory underlay mem at addr, gossip on a free port of addr with fast
// gossip and failure detection that tolerates a loaded machine.
func nodeConfig(t testing.TB, mem *tunnel.MemNetwork, name string, addr netip.Addr, sb Sandbox, dir string, join ...string) Config {
	t.Helper()
	ul, err := mem.Listen(netip.AddrPortFrom(addr, 4789))
	if err != nil {
		t.Fatal(err)
	}
	eul, err := mem.Listen(netip.AddrPortFrom(addr, 4500))
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Node: name, StateDir: dir, Sandbox: sb, UnderlayMTU: 1500, Advertise: addr,
		GossipPort: freePort(t, addr), Join: join, Underlay: ul, ESPUnderlay: eul, NodeGrace: 3 * time.Second,
		Logger: slog.New(slog.NewTextHandler(testLogOut(), nil)),
		tuneCluster: func(c *cluster.Config) {
			// Fast gossip, but failure detection that a loaded two-core
			// machine running three race-instrumented daemons in one
			// process meets: a probe unanswered for 400 ms, then a
			// suspicion of 2 s (SuspicionMult x ProbeInterval with three
			// nodes) before a live node would be declared dead, and 3 s
			// more before its entries and claims go (NodeGrace). With a
			// 50 ms probe timeout, 200 ms suspicions and a 1 s grace,
			// nodes were declared dead every second under load and their
			// endpoints, SAs and claims went with them.
			c.GossipInterval = 20 * time.Millisecond
			c.ProbeInterval = 500 * time.Millisecond
			c.ProbeTimeout = 400 * time.Millisecond
			c.PushPullInterval = 300 * time.Millisecond
			c.SuspicionMult = 4
			c.ReconnectInterval = 500 * time.Millisecond
			// A claim waits for every member's answer; the default 5 s
			// is not always enough for a race-instrumented daemon
			// sharing a loaded machine ("not confirmed by h1, h3
			// within 5s").
			c.ClaimTimeout = 30 * time.Second
		},
	}
}

// startNode starts a daemon with cfg or fails the test.
func startNode(t testing.TB, cfg Config) *Daemon {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Closed at the end of the test, before its directories are removed
	// (cleanups run last first): a daemon left running keeps writing its
	// state there ("TempDir RemoveAll cleanup: directory not empty").
	// Close is idempotent, so tests that close it themselves are unchanged.
	t.Cleanup(d.Close)
	return d
}

// freePort returns a port free for both TCP and UDP on addr.
func freePort(t testing.TB, addr netip.Addr) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", l.Addr().String())
		l.Close()
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// arpRequest builds an ARP who-has frame from (mac, ip) for target.
func arpRequest(mac packet.MAC, ip, target netip.Addr) []byte {
	f := make([]byte, packet.EthernetHeaderLen+packet.ARPLen)
	e := packet.Ethernet(f)
	e.SetDst(packet.Broadcast)
	e.SetSrc(mac)
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeARP)
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], 0x0800)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], packet.ARPRequest)
	copy(a[8:], mac[:])
	s, tg := ip.As4(), target.As4()
	copy(a[14:], s[:])
	copy(a[24:], tg[:])
	return f
}

func send(t *testing.T, d *netdevtest.Device, frame []byte) {
	t.Helper()
	buf := make([]byte, packet.Headroom+len(frame))
	copy(buf[packet.Headroom:], frame)
	if _, err := d.Write([][]byte{buf}, packet.Headroom); err != nil {
		t.Fatal(err)
	}
}

func recv(t *testing.T, d *netdevtest.Device) []byte {
	t.Helper()
	bufs := [][]byte{make([]byte, packet.BufferSize)}
	sizes := []int{0}
	done := make(chan error, 1)
	go func() { _, err := d.Read(bufs, sizes, packet.Headroom); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no frame arrived within 5s")
	}
	return bufs[0][packet.Headroom : packet.Headroom+sizes[0]]
}

func mustAttach(t *testing.T, d *Daemon, req api.AttachRequest) api.Endpoint {
	t.Helper()
	ep, err := d.Attach(req)
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

func TestNetworkDefaultsAndConflicts(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	defer d.Close()
	web, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if web.Subnet != "10.0.0.0/24" || web.Gateway != "10.0.0.1" || web.MTU != 1450 || web.VNI != 4096 {
		t.Fatalf("defaults: %+v", web)
	}
	db, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "db"})
	if err != nil || db.Subnet != "10.0.1.0/24" || db.VNI != 4097 {
		t.Fatalf("second network: %+v, %v", db, err)
	}
	for _, tc := range []struct {
		req  api.NetworkCreateRequest
		want string
	}{
		{api.NetworkCreateRequest{Name: "web"}, `network "web": already exists`},
		{api.NetworkCreateRequest{Name: "x", Subnet: "10.0.1.128/25"}, `network "x": subnet 10.0.1.128/25 overlaps network "db" (10.0.1.0/24)`},
		{api.NetworkCreateRequest{Name: "x", Subnet: "banana"}, `not an IPv4 CIDR`},
		{api.NetworkCreateRequest{Name: "x", VNI: 4096}, `already used by network "web"`},
		{api.NetworkCreateRequest{Name: "x", Subnet: "10.5.0.0/24", Gateway: "10.6.0.1"}, `not a host address`},
		{api.NetworkCreateRequest{Name: "bad name"}, `invalid name`},
	} {
		_, err := d.CreateNetwork(tc.req)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CreateNetwork(%+v) = %v, want error containing %q", tc.req, err, tc.want)
		}
	}
	if got := len(d.Networks()); got != 2 {
		t.Fatalf("failed creates left %d networks, want 2", got)
	}
}

func TestAttachForwardsAndSuppressesARP(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.1.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	c1 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	c2 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c2", Create: true, IP: "10.1.0.9"})
	if c1.IP != "10.1.0.2" || c1.MAC != "02:42:0a:01:00:02" || c1.IfName != "eth0" || c1.Netns != "/run/netns/c1" {
		t.Fatalf("c1 = %+v", c1)
	}
	if c2.IP != "10.1.0.9" {
		t.Fatalf("--ip not honoured: %+v", c2)
	}
	if fi := sb.iface("/run/netns/c1", "eth0"); fi == nil || fi.cfg.Gateway.String() != "10.1.0.1" || fi.cfg.MTU != 1450 || fi.cfg.Addr.String() != "10.1.0.2/24" {
		t.Fatalf("interface config: %+v", fi)
	}
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "c3", Create: true, IP: "10.1.0.9"}); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("duplicate --ip: %v", err)
	}

	mac1, _ := packet.ParseMAC(c1.MAC)
	ctr1 := sb.iface("/run/netns/c1", "eth0").container
	ctr2 := sb.iface("/run/netns/c2", "eth0").container
	send(t, ctr1, arpRequest(mac1, netip.MustParseAddr(c1.IP), netip.MustParseAddr(c2.IP)))
	reply := recv(t, ctr1)
	if a := packet.ARP(reply[14:]); a.Op() != packet.ARPReply || a.SenderMAC().String() != c2.MAC {
		t.Fatalf("ARP for c2 answered with op %d mac %s, want a reply with %s", a.Op(), a.SenderMAC(), c2.MAC)
	}
	// A unicast frame from c1 to c2's MAC arrives at c2 unchanged.
	mac2, _ := packet.ParseMAC(c2.MAC)
	frame := ipv4Frame(mac1, mac2, netip.MustParseAddr(c1.IP), netip.MustParseAddr(c2.IP), []byte("hello c2"))
	send(t, ctr1, frame)
	if got := recv(t, ctr2); !bytes.Equal(got, frame) {
		t.Fatalf("c2 received % x, want % x", got, frame)
	}
	st := d.Stats()
	if len(st.Networks) != 1 || st.Networks[0].ARPSuppressed != 1 {
		t.Fatalf("stats: %+v", st)
	}
}

func TestStatsReportsOpenFilesAndLimit(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	st := d.Stats()
	// The daemon holds at least its API socket and gossip listeners.
	if st.OpenFDs <= 3 || st.FDLimit != rl.Cur || uint64(st.OpenFDs) > st.FDLimit {
		t.Fatalf("stats: open fds %d, limit %d; want more than 3 and limit %d", st.OpenFDs, st.FDLimit, rl.Cur)
	}
}

// TestStatsCountsGoroutines: stats show the daemon's goroutines, and the
// count follows goroutines that start and end.
func TestStatsCountsGoroutines(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	before := d.Stats().Goroutines
	if before < 1 {
		t.Fatalf("stats: %d goroutines; want at least this test's", before)
	}
	const n = 50
	stop := make(chan struct{})
	var started sync.WaitGroup
	started.Add(n)
	for range n {
		go func() { started.Done(); <-stop }()
	}
	started.Wait()
	if got := d.Stats().Goroutines; got < before+n {
		t.Errorf("stats: %d goroutines with %d more running; want at least %d", got, n, before+n)
	}
	close(stop)
}

// ipv4Frame builds an Ethernet+IPv4 (UDP protocol number) frame.
func ipv4Frame(src, dst packet.MAC, sip, dip netip.Addr, payload []byte) []byte {
	f := make([]byte, 14+20+len(payload))
	e := packet.Ethernet(f)
	e.SetDst(dst)
	e.SetSrc(src)
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeIPv4)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(payload)))
	ip[8], ip[9] = 64, 17
	s, d := sip.As4(), dip.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	packet.IPv4(ip).SetChecksum(packet.IPv4(ip).HeaderChecksum())
	copy(ip[20:], payload)
	return f
}

func TestFailedAttachLeavesNothing(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	sb.failPlug = errors.New("boom")
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "c1", Create: true}); err == nil || !strings.Contains(err.Error(), `container "c1": boom`) {
		t.Fatalf("attach error = %v", err)
	}
	if _, _, err := sb.NetnsIdentity("/run/netns/c1"); err == nil {
		t.Fatal("a failed run left its namespace behind")
	}
	if len(d.Containers()) != 0 || len(d.Endpoints()) != 0 {
		t.Fatal("a failed attach left a container or endpoint")
	}
	sb.failPlug = nil
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "c1", Netns: "/nonexistent"}); err == nil {
		t.Fatal("attach to a missing netns succeeded")
	}
	// The address the failed attempts would have used is still free.
	ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	if ep.IP != "10.0.0.2" {
		t.Fatalf("after failures, first endpoint got %s", ep.IP)
	}
}

func TestRestartRestoresEndpoints(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	d := newTestDaemon(t, sb, dir)
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	sb.addNetns("/proc/1234/ns/net")
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true, Aliases: []string{"db"}})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c2", Netns: "/proc/1234/ns/net"})
	before := d.Endpoints()
	d.Close()

	d2 := newTestDaemon(t, sb, dir)
	defer d2.Close()
	after := d2.Endpoints()
	if len(after) != 2 {
		t.Fatalf("after restart %d endpoints, want 2", len(after))
	}
	for i := range after {
		if after[i].State != "up" || after[i].IP != before[i].IP || after[i].MAC != before[i].MAC || strings.Join(after[i].Aliases, ",") != strings.Join(before[i].Aliases, ",") {
			t.Fatalf("endpoint %d: before %+v after %+v", i, before[i], after[i])
		}
	}
	// Traffic flows through the restored switch.
	mac1, _ := packet.ParseMAC(after[0].MAC)
	mac2, _ := packet.ParseMAC(after[1].MAC)
	frame := ipv4Frame(mac1, mac2, netip.MustParseAddr(after[0].IP), netip.MustParseAddr(after[1].IP), []byte("again"))
	send(t, sb.iface("/run/netns/c1", "eth0").container, frame)
	if got := recv(t, sb.iface("/proc/1234/ns/net", "eth0").container); !bytes.Equal(got, frame) {
		t.Fatal("frame after restart not delivered")
	}
	// A second daemon on the same state dir is refused.
	if _, err := New(Config{Node: "h1", StateDir: dir, Sandbox: sb}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second daemon on the same state dir: %v", err)
	}
}

func TestRemoveNetworkRefusedWithEndpoints(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	if err := d.RemoveNetwork("web"); err == nil || !strings.Contains(err.Error(), "(c1)") {
		t.Fatalf("RemoveNetwork with endpoints: %v", err)
	}
	if err := d.RemoveContainer("c1"); err != nil {
		t.Fatal(err)
	}
	if sb.iface("/run/netns/c1", "eth0") != nil {
		t.Fatal("rm left the interface")
	}
	if err := d.RemoveNetwork("web"); err != nil {
		t.Fatal(err)
	}
	s, err := loadState(d.cfg.StateDir)
	if err != nil || len(s.Networks) != 0 || len(s.Containers) != 0 {
		t.Fatalf("persisted state after removals: %+v, %v", s, err)
	}
}

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestUpdateNetworkVTEPs(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", VTEPs: []string{"192.0.2.5"}}); err != nil {
		t.Fatal(err)
	}
	n, err := d.UpdateNetwork("web", api.NetworkUpdateRequest{AddVTEPs: []string{"192.0.2.6"}})
	if err != nil || strings.Join(n.VTEPs, ",") != "192.0.2.5,192.0.2.6" {
		t.Fatalf("add: %v %v", n.VTEPs, err)
	}
	for _, rm := range []string{"192.0.2.5", "192.0.2.6"} {
		if _, err := d.UpdateNetwork("web", api.NetworkUpdateRequest{RemoveVTEPs: []string{rm}}); err != nil {
			t.Fatal(err)
		}
	}
	n, _ = d.Network("web")
	if len(n.VTEPs) != 0 || len(n.Peers) != 0 {
		t.Fatalf("after removing both VTEPs: vteps %v, peers %v", n.VTEPs, n.Peers)
	}
	if _, err := d.UpdateNetwork("web", api.NetworkUpdateRequest{RemoveVTEPs: []string{"192.0.2.9"}}); err == nil {
		t.Fatal("removing an unknown VTEP succeeded")
	}
}

// testLogOut is where test daemons log: the file named by
// $VXMESH_TEST_LOG (appended to), or nowhere.
func testLogOut() io.Writer {
	if p := os.Getenv("VXMESH_TEST_LOG"); p != "" {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
			return f
		}
	}
	return io.Discard
}
