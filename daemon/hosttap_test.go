package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/netdev"
	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
	"github.com/vxmesh/vxmesh/sandbox"
)

// PlugHost makes the fake's host TAP: an interface of the daemon's
// namespace, keyed "host/IFNAME".
func (f *fakeSandbox) PlugHost(cfg sandbox.IfaceConfig) (netdev.Device, error) {
	return f.Plug("host", cfg)
}

// ReopenHost finds the fake's TAP with MAC mac in namespace nsPath (where
// dockerMove put it) and attaches to it again.
func (f *fakeSandbox) ReopenHost(nsPath string, mac packet.MAC) (netdev.Device, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for key, fi := range f.ifaces {
		name, ok := strings.CutPrefix(key, nsPath+"/")
		if !ok || !bytes.Equal(fi.cfg.MAC, mac[:]) {
			continue
		}
		host, ctr := netdevtest.NewPipe("tap", name, netdevtest.DefaultQueue)
		fi.container = ctr
		return host, name, nil
	}
	if _, ok := f.sandboxes[nsPath]; !ok {
		return nil, "", fmt.Errorf("netns %q: %w", nsPath, os.ErrNotExist)
	}
	return nil, "", fmt.Errorf("netns %q: no TAP device with MAC %s: %w", nsPath, mac, sandbox.ErrNoHostTAP)
}

// RecreateHost makes the fake's interface again in nsPath under the
// first free ethN.
func (f *fakeSandbox) RecreateHost(nsPath string, cfg sandbox.IfaceConfig) (netdev.Device, string, error) {
	f.mu.Lock()
	for i := 0; cfg.IfName == "" || f.ifaces[nsPath+"/"+cfg.IfName] != nil; i++ {
		cfg.IfName = fmt.Sprintf("eth%d", i)
	}
	f.mu.Unlock()
	dev, err := f.Plug(nsPath, cfg)
	return dev, cfg.IfName, err
}

// dockerMove does what Docker does with a host TAP at Join: it moves the
// interface from the daemon's namespace into the sandbox and renames it.
func (f *fakeSandbox) dockerMove(t *testing.T, ifname, sandboxKey, newName string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, ok := f.ifaces["host/"+ifname]
	if !ok {
		t.Fatalf("no host TAP %q to move", ifname)
	}
	delete(f.ifaces, "host/"+ifname)
	f.ifaces[sandboxKey+"/"+newName] = fi
	if f.sandboxes == nil {
		f.sandboxes = map[string]bool{}
	}
	f.sandboxes[sandboxKey] = true
}

// TestHostTAPEndpoint: a Docker endpoint gets a TAP device in the
// daemon's namespace with the endpoint's MAC and the network's MTU and no
// address (Docker configures it), forwards like any endpoint, and its
// container shares no namespace identity with another Docker endpoint.
func TestHostTAPEndpoint(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.1.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	ep1, err := d.AttachHostTAP(api.AttachRequest{Network: "web", Name: "docker-aaaaaaaaaaaa", Netns: "/var/run/docker/netns/1", IfName: "vxdaaaaaaaaaaaa"})
	if err != nil {
		t.Fatal(err)
	}
	ep2, err := d.AttachHostTAP(api.AttachRequest{Network: "web", Name: "docker-bbbbbbbbbbbb", Netns: "/var/run/docker/netns/2", IfName: "vxdbbbbbbbbbbbb"})
	if err != nil {
		t.Fatalf("a second Docker endpoint: %v", err)
	}
	fi := sb.iface("host", "vxdaaaaaaaaaaaa")
	if fi == nil || fi.cfg.MAC.String() != ep1.MAC || fi.cfg.MTU != 1450 {
		t.Fatalf("host TAP config: %+v (endpoint %+v)", fi, ep1)
	}
	if ep1.IfName != "vxdaaaaaaaaaaaa" || ep1.Netns != "/var/run/docker/netns/1" || ep1.State != "up" || ep1.Managed {
		t.Fatalf("endpoint view: %+v", ep1)
	}
	// ps: running with the processes of Docker's namespace once it is
	// there (Docker makes it after the Join), up without one.
	if c := status(t, d, "docker-aaaaaaaaaaaa"); c.Status != api.StatusUp || len(c.PIDs) != 0 {
		t.Errorf("ps before Docker made the namespace: %s %v, want up and no processes", c.Status, c.PIDs)
	}
	sb.addNetns("/var/run/docker/netns/1")
	sb.setPIDs("/var/run/docker/netns/1", 4321)
	if c := status(t, d, "docker-aaaaaaaaaaaa"); c.Status != api.StatusRunning || !slices.Equal(c.PIDs, []int{4321}) {
		t.Errorf("ps of a running Docker container: %s %v, want running [4321]", c.Status, c.PIDs)
	}
	mac1, _ := packet.ParseMAC(ep1.MAC)
	mac2, _ := packet.ParseMAC(ep2.MAC)
	frame := ipv4Frame(mac1, mac2, netip.MustParseAddr(ep1.IP), netip.MustParseAddr(ep2.IP), []byte("docker to docker"))
	send(t, fi.container, frame)
	if got := recv(t, sb.iface("host", "vxdbbbbbbbbbbbb").container); !bytes.Equal(got, frame) {
		t.Fatal("frame between two host TAP endpoints not delivered")
	}
	// A Docker endpoint's container takes no other network.
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "db", Subnet: "10.2.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Attach(api.AttachRequest{Network: "db", Name: "docker-aaaaaaaaaaaa", Netns: "/var/run/docker/netns/1"}); err == nil || !strings.Contains(err.Error(), "Docker endpoint") {
		t.Fatalf("attach to a Docker endpoint's container: %v", err)
	}
	if err := d.Detach("docker-aaaaaaaaaaaa", "web"); err != nil {
		t.Fatal(err)
	}
	for _, e := range d.Endpoints() {
		if e.Name == "docker-aaaaaaaaaaaa" {
			t.Fatalf("detached Docker endpoint still listed: %+v", e)
		}
	}
}

