package daemon

import (
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
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
