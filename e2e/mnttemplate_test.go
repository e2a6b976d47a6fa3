package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/mounttest"
	"golang.org/x/sys/unix"
)

// mountsOf returns the number of mounts of process pid and those of them
// under /run/netns (named network namespaces).
func mountsOf(t *testing.T, pid int) (all int, netns []string) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		all++
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], "/run/netns") {
			netns = append(netns, f[4])
		}
	}
	return all, netns
}

// TestContainersStartFromMountTemplate: with --mount-template, a
// container's process starts from the daemon's template, not from a copy
// of the host's mount namespace, which holds every container's netns
// mount: the 21st container has as many mounts as the 1st and none under
// /run/netns. It sees a mount made on the host after the daemon started
// under a shared mount (not under a private one: the template is copied
// once; this machine's root mount is private, hence `always`), keeps the
// CLI's working directory and gets the daemon's resolv.conf; exec and
// --net container: start from it too. A restarted daemon makes its
// template again (now with the private mount).
func TestContainersStartFromMountTemplate(t *testing.T) {
	e := newTestbed(t, 1, "--mount-template", "always")[0]
	shared, private := t.TempDir(), t.TempDir()
	mounttest.BindSelf(t, shared, unix.MS_SHARED)
	mounttest.BindSelf(t, private, unix.MS_PRIVATE)
	if err := e.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	sharedMarker, privateMarker := mounttest.MountMarker(t, shared, "late"), mounttest.MountMarker(t, private, "late")
	e.network("mt", "10.78.0.0/24")
	for i := range 20 {
		e.run(fmt.Sprintf("m%02d", i), "mt")
	}
	// A container's process, once it runs sleep: `run -d` returns when
	// the init step is exec'd, before it has made its mounts.
	pid := func(name string) int {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			c, ok := e.container(name)
			if ok && len(c.PIDs) == 1 {
				if comm, _ := os.ReadFile("/proc/" + strconv.Itoa(c.PIDs[0]) + "/comm"); string(comm) == "sleep\n" {
					return c.PIDs[0]
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("container %s: no process running sleep (%+v)", name, c)
			}
		}
	}
	first, firstNetns := mountsOf(t, pid("m00"))
	last, lastNetns := mountsOf(t, pid("m19"))
	if first != last || len(firstNetns)+len(lastNetns) > 0 {
		c, _ := e.container("m19")
		for _, p := range c.PIDs {
			dir := "/proc/" + strconv.Itoa(p)
			cmd, _ := os.ReadFile(dir + "/cmdline")
			mnt, _ := os.Readlink(dir + "/ns/mnt")
			net, _ := os.Readlink(dir + "/ns/net")
			tasks, _ := os.ReadDir(dir + "/task")
			st, _ := os.ReadFile(dir + "/status")
			t.Logf("m19 pid %d: %q mnt %s net %s, %d tasks; %s", p, strings.ReplaceAll(string(cmd), "\x00", " "), mnt, net, len(tasks), strings.Split(string(st), "\n")[:8])
			mi, _ := os.ReadFile(dir + "/mountinfo")
			t.Logf("its mounts:\n%s", mi)
		}
		var st unix.Stat_t
		unix.Stat(filepath.Join(e.h.StateDir, "mnt", "template"), &st)
		t.Logf("the template is mnt:[%d]", st.Ino)
		t.Errorf("the 1st container has %d mounts (%v under /run/netns), the 20th %d (%v)", first, firstNetns, last, lastNetns)
	}

	script := "pwd; cat " + sharedMarker + "; echo; test -e " + privateMarker + " && echo private-seen; " +
		"grep -c ' /run/netns' /proc/self/mountinfo; head -1 /etc/resolv.conf"
	wd := t.TempDir()
	want := wd + "\nlate\n0\nnameserver 127.0.0.11\n"
	check := func(what string, args ...string) {
		t.Helper()
		cmd := e.h.Command(context.Background(), args...)
		var out, errOut bytes.Buffer
		cmd.Dir, cmd.Stdout, cmd.Stderr = wd, &out, &errOut
		if err := cmd.Run(); err != nil && !strings.Contains(err.Error(), "exit status 1") {
			t.Fatalf("%s: %v: %s", what, err, errOut.String())
		}
		if out.String() != want {
			t.Errorf("%s printed:\n%s\nwant:\n%s\nstderr: %s", what, out.String(), want, errOut.String())
		}
	}
	check("run", "run", "--rm", "--network", "mt", "--name", "m20", "--", "sh", "-c", script)
	check("exec", "exec", "m00", "--", "sh", "-c", script)
	check("run --net container:", "run", "--net", "container:m00", "--", "sh", "-c", script)

	// From a working directory the template does not have (the private
	// mount made after it), a process starts from a copy of the host's
	// namespace instead, and the CLI says so.
	lateDir := filepath.Dir(privateMarker)
	for _, args := range [][]string{
		{"exec", "m00", "--", "cat", "marker"},
		{"run", "--rm", "--network", "mt", "--name", "m23", "--", "cat", "marker"},
		{"run", "-d", "--network", "mt", "--name", "m24", "--", "sleep", "infinity"},
	} {
		cmd := e.h.Command(context.Background(), args...)
		var out, errOut bytes.Buffer
		cmd.Dir, cmd.Stdout, cmd.Stderr = lateDir, &out, &errOut
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s from %s: %v: %s", args[0], lateDir, err, errOut.String())
		}
		if args[1] != "-d" && out.String() != "late" {
			t.Errorf("%s from %s printed %q, want the private mount's marker", args[0], lateDir, out.String())
		}
		if !strings.Contains(errOut.String(), "not started from the mount template") {
			t.Errorf("%s %s from %s: stderr %q does not say that the template was not used", args[0], args[1], lateDir, errOut.String())
		}
	}

	if err := e.h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := e.h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	// The restarted daemon made its template again, from the host's
	// namespace as it is now: with the private mount.
	want = wd + "\nlate\nprivate-seen\n0\nnameserver 127.0.0.11\n"
	check("run after a restart", "run", "--rm", "--network", "mt", "--name", "m21", "--", "sh", "-c", script)
	e.run("m22", "mt")
	if _, netns := mountsOf(t, pid("m22")); len(netns) > 0 {
		t.Errorf("after a restart, a container has mounts under /run/netns: %v", netns)
	}
	e.mustPing("m22", e.ip("m00"))
}