// TestReserveAddressHoldsForDocker: an address held for Docker's IPAM is
// not handed to another container, is taken by the Docker endpoint that
// names it, and is free again once released.
func TestReserveAddressHoldsForDocker(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.1.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	held, err := d.ReserveAddress("web", netip.Addr{})
	if err != nil || held.String() != "10.1.0.2" {
		t.Fatalf("ReserveAddress = %v, %v; want 10.1.0.2", held, err)
	}
	if again, err := d.ReserveAddress("web", held); err == nil {
		t.Fatalf("the held address was held twice: %v", again)
	}
	c1 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	if c1.IP == held.String() {
		t.Fatalf("vxmesh run got the address held for Docker: %s", c1.IP)
	}
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "c2", Create: true, IP: held.String()}); err == nil {
		t.Fatal("--ip of an address held for Docker succeeded")
	}
	// A failed attach (a bad interface name) leaves the hold to Docker's
	// IPAM, which releases it.
	if _, err := d.AttachHostTAP(api.AttachRequest{Network: "web", Name: "docker-aaaaaaaaaaaa", Netns: "/var/run/docker/netns/1", IfName: "bad name", IP: held.String()}); err == nil {
		t.Fatal("a host TAP with an invalid name was attached")
	}
	if err := d.AddAlias("docker-aaaaaaaaaaaa", "web", "x"); err == nil {
		t.Fatal("the failed attach left a container")
	}
	d.ReleaseAddress("web", held)
	if again, err := d.ReserveAddress("web", held); err != nil || again != held {
		t.Fatalf("after a failed attach and ReleaseAddress the address is not free: %v, %v", again, err)
	}
	ep, err := d.AttachHostTAP(api.AttachRequest{Network: "web", Name: "docker-aaaaaaaaaaaa", Netns: "/var/run/docker/netns/1", IfName: "vxdaaaaaaaaaaaa", IP: held.String()})
	if err != nil || ep.IP != held.String() {
		t.Fatalf("Docker endpoint on its held address: %+v, %v", ep, err)
	}
	other, err := d.ReserveAddress("web", netip.MustParseAddr("10.1.0.20"))
	if err != nil {
		t.Fatal(err)
	}
	d.ReleaseAddress("web", other)
	if c3 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c3", Create: true, IP: "10.1.0.20"}); c3.IP != "10.1.0.20" {
		t.Fatalf("released address: %+v", c3)
	}
	if _, err := d.ReserveAddress("nope", netip.Addr{}); err == nil || !strings.Contains(err.Error(), `network "nope": not found`) {
		t.Fatalf("ReserveAddress on a missing network: %v", err)
	}
}

