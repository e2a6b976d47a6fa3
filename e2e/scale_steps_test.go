package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The step timings of TestScaleOneHostContainers (VXMESH_E2E_STEPS set):
// where a `run` spends its time at container 10 and at container 900+.
// The daemon logs each attach's steps at debug level ("attach steps": the
// waits for its lock, namespace, address, interface, state, data plane,
// DNS) and each reconcile pass's duration; the test adds the client side
// it can time alone: a bare CLI start (`vxmesh version`) and a process
// started in a container's namespace (`vxmesh exec NAME -- true`, the
// init step a `run -d` also makes).

// scaleStepsOn restarts the daemon with debug logging when VXMESH_E2E_STEPS
// is set, has each `run -d` append its client-side timing to a file
// (VXMESH_RUN_TIMING) and returns that file's path; "" when not set.
func scaleStepsOn(t *testing.T, e *env) string {
	t.Helper()
	if os.Getenv("VXMESH_E2E_STEPS") == "" {
		return ""
	}
	timing := filepath.Join(t.TempDir(), "run-timing")
	t.Setenv("VXMESH_RUN_TIMING", timing)
	e.h.Flags = append(e.h.Flags, "--log-level", "debug")
	if err := e.h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := e.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	return timing
}

// logRunTiming logs, from the runs' own timing lines (the CLI's and the
// monitor's, in run order) and their wall times lat, the average of each
// part of a run over the first 10, the last 50 of each hundred and the
// last 10: the attach request, the monitor (of it, the main process's
// start and the report of its PID), and the rest (the CLI's own start and
// exit, nsenter). The first skip runs of the file are not counted.
func logRunTiming(t *testing.T, path string, skip, n int, lat []time.Duration) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var runs []map[string]time.Duration
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "run" {
			continue
		}
		m := map[string]time.Duration{}
		for _, kv := range f[2:] {
			if k, v, ok := strings.Cut(kv, "="); ok {
				m[k], _ = time.ParseDuration(v)
			}
		}
		runs = append(runs, m)
	}
	if len(runs) != skip+n {
		t.Fatalf("%d runs logged their timing, want %d", len(runs), skip+n)
	}
	runs = runs[skip:]
	avg := func(from, to int) string {
		var attach, monitor, start, report, rest time.Duration
		for i := from; i < to; i++ {
			r := runs[i]
			attach, monitor, start, report = attach+r["attach"], monitor+r["monitor"], start+r["start"], report+r["report"]
			rest += lat[i] - r["attach"] - r["monitor"]
		}
		k := time.Duration(to - from)
		return fmt.Sprintf("attach %v, monitor %v (process start %v, PID report %v), CLI start and exit %v",
			(attach / k).Round(10*time.Microsecond), (monitor / k).Round(10*time.Microsecond), (start / k).Round(10*time.Microsecond),
			(report / k).Round(10*time.Microsecond), (rest / k).Round(10*time.Microsecond))
	}
	t.Logf("run parts, first 10: %s", avg(0, 10))
	for k := 100; k <= n; k += 100 {
		t.Logf("run parts, %4d containers (last 50): %s", k, avg(k-50, k))
	}
	t.Logf("run parts, last 10: %s", avg(n-10, n))
}

// logProbeParts logs the medians of the parts of the probe runs p (from
// the runs' timing lines in the file at path), as logRunTiming does.
func logProbeParts(t *testing.T, path, label string, p probes) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var attach, monitor, start, rest []time.Duration
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "run" {
			continue
		}
		lat, ok := p.lat[f[1]]
		if !ok {
			continue
		}
		m := map[string]time.Duration{}
		for _, kv := range f[2:] {
			if k, v, ok := strings.Cut(kv, "="); ok {
				m[k], _ = time.ParseDuration(v)
			}
		}
		attach, monitor, start = append(attach, m["attach"]), append(monitor, m["monitor"]), append(start, m["start"])
		rest = append(rest, lat-m["attach"]-m["monitor"])
	}
	if len(attach) != len(p.lat) {
		t.Fatalf("%d probe runs logged their timing, want %d", len(attach), len(p.lat))
	}
	t.Logf("probe parts %s (medians): attach %v, monitor %v (process start %v), CLI start and exit %v",
		label, medianDur(attach), medianDur(monitor), medianDur(start), medianDur(rest))
}

