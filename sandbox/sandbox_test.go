//go:build linux

package sandbox

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/internal/testenv"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/packet"
)

func TestMain(m *testing.M) {
	// Command re-executes this test binary (DefaultInitPath) as the init
	// step, exactly as it re-executes cmd/vxmesh.
	if len(os.Args) > 1 && os.Args[1] == NSInitArg {
		NSInitMain(os.Args[2:])
	}
	os.Exit(m.Run())
}

func requireRoot(t testing.TB) {
	t.Helper()
	testenv.RequireTUN(t)
}

func uniqueName() string {
	b := make([]byte, 5)
	rand.Read(b)
	return "vxt" + hex.EncodeToString(b)
}

// newNamedNetns creates a named namespace deleted at cleanup.
func newNamedNetns(t testing.TB) (name, path string) {
	t.Helper()
	name = uniqueName()
	path, err := CreateNamedNetns(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		KillNetns(path, time.Second)
		if err := DeleteNamedNetns(name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return name, path
}

func handle(t testing.TB, nsPath string) *netlink.Handle {
	t.Helper()
	h, err := handleAt(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func linkNames(t *testing.T, nsPath string) []string {
	t.Helper()
	links, err := handle(t, nsPath).LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

func TestNamedNetnsLifecycle(t *testing.T) {
	requireRoot(t)
	name, path := newNamedNetns(t)
	if path != filepath.Join(NetnsDir, name) {
		t.Errorf("path %q", path)
	}
	id, err := NetnsIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	host, err := NetnsIdentity(NetnsPathForPID(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if id == host {
		t.Fatalf("new namespace %v is the caller's", id)
	}
	if !NetnsIs(path, id) || NetnsIs(path, host) {
		t.Errorf("NetnsIs(%s): not its own namespace %v, or the host's %v", path, id, host)
	}
	if _, err := CreateNamedNetns(name); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second CreateNamedNetns: %v", err)
	}
	if out, err := exec.Command("ip", "netns", "exec", name, "ip", "-o", "link").CombinedOutput(); err != nil {
		t.Logf("ip netns exec: %v: %s (iproute2 missing?)", err, out)
	} else if got := strings.Count(string(out), "\n"); got != 1 || !strings.Contains(string(out), "lo:") {
		t.Errorf("ip netns exec %s ip link: want only lo, got\n%s", name, out)
	}
	if err := WriteNetnsResolvConf(name); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(NetnsEtcDir, name, "resolv.conf")); err != nil || string(b) != ResolvConf {
		t.Errorf("netns resolv.conf: %q, %v", b, err)
	}
	if err := DeleteNamedNetns(name); err != nil {
		t.Fatal(err)
	}
	if NetnsExists(path) {
		t.Error("namespace still exists after delete")
	}
	if NetnsIs(path, id) {
		t.Error("NetnsIs: a deleted name still names its namespace")
	}
	if _, err := os.Stat(filepath.Join(NetnsEtcDir, name)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s/%s left behind: %v", NetnsEtcDir, name, err)
	}
	// Recreate so the cleanup's delete finds it.
	if _, err := CreateNamedNetns(name); err != nil {
		t.Fatal(err)
	}
	id2, err := NetnsIdentity(path)
	if err != nil || id2 == host {
		t.Errorf("recreated namespace: %v, %v", id2, err)
	}
	// (Unless the kernel gave the new namespace the freed one's inode.)
	if (id2 != id && NetnsIs(path, id)) || !NetnsIs(path, id2) {
		t.Errorf("NetnsIs: the name made again for %v still names the deleted %v", id2, id)
	}
}

func TestNetnsIdentityRejects(t *testing.T) {
	f := filepath.Join(t.TempDir(), "plain")
	os.WriteFile(f, nil, 0o644)
	if _, err := NetnsIdentity(f); err == nil {
		t.Error("a regular file passed as a namespace")
	}
	if NetnsExists(filepath.Join(t.TempDir(), "missing")) {
		t.Error("missing path exists")
	}
	if NetnsExists("/proc/self/ns/mnt") {
		t.Error("a mount namespace passed as a network namespace")
	}
	if !NetnsExists("/proc/self/ns/net") {
		t.Error("own network namespace not found")
	}
	own, err := NetnsIdentity("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if !NetnsIs("/proc/self/ns/net", own) || NetnsIs("/proc/self/ns/mnt", own) || NetnsIs(f, own) {
		t.Error("NetnsIs: own namespace not matched, or another file matched")
	}
	if err := DeleteNamedNetns("../etc"); err == nil {
		t.Error("DeleteNamedNetns accepted a path")
	}
}

// udpSender is a UDP socket created inside a namespace.
func udpSender(t *testing.T, nsPath string, dst netip.AddrPort) net.Conn {
	t.Helper()
	var c net.Conn
	err := RunInNetns(nsPath, func() (err error) {
		c, err = net.Dial("udp4", dst.String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends payload from inside the namespace (socket c) to
// neighbour at neighbourHW, answering ARP for it on tap, until the UDP
// datagram shows up on tap. Sends repeat: after a TAP is (re)opened the
// kernel drops frames until its link watcher has activated the queue.
func exchange(t *testing.T, tap *netdev.TAP, c net.Conn, neighbour netip.Addr, neighbourHW packet.MAC, payload string) packet.Ethernet {
	t.Helper()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			c.Write([]byte(payload)) // may fail until ARP resolved
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	timer := time.AfterFunc(10*time.Second, func() { tap.Close() })
	defer timer.Stop()
	b := packet.NewBatch(packet.BatchSize)
	for {
		n, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom)
		if err != nil {
			t.Fatalf("no UDP %q on the TAP: %v", payload, err)
		}
		for i := range n {
			f := packet.Ethernet(b.Bufs[i][packet.Headroom : packet.Headroom+b.Sizes[i]])
			switch f.EtherType() {
			case packet.EtherTypeARP:
				a := packet.ARP(f.Payload())
				if a.Valid() && a.Op() == packet.ARPRequest && a.TargetIP() == neighbour {
					a.MakeReply(neighbourHW, neighbour)
					f.SetDst(f.Src())
					f.SetSrc(neighbourHW)
					if _, err := tap.Write(b.Bufs[i:i+1], packet.Headroom); err != nil {
						t.Fatalf("ARP reply: %v", err)
					}
				}
			case packet.EtherTypeIPv4:
				ip := f.Payload()
				if len(ip) >= 28 && ip[9] == unix.IPPROTO_UDP && netip.AddrFrom4([4]byte(ip[16:20])) == neighbour {
					ihl := int(ip[0]&0xf) * 4
					if string(ip[ihl+8:]) == payload {
						return slices.Clone(f)
					}
				}
			}
		}
	}
}

func TestPlugReopenUnplug(t *testing.T) {
	requireRoot(t)
	// The daemon side runs in a namespace of its own, so the test can
	// check that nothing is left there.
	_, daemonNS := newNamedNetns(t)
	_, ctrNS := newNamedNetns(t)
	mac := net.HardwareAddr{0x02, 0x42, 10, 0, 1, 5}
	cfg := IfaceConfig{
		MAC:     mac,
		Addr:    netip.MustParsePrefix("10.0.1.5/24"),
		Gateway: netip.MustParseAddr("10.0.1.1"),
		MTU:     1450,
	}
	var tap *netdev.TAP
	err := RunInNetns(daemonNS, func() (err error) {
		tap, err = Plug(ctrNS, cfg)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })

	if got := linkNames(t, daemonNS); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("daemon namespace links %v, want [lo]", got)
	}
	h := handle(t, ctrNS)
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	at := link.Attrs()
	if link.Type() != "tuntap" || at.HardwareAddr.String() != mac.String() || at.MTU != 1450 || at.Flags&net.FlagUp == 0 {
		t.Errorf("eth0: type %s mac %v mtu %d flags %v", link.Type(), at.HardwareAddr, at.MTU, at.Flags)
	}
	addrs, err := h.AddrList(link, unix.AF_INET)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.0.1.5/24" {
		t.Errorf("eth0 addresses %v, %v", addrs, err)
	}
	routes, err := h.RouteList(link, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == "10.0.1.1"
	}) {
		t.Errorf("no default route via 10.0.1.1 in %v", routes)
	}
	if lo, err := h.LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("lo not up: %v", err)
	}

	// Traffic from the container reaches the TAP, ARP answered through it.
	neighbour, neighbourHW := netip.MustParseAddr("10.0.1.9"), packet.MAC{0x02, 0x42, 10, 0, 1, 9}
	c := udpSender(t, ctrNS, netip.AddrPortFrom(neighbour, 4242))
	f := exchange(t, tap, c, neighbour, neighbourHW, "before restart")
	if f.Src() != packet.MAC(mac) || f.Dst() != neighbourHW {
		t.Errorf("UDP frame %v -> %v", f.Src(), f.Dst())
	}
	// Off-link traffic goes to the gateway.
	c2 := udpSender(t, ctrNS, netip.MustParseAddrPort("192.0.2.7:53"))
	gwHW := packet.MAC{0x02, 0x42, 10, 0, 1, 1}
	stop := make(chan struct{})
	go func() {
		// exchange answers ARP for the gateway; send to the off-link address.
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			c2.Write([]byte("via gateway"))
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	f = exchangeFrame(t, tap, netip.MustParseAddr("10.0.1.1"), gwHW, func(f packet.Ethernet) bool {
		ip := f.Payload()
		return f.EtherType() == packet.EtherTypeIPv4 && len(ip) >= 20 && netip.AddrFrom4([4]byte(ip[16:20])) == netip.MustParseAddr("192.0.2.7")
	})
	close(stop)
	if f.Dst() != gwHW {
		t.Errorf("off-link frame sent to %v, want the gateway %v", f.Dst(), gwHW)
	}

	// Daemon restart: close the descriptor, reopen by name.
	if err := tap.Close(); err != nil {
		t.Fatal(err)
	}
	tap2, err := Reopen(ctrNS, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap2.Close() })
	link, _ = h.LinkByName("eth0")
	if addrs, _ := h.AddrList(link, unix.AF_INET); len(addrs) != 1 || addrs[0].IPNet.String() != "10.0.1.5/24" {
		t.Errorf("eth0 addresses after reopen: %v", addrs)
	}
	exchange(t, tap2, c, neighbour, neighbourHW, "after restart")

	if _, err := Reopen(ctrNS, "lo"); err == nil || !strings.Contains(err.Error(), "not a TAP") {
		t.Errorf("Reopen(lo): %v", err)
	}
	if _, err := Reopen(ctrNS, "eth9"); err == nil {
		t.Error("Reopen of a missing interface succeeded")
	}

	tap2.Close()
	if err := Unplug(ctrNS, "eth0"); err != nil {
		t.Fatal(err)
	}
	if got := linkNames(t, ctrNS); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("container links after Unplug %v, want [lo]", got)
	}
	if err := Unplug(ctrNS, "eth0"); err != nil {
		t.Errorf("second Unplug: %v", err)
	}
}

// exchangeFrame reads tap, answering ARP for neighbour, until match.
func exchangeFrame(t *testing.T, tap *netdev.TAP, neighbour netip.Addr, neighbourHW packet.MAC, match func(packet.Ethernet) bool) packet.Ethernet {
	t.Helper()
	timer := time.AfterFunc(10*time.Second, func() { tap.Close() })
	defer timer.Stop()
	b := packet.NewBatch(packet.BatchSize)
	for {
		n, err := tap.Read(b.Bufs, b.Sizes, packet.Headroom)
		if err != nil {
			t.Fatalf("expected frame not seen: %v", err)
		}
		for i := range n {
			f := packet.Ethernet(b.Bufs[i][packet.Headroom : packet.Headroom+b.Sizes[i]])
			if match(f) {
				return slices.Clone(f)
			}
			if f.EtherType() != packet.EtherTypeARP {
				continue
			}
			a := packet.ARP(f.Payload())
			if a.Valid() && a.Op() == packet.ARPRequest && a.TargetIP() == neighbour {
				a.MakeReply(neighbourHW, neighbour)
				f.SetDst(f.Src())
				f.SetSrc(neighbourHW)
				tap.Write(b.Bufs[i:i+1], packet.Headroom)
			}
		}
	}
}

func TestPlugFailureLeavesNothing(t *testing.T) {
	requireRoot(t)
	_, daemonNS := newNamedNetns(t)
	_, ctrNS := newNamedNetns(t)
	h := handle(t, ctrNS)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
		t.Fatal(err)
	}
	plug := func(cfg IfaceConfig) error {
		return RunInNetns(daemonNS, func() error {
			tap, err := Plug(ctrNS, cfg)
			if err == nil {
				tap.SetPersist(false)
				tap.Close()
			}
			return err
		})
	}
	check := func(what string, wantCtr []string) {
		t.Helper()
		if got := linkNames(t, daemonNS); !slices.Equal(got, []string{"lo"}) {
			t.Errorf("%s: daemon namespace links %v, want [lo]", what, got)
		}
		if got := linkNames(t, ctrNS); !slices.Equal(got, wantCtr) {
			t.Errorf("%s: container links %v, want %v", what, got, wantCtr)
		}
	}

	err := plug(IfaceConfig{Addr: netip.MustParsePrefix("10.0.1.5/24")})
	want := fmt.Sprintf("netns %q: interface %q already exists", ctrNS, "eth0")
	if err == nil || err.Error() != want {
		t.Errorf("Plug over an existing eth0: %v, want %s", err, want)
	}
	check("existing name", []string{"eth0", "lo", "peer0"})

	// Failures after the TAP was moved and renamed: an MTU the kernel
	// refuses, a gateway that cannot be routed.
	err = plug(IfaceConfig{IfName: "eth1", MTU: 70000})
	if err == nil || !strings.Contains(err.Error(), `interface "eth1": set MTU 70000`) {
		t.Errorf("Plug with MTU 70000: %v", err)
	}
	check("bad MTU", []string{"eth0", "lo", "peer0"})
	err = plug(IfaceConfig{IfName: "eth1", Addr: netip.MustParsePrefix("10.0.1.5/24"), Gateway: netip.MustParseAddr("10.0.1.255")})
	if err == nil || !strings.Contains(err.Error(), "add default route via 10.0.1.255") {
		// The kernel refuses a broadcast address as gateway.
		t.Errorf("Plug with the broadcast address as gateway: %v", err)
	}
	check("bad gateway", []string{"eth0", "lo", "peer0"})

	if err := plug(IfaceConfig{IfName: "eth1", MAC: net.HardwareAddr{1, 2, 3}}); err == nil {
		t.Error("Plug with a 3-byte MAC succeeded")
	}
	if _, err := Plug(filepath.Join(NetnsDir, "vxt-no-such-ns"), IfaceConfig{}); err == nil || !strings.Contains(err.Error(), "vxt-no-such-ns") {
		t.Errorf("Plug into a missing namespace: %v", err)
	}
}

// TestPlugAddsADefaultRouteOnlyWhereNone: Plug with a gateway into a
// namespace that has an IPv4 default route (a container's first network,
// or another runtime's) keeps that route and succeeds; into one without,
// it adds the route.
func TestPlugAddsADefaultRouteOnlyWhereNone(t *testing.T) {
	requireRoot(t)
	_, ctrNS := newNamedNetns(t)
	h := handle(t, ctrNS)
	defaultVia := func() string {
		t.Helper()
		routes, err := h.RouteList(nil, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		var gws []string
		for _, r := range routes {
			if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
				gws = append(gws, r.Gw.String())
			}
		}
		return strings.Join(gws, ",")
	}
	plug := func(cfg IfaceConfig) {
		t.Helper()
		tap, err := Plug(ctrNS, cfg)
		if err != nil {
			t.Fatal(err)
		}
		tap.SetPersist(false)
		t.Cleanup(func() { tap.Close() })
	}

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ext0"}, PeerName: "ext1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(veth, &netlink.Addr{IPNet: prefixToIPNet(netip.MustParsePrefix("192.168.77.2/24"))}); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{Gw: net.ParseIP("192.168.77.1")}); err != nil {
		t.Fatal(err)
	}
	plug(IfaceConfig{IfName: "eth0", Addr: netip.MustParsePrefix("10.0.1.5/24"), Gateway: netip.MustParseAddr("10.0.1.1")})
	if got := defaultVia(); got != "192.168.77.1" {
		t.Errorf("default route via %q after Plug into a namespace that had one, want 192.168.77.1", got)
	}

	if err := h.LinkDel(veth); err != nil { // its default route goes with it
		t.Fatal(err)
	}
	plug(IfaceConfig{IfName: "eth1", Addr: netip.MustParsePrefix("10.0.2.5/24"), Gateway: netip.MustParseAddr("10.0.2.1")})
	if got := defaultVia(); got != "10.0.2.1" {
		t.Errorf("default route via %q after Plug into a namespace without one, want 10.0.2.1", got)
	}

	// DefaultRoute (a detach's remaining network): none added while one
	// is there; once eth1 and its route are gone, via eth0's gateway.
	eth0Addr, eth0GW := netip.MustParsePrefix("10.0.1.5/24"), netip.MustParseAddr("10.0.1.1")
	if err := DefaultRoute(ctrNS, "eth0", eth0Addr, eth0GW); err != nil || defaultVia() != "10.0.2.1" {
		t.Errorf("DefaultRoute with one in place: %v, default route via %q, want 10.0.2.1 kept", err, defaultVia())
	}
	if err := Unplug(ctrNS, "eth1"); err != nil {
		t.Fatal(err)
	}
	if err := DefaultRoute(ctrNS, "eth0", eth0Addr, eth0GW); err != nil || defaultVia() != "10.0.1.1" {
		t.Errorf("DefaultRoute without one: %v, default route via %q, want 10.0.1.1", err, defaultVia())
	}
}

func TestCommandResolvConf(t *testing.T) {
	requireRoot(t)
	_, ns := newNamedNetns(t)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := WriteResolvConf(resolv); err != nil {
		t.Fatal(err)
	}
	hostBefore, hostErr := os.ReadFile("/etc/resolv.conf")
	if hostErr != nil {
		testenv.Missing(t, "/etc/resolv.conf on the host, to bind over: %v", hostErr)
	}

	var out, errOut bytes.Buffer
	c := Command(ns, resolv, []string{"sh", "-c", "cat /etc/resolv.conf; readlink /proc/self/ns/net; ls /sys/class/net"})
	c.Stdout, c.Stderr = &out, &errOut
	if err := c.Run(); err != nil {
		t.Fatalf("%v: %s", err, errOut.String())
	}
	id, _ := NetnsIdentity(ns)
	want := ResolvConf + id.String() + "\nlo\n"
	if out.String() != want {
		t.Errorf("inside the container:\n%s\nwant:\n%s", out.String(), want)
	}
	if hostAfter, _ := os.ReadFile("/etc/resolv.conf"); !bytes.Equal(hostBefore, hostAfter) {
		t.Error("host /etc/resolv.conf changed")
	}

	// Stdin is connected and the exit status propagated.
	out.Reset()
	c = Command(ns, "", []string{"sh", "-c", "cat; exit 7"})
	c.Stdin, c.Stdout = strings.NewReader("from stdin"), &out
	if err := c.Run(); ExitStatus(err) != 7 || out.String() != "from stdin" {
		t.Errorf("exit 7: status %d (%v), output %q", ExitStatus(err), err, out.String())
	}
	errOut.Reset()
	c = Command(ns, resolv, []string{"vxmesh-no-such-command"})
	c.Stderr = &errOut
	if err := c.Run(); ExitStatus(err) != ExitNotFound || !strings.Contains(errOut.String(), "vxmesh-no-such-command") {
		t.Errorf("missing command: status %d (%v), stderr %q", ExitStatus(err), err, errOut.String())
	}
	if err := Command(filepath.Join(NetnsDir, "vxt-no-such-ns"), "", []string{"true"}).Run(); err == nil {
		t.Error("Command in a missing namespace ran")
	}
}

func TestDetachedPIDsAndKill(t *testing.T) {
	requireRoot(t)
	_, ns := newNamedNetns(t)
	if pids, err := PIDsInNetns(ns); err != nil || len(pids) != 0 {
		t.Fatalf("fresh namespace pids %v, %v", pids, err)
	}
	c := Command(ns, "", []string{"sleep", "1000"})
	c.Detach = true
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	pid := c.PID()
	t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL) })
	// Poll: the init step execs sleep in place, same PID throughout.
	var pids []int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if pids, _ = PIDsInNetns(ns); slices.Contains(pids, pid) {
			break
		}
	}
	if !slices.Equal(pids, []int{pid}) {
		t.Fatalf("PIDsInNetns = %v, want [%d]", pids, pid)
	}
	id, err := NetnsIdentity(ns)
	if err != nil {
		t.Fatal(err)
	}
	if all, err := NetnsPIDs(); err != nil || !slices.Equal(all[id], []int{pid}) {
		t.Fatalf("NetnsPIDs()[%v] = %v (%v), want [%d]", id, all[id], err, pid)
	}
	if sid, _ := unix.Getsid(pid); sid != pid {
		t.Errorf("detached command in session %d, want its own (%d)", sid, pid)
	}
	if err := KillNetns(ns, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if pids, err := PIDsInNetns(ns); err != nil || len(pids) != 0 {
		t.Errorf("after KillNetns: %v, %v", pids, err)
	}
}

