package daemon

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"syscall"
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
		cpu := make([]time.Duration, runs+1) // process CPU time before each run
		heap0 := heapAfterGC()
		d.mu.Lock()
		before := d.store.written
		d.mu.Unlock()
		stopProfile := func() {}
		for i := range runs {
			if i == runs-200 {
				stopProfile = startCPUProfile(b, os.Getenv("VXMESH_BENCH_CPUPROFILE"))
			}
			cpu[i] = processCPU(b)
			t0 := time.Now()
			if _, err := d.Attach(api.AttachRequest{Network: "web", Name: fmt.Sprintf("c%04d", i), Create: true}); err != nil {
				b.Fatal(err)
			}
			lat[i] = time.Since(t0)
		}
		cpu[runs] = processCPU(b)
		stopProfile()
		// Idle: let the watchers settle, then weigh the heap and list.
		time.Sleep(500 * time.Millisecond)
		heap1 := heapAfterGC()
		if path := os.Getenv("VXMESH_BENCH_HEAPPROFILE"); path != "" {
			writeHeapProfile(b, path)
		}
		t0 := time.Now()
		const lists = 10
		for range lists {
			if cs := d.Containers(); len(cs) != runs {
				b.Fatalf("ps lists %d containers, want %d", len(cs), runs)
			}
		}
		ps := time.Since(t0) / lists
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
		cpuOf := func(from, to int) float64 {
			return float64((cpu[to] - cpu[from]).Microseconds()) / float64(to-from)
		}
		b.ReportMetric(avg(lat[:10]), "first10-µs/run")
		b.ReportMetric(avg(lat[runs-10:]), "last10-µs/run")
		// Process CPU time (all goroutines, so also the reconcile and DNS
		// work a run sets off): less sensitive to a loaded machine.
		b.ReportMetric(cpuOf(0, 10), "first10-cpu-µs/run")
		b.ReportMetric(cpuOf(runs-10, runs), "last10-cpu-µs/run")
		b.ReportMetric(cpuOf(0, 100), "first100-cpu-µs/run")
		b.ReportMetric(cpuOf(runs-100, runs), "last100-cpu-µs/run")
		b.ReportMetric(float64(time.Duration(cpu[runs]-cpu[0]).Seconds()), "total-cpu-s")
		b.ReportMetric(float64(heap1-heap0)/runs, "heap-B/endpoint")
		b.ReportMetric(float64(ps.Microseconds()), "ps-µs@1000")
		b.ReportMetric(float64(written)/runs, "state-B/run")
		b.ReportMetric(float64(snap), "snapshot-B@1000")
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// heapAfterGC is the live heap after a garbage collection.
func heapAfterGC() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// startCPUProfile profiles the CPU into path until stop is called (for
// the last runs, where the per-run cost that grows with the containers
// shows); path "" profiles nothing.
func startCPUProfile(b *testing.B, path string) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// writeHeapProfile writes the heap profile to path (for finding where the
// idle endpoints' bytes go).
func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}
