package daemon

import (
	"fmt"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// BenchmarkBlockClaim measures the address step of a run that must claim
// a new block (every block this node holds is full) on a network with
// 100 and 1,000 endpoints: the claim should cost the same at both.
// Reported: the average µs of an allocation that claimed a block.
func BenchmarkBlockClaim(b *testing.B) {
	for _, eps := range []int{100, 1000} {
		b.Run(fmt.Sprintf("endpoints=%d", eps), func(b *testing.B) {
			d := newTestDaemon(b, newFakeSandbox(), b.TempDir())
			defer d.Close()
			if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.30.0.0/16"}); err != nil {
				b.Fatal(err)
			}
			for i := range eps {
				if _, err := d.Attach(api.AttachRequest{Network: "web", Name: fmt.Sprintf("c%04d", i), Create: true}); err != nil {
					b.Fatal(err)
				}
			}
			d.mu.Lock()
			n := d.networks["web"]
			d.mu.Unlock()
			// Let the work the runs set off (reconcile, DNS) settle.
			time.Sleep(500 * time.Millisecond)
			var claimTime, otherTime time.Duration
			claims := 0
			b.ResetTimer()
			for i := range b.N {
				before := len(d.cl.ClaimedBlocks("web"))
				t0 := time.Now()
				if _, err := d.allocateIP(fmt.Sprintf("x%d", i), n); err != nil {
					b.Fatal(err)
				}
				el := time.Since(t0)
				if len(d.cl.ClaimedBlocks("web")) > before {
					claimTime += el
					claims++
				} else {
					otherTime += el
				}
			}
			if claims > 0 {
				b.ReportMetric(float64(claimTime.Microseconds())/float64(claims), "claim-µs")
				b.ReportMetric(float64(claims), "claims")
				b.ReportMetric(float64(otherTime.Microseconds())/float64(b.N-claims), "other-µs")
			}
		})
	}
}
