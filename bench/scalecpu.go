package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// cpuTicks is one reading of where the machine's CPU went, in clock ticks
// (userHZ): the bench itself, the kernel's own threads (children of
// kthreadd: the workqueues that tear down network namespaces, softirq
// threads) and the whole machine's busy time (/proc/stat), which also
// holds whatever else runs on it.
type cpuTicks struct {
	bench, busy, total uint64
	kthreads           map[string]uint64 // by PID
}

// kernelTicksSince is the CPU the kernel's threads used from a to c: a
// thread that exited meanwhile is not counted, one that started is
// counted whole.
func kernelTicksSince(a, c cpuTicks) uint64 {
	var sum uint64
	for pid, t := range c.kthreads {
		if was, ok := a.kthreads[pid]; ok && was <= t {
			sum += t - was
		} else if !ok {
			sum += t
		}
	}
	return sum
}

// readCPUTicks reads the bench's and the kernel threads' CPU and the
// machine's busy and total time.
func readCPUTicks() (cpuTicks, error) {
	var c cpuTicks
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return c, err
	}
	if c.bench, err = parseProcStat(b); err != nil {
		return c, err
	}
	if b, err = os.ReadFile("/proc/stat"); err != nil {
		return c, err
	}
	if c.busy, c.total, err = parseProcStatTotal(b); err != nil {
		return c, err
	}
	c.kthreads = kernelThreadTicks("/proc")
	return c, nil
}

// parseProcStatTotal returns the busy and total ticks of /proc/stat's "cpu"
// line: total is every field, busy all but idle and iowait.
func parseProcStatTotal(b []byte) (busy, total uint64, err error) {
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, errors.New("/proc/stat: no cpu line first")
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: cpu field %d: %w", i+1, err)
		}
		if i >= 8 { // guest and guest_nice are already in user and nice
			break
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, nil
}

// kernelThreadTicks returns the CPU of each kernel thread of the proc
// file system at proc (kthreadd, PID 2, and its children), by PID.
func kernelThreadTicks(proc string) map[string]uint64 {
	ms, _ := filepath.Glob(filepath.Join(proc, "[0-9]*", "stat"))
	out := map[string]uint64{}
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		if !kernelThread(b) {
			continue
		}
		if t, err := parseProcStat(b); err == nil {
			out[filepath.Base(filepath.Dir(m))] = t
		}
	}
	return out
}

// kernelThread reports whether a /proc/PID/stat is kthreadd's (PID 2) or
// one of its children's.
func kernelThread(b []byte) bool {
	s := string(b)
	pid, _, _ := strings.Cut(s, " ")
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(s[i+1:])
	return len(f) > 1 && (pid == "2" || f[1] == "2")
}
