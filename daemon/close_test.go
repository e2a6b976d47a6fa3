package daemon

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"

	"github.com/vxmesh/vxmesh/api"
)

// TestCloseStopsReconcile: once the daemon is closing, a reconcile that
// was waiting for the lock (the cluster watcher, an API call) changes
// nothing: it does not open the published ports shutdown just closed
// again, on a data plane that is going down.
func TestCloseStopsReconcile(t *testing.T) {
	d := serviceDaemon(t)
	p := freeTCPPort(t)
	mustCreateService(t, d, api.ServiceCreateRequest{Name: "api", Networks: []string{"web"}, Publish: []string{fmt.Sprintf("%d:80", p)}})
	listens := func() bool {
		c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			c.Close()
		}
		return !errors.Is(err, syscall.ECONNREFUSED)
	}
	if !listens() {
		t.Fatal("the published port does not listen")
	}
	d.Close()
	if listens() {
		t.Fatal("the published port still listens after Close")
	}
	d.mu.Lock()
	d.reconcile()
	open := len(d.mesh)
	d.mu.Unlock()
	if listens() || open != 0 {
		t.Fatalf("a reconcile after Close opened published ports again (%d listeners)", open)
	}
}