// TestHostTAPEndpointSurvivesRestart: a Docker endpoint's device outlives
// the daemon in the container Docker moved it into: a restarted daemon
// finds it there by its MAC under the name Docker gave it and forwards
// again; one whose device is gone from a running container is made again
// as Docker configured it; one whose container stopped meanwhile is down,
// says why, and can be removed.
func TestHostTAPEndpointSurvivesRestart(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	d := newTestDaemon(t, sb, dir)
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.1.0.0/24"})
	ep1, err := d.AttachHostTAP(api.AttachRequest{Network: "web", Name: "docker-aaaaaaaaaaaa", Netns: "/var/run/docker/netns/1", IfName: "vxdaaaaaaaaaaaa"})
	if err != nil {
		t.Fatal(err)
	}
	ep2, err := d.AttachHostTAP(api.AttachRequest{Network: "web", Name: "docker-bbbbbbbbbbbb", Netns: "/var/run/docker/netns/2", IfName: "vxdbbbbbbbbbbbb"})
	if err != nil {
		t.Fatal(err)
	}
	ep3, err := d.AttachHostTAP(api.AttachRequest{Network: "web", Name: "docker-cccccccccccc", Netns: "/var/run/docker/netns/3", IfName: "vxdcccccccccccc"})
	if err != nil {
		t.Fatal(err)
	}
	sb.dockerMove(t, "vxdaaaaaaaaaaaa", "/var/run/docker/netns/1", "eth0")
	sb.dockerMove(t, "vxdbbbbbbbbbbbb", "/var/run/docker/netns/2", "eth1")
	// The third container stops while the daemon is down: its sandbox
	// and the device go.
	sb.dockerMove(t, "vxdcccccccccccc", "/var/run/docker/netns/3", "eth0")
	d.Close()
	sb.mu.Lock()
	delete(sb.ifaces, "/var/run/docker/netns/3/eth0")
	delete(sb.sandboxes, "/var/run/docker/netns/3")
	// The first container's device is gone but the container is not
	// (an older daemon made it without keeping it): made again.
	delete(sb.ifaces, "/var/run/docker/netns/1/eth0")
	sb.mu.Unlock()

	d2 := newTestDaemon(t, sb, dir)
	defer d2.Close()
	state := map[string]string{}
	for _, e := range d2.Endpoints() {
		state[e.Name] = e.State
		if e.Name == ep1.Name && (e.IP != ep1.IP || e.MAC != ep1.MAC || e.IfName != ep1.IfName) {
			t.Fatalf("restored endpoint %+v, was %+v", e, ep1)
		}
	}
	if state[ep1.Name] != "up" || state[ep2.Name] != "up" || !strings.Contains(state[ep3.Name], "container stopped meanwhile") {
		t.Fatalf("endpoint states after restart: %v", state)
	}
	re := sb.iface("/var/run/docker/netns/1", "eth0")
	if re == nil || re.cfg.MAC.String() != ep1.MAC || re.cfg.Addr.String() != ep1.IP+"/24" || re.cfg.Gateway.String() != "10.1.0.1" || re.cfg.MTU != 1450 {
		t.Fatalf("interface made again: %+v", re)
	}
	mac1, _ := packet.ParseMAC(ep1.MAC)
	mac2, _ := packet.ParseMAC(ep2.MAC)
	frame := ipv4Frame(mac1, mac2, netip.MustParseAddr(ep1.IP), netip.MustParseAddr(ep2.IP), []byte("after the restart"))
	send(t, sb.iface("/var/run/docker/netns/1", "eth0").container, frame)
	if got := recv(t, sb.iface("/var/run/docker/netns/2", "eth1").container); !bytes.Equal(got, frame) {
		t.Fatal("frame between two restored Docker endpoints not delivered")
	}
	if err := d2.RemoveContainer(ep3.Name); err != nil {
		t.Fatal(err)
	}
	if err := d2.Detach(ep1.Name, "web"); err != nil {
		t.Fatal(err)
	}
	if eps := d2.Endpoints(); len(eps) != 1 || eps[0].Name != ep2.Name {
		t.Fatalf("endpoints after removing two: %+v", eps)
	}
}