func TestWriteResolvConf(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "resolv.conf")
	if err := WriteResolvConf(p); err != nil {
		t.Fatal(err)
	}
	if err := WriteResolvConf(p); err != nil { // replaces
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "nameserver 127.0.0.11\noptions ndots:0\n" {
		t.Errorf("%q, %v", b, err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", st.Mode())
	}
	if ents, _ := os.ReadDir(filepath.Dir(p)); len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestExitStatus(t *testing.T) {
	if ExitStatus(nil) != 0 || ExitStatus(errors.New("x")) != ExitInitFailed {
		t.Error("ExitStatus of nil / non-exit error")
	}
	err := exec.Command("sh", "-c", "kill -TERM $$").Run()
	if got := ExitStatus(err); got != 128+int(unix.SIGTERM) {
		t.Errorf("killed by SIGTERM: %d", got)
	}
}

// TestRemoveUnusedTAPs: the half-made TAPs nobody holds are destroyed; one
// held open (a Plug at work) and TAPs of other names are kept.
func TestRemoveUnusedTAPs(t *testing.T) {
	requireRoot(t)
	_, path := newNamedNetns(t)
	var held *netdev.TAP
	var removed []string
	err := RunInNetns(path, func() error {
		for _, name := range []string{tmpTAPPrefix + "0000000001", "other0"} {
			tap, err := netdev.CreateTAP(name, true)
			if err != nil {
				return err
			}
			tap.Close()
		}
		var err error
		if held, err = netdev.CreateTAP(tmpTAPPrefix+"0000000002", true); err != nil {
			return err
		}
		removed, err = RemoveUnusedTAPs()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if !slices.Equal(removed, []string{tmpTAPPrefix + "0000000001"}) {
		t.Errorf("removed %v, want only the unused %s0000000001", removed, tmpTAPPrefix)
	}
	if got := linkNames(t, path); !slices.Equal(got, []string{"lo", "other0", tmpTAPPrefix + "0000000002"}) {
		t.Errorf("links left: %v", got)
	}
}

// TestPlugHardensLink: a container interface of an IPv4 network ignores
// router advertisements (accept_ra=0, read inside the container's
// namespace) and its TCP builds no super-segment of more than
// packet.GSOMaxSegments segments (gso_max_segs).
func TestPlugHardensLink(t *testing.T) {
	requireRoot(t)
	_, daemonNS := newNamedNetns(t)
	_, ctrNS := newNamedNetns(t)
	cfg := IfaceConfig{IfName: "eth1", Addr: netip.MustParsePrefix("10.0.1.5/24"), MTU: 1450}
	var tap *netdev.TAP
	err := RunInNetns(daemonNS, func() (err error) {
		tap, err = Plug(ctrNS, cfg)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	var acceptRA []byte
	err = RunInNetns(ctrNS, func() (err error) {
		acceptRA, err = os.ReadFile("/proc/sys/net/ipv6/conf/eth1/accept_ra")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(acceptRA)); got != "0" {
		t.Errorf("accept_ra = %s, want 0", got)
	}
	link, err := handle(t, ctrNS).LinkByName("eth1")
	if err != nil {
		t.Fatal(err)
	}
	if got := link.Attrs().GSOMaxSegs; got != packet.GSOMaxSegments {
		t.Errorf("gso_max_segs = %d, want %d", got, packet.GSOMaxSegments)
	}
}

// Plug makes the device in the container's namespace under its name
// there: nothing appears in the caller's namespace and no device is moved
// in (a move between namespaces waits on the kernel's RCU grace periods
// under its rtnl lock, shared by every namespace of the machine: tens to
// hundreds of milliseconds a plug on a host busy with namespaces).
func TestPlugMakesTheDeviceWhereItIsUsed(t *testing.T) {
	requireRoot(t)
	_, daemonNS := newNamedNetns(t)
	_, ctrNS := newNamedNetns(t)
	watch := func(nsPath string) (chan netlink.LinkUpdate, chan struct{}) {
		t.Helper()
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ns.Close() })
		ch, done := make(chan netlink.LinkUpdate, 64), make(chan struct{})
		if err := netlink.LinkSubscribeAt(ns, ch, done); err != nil {
			t.Fatal(err)
		}
		return ch, done
	}
	inDaemon, stopDaemon := watch(daemonNS)
	inCtr, stopCtr := watch(ctrNS)
	err := RunInNetns(daemonNS, func() error {
		tap, err := Plug(ctrNS, IfaceConfig{IfName: "eth0", Addr: netip.MustParsePrefix("10.0.1.5/24"), Gateway: netip.MustParseAddr("10.0.1.1")})
		if err == nil {
			tap.SetPersist(false)
			tap.Close()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// The updates of the plug are queued by now; collect them.
	var ctrNames, daemonNames []string
	deadline := time.After(500 * time.Millisecond)
collect:
	for {
		select {
		case u := <-inCtr:
			if u.Header.Type == unix.RTM_NEWLINK {
				ctrNames = append(ctrNames, u.Attrs().Name)
			}
		case u := <-inDaemon:
			daemonNames = append(daemonNames, u.Attrs().Name)
		case <-deadline:
			break collect
		}
	}
	close(stopDaemon)
	close(stopCtr)
	if len(daemonNames) > 0 {
		t.Errorf("links seen in the caller's namespace during Plug: %v, want none", daemonNames)
	}
	for _, n := range ctrNames {
		if n != "eth0" && n != "lo" {
			t.Errorf("link %q seen in the container's namespace during Plug: want only eth0 (made there) and lo", n)
		}
	}
	if !slices.Contains(ctrNames, "eth0") {
		t.Errorf("no eth0 seen in the container's namespace: %v", ctrNames)
	}
}

// TestCommandHoldsNoOtherNamespace: a container's process does not hold
// the named namespaces that exist when it starts. Its mount namespace is a
// private copy of the host's, which has a bind mount of every container's
// namespace: with N containers the kernel held N copies of up to N mounts
// (half a million struct mounts at 1,000 containers).
func TestCommandHoldsNoOtherNamespace(t *testing.T) {
	requireRoot(t)
	_, other := newNamedNetns(t)
	otherID, err := NetnsIdentity(other)
	if err != nil {
		t.Fatal(err)
	}
	_, ns := newNamedNetns(t)
	c := Command(ns, "", []string{"sleep", "1000"})
	c.Detach = true
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	pid := c.PID()
	t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL) })
	// Poll until the init step has exec'd sleep (its mounts are made).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); string(comm) == "sleep\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the command did not start sleep")
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, otherID.String()) || strings.Contains(l, " "+NetnsDir+"/") {
			held = append(held, l)
		}
	}
	if len(held) > 0 {
		t.Errorf("the container's process mounts %d named namespaces (%s among them: %v); first: %s",
			len(held), otherID, strings.Contains(string(b), otherID.String()), held[0])
	}
}
