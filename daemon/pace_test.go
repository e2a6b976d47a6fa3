package daemon

import (
	"fmt"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/cluster"
)

// A stream of cluster changes (other nodes' endpoints coming and going)
// drives passes of reconcile and of the DNS records at most one per
// minPassGap, not one per change, and the last change is still taken.
func TestClusterChangesArePacedNotOnePassEach(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	if err := d.cl.DefineTable("pacing", cluster.TableOptions{}); err != nil {
		t.Fatal(err)
	}
	const changes = 100
	rec0, dns0 := d.passes.reconcile.Load(), d.passes.dns.Load()
	start := time.Now()
	for i := range changes {
		if err := d.cl.Put("pacing", fmt.Sprint(i), []byte("x")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // the stream: about 100 changes/s
	}
	elapsed := time.Since(start)
	gen := d.cl.Generation()
	waitFor(t, "a DNS pass after the last change", func() bool {
		d.dns.rebuild.Lock()
		defer d.dns.rebuild.Unlock()
		return d.dns.builtGen >= gen
	})
	// One pass per gap, one more for the change that started the stream
	// and one for the tick of reconcileInterval.
	bound := uint64(elapsed/minPassGap) + 3
	rec, dns := d.passes.reconcile.Load()-rec0, d.passes.dns.Load()-dns0
	t.Logf("%d changes in %v: %d reconcile passes, %d DNS passes (bound %d)", changes, elapsed.Round(time.Millisecond), rec, dns, bound)
	if rec > bound || dns > bound {
		t.Fatalf("%d changes in %v drove %d reconcile and %d DNS passes, want at most %d each", changes, elapsed.Round(time.Millisecond), rec, dns, bound)
	}
}