// TestAddAliasResolves: an alias added to a running endpoint resolves on
// this host and survives a restart; a bad alias changes nothing.
func TestAddAliasResolves(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	d := newTestDaemon(t, sb, dir)
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.1.0.0/24"})
	ep, err := d.AttachHostTAP(api.AttachRequest{Network: "web", Name: "docker-aaaaaaaaaaaa", Netns: "/var/run/docker/netns/1", IfName: "vxdaaaaaaaaaaaa"})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.AddAlias("docker-aaaaaaaaaaaa", "web", "bad name"); err == nil {
		t.Fatal("an invalid alias was added")
	}
	for range 2 {
		if err := d.AddAlias("docker-aaaaaaaaaaaa", "web", "d1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.AddAlias("docker-bbbbbbbbbbbb", "web", "d2"); err == nil || !strings.Contains(err.Error(), "not attached") {
		t.Fatalf("alias of a missing container: %v", err)
	}
	if eps := d.Endpoints(); len(eps) != 1 || strings.Join(eps[0].Aliases, ",") != "d1" {
		t.Fatalf("endpoints after AddAlias: %+v", eps)
	}
	if got, ok := d.dns.idx.index.Load().lookupName("docker-aaaaaaaaaaaa", "d1"); !ok || len(got.Addrs) != 1 || got.Addrs[0].String() != ep.IP {
		t.Fatalf("d1 resolves to %+v, want %s", got, ep.IP)
	}
	d.Close()
	d2 := newTestDaemon(t, sb, dir)
	defer d2.Close()
	if eps := d2.Endpoints(); len(eps) != 1 || strings.Join(eps[0].Aliases, ",") != "d1" {
		t.Fatalf("aliases after restart: %+v", eps)
	}
}

// TestPublishPortsOfDockerEndpoint: `docker run -p` on a Docker endpoint
// listens on the host port, refuses one in use naming it and changing
// nothing, survives a restart, and closes when revoked.
func TestPublishPortsOfDockerEndpoint(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	d := newTestDaemon(t, sb, dir)
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.1.0.0/24"})
	for _, n := range []string{"docker-aaaaaaaaaaaa", "docker-bbbbbbbbbbbb"} {
		if _, err := d.AttachHostTAP(api.AttachRequest{Network: "web", Name: n, Netns: "/var/run/docker/netns/" + n, IfName: "vxd" + n[7:]}); err != nil {
			t.Fatal(err)
		}
	}
	p := freeTCPPort(t)
	spec := fmt.Sprintf("127.0.0.1:%d:80/tcp", p)
	listens := func() bool {
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			c.Close()
		}
		return !errors.Is(err, syscall.ECONNREFUSED)
	}
	published := func(d *Daemon, name string) []string {
		var out []string
		for _, e := range d.Endpoints() {
			if e.Name == name {
				for _, pp := range e.Published {
					out = append(out, pp.Spec+" "+pp.State)
				}
			}
		}
		return out
	}
	if err := d.PublishPorts("docker-aaaaaaaaaaaa", "web", []string{spec}); err != nil {
		t.Fatal(err)
	}
	if !listens() || strings.Join(published(d, "docker-aaaaaaaaaaaa"), ",") != spec+" up" {
		t.Fatalf("published port: listening %v, endpoint %v", listens(), published(d, "docker-aaaaaaaaaaaa"))
	}
	// Again (Docker programs the gateway endpoint again): no change.
	if err := d.PublishPorts("docker-aaaaaaaaaaaa", "web", []string{spec}); err != nil {
		t.Fatalf("the same ports again: %v", err)
	}
	err := d.PublishPorts("docker-bbbbbbbbbbbb", "web", []string{spec})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("host port 127.0.0.1:%d is already in use", p)) {
		t.Fatalf("a busy host port: %v", err)
	}
	if got := published(d, "docker-bbbbbbbbbbbb"); len(got) != 0 {
		t.Fatalf("a refused publish left ports: %v", got)
	}
	if err := d.PublishPorts("docker-cccccccccccc", "web", []string{spec}); err == nil || !strings.Contains(err.Error(), "not attached") {
		t.Fatalf("ports of a missing endpoint: %v", err)
	}
	d.Close()
	if listens() {
		t.Fatal("the port listens after Close")
	}
	d2 := newTestDaemon(t, sb, dir)
	defer d2.Close()
	if !listens() || strings.Join(published(d2, "docker-aaaaaaaaaaaa"), ",") != spec+" up" {
		t.Fatalf("after a restart: listening %v, endpoint %v", listens(), published(d2, "docker-aaaaaaaaaaaa"))
	}
	if err := d2.UnpublishPorts("docker-aaaaaaaaaaaa", "web"); err != nil {
		t.Fatal(err)
	}
	if listens() || len(published(d2, "docker-aaaaaaaaaaaa")) != 0 {
		t.Fatalf("after revoke: listening %v, endpoint %v", listens(), published(d2, "docker-aaaaaaaaaaaa"))
	}
	if err := d2.UnpublishPorts("docker-cccccccccccc", "web"); err != nil {
		t.Fatalf("revoke of a gone endpoint: %v", err)
	}
}
