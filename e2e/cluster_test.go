package e2e

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

// The tests in this file run several hosts (testbed namespaces, each with
// its own daemon) joined into one cluster over the underlay bridge.

func TestThreeHostsShareNetworksAndCarryTraffic(t *testing.T) {
	es := newCluster(t, 3)
	h1, h2, h3 := es[0], es[1], es[2]

	// Every host sees the same three nodes alive, itself marked as self,
	// at its underlay address.
	for _, e := range es {
		nodes := e.nodes()
		if len(nodes) != 3 {
			t.Errorf("node ls on %s: %d nodes, want 3: %+v", e.h.Name, len(nodes), nodes)
		}
		for _, o := range es {
			n, ok := findNode(nodes, o.h.Name)
			if !ok || n.State != "alive" || n.Self != (o == e) || !sameAddr(n.Addr, o.h.Addr) || !sameAddr(n.DataAddr, o.h.Addr) {
				t.Errorf("node ls on %s: %s is %+v, want alive at %s, self %v", e.h.Name, o.h.Name, n, o.h.Addr, o == e)
			}
		}
	}
	if !strings.Contains(h1.cli("node", "ls"), "h3") {
		t.Error("node ls table lacks h3")
	}

	// A network created on h1 appears, identical, on h2 and h3.
	h1.network("web", "10.70.0.0/24")
	var n1 api.Network
	h1.json(&n1, "network", "inspect", "web")
	for _, e := range []*env{h2, h3} {
		n := e.waitNetwork("web")
		if n.ID != n1.ID || n.Subnet != n1.Subnet || n.Gateway != n1.Gateway || n.VNI != n1.VNI || n.MTU != n1.MTU {
			t.Errorf("network web on %s: %+v, on h1: %+v", e.h.Name, n, n1)
		}
	}

	// One container per host, with addresses unique in the cluster.
	h1.run("c1", "web")
	h2.run("c2", "web")
	h3.run("c3", "web")
	c1, c2, c3 := h1.endpoint("c1"), h2.endpoint("c2"), h3.endpoint("c3")
	if c1.IP == c2.IP || c2.IP == c3.IP || c1.IP == c3.IP {
		t.Fatalf("duplicate addresses across hosts: c1 %s, c2 %s, c3 %s", c1.IP, c2.IP, c3.IP)
	}
	// Each host forwards to the others' containers through their VTEPs.
	h1.waitRemote("web", c2, h2.h.Addr)
	h1.waitRemote("web", c3, h3.h.Addr)
	h2.waitRemote("web", c1, h1.h.Addr)
	h3.waitRemote("web", c1, h1.h.Addr)

	ctrs := []struct {
		e    *env
		name string
	}{{h1, "c1"}, {h2, "c2"}, {h3, "c3"}}
	for _, a := range ctrs {
		for _, b := range ctrs {
			if a != b {
				a.e.mustPing(a.name, b.e.ip(b.name))
			}
		}
	}
	moveBytes(t, h1, "c1", h2, "c2", 8<<20, 7)
	moveBytes(t, h3, "c3", h1, "c1", 2<<20, 8)

	// Inspect on h1 lists the endpoints of every node and counts the
	// traffic exchanged with each peer VTEP.
	var n api.Network
	h1.json(&n, "network", "inspect", "web")
	got := map[string]string{}
	for _, ep := range n.Endpoints {
		got[ep.Name] = ep.Node
	}
	if want := map[string]string{"c1": "h1", "c2": "h2", "c3": "h3"}; !mapsEqual(got, want) {
		t.Errorf("inspect web on h1: endpoints (name: node) %v, want %v", got, want)
	}
	for _, o := range []*env{h2, h3} {
		p, ok := findPeer(n.Peers, o.h.Addr)
		if !ok || p.Node != o.h.Name || p.TxPackets == 0 || p.RxPackets == 0 {
			t.Errorf("inspect web on h1: peer %s is %+v (found %v), want node %s with rx and tx packets", o.h.Addr, p, ok, o.h.Name)
		}
	}
	// node ls tells which nodes have endpoints on the network.
	for _, nd := range h1.nodes() {
		if !slices.Contains(nd.Networks, "web") {
			t.Errorf("node ls on h1: %s has networks %v, want web", nd.Name, nd.Networks)
		}
	}
}

