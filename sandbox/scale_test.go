//go:build linux

package sandbox

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/netdev"
)

// TestKernelStepsScale times the kernel's share of a `vxmesh run -d` as the
// number of containers on the host grows, without the daemon: per
// container, a named namespace (with its resolv.conf), a TAP plugged into
// it (created here, moved, renamed, addressed, routed), its main process
// started in it through the init step (Command, as the monitor does), and
// a Go binary started and waited for (the CLI's and the monitor's own
// start). It logs the average of each step over the first and the last ten
// containers, in wall time and, for the steps made in this process
// (netns, plug), in this process's CPU time too, which other work on a
// busy machine disturbs less. Set VXMESH_KERNEL_SCALE to the number of
// containers; it is a measurement, not a check, and it skips otherwise.
func TestKernelStepsScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("VXMESH_KERNEL_SCALE"))
	if n < 100 {
		t.Skip("set VXMESH_KERNEL_SCALE (at least 100) to the number of containers")
	}
	requireRoot(t)
	const steps = 4
	names := [steps]string{"netns", "plug", "process", "go-binary"}
	lat := make([][steps]time.Duration, n)
	cpu := make([][2]time.Duration, n) // netns, plug
	prefix := uniqueName()
	var taps []*netdev.TAP
	var cmds []*Cmd
	t.Cleanup(func() {
		for _, c := range cmds {
			c.Signal(syscall.SIGKILL)
			c.Wait()
		}
		for _, tap := range taps {
			tap.SetPersist(false)
			tap.Close()
		}
		for i := range n {
			DeleteNamedNetns(fmt.Sprintf("%s-%d", prefix, i))
		}
	})
	subnet := netip.MustParsePrefix("10.200.0.0/16")
	for i := range n {
		name := fmt.Sprintf("%s-%d", prefix, i)
		t0, c0 := time.Now(), processCPU(t)
		path, err := CreateNamedNetns(name)
		if err == nil {
			err = WriteNetnsResolvConf(name)
		}
		if err != nil {
			t.Fatal(err)
		}
		t1, c1 := time.Now(), processCPU(t)
		ip := subnet.Addr().As4()
		ip[2], ip[3] = byte((i+2)>>8), byte(i+2)
		tap, err := Plug(path, IfaceConfig{
			MAC:     net.HardwareAddr{0x02, 0x42, 10, 200, ip[2], ip[3]},
			Addr:    netip.PrefixFrom(netip.AddrFrom4(ip), 16),
			Gateway: netip.MustParseAddr("10.200.0.1"),
			MTU:     1450,
		})
		if err != nil {
			t.Fatal(err)
		}
		taps = append(taps, tap)
		t2, c2 := time.Now(), processCPU(t)
		cpu[i] = [2]time.Duration{c1 - c0, c2 - c1}
		c := Command(path, "", []string{"sleep", "infinity"})
		c.Detach = true
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, c)
		t3 := time.Now()
		if out, err := exec.Command(os.Args[0], "-test.run=^$").CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		t4 := time.Now()
		lat[i] = [steps]time.Duration{t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), t4.Sub(t3)}
	}
	avg := func(from, to, step int) time.Duration {
		var sum time.Duration
		for _, l := range lat[from:to] {
			sum += l[step]
		}
		return sum / time.Duration(to-from)
	}
	var first, last time.Duration
	for s := range steps {
		f, l := avg(0, 10, s), avg(n-10, n, s)
		first, last = first+f, last+l
		t.Logf("%-9s first 10 avg %8v, last 10 avg %8v (%.0f%%)", names[s], f.Round(time.Microsecond), l.Round(time.Microsecond), 100*float64(l)/float64(f))
	}
	t.Logf("%-9s first 10 avg %8v, last 10 avg %8v (%.0f%%)", "all", first.Round(time.Microsecond), last.Round(time.Microsecond), 100*float64(last)/float64(first))
	for s, name := range []string{"netns", "plug"} {
		var f, l time.Duration
		for i := range 10 {
			f, l = f+cpu[i][s], l+cpu[n-10+i][s]
		}
		f, l = f/10, l/10
		t.Logf("%-9s CPU: first 10 avg %8v, last 10 avg %8v (%.0f%%)", name, f.Round(time.Microsecond), l.Round(time.Microsecond), 100*float64(l)/float64(f))
	}
	// Per hundred, averages of the last 50 (less noisy than 10 on a
	// shared machine).
	for k := 100; k <= n; k += 100 {
		var sum time.Duration
		line := ""
		for s := range steps {
			a := avg(k-50, k, s)
			sum += a
			line += fmt.Sprintf(" %s %v", names[s], a.Round(10*time.Microsecond))
		}
		t.Logf("%4d containers, avg of the last 50: all %v;%s", k, sum.Round(10*time.Microsecond), line)
	}
}

// processCPU returns the CPU time this process used so far, all its
// threads and the kernel's work on their behalf included.
func processCPU(t *testing.T) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ts.Nano())
}
