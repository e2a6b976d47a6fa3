//go:build linux

package sandbox

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/internal/mounttest"
	"golang.org/x/sys/unix"
)

// templateMountinfo returns the mount table of the template at path, as
// a thread that entered it reads it.
func templateMountinfo(t *testing.T, path string) string {
	t.Helper()
	var out []byte
	err := runInMountTemplate(path, "/proc/self/ns/net", func() error {
		b, err := os.ReadFile("/proc/thread-self/mountinfo")
		out = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestCommandStartsFromMountTemplate: a process started from a mount
// template holds none of the named namespaces (those made before the
// template and those made after), sees what the host mounted after the
// template was made under a shared mount (and, being a copy made once,
// not under a private one: the proof that it started from the template),
// keeps the caller's working directory and gets its resolv.conf.
func TestCommandStartsFromMountTemplate(t *testing.T) {
	requireRoot(t)
	newNamedNetns(t) // a container's namespace made before the template
	tplDir, shared, private := t.TempDir(), t.TempDir(), t.TempDir()
	mounttest.BindSelf(t, shared, unix.MS_SHARED)
	mounttest.BindSelf(t, private, unix.MS_PRIVATE)
	tpl, err := MakeMountTemplate(tplDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := RemoveMountTemplate(tplDir); err != nil {
			t.Error(err)
		}
	})
	if mi := templateMountinfo(t, tpl); strings.Contains(mi, " "+NetnsDir) {
		t.Errorf("the template holds %s:\n%s", NetnsDir, mi)
	}
	sharedMarker := mounttest.MountMarker(t, shared, "mounted after the template")
	privateMarker := mounttest.MountMarker(t, private, "private")
	_, ns := newNamedNetns(t) // and one made after it
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := WriteResolvConf(resolv); err != nil {
		t.Fatal(err)
	}
	selfNS := func() string {
		net, _ := os.Readlink("/proc/self/ns/net")
		mnt, _ := os.Readlink("/proc/self/ns/mnt")
		return net + " " + mnt
	}
	before := selfNS()
	script := "cat " + sharedMarker + "; echo; test -e " + privateMarker + " && echo private-seen; pwd; " +
		"grep -c ' " + NetnsDir + "' /proc/self/mountinfo; head -c 20 /etc/resolv.conf"
	var out, errOut bytes.Buffer
	c := Command(ns, resolv, []string{"sh", "-c", script})
	c.MountNS = tpl
	c.Stdout, c.Stderr = &out, &errOut
	if err := c.Run(); ExitStatus(err) != 0 && !strings.Contains(out.String(), "marker") {
		t.Logf("exit status %d, stderr %s", ExitStatus(err), errOut.String())
	}
	if !c.fromTemplate || c.TemplateErr() != nil {
		t.Errorf("the command did not start from the template (%v)", c.TemplateErr())
	}
	// The thread that entered the namespaces may be the main thread, which
	// the runtime cannot discard: then it names the process's namespaces.
	for range 20 {
		if err := Command(ns, "", []string{"true"}).Run(); err != nil {
			t.Fatal(err)
		}
		c := Command(ns, "", []string{"true"})
		c.MountNS = tpl
		if err := c.Run(); err != nil {
			t.Fatal(err)
		}
	}
	if after := selfNS(); after != before {
		t.Errorf("the caller's namespaces were %s, are %s after starts from the template", before, after)
	}
	if mi := templateMountinfo(t, tpl); strings.Contains(mi, " "+NetnsDir) || !strings.Contains(mi, " "+filepath.Dir(sharedMarker)+" ") {
		t.Errorf("the template holds %s, or not the mount made on the host after it:\n%s", NetnsDir, mi)
	}
	wd, _ := os.Getwd()
	want := "mounted after the template\n" + wd + "\n0\n" + ResolvConf[:20]
	if out.String() != want {
		t.Errorf("inside the container:\n%s\nwant:\n%s\nstderr: %s", out.String(), want, errOut.String())
	}
}

// TestMountTemplateReplacedAndRemoved: making the template again (a
// daemon's restart) replaces it; once removed, a command that names it
// starts from the caller's namespace instead.
func TestMountTemplateReplacedAndRemoved(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	// The first template is held open, so that the second cannot be given
	// its inode number again.
	ids := map[uint64]bool{}
	for range 2 {
		tpl, err := MakeMountTemplate(dir)
		if err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Open(tpl, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		ids[st.Ino] = true
	}
	if len(ids) != 2 {
		t.Errorf("the second template is the first one (%v)", ids)
	}
	tpl := filepath.Join(dir, MountTemplateFile)
	if err := RemoveMountTemplate(dir); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(tpl, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err == nil {
		typ, _ := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
		unix.Close(fd)
		if typ == unix.CLONE_NEWNS {
			t.Fatal("the template is still mounted after RemoveMountTemplate")
		}
	}
	_, ns := newNamedNetns(t)
	c := Command(ns, "", []string{"true"})
	c.MountNS = tpl
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	if c.fromTemplate {
		t.Error("started from a removed template")
	}
	if err := c.TemplateErr(); err == nil || !strings.Contains(err.Error(), tpl) {
		t.Errorf("TemplateErr after the fallback = %v, want why the template %s was not used", err, tpl)
	}
}

func TestRootMountShared(t *testing.T) {
	const (
		private = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n" +
			"42 27 254:0 /run/netns /run/netns rw,relatime shared:1 - ext4 /dev/vda rw\n"
		shared = "1 0 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n" +
			"22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n"
		// A shared root with a private one mounted over it (a chroot-like
		// setup): the one on top counts.
		stacked = "1 0 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n" +
			"50 1 0:40 / / rw - overlay overlay rw\n"
		// The other way round, listed top first.
		stackedShared = "50 1 0:40 / / rw master:3 shared:9 - overlay overlay rw\n" +
			"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
	)
	for _, c := range []struct {
		name, table string
		want        bool
	}{{"private", private, false}, {"shared", shared, true}, {"stacked", stacked, false}, {"stackedShared", stackedShared, true}} {
		got, err := rootMountShared([]byte(c.table))
		if err != nil || got != c.want {
			t.Errorf("%s: %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "garbage\n", "1 0 8:1 / /proc rw - proc proc rw\n"} {
		if _, err := rootMountShared([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if _, err := RootMountShared(); err != nil {
		t.Errorf("this host's table: %v", err)
	}
}

func FuzzRootMountShared(f *testing.F) {
	f.Add([]byte("1 0 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n50 1 0:40 / / rw - overlay overlay rw\n"))
	f.Add([]byte("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"))
	f.Add([]byte("1 2 3 4 5 6 -\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rootMountShared(b) // must not panic
	})
}