func TestUnderlayCarriesRFC7348VXLANAndNoBroadcastToKnownPeers(t *testing.T) {
	es := newCluster(t, 2)
	h1, h2 := es[0], es[1]
	h1.network("web", "10.71.0.0/24")
	var n api.Network
	h1.json(&n, "network", "inspect", "web")
	h2.waitNetwork("web")
	h1.run("c1", "web")
	h2.run("c2", "web")
	c1, c2 := h1.endpoint("c1"), h2.endpoint("c2")
	h1.waitRemote("web", c2, h2.h.Addr)
	h2.waitRemote("web", c1, h1.h.Addr)
	h1.mustPing("c1", addrOnly(c2.IP)) // warm-up

	// c1 forgets c2's MAC, so the measured ping starts with an ARP
	// broadcast: the switch on h1 must answer it from c2's remote endpoint
	// entry instead of flooding it to h2.
	h1.cli("exec", "c1", "--", "ip", "neigh", "flush", "all")
	var before api.Stats
	h1.json(&before, "stats")

	const pings = 5
	capture := startCapture(t, h1.tb.Underlay, h1.h.Name, 10000, "udp", "port", "4789") // h1's port on the underlay bridge
	out, err := h1.h.Exec("c1", "ping", "-c", fmt.Sprint(pings), "-i", "0.2", "-W", "2", addrOnly(c2.IP))
	if err != nil {
		t.Fatalf("ping c1 -> c2 across hosts: %v\n%s", err, out)
	}
	isEcho := func(p vxlanPacket) bool {
		return (p.InnerICMPType == 8 || p.InnerICMPType == 0) && p.VNI == n.VNI
	}
	pkts := capture.stop(func(ps []vxlanPacket) bool {
		return countFunc(ps, isEcho) >= 2*pings
	})

	var requests, replies int
	for _, p := range pkts {
		if p.Flags != 0x08 || p.Reserved1 != 0 || p.Reserved2 != 0 || p.VNI != n.VNI || p.DstPort != 4789 {
			t.Errorf("not RFC 7348 VXLAN for VNI %d to port 4789: %v", n.VNI, p)
		}
		if p.broadcast() {
			t.Errorf("broadcast frame on the underlay during a ping to a known remote container: %v", p)
		}
		switch {
		case p.InnerICMPType == 8 && p.InnerIPSrc.String() == addrOnly(c1.IP) && p.InnerIPDst.String() == addrOnly(c2.IP):
			requests++
			if p.OuterSrc.String() != h1.h.Addr || p.OuterDst.String() != h2.h.Addr || !macIs(p.InnerSrc, c1.MAC) || !macIs(p.InnerDst, c2.MAC) {
				t.Errorf("echo request c1 -> c2 not from h1's to h2's VTEP between the containers' MACs: %v", p)
			}
		case p.InnerICMPType == 0 && p.InnerIPSrc.String() == addrOnly(c2.IP) && p.InnerIPDst.String() == addrOnly(c1.IP):
			replies++
			if p.OuterSrc.String() != h2.h.Addr || p.OuterDst.String() != h1.h.Addr || !macIs(p.InnerSrc, c2.MAC) || !macIs(p.InnerDst, c1.MAC) {
				t.Errorf("echo reply c2 -> c1 not from h2's to h1's VTEP between the containers' MACs: %v", p)
			}
		}
	}
	if requests != pings || replies != pings {
		t.Errorf("captured %d echo requests and %d replies in VXLAN, want %d each; ping:\n%s\ncapture:\n%s", requests, replies, pings, out, packetList(pkts))
	}
	var after api.Stats
	h1.json(&after, "stats")
	if a, b := arpSuppressed(after, "web"), arpSuppressed(before, "web"); a <= b {
		t.Errorf("arp_suppressed on h1 did not grow (%d -> %d) although c1 had to ARP for c2", b, a)
	}
}

