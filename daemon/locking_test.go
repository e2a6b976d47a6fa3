package daemon

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
)

// An attach waiting on the Docker Engine (or on a cluster round trip)
// must not stop the daemon from answering other requests.
func TestAPIAnswersWhileAttachWaitsOnDocker(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.50.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	sb.addNetns("/proc/4242/ns/net")
	entered, release := make(chan struct{}), make(chan struct{})
	sb.dockerPID = func(string) (int, error) {
		close(entered)
		<-release
		return 4242, nil
	}
	attached := make(chan error, 1)
	go func() {
		_, err := d.Attach(api.AttachRequest{Network: "web", Name: "slow", Docker: "slow"})
		attached <- err
	}()
	<-entered
	answered := make(chan int, 1)
	go func() {
		n := len(d.Networks()) + len(d.Containers()) + len(d.Endpoints())
		if _, err := d.Network("web"); err == nil {
			answered <- n
		}
	}()
	select {
	case n := <-answered:
		if n != 1 {
			t.Errorf("while the attach waits: %d networks, containers and endpoints, want the network only", n)
		}
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("the API did not answer while an attach waited on Docker")
	}
	// A second attach of the same name, and removing the network, are
	// refused while the first is in flight.
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "slow", Netns: "/proc/4242/ns/net"}); err == nil {
		t.Error("a second attach of the same container was accepted while the first was in flight")
	}
	if err := d.RemoveNetwork("web"); err == nil {
		t.Error("the network was removed while an attach to it was in flight")
	}
	close(release)
	if err := <-attached; err != nil {
		t.Fatalf("attach: %v", err)
	}
	eps := d.Endpoints()
	if len(eps) != 1 || eps[0].State != "up" {
		t.Fatalf("endpoints after the attach: %+v", eps)
	}
}

// A network create waits for every member to confirm its claim; the
// daemon must answer other requests meanwhile. The other member here is a
// bare cluster node whose answer blocks until released.
func TestAPIAnswersWhileNetworkCreateWaitsOnTheCluster(t *testing.T) {
	dir := t.TempDir()
	d := newTestDaemon(t, newFakeSandbox(), dir)
	// Closed before the test's directory is removed: a daemon left running
	// writes its state there meanwhile ("TempDir RemoveAll cleanup:
	// directory not empty").
	defer d.Close()
	key, err := cluster.LoadKeyFile(filepath.Join(dir, "cluster.key"))
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("127.0.0.2")
	other, err := cluster.Start(cluster.Config{
		NodeName: "slow", BindAddr: addr, AdvertiseAddr: addr, GossipPort: freePort(t, addr), Key: key,
		ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond, ClaimTimeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	blocking := func(group, resource string) []cluster.Entry {
		once.Do(func() { close(entered) })
		<-release
		return nil
	}
	if err := other.DefineClaims(tblNetClaims, netClaimsConflict, blocking); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Join([]string{d.cfg.Advertise.String() + ":" + fmt.Sprint(d.cfg.GossipPort)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other member alive", func() bool {
		for _, m := range d.cl.Members() {
			if m.Name == "slow" && m.State == cluster.StateAlive {
				return true
			}
		}
		return false
	})
	created := make(chan error, 1)
	go func() {
		_, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
		created <- err
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the create never asked the other member")
	}
	answered := make(chan int, 1)
	go func() { answered <- len(d.Networks()) + len(d.Containers()) }()
	select {
	case n := <-answered:
		if n != 0 {
			t.Errorf("while the create waits: %d networks and containers, want none", n)
		}
	case <-time.After(5 * time.Second):
		close(release)
		t.Fatal("the API did not answer while a network create waited on the cluster")
	}
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web"}); err == nil {
		t.Error("a second create of the same name was accepted while the first was in flight")
	}
	close(release)
	if err := <-created; err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := d.Network("web"); err != nil {
		t.Fatal(err)
	}
}

// A removal waiting on the kernel (processes slow to die, an interface or
// a namespace slow to go: the kernel's rtnl lock is shared by every
// namespace of the machine) must not stop the daemon from listing and
// from running other containers; the removed name stays taken until the
// removal is over.
func TestRemovalWaitingOnKernelDoesNotBlockRunOrPs(t *testing.T) {
	for _, op := range []string{"kill", "unplug", "delete"} {
		t.Run(op, func(t *testing.T) {
			sb := newFakeSandbox()
			d := newTestDaemon(t, sb, t.TempDir())
			if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.50.0.0/24"}); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "old", Create: true}); err != nil {
				t.Fatal(err)
			}
			entered, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			sb.mu.Lock()
			sb.slow = func(got string) {
				if got == op {
					once.Do(func() { close(entered) })
					<-release
				}
			}
			sb.mu.Unlock()
			removed := make(chan error, 1)
			go func() { removed <- d.RemoveContainer("old") }()
			<-entered
			answered := make(chan error, 1)
			go func() {
				d.Containers()
				_, err := d.Attach(api.AttachRequest{Network: "web", Name: "new", Create: true})
				answered <- err
			}()
			select {
			case err := <-answered:
				if err != nil {
					t.Errorf("run while a removal waits in %s: %v", op, err)
				}
			case <-time.After(5 * time.Second):
				close(release)
				<-removed
				t.Fatalf("ps and run did not answer while a removal waited in %s", op)
			}
			if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "old", Create: true}); err == nil {
				t.Errorf("the name of a container being removed (in %s) was taken again", op)
			}
			close(release)
			if err := <-removed; err != nil {
				t.Fatalf("rm: %v", err)
			}
			if _, err := d.Container("old"); err == nil {
				t.Error("the container is still there after rm")
			}
			if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "old", Create: true}); err != nil {
				t.Errorf("run of the name again after rm: %v", err)
			}
		})
	}
}

// A detach waiting on the kernel to delete the interface must not stop the
// daemon from running other containers.
func TestDetachWaitingOnKernelDoesNotBlockRun(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.50.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "c1", Create: true}); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	sb.mu.Lock()
	sb.slow = func(op string) {
		if op == "unplug" {
			once.Do(func() { close(entered) })
			<-release
		}
	}
	sb.mu.Unlock()
	detached := make(chan error, 1)
	go func() { detached <- d.Detach("c1", "web") }()
	<-entered
	answered := make(chan error, 1)
	go func() {
		_, err := d.Attach(api.AttachRequest{Network: "web", Name: "c2", Create: true})
		answered <- err
	}()
	select {
	case err := <-answered:
		if err != nil {
			t.Errorf("run while a detach waits on the kernel: %v", err)
		}
	case <-time.After(5 * time.Second):
		close(release)
		<-detached
		t.Fatal("run did not answer while a detach waited on the kernel")
	}
	close(release)
	if err := <-detached; err != nil {
		t.Fatalf("detach: %v", err)
	}
	c, err := d.Container("c1")
	if err != nil || len(c.Endpoints) != 0 {
		t.Fatalf("after detach: %+v, %v; want c1 with no endpoint", c, err)
	}
	if _, err := d.Attach(api.AttachRequest{Network: "web", Name: "c1", Netns: c.Netns}); err != nil {
		t.Errorf("attach again after the detach: %v", err)
	}
}
