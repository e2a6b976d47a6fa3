//go:build linux

package sandbox

import (
	"bufio"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// roProcSysEnv tells the re-executed test binary of TestSysctlsWithReadOnlyProcSys
// that it runs in its own mount namespace, where it may remount /proc/sys.
const roProcSysEnv = "VXMESH_TEST_RO_PROC_SYS"

// TestSysctlsWithReadOnlyProcSys: Plug and the fast path set the
// container's sysctls without the process's /proc/sys (read-only in a
// container; and each lookup there compares the entries of every
// namespace whose sysctls were looked up, so its cost grew with the
// containers): with /proc/sys mounted read-only, the container's
// interface is made and ignores router advertisements, and
// EnableFastPath sets tcp_fwmark_accept and fwmark_reflect, which
// DisableFastPath restores. The test runs in a re-executed test binary
// with a mount namespace of its own.
func TestSysctlsWithReadOnlyProcSys(t *testing.T) {
	requireRoot(t)
	if os.Getenv(roProcSysEnv) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSysctlsWithReadOnlyProcSys$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), roProcSysEnv+"=1")
		// Go makes the new mount namespace's mounts private.
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: unix.CLONE_NEWNS}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestSysctlsWithReadOnlyProcSys") {
			t.Fatalf("in a mount namespace with /proc/sys read-only: %v\n%s", err, out)
		}
		return
	}
	if err := unix.Mount("/proc/sys", "/proc/sys", "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", "/proc/sys", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	_, ctrNS := newNamedNetns(t)
	err := RunInNetns(ctrNS, func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_ra", []byte("0\n"), 0)
	})
	if !errors.Is(err, unix.EROFS) {
		t.Fatalf("writing through the read-only /proc/sys: %v, want %v", err, unix.EROFS)
	}
	tap, err := Plug(ctrNS, IfaceConfig{IfName: "eth0", Addr: netip.MustParsePrefix("10.0.1.5/24")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	var acceptRA []byte
	err = RunInNetns(ctrNS, func() (err error) {
		acceptRA, err = os.ReadFile("/proc/sys/net/ipv6/conf/eth0/accept_ra")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(acceptRA)); got != "0" {
		t.Errorf("accept_ra = %s, want 0", got)
	}
	if v := fwmarkAccept(t, ctrNS); v != "0 0" {
		t.Fatalf("tcp_fwmark_accept, fwmark_reflect = %s in a new namespace, want 0 0", v)
	}
	if err := EnableFastPath(ctrNS); err != nil {
		t.Fatal(err)
	}
	if v := fwmarkAccept(t, ctrNS); v != "1 1" {
		t.Errorf("tcp_fwmark_accept, fwmark_reflect = %s after EnableFastPath, want 1 1", v)
	}
	if err := DisableFastPath(ctrNS); err != nil {
		t.Fatal(err)
	}
	if v := fwmarkAccept(t, ctrNS); v != "0 0" {
		t.Errorf("tcp_fwmark_accept, fwmark_reflect = %s after DisableFastPath, want 0 0", v)
	}
}

// TestCreateNamedNetnsLeavesOthersAlone: making a named namespace changes
// the propagation of NetnsDir's own mount only, not that of every
// namespace mounted under it (a recursive change walked them all, so
// its cost grew with the containers): a namespace whose mount was made
// private stays private when another one is made.
func TestCreateNamedNetnsLeavesOthersAlone(t *testing.T) {
	requireRoot(t)
	name, path := newNamedNetns(t)
	if err := unix.Mount("", path, "", unix.MS_PRIVATE, ""); err != nil {
		t.Fatal(err)
	}
	if got := mountPropagation(t, path); got != "private" {
		t.Fatalf("%s: propagation %q after making it private", name, got)
	}
	newNamedNetns(t)
	if got := mountPropagation(t, path); got != "private" {
		t.Errorf("%s: propagation %q after another namespace was made, want private", name, got)
	}
	if got := mountPropagation(t, NetnsDir); got != "shared" {
		t.Errorf("%s: propagation %q, want shared", NetnsDir, got)
	}
}

// mountPropagation returns "shared" or "private" (or "slave") for the
// topmost mount at path, from /proc/thread-self/mountinfo.
func mountPropagation(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 || filepath.Clean(fields[4]) != path {
			continue
		}
		got = "private"
		for _, opt := range fields[6:] {
			if opt == "-" {
				break
			}
			switch {
			case strings.HasPrefix(opt, "shared:"):
				got = "shared"
			case strings.HasPrefix(opt, "master:") && got != "shared":
				got = "slave"
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if got == "" {
		t.Fatalf("%s is not a mount point", path)
	}
	return got
}