func TestStoppedNodesEndpointsLeaveWithinGraceAndReturn(t *testing.T) {
	const grace = 3 * time.Second
	es := newCluster(t, 3, "--node-grace", grace.String())
	h1, h3 := es[0], es[2]
	h1.network("web", "10.73.0.0/24")
	h3.waitNetwork("web")
	h1.run("c1", "web")
	h3.run("c3", "web")
	c3 := h3.endpoint("c3")
	h1.waitRemote("web", c3, h3.h.Addr)
	h1.mustPing("c1", addrOnly(c3.IP))

	// A clean stop leaves the cluster at once; a crash is noticed by
	// failure detection first (memberlist suspicion: a few seconds with
	// three nodes), then the grace period runs.
	for _, c := range []struct {
		mode  string
		stop  func() error
		limit time.Duration
	}{
		{"SIGTERM", h3.h.StopDaemon, grace + 2*time.Second},
		{"SIGKILL", h3.h.KillDaemon, grace + 15*time.Second},
	} {
		if err := c.stop(); err != nil {
			t.Fatalf("%s h3: %v", c.mode, err)
		}
		start := time.Now()
		eventually(t, c.limit, func() error {
			if f, ok := h1.fdbEntry("web", c3.MAC); ok {
				return fmt.Errorf("fdb web on h1 still has c3: %+v", f)
			}
			if h1.inspectHas("web", "c3") {
				return fmt.Errorf("network inspect web on h1 still lists c3")
			}
			return nil
		}, "after %s of h3's daemon, c3 leaves h1", c.mode)
		t.Logf("after %s of h3: c3 gone from h1 in %v", c.mode, time.Since(start).Round(100*time.Millisecond))
		if nd, ok := findNode(h1.nodes(), "h3"); ok && nd.State == "alive" {
			t.Errorf("after %s: node ls on h1 shows h3 alive", c.mode)
		}

		if err := h3.h.StartDaemon(); err != nil {
			t.Fatalf("restart h3 after %s: %v", c.mode, err)
		}
		if err := h1.tb.WaitCluster(20 * time.Second); err != nil {
			t.Fatalf("after restarting h3: %v", err)
		}
		h1.waitRemote("web", c3, h3.h.Addr)
		if !h1.inspectHas("web", "c3") {
			t.Errorf("after restarting h3: network inspect web on h1 lacks c3")
		}
		h1.mustPing("c1", addrOnly(c3.IP))
	}
}

// TestCreateSaysWhichDeadHostItWaitsFor: with h3's daemon killed and
// declared dead, a network create on h1 waits for it (a host wrongly
// declared dead may be creating the same), at most the node grace, and
// says so on stderr meanwhile; then it succeeds.
func TestCreateSaysWhichDeadHostItWaitsFor(t *testing.T) {
	const grace = 8 * time.Second
	es := newCluster(t, 3, "--node-grace", grace.String())
	h1, h3 := es[0], es[2]
	if err := h3.h.KillDaemon(); err != nil {
		t.Fatalf("SIGKILL h3: %v", err)
	}
	eventually(t, 20*time.Second, func() error {
		if nd, ok := findNode(h1.nodes(), "h3"); !ok || nd.State != "dead" {
			return fmt.Errorf("node ls on h1 shows h3 as %q", nd.State)
		}
		return nil
	}, "h1 declares h3 dead")
	cmd := h1.h.Command(context.Background(), "network", "create", "w2", "--subnet", "10.74.0.0/24")
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("network create w2 with h3 dead: %v; stderr %q", err, errb.String())
	}
	msg := errb.String()
	if !strings.HasPrefix(msg, "waiting for h3 (declared dead ") || !strings.Contains(msg, " ago) to be released from the cluster, at most ") ||
		strings.Count(msg, "\n") != 1 {
		t.Fatalf("stderr of the create %q, want one line saying it waits for h3", msg)
	}
	if strings.TrimSpace(out.String()) != "w2" {
		t.Fatalf("stdout of the create %q, want w2", out.String())
	}
	t.Logf("the create said: %s", strings.TrimSpace(msg))
}

