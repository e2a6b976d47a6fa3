package daemon

import (
	"fmt"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// benchRuns is how many containers BenchmarkRunThousand runs.
const benchRuns = 1000

// BenchmarkRunThousand runs 1,000 containers on one daemon (fake
// sandbox, real state directory) and reports the latency of the first and
// the last ten runs, and the state bytes written per run: the journal's
// records, against the snapshot a whole-state rewrite would write. Run it
// with -benchtime=1x.
func BenchmarkRunThousand(b *testing.B) {
	const runs = benchRuns
	for range b.N {
		d := newTestDaemon(b, newFakeSandbox(), b.TempDir())
		if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.30.0.0/16"}); err != nil {
			b.Fatal(err)
		}
		lat := make([]time.Duration, runs)
		d.mu.Lock()
		before := d.store.written
		d.mu.Unlock()
		for i := range runs {
			t0 := time.Now()
			if _, err := d.Attach(api.AttachRequest{Network: "web", Name: fmt.Sprintf("c%04d", i), Create: true}); err != nil {
				b.Fatal(err)
			}
			lat[i] = time.Since(t0)
		}
		d.mu.Lock()
		written := d.store.written - before
		snap, _ := jsonSize(d.currentState())
		d.mu.Unlock()
		d.Close()
		avg := func(ls []time.Duration) float64 {
			var sum time.Duration
			for _, l := range ls {
				sum += l
			}
			return float64(sum.Microseconds()) / float64(len(ls))
		}
		b.ReportMetric(avg(lat[:10]), "first10-µs/run")
		b.ReportMetric(avg(lat[runs-10:]), "last10-µs/run")
		b.ReportMetric(float64(written)/runs, "state-B/run")
		b.ReportMetric(float64(snap), "snapshot-B@1000")
	}
}
