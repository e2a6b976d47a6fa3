package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestScaleOneHostContainers measures one daemon with many containers
// (issue 14: "one host with 1,000 containers"): the wall time of each
// `vxmesh run`, of `vxmesh ps`, the daemon's RSS once idle, and the time
// from a restart until a ping between the first and the last container
// works. It is a benchmark, not a timed test: it runs only when
// VXMESH_E2E_SCALE is the number of containers, and logs the numbers.
//
//	VXMESH_E2E_SCALE=1000 go test -count=1 -timeout 60m -v ./e2e -run TestScaleOneHostContainers
func TestScaleOneHostContainers(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("VXMESH_E2E_SCALE"))
	if n < 2 {
		t.Skip("set VXMESH_E2E_SCALE to the number of containers to run")
	}
	e := newEnv(t)
	profDir := os.Getenv("VXMESH_E2E_PROFILE_DIR")
	if profDir != "" {
		// Restart with the debug listener (kept for the restarts below).
		e.h.Flags = append(e.h.Flags, "--debug-addr", scaleDebugAddr)
		if err := e.h.StopDaemon(); err != nil {
			t.Fatal(err)
		}
		if err := e.h.StartDaemon(); err != nil {
			t.Fatal(err)
		}
	}
	e.network("sc", "10.77.0.0/16")
	rss0 := daemonRSS(t, e)
	lat := make([]time.Duration, n)
	name := func(i int) string { return fmt.Sprintf("s%04d", i) }
	for i := range n {
		t0 := time.Now()
		e.cli("run", "-d", "--network", "sc", "--name", name(i), "--", "sleep", "infinity")
		lat[i] = time.Since(t0)
		if (i+1)%100 == 0 {
			t.Logf("%d containers: run %v (avg of the last 10: %v)", i+1, lat[i].Round(time.Millisecond), avgDur(lat[i-9:i+1]))
		}
	}
	first, last := avgDur(lat[:10]), avgDur(lat[n-10:])
	t.Logf("run wall time: first 10 avg %v, last 10 avg %v (%.0f%%)", first, last, 100*float64(last)/float64(first))
	time.Sleep(3 * time.Second) // idle
	t.Logf("daemon RSS: %d MB empty, %d MB with %d idle containers", rss0>>20, daemonRSS(t, e)>>20, n)
	if profDir != "" {
		saveDebug(t, e, profDir, "idle")
	}
	var ps time.Duration
	for range 5 {
		t0 := time.Now()
		e.cli("ps")
		ps += time.Since(t0)
	}
	t.Logf("vxmesh ps with %d containers: %v (avg of 5, CLI included)", n, ps/5)
	to := e.ip(name(n - 1))
	e.mustPing(name(0), to)
	for _, mode := range []string{"SIGTERM", "SIGKILL"} {
		var err error
		if mode == "SIGTERM" {
			err = e.h.StopDaemon()
		} else {
			err = e.h.KillDaemon()
		}
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		t0 := time.Now()
		var profiled chan struct{}
		if profDir != "" {
			profiled = make(chan struct{})
			go func() {
				defer close(profiled)
				profileStart(e, fmt.Sprintf("%s/restart-%s-cpu.pb.gz", profDir, mode), 8*time.Second)
			}()
		}
		if err := e.h.StartDaemon(); err != nil {
			t.Fatal(err)
		}
		ready := time.Since(t0)
		eventually(t, 60*time.Second, func() error { return e.pingOnce(name(0), to) }, "after a restart (%s), %s cannot ping %s", mode, name(0), to)
		t.Logf("restart after %s with %d containers: API ready in %v, %s pings %s after %v", mode, n, ready.Round(time.Millisecond), name(0), name(n-1), time.Since(t0).Round(time.Millisecond))
		if profiled != nil {
			<-profiled
		}
	}
}

// scaleDebugAddr is the daemon's --debug-addr in the scale test with
// VXMESH_E2E_PROFILE_DIR (inside the host's namespace).
const scaleDebugAddr = "127.0.0.1:6061"

// saveDebug writes the daemon's heap and goroutine profiles and memory
// statistics to dir, named after tag, fetched inside the host's namespace.
func saveDebug(t *testing.T, e *env, dir, tag string) {
	t.Helper()
	for name, path := range map[string]string{
		"heap.pb.gz": "/debug/pprof/heap?gc=1", "goroutine.txt": "/debug/pprof/goroutine?debug=1",
		"memstats.json": "/debug/memstats",
	} {
		file := fmt.Sprintf("%s/%s-%s", dir, tag, name)
		out, err := exec.Command("nsenter", "--net="+e.h.NetnsPath, "--", "curl", "-sSf", "-o", file, "http://"+scaleDebugAddr+path).CombinedOutput()
		if err != nil {
			t.Fatalf("fetch %s: %v: %s", path, err, out)
		}
	}
	t.Logf("debug profiles saved to %s/%s-*", dir, tag)
}

// profileStart takes a CPU profile of the daemon's first seconds from
// the moment its debug listener answers, polling for it until timeout.
func profileStart(e *env, file string, timeout time.Duration) {
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		err := exec.Command("nsenter", "--net="+e.h.NetnsPath, "--", "curl", "-sSf", "-o", file,
			"http://"+scaleDebugAddr+"/debug/pprof/profile?seconds=6").Run()
		if err == nil {
			return
		}
	}
}

func avgDur(ls []time.Duration) time.Duration {
	var sum time.Duration
	for _, l := range ls {
		sum += l
	}
	return (sum / time.Duration(len(ls))).Round(100 * time.Microsecond)
}

// daemonRSS is the daemon's resident set size (VmRSS) in bytes.
func daemonRSS(t *testing.T, e *env) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", e.h.DaemonPID()))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in the daemon's status")
	return 0
}
