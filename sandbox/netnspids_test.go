package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeProc builds a proc-like tree at a temporary directory: procs
// processes spread over namespaces network namespaces, each namespace a
// regular file that the processes' ns/net entries link to (stat follows
// the link, as it does for /proc/PID/ns/net). It returns the directory and
// each namespace's identity with its PIDs.
func fakeProc(t testing.TB, procs, namespaces int) (string, map[NetnsID][]int) {
	t.Helper()
	dir := t.TempDir()
	ids := make([]NetnsID, namespaces)
	for i := range namespaces {
		p := filepath.Join(dir, fmt.Sprintf("ns%d", i))
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		ids[i] = NetnsID{Dev: st.Dev, Ino: st.Ino}
	}
	want := map[NetnsID][]int{}
	for pid := 1; pid <= procs; pid++ {
		d := filepath.Join(dir, strconv.Itoa(pid), "ns")
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		ns := pid % namespaces
		if err := os.Symlink(filepath.Join(dir, fmt.Sprintf("ns%d", ns)), filepath.Join(d, "net")); err != nil {
			t.Fatal(err)
		}
		want[ids[ns]] = append(want[ids[ns]], pid)
	}
	// Not processes: skipped.
	os.MkdirAll(filepath.Join(dir, "self"), 0o700)
	os.MkdirAll(filepath.Join(dir, "99999"), 0o700) // a process gone (no ns)
	return dir, want
}

func TestProcNetnsPIDsMapsEveryNamespaceInOneScan(t *testing.T) {
	dir, want := fakeProc(t, 30, 4)
	got, err := procNetnsPIDs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d namespaces, want %d: %v", len(got), len(want), got)
	}
	for id, pids := range want {
		if !slices.Equal(got[id], pids) {
			t.Errorf("namespace %v: pids %v, want %v", id, got[id], pids)
		}
	}
	if _, err := procNetnsPIDs(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing proc directory gave no error")
	}
}

// BenchmarkListPIDs compares listing the processes of every namespace
// with one scan of a proc-like tree per namespace (as ps did) and with one
// scan in all: 1,200 processes in 400 namespaces.
func BenchmarkListPIDs(b *testing.B) {
	dir, want := fakeProc(b, 1200, 400)
	b.Run("scan-per-namespace", func(b *testing.B) {
		for b.Loop() {
			for id := range want {
				var pids []int
				scanProcNetns(dir, func(pid int, ns NetnsID) {
					if ns == id {
						pids = append(pids, pid)
					}
				})
			}
		}
	})
	b.Run("one-scan", func(b *testing.B) {
		for b.Loop() {
			m, _ := procNetnsPIDs(dir)
			for id := range want {
				_ = m[id]
			}
		}
	})
}