// TestSeedRestartRejoinsTheCluster stops, with SIGTERM, the host the others
// joined through (started without --join) and starts it again: it must find
// the others from the members it saved, and they it.
func TestSeedRestartRejoinsTheCluster(t *testing.T) {
	es := newCluster(t, 3)
	h1 := es[0]
	if len(h1.h.Join) != 0 {
		t.Fatalf("h1 is started with --join %v; the test needs the seed", h1.h.Join)
	}
	if err := h1.h.StopDaemon(); err != nil {
		t.Fatalf("SIGTERM h1: %v", err)
	}
	if err := h1.h.StartDaemon(); err != nil {
		t.Fatalf("restart h1: %v", err)
	}
	for _, e := range es {
		eventually(t, 30*time.Second, func() error {
			nodes := e.nodes()
			if len(nodes) != 3 {
				return fmt.Errorf("node ls on %s: %+v", e.h.Name, nodes)
			}
			for _, n := range nodes {
				if n.State != "alive" {
					return fmt.Errorf("node ls on %s: %s is %s", e.h.Name, n.Name, n.State)
				}
			}
			return nil
		}, "after the seed's restart, node ls on %s shows three alive", e.h.Name)
	}
}

func TestWrongClusterKeyIsRefused(t *testing.T) {
	es := newTestbed(t, 2)
	h1, h2 := es[0], es[1]
	if err := h1.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	wrong := filepath.Join(h1.tb.Dir, "wrong.key")
	if err := testbed.WriteKeyFile(wrong); err != nil {
		t.Fatal(err)
	}
	h2.h.KeyFile = wrong
	// The daemon may or may not answer on its socket before it gives up
	// joining; either way it must exit non-zero, saying why.
	err := h2.h.StartDaemon()
	if err == nil {
		exited, werr := h2.h.WaitExit(30 * time.Second)
		if !exited {
			t.Fatalf("daemon joining with a wrong cluster key still runs after 30 s; log:\n%s", h2.h.LogTail(10))
		}
		err = werr
	}
	if err == nil {
		t.Errorf("daemon joining with a wrong cluster key exited 0")
	}
	if log := h2.h.LogTail(20); !strings.Contains(log, "wrong cluster key or unreachable") {
		t.Errorf("daemon refused with a wrong key does not say why (want %q); log:\n%s", "wrong cluster key or unreachable", log)
	}
	if nd, ok := findNode(h1.nodes(), "h2"); ok && nd.State == "alive" {
		t.Errorf("node ls on h1 shows the refused h2 alive: %+v", nd)
	}
	// With the cluster's key the same host joins.
	h2.h.KeyFile = h1.tb.KeyFile
	if err := h1.tb.StartDaemons(); err != nil {
		t.Fatal(err)
	}
}

