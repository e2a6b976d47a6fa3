//go:build linux

package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// A mount template is a mount namespace that container processes start
// from (Cmd.MountNS) instead of from the host's: a copy of the host's
// namespace, made once, without NetnsDir. Every process started by
// Command gets a mount namespace of its own, a copy of the one it starts
// from; the host's holds a bind mount of every container's network
// namespace under NetnsDir, so with N containers each start copies N
// mounts (about 4 ms at 1,000). A copy of the template costs the same at
// the 1st and the 1,000th container.
//
// The template's mounts are slaves of the host's: a mount made on the host
// later, under a mount with shared propagation, appears in the template
// and in the containers started after it; nothing made in the template
// reaches the host. Under a private mount (on a host whose root mount is
// not shared, as in many containers and non-systemd systems) later host
// mounts do not appear: RootMountShared tells the two apart.

// MountTemplateFile is the name, in the directory given to
// MakeMountTemplate, of the bind mount that holds the template.
const MountTemplateFile = "template"

// MakeMountTemplate makes a mount template (see above) and bind-mounts it
// at dir/MountTemplateFile, replacing the one a previous call left there,
// and returns that path. dir is made a private mount point: a mount
// namespace's file can only be bind-mounted where the mount does not
// propagate (into the template itself, a loop). NetnsDir is made a shared
// mount point first, as CreateNamedNetns does, so that the template
// detaches it rather than receiving it, with every namespace later
// mounted in it, when the first container is made.
func MakeMountTemplate(dir string) (string, error) {
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return "", fmt.Errorf("mount template: %w", err)
	}
	if err := makeSharedMount(NetnsDir); err != nil {
		return "", fmt.Errorf("mount template: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("mount template: %w", err)
	}
	if err := makePrivateMount(dir); err != nil {
		return "", fmt.Errorf("mount template: %w", err)
	}
	path := filepath.Join(dir, MountTemplateFile)
	if err := unmountFile(path); err != nil {
		return "", fmt.Errorf("mount template: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return "", fmt.Errorf("mount template: %w", err)
	}
	f.Close()
	fd, err := newTemplateNamespace()
	if err != nil {
		return "", fmt.Errorf("mount template: %w", err)
	}
	defer unix.Close(fd)
	src := "/proc/self/fd/" + strconv.Itoa(fd)
	if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
		return "", fmt.Errorf("mount template: bind mount on %s: %w", path, err)
	}
	return path, nil
}

// RemoveMountTemplate unmounts the template MakeMountTemplate made in dir
// and dir's own mount. Processes started from it keep their namespaces;
// one that has the template open keeps it until it closes it.
func RemoveMountTemplate(dir string) error {
	if err := unmountFile(filepath.Join(dir, MountTemplateFile)); err != nil {
		return fmt.Errorf("mount template: %w", err)
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("mount template: unmount %s: %w", dir, err)
	}
	return nil
}

// unmountFile detaches what is mounted on path (nothing is not an error).
func unmountFile(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	return nil
}

// newTemplateNamespace makes the template on a locked thread and returns
// an open descriptor of it. The thread is discarded afterwards, after
// switching back to the caller's mount namespace: if it is the main
// thread, the runtime parks it instead, and /proc/PID/ns/mnt and
// /proc/self/mountinfo would otherwise show the template as the
// daemon's (runInMountTemplate does the same).
func newTemplateNamespace() (int, error) {
	type result struct {
		fd  int
		err error
	}
	caller, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open the caller's mount namespace: %w", err)
	}
	defer unix.Close(caller)
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the runtime ends the thread with the goroutine.
		fd, err := enterNewTemplate()
		// Back before the result is sent (caller is closed then).
		unix.Setns(caller, unix.CLONE_NEWNS)
		res <- result{fd, err}
	}()
	r := <-res
	return r.fd, r.err
}

// enterNewTemplate moves the calling (locked) thread into a new mount
// namespace made a template: a slave copy of the caller's without
// /run/netns. It returns an open descriptor of it.
func enterNewTemplate() (int, error) {
	// CLONE_NEWNS implies CLONE_FS: only this thread moves.
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return -1, fmt.Errorf("unshare: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return -1, fmt.Errorf("make the copy a slave: %w", err)
	}
	if err := unmountFile(NetnsDir); err != nil {
		return -1, err
	}
	fd, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open the new namespace: %w", err)
	}
	return fd, nil
}

// makePrivateMount makes dir a mount point with private propagation,
// bind-mounting it onto itself if it is not a mount point yet.
func makePrivateMount(dir string) error {
	err := unix.Mount("", dir, "none", unix.MS_PRIVATE, "")
	if err != unix.EINVAL {
		if err != nil {
			return fmt.Errorf("make %s private: %w", dir, err)
		}
		return nil
	}
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "none", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	return nil
}

// RootMountShared reports whether the root mount of the caller's mount
// namespace has shared propagation (systemd makes it so): only then does
// a mount template see what is mounted on the host after it was made.
func RootMountShared() (bool, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("mount table: %w", err)
	}
	return rootMountShared(b)
}

// rootMountShared is RootMountShared of a mountinfo table (proc(5)): the
// root is the mount on "/" that no other mount on "/" is mounted over.
func rootMountShared(table []byte) (bool, error) {
	type mount struct {
		id, parent string
		shared     bool
	}
	var roots []mount
	for n, line := range bytes.Split(table, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		f := bytes.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if string(f[i]) == "-" {
				sep = i
				break
			}
		}
		if sep < 0 {
			return false, fmt.Errorf("mount table: line %d: not a mountinfo line", n+1)
		}
		if string(f[4]) != "/" {
			continue
		}
		m := mount{id: string(f[0]), parent: string(f[1])}
		for _, opt := range f[6:sep] {
			if bytes.HasPrefix(opt, []byte("shared:")) {
				m.shared = true
			}
		}
		roots = append(roots, m)
	}
	for _, m := range roots {
		covered := false
		for _, o := range roots {
			if o.parent == m.id && o.id != m.id {
				covered = true
				break
			}
		}
		if !covered {
			return m.shared, nil
		}
	}
	return false, errors.New("mount table: no root mount")
}
