package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeProc builds a proc-like tree at a temporary directory: procs
// processes spread over namespaces network namespaces. As in /proc, each
// process's ns/net is a link whose text is "net:[INODE]" (here it leads
// nowhere) and self/ns/net leads to a file on the namespaces' file system
// (here a regular file, whose device the namespaces share). Every fifth
// namespace is instead a regular file that its processes' links lead to
// (with text that is not of that form). It returns the directory and each
// namespace's identity with its PIDs.
func fakeProc(t testing.TB, procs, namespaces int) (string, map[NetnsID][]int) {
	t.Helper()
	dir := t.TempDir()
	nsfs := filepath.Join(dir, "nsfs")
	if err := os.WriteFile(nsfs, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(nsfs, &st); err != nil {
		t.Fatal(err)
	}
	targets := make([]string, namespaces)
	ids := make([]NetnsID, namespaces)
	for i := range namespaces {
		ids[i] = NetnsID{Dev: st.Dev, Ino: 4026532000 + uint64(i)}
		targets[i] = ids[i].String()
		if i%5 != 4 {
			continue
		}
		p := filepath.Join(dir, fmt.Sprintf("ns%d", i))
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		var fst unix.Stat_t
		if err := unix.Stat(p, &fst); err != nil {
			t.Fatal(err)
		}
		targets[i], ids[i] = p, NetnsID{Dev: fst.Dev, Ino: fst.Ino}
	}
	want := map[NetnsID][]int{}
	for pid := 1; pid <= procs; pid++ {
		d := filepath.Join(dir, strconv.Itoa(pid), "ns")
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		ns := pid % namespaces
		if err := os.Symlink(targets[ns], filepath.Join(d, "net")); err != nil {
			t.Fatal(err)
		}
		want[ids[ns]] = append(want[ids[ns]], pid)
	}
	// Not processes: skipped.
	os.MkdirAll(filepath.Join(dir, "self", "ns"), 0o700)
	if err := os.Symlink(nsfs, filepath.Join(dir, "self", "ns", "net")); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "99999"), 0o700) // a process gone (no ns)
	return dir, want
}

// TestProcNetnsPIDsMapsEveryNamespaceInOneScan: one scan maps every
// namespace to its processes, from the text of their ns/net links (which
// here lead nowhere), or by following a link whose text is not a
// namespace's.
func TestProcNetnsPIDsMapsEveryNamespaceInOneScan(t *testing.T) {
	dir, want := fakeProc(t, 40, 10)
	got, err := procNetnsPIDs(dir, 0)
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
	if _, err := procNetnsPIDs(filepath.Join(dir, "missing"), 0); err == nil {
		t.Error("a missing proc directory gave no error")
	}
}

// TestProcNetnsPIDsLeavesOutTheCaller: the calling process is no
// namespace's process, even when its main thread is in a container's
// namespace (the daemon's main thread running a goroutine that makes
// sockets there): listed, it kept an exited container "running" and made
// `start` take it for one still running.
func TestProcNetnsPIDsLeavesOutTheCaller(t *testing.T) {
	dir, want := fakeProc(t, 40, 10)
	const self = 13
	got, err := procNetnsPIDs(dir, self)
	if err != nil {
		t.Fatal(err)
	}
	for id, pids := range want {
		pids = slices.DeleteFunc(slices.Clone(pids), func(p int) bool { return p == self })
		if !slices.Equal(got[id], pids) {
			t.Errorf("namespace %v: pids %v, want %v", id, got[id], pids)
		}
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
			m, _ := procNetnsPIDs(dir, 0)
			for id := range want {
				_ = m[id]
			}
		}
	})
}

// BenchmarkScanThisHost scans this host's /proc as ps does, reading each
// process's namespace from its link's text, against following each link
// (stat) as the scan did before.
func BenchmarkScanThisHost(b *testing.B) {
	b.Run("link-text", func(b *testing.B) {
		for b.Loop() {
			if err := scanProcNetns("/proc", func(int, NetnsID) {}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("follow", func(b *testing.B) {
		for b.Loop() {
			ents, err := os.ReadDir("/proc")
			if err != nil {
				b.Fatal(err)
			}
			for _, e := range ents {
				if _, err := strconv.Atoi(e.Name()); err == nil {
					var st unix.Stat_t
					unix.Stat("/proc/"+e.Name()+"/ns/net", &st)
				}
			}
		}
	})
}

func TestParseNetnsLink(t *testing.T) {
	for in, want := range map[string]uint64{"net:[4026531840]": 4026531840, "net:[0]": 0, "net:[18446744073709551615]": 1<<64 - 1} {
		if got, ok := parseNetnsLink([]byte(in)); !ok || got != want {
			t.Errorf("parseNetnsLink(%q) = %d, %v, want %d", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "net:[]", "net:[12", "net:12]", "mnt:[4026531840]", "net:[012]", "net:[-1]", "net:[+1]",
		"net:[18446744073709551616]", "net:[1 ]", "net:[4026531840]x", "/run/netns/a"} {
		if v, ok := parseNetnsLink([]byte(in)); ok {
			t.Errorf("parseNetnsLink(%q) = %d, want refused", in, v)
		}
	}
}

// FuzzParseNetnsLink: what parses is exactly the kernel's form of the
// number parsed.
func FuzzParseNetnsLink(f *testing.F) {
	for _, s := range []string{"net:[4026531840]", "net:[0]", "net:[]", "net:[012]", "net:[18446744073709551616]", "mnt:[1]", "/proc/1/ns/net"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, ok := parseNetnsLink(b)
		if ok && string(b) != (NetnsID{Ino: v}).String() {
			t.Fatalf("parseNetnsLink(%q) = %d, which the kernel writes %q", b, v, NetnsID{Ino: v}.String())
		}
		if !ok && strings.HasPrefix(string(b), "net:[") {
			// Refused: then it is not the form of any number.
			if n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(string(b), "net:["), "]"), 10, 64); err == nil && string(b) == (NetnsID{Ino: n}).String() {
				t.Fatalf("parseNetnsLink(%q) refused the kernel's form of %d", b, n)
			}
		}
	})
}