func TestExternalVTEPInteroperates(t *testing.T) {
	testenv.RequireCommand(t, "bridge", "iproute2")
	e := newCluster(t, 1)[0]
	e.network("web", "10.72.0.0/24")
	e.run("c1", "web")
	var n api.Network
	e.json(&n, "network", "inspect", "web")

	// A Linux VXLAN device in a namespace on the underlay, configured by
	// hand as an RFC 7348 VTEP outside the cluster would be: no learning,
	// everything unknown goes to h1.
	peer, err := e.tb.AddUnderlayPeer("vtep")
	if err != nil {
		t.Fatal(err)
	}
	const extIP, extMAC = "10.72.0.200", "02:00:00:00:ee:01"
	for _, c := range [][]string{
		{"ip", "link", "add", "vx0", "type", "vxlan", "id", fmt.Sprint(n.VNI), "dstport", "4789", "local", peer.Addr, "nolearning"},
		{"ip", "link", "set", "vx0", "address", extMAC, "mtu", fmt.Sprint(n.MTU), "up"},
		{"ip", "addr", "add", extIP + "/24", "dev", "vx0"},
		{"bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", e.h.Addr},
	} {
		if _, err := testbed.InNetns(context.Background(), peer.NetnsPath, c...); err != nil {
			t.Fatal(err)
		}
	}
	e.cli("network", "update", "web", "--add-vtep", peer.Addr)
	e.json(&n, "network", "inspect", "web")
	if !slices.ContainsFunc(n.VTEPs, func(v string) bool { return sameAddr(v, peer.Addr) }) {
		t.Errorf("inspect web: vteps %v, want %s", n.VTEPs, peer.Addr)
	}

	c1 := e.ip("c1")
	eventually(t, 15*time.Second, func() error {
		_, err := testbed.InNetns(context.Background(), peer.NetnsPath, "ping", "-c", "1", "-W", "1", c1)
		return err
	}, "external VTEP's %s cannot ping c1 (%s)", extIP, c1)
	e.mustPing("c1", extIP)

	// TCP data through the Linux VTEP to c1, whose checksum offload is
	// on (the default): it leaves each inner TCP checksum for a NIC to
	// finish, which the veth under it never does; the daemon finishes it,
	// or c1's kernel would drop every segment.
	recv := startBackground(t, e.h.Command(context.Background(), "exec", "c1", "--", suite.self, helperArg, "recv", "0.0.0.0:7000"))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := testbed.WaitTCPListen(ctx, e.h.ContainerNetnsPath("c1"), 7000); err != nil {
		t.Fatalf("receiver in c1: %v: %s", err, recv.out.String())
	}
	sent, err := testbed.InNetns(ctx, peer.NetnsPath, suite.self, helperArg, "send", c1+":7000", strconv.Itoa(1<<20), "7")
	if err != nil {
		t.Fatalf("TCP from the external VTEP's side to c1: %v", err)
	}
	if exited, err := recv.wait(30 * time.Second); !exited || err != nil || strings.TrimSpace(recv.out.String()) != strings.TrimSpace(sent) {
		t.Fatalf("TCP from the external VTEP's side: sent %q, c1 received %q (exited %v, %v)", sent, recv.out.String(), exited, err)
	}

	f, ok := e.fdbEntry("web", extMAC)
	if !ok || f.Kind != "learned" || !sameAddr(f.VTEP, peer.Addr) {
		t.Errorf("fdb web: external MAC %s is %+v (found %v), want learned behind VTEP %s", extMAC, f, ok, peer.Addr)
	}
	e.json(&n, "network", "inspect", "web")
	if p, ok := findPeer(n.Peers, peer.Addr); !ok || p.Node != "" || p.RxPackets == 0 || p.TxPackets == 0 {
		t.Errorf("inspect web: external peer %s is %+v (found %v), want no node, rx and tx packets", peer.Addr, p, ok)
	}

	e.cli("network", "update", "web", "--rm-vtep", peer.Addr)
	n = api.Network{} // the JSON omits an empty list: decode into a fresh value
	e.json(&n, "network", "inspect", "web")
	if slices.ContainsFunc(n.VTEPs, func(v string) bool { return sameAddr(v, peer.Addr) }) {
		t.Errorf("inspect web after --rm-vtep: vteps %v still has %s", n.VTEPs, peer.Addr)
	}
}

// nodes returns `node ls` on the env's host.
func (e *env) nodes() []api.Node {
	e.t.Helper()
	var ns []api.Node
	e.json(&ns, "node", "ls")
	return ns
}

func findNode(ns []api.Node, name string) (api.Node, bool) {
	i := slices.IndexFunc(ns, func(n api.Node) bool { return n.Name == name })
	if i < 0 {
		return api.Node{}, false
	}
	return ns[i], true
}

func findPeer(ps []api.Peer, addr string) (api.Peer, bool) {
	i := slices.IndexFunc(ps, func(p api.Peer) bool { return sameAddr(p.VTEP, addr) })
	if i < 0 {
		return api.Peer{}, false
	}
	return ps[i], true
}

// waitNetwork waits until network name is listed on the env's host (it
// was created on another) and returns its inspect output.
func (e *env) waitNetwork(name string) api.Network {
	e.t.Helper()
	var n api.Network
	eventually(e.t, 10*time.Second, func() error {
		return e.h.CLIJSON(&n, "network", "inspect", name)
	}, "network %s on %s", name, e.h.Name)
	if !slices.Contains(e.networkNames(), name) {
		e.t.Errorf("network ls on %s lacks %s, which inspect shows", e.h.Name, name)
	}
	return n
}

// fdbEntry returns the env's FDB entry of network for mac, if any.
func (e *env) fdbEntry(network, mac string) (api.FDBEntry, bool) {
	e.t.Helper()
	var fdb []api.FDBEntry
	e.json(&fdb, "fdb", network)
	i := slices.IndexFunc(fdb, func(f api.FDBEntry) bool { return strings.EqualFold(f.MAC, mac) })
	if i < 0 {
		return api.FDBEntry{}, false
	}
	return fdb[i], true
}