// clientSteps times k bare CLI starts and k processes started in
// container name's namespace, and returns their averages.
func clientSteps(e *env, name string, k int) (cli, exec time.Duration) {
	e.t.Helper()
	for range k {
		t0 := time.Now()
		e.cli("version")
		t1 := time.Now()
		e.cli("exec", name, "--", "true")
		t2 := time.Now()
		cli += t1.Sub(t0)
		exec += t2.Sub(t1)
	}
	return cli / time.Duration(k), exec / time.Duration(k)
}

// stepLine is one "attach steps" or "reconcile pass" record of the log.
type stepLine struct {
	containers int
	steps      map[string]time.Duration
}

// readStepLines parses the daemon log's records with message msg: their
// "containers" count and every attribute that parses as a duration.
func readStepLines(t *testing.T, path, msg string) []stepLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []stepLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `msg="`+msg+`"`) {
			continue
		}
		l := stepLine{steps: map[string]time.Duration{}}
		for _, f := range strings.Fields(line) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			if k == "containers" {
				l.containers, _ = strconv.Atoi(v)
			} else if d, err := time.ParseDuration(v); err == nil {
				l.steps[k] = d
			}
		}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// logAttachSteps logs the average of each attach step over the first 10
// attaches, the last 50 of each hundred and the last 10, with what the
// run's wall time (lat) spent outside the attach (the CLI, the monitor,
// the init step, the main process report), and the reconcile passes'
// average and longest duration per hundred containers.
func logAttachSteps(t *testing.T, e *env, n int, lat []time.Duration) {
	t.Helper()
	attaches := readStepLines(t, e.h.LogFile, "attach steps")
	if len(attaches) < n {
		t.Fatalf("the daemon logged %d attach steps records, want %d (debug logging on?)", len(attaches), n)
	}
	attaches = attaches[len(attaches)-n:]
	var names []string
	for k := range attaches[0].steps {
		names = append(names, k)
	}
	slices.Sort(names)
	// avg describes the attaches from to to (their runs' order).
	avg := func(from, to int) string {
		var b strings.Builder
		ls := attaches[from:to]
		for _, k := range names {
			var sum time.Duration
			for _, l := range ls {
				sum += l.steps[k]
			}
			fmt.Fprintf(&b, " %s %v", k, (sum / time.Duration(len(ls))).Round(10*time.Microsecond))
		}
		var outside time.Duration
		for i, l := range ls {
			outside += lat[from+i] - l.steps["total"]
		}
		fmt.Fprintf(&b, "; run outside the attach %v", (outside / time.Duration(len(ls))).Round(10*time.Microsecond))
		return b.String()
	}
	t.Logf("attach steps, first 10:%s", avg(0, 10))
	for k := 100; k <= n; k += 100 {
		t.Logf("attach steps, %4d containers (last 50):%s", k, avg(k-50, k))
	}
	t.Logf("attach steps, last 10:%s", avg(n-10, n))
	passes := readStepLines(t, e.h.LogFile, "reconcile pass")
	for k := 100; k <= n; k += 100 {
		var sum, longest time.Duration
		count := 0
		for _, p := range passes {
			if p.containers > k-100 && p.containers <= k {
				sum += p.steps["took"]
				longest = max(longest, p.steps["took"])
				count++
			}
		}
		if count > 0 {
			t.Logf("reconcile passes, %4d containers: %d, avg %v, longest %v", k, count, (sum / time.Duration(count)).Round(10*time.Microsecond), longest.Round(10*time.Microsecond))
		}
	}
}

// kernelMounts is the number of mounts the kernel holds (mnt_cache
// objects in /proc/slabinfo, every mount namespace of the machine), or -1
// if unreadable.
func kernelMounts() int { return slabObjects("mnt_cache") }

// slabObjects is the number of live objects of the kernel's slab cache
// name (/proc/slabinfo), or -1.
func slabObjects(name string) int {
	b, err := os.ReadFile("/proc/slabinfo")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == name {
			n, err := strconv.Atoi(f[1])
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}