// waitRemote waits until the env's FDB of network has ep (on another
// host) as a remote entry behind VTEP vtep.
func (e *env) waitRemote(network string, ep api.Endpoint, vtep string) {
	e.t.Helper()
	eventually(e.t, 10*time.Second, func() error {
		f, ok := e.fdbEntry(network, ep.MAC)
		if !ok || f.Kind != "remote" || !sameAddr(f.VTEP, vtep) {
			return fmt.Errorf("entry for %s: %+v (found %v)", ep.MAC, f, ok)
		}
		return nil
	}, "fdb %s on %s: %s (%s) as remote behind %s", network, e.h.Name, ep.Name, ep.MAC, vtep)
}

// inspectHas reports whether `network inspect` on the env's host lists an
// endpoint named name.
func (e *env) inspectHas(network, name string) bool {
	e.t.Helper()
	var n api.Network
	e.json(&n, "network", "inspect", network)
	return slices.ContainsFunc(n.Endpoints, func(ep api.Endpoint) bool { return ep.Name == name })
}

// sameAddr reports whether s is addr, with or without a port.
func sameAddr(s, addr string) bool {
	if h, _, err := net.SplitHostPort(s); err == nil {
		s = h
	}
	return s == addr
}

func macIs(b [6]byte, mac string) bool {
	return strings.EqualFold(net.HardwareAddr(b[:]).String(), mac)
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func arpSuppressed(st api.Stats, network string) uint64 {
	for _, n := range st.Networks {
		if n.Network == network {
			return n.ARPSuppressed
		}
	}
	return 0
}

func countFunc[T any](s []T, f func(T) bool) int {
	n := 0
	for _, v := range s {
		if f(v) {
			n++
		}
	}
	return n
}

func packetList(ps []vxlanPacket) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "  %v\n", p)
	}
	return b.String()
}

// capture is tcpdump recording UDP datagrams on one interface.
type capture struct {
	t    *testing.T
	path string
	proc *bgProc
}

// startCapture starts tcpdump on ifname in namespace netns with the
// capture filter, stopping by itself after limit packets, and returns once
// it is capturing. It is stopped when the test ends.
func startCapture(t *testing.T, netns, ifname string, limit int, filter ...string) *capture {
	t.Helper()
	testenv.RequireCommand(t, "tcpdump", "tcpdump")
	path := filepath.Join(t.TempDir(), "underlay.pcap")
	// -U writes every packet as it arrives, so the file can be read while
	// tcpdump runs; -c bounds it if a test goes wrong.
	args := append([]string{"--net=" + filepath.Join(testbed.NetnsDir, netns), "--", "tcpdump", "-i", ifname, "-n", "-U",
		"-c", strconv.Itoa(limit), "-w", path}, filter...)
	cmd := exec.Command("nsenter", args...)
	p := startBackground(t, cmd)
	eventually(t, 10*time.Second, func() error {
		if exited, err := p.wait(0); exited {
			t.Fatalf("tcpdump exited: %v: %s", err, p.out.String())
		}
		if !strings.Contains(p.out.String(), "listening on") {
			return fmt.Errorf("not listening yet: %q", p.out.String())
		}
		return nil
	}, "tcpdump on %s in %s", ifname, netns)
	return &capture{t: t, path: path, proc: p}
}

// stop waits (up to 5 s) until the packets in the capture file satisfy
// complete, so that none still in tcpdump's buffer are lost, then stops
// tcpdump and returns the decoded packets.
func (c *capture) stop(complete func([]vxlanPacket) bool) []vxlanPacket {
	c.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pkts, err := readVXLANCapture(c.path, 4789)
		if err != nil {
			c.t.Fatalf("capture: %v", err)
		}
		if complete(pkts) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.halt()
	pkts, err := readVXLANCapture(c.path, 4789)
	if err != nil {
		c.t.Fatalf("capture: %v", err)
	}
	return pkts
}

// halt stops tcpdump (SIGINT makes it write what it holds) and waits for it.
func (c *capture) halt() {
	c.t.Helper()
	_ = c.proc.cmd.Process.Signal(syscall.SIGINT)
	if exited, _ := c.proc.wait(5 * time.Second); !exited {
		c.t.Fatalf("tcpdump ignored SIGINT: %s", c.proc.out.String())
	}
}
