//go:build linux

// Package sandbox is the network-namespace plumbing for containers: named
// namespaces that `ip netns` understands, TAP devices plugged into a
// namespace and configured (name, MAC, MTU, address, default route),
// reopened after a daemon restart and unplugged, processes started inside
// a namespace with their own /etc/resolv.conf, and lookups of the
// namespace of a Docker container.
//
// Namespace configuration goes through netlink sockets opened inside the
// target namespace, so the caller's threads never change namespace; where a
// thread has to switch (creating a TAP or a socket in place, starting a
// process), it is a dedicated locked thread that is discarded if it cannot
// be switched back.
package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// NetnsDir is where named network namespaces are bind-mounted, as by
// `ip netns add`.
const NetnsDir = "/run/netns"

// NetnsEtcDir holds per-namespace configuration files that `ip netns exec`
// bind-mounts over /etc (NetnsEtcDir/NAME/resolv.conf).
const NetnsEtcDir = "/etc/netns"

// CreateNamedNetns creates a new network namespace and bind-mounts it at
// NetnsDir/name, like `ip netns add name`, and returns that path. NetnsDir
// is made a shared mount point first, as iproute2 does, so the namespace
// stays visible to processes that later unshare their mount namespace.
func CreateNamedNetns(name string) (string, error) {
	if err := validNetnsName(name); err != nil {
		return "", err
	}
	if err := os.MkdirAll(NetnsDir, 0o755); err != nil {
		return "", fmt.Errorf("netns %q: %w", name, err)
	}
	if err := makeSharedMount(NetnsDir); err != nil {
		return "", fmt.Errorf("netns %q: %w", name, err)
	}
	path := filepath.Join(NetnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("netns %q: already exists", name)
	}
	if err != nil {
		return "", fmt.Errorf("netns %q: %w", name, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		err = unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, "")
		if err != nil {
			err = fmt.Errorf("bind mount on %s: %w", path, err)
		}
		// Switch back rather than discard the thread: if it were the main
		// thread, the runtime could not discard it and /proc/PID/ns/net
		// would claim the whole process lives in the new namespace.
		if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("return to the original namespace: %w", serr))
			return // still locked: the thread is not reused
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return "", fmt.Errorf("netns %q: %w", name, err)
	}
	return path, nil
}

// DeleteNamedNetns removes the named namespace created by CreateNamedNetns
// (or `ip netns add`), like `ip netns delete`, and its NetnsEtcDir/name
// directory. The namespace itself lives on while processes or open
// descriptors still use it. A missing namespace is an error matching
// fs.ErrNotExist.
func DeleteNamedNetns(name string) error {
	if err := validNetnsName(name); err != nil {
		return err
	}
	path := filepath.Join(NetnsDir, name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("netns %q: unmount %s: %w", name, path, err)
	}
	err := os.Remove(path)
	etc := filepath.Join(NetnsEtcDir, name)
	os.Remove(filepath.Join(etc, "resolv.conf"))
	os.Remove(etc) // only if nothing else was put there
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("netns %q: %w", name, fs.ErrNotExist)
	}
	if err != nil {
		return fmt.Errorf("netns %q: %w", name, err)
	}
	return nil
}

// NamedNetns lists the names in NetnsDir that start with prefix, sorted.
// A missing NetnsDir (a fresh boot) is an empty list.
func NamedNetns(prefix string) ([]string, error) {
	ents, err := os.ReadDir(NetnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func validNetnsName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255 {
		return fmt.Errorf("netns %q: invalid name", name)
	}
	return nil
}

// makeSharedMount makes dir a mount point with shared propagation,
// bind-mounting it onto itself if it is not a mount point yet. Only dir's
// own mount is changed, not those below it (MS_REC would visit every
// namespace mounted in NetnsDir, at each namespace made): a mount made
// below a shared mount is shared already.
func makeSharedMount(dir string) error {
	err := unix.Mount("", dir, "none", unix.MS_SHARED, "")
	if err != unix.EINVAL {
		if err != nil {
			return fmt.Errorf("make %s shared: %w", dir, err)
		}
		return nil
	}
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mount %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", dir, err)
	}
	return nil
}

// NetnsPathForPID returns the path of the network namespace of process pid.
func NetnsPathForPID(pid int) string {
	return "/proc/" + strconv.Itoa(pid) + "/ns/net"
}

// NetnsID identifies a network namespace: the device and inode numbers of
// its nsfs file. Two paths name the same namespace iff their IDs are
// equal, so a daemon can remember the ID of a namespace and detect that a
// path went stale (the namespace was deleted, the process exited, or the
// name now refers to a different namespace).
type NetnsID struct {
	Dev uint64
	Ino uint64
}

// String formats the ID like the kernel's readlink of /proc/PID/ns/net.
func (id NetnsID) String() string { return fmt.Sprintf("net:[%d]", id.Ino) }

// NetnsIdentity returns the identity of the network namespace at path. It
// fails if path is not (or no longer) a network namespace, e.g. a name in
// NetnsDir whose namespace was unmounted.
func NetnsIdentity(path string) (NetnsID, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return NetnsID{}, fmt.Errorf("netns %q: %w", path, err)
	}
	defer unix.Close(fd)
	return fdIdentity(path, fd)
}

// NetnsIs reports whether path names the namespace id now, with one stat:
// for listings, which do nothing in the namespace (PinNetns opens it).
// id must come from NetnsIdentity, which checked that it is a network
// namespace: the namespace file system's device and inode then name that
// namespace and no other file, so a deleted name (its empty mount point)
// or a name made again for another namespace never matches.
func NetnsIs(path string, id NetnsID) bool {
	var st unix.Stat_t
	return unix.Stat(path, &st) == nil && st.Dev == id.Dev && st.Ino == id.Ino
}

// ErrNetnsReplaced is the error of PinNetns when the path names another
// namespace than the one expected.
var ErrNetnsReplaced = errors.New("another network namespace than the one expected")

// PinNetns opens the network namespace at path if it is the namespace id
// and returns a path (/proc/self/fd/N) that names that very namespace until
// release is called, whatever becomes of path meanwhile: a name deleted
// and made again for a new namespace cannot redirect what the caller does
// through the pinned path. A missing namespace is an error matching
// fs.ErrNotExist (or not a namespace file), another one ErrNetnsReplaced.
func PinNetns(path string, id NetnsID) (pinned string, release func(), err error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("netns %q: %w", path, err)
	}
	got, err := fdIdentity(path, fd)
	if err == nil && got != id {
		err = fmt.Errorf("netns %q: %w", path, ErrNetnsReplaced)
	}
	if err != nil {
		unix.Close(fd)
		return "", nil, err
	}
	return "/proc/self/fd/" + strconv.Itoa(fd), func() { unix.Close(fd) }, nil
}

// notNamespaceFile is the error for path, open at fd, which is no
// namespace file. An empty regular file is what a namespace's name looks
// like from a mount namespace its bind mount did not reach: the usual
// cause is a daemon started with `ip netns exec`, whose mounts stay in the
// mount namespace that command makes.
func notNamespaceFile(path string, fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == 0 {
		return fmt.Errorf("netns %q: not a namespace file here: an empty file, the name of a namespace mounted in another mount namespace "+
			"(a daemon started with `ip netns exec` mounts its containers' namespaces where only it sees them; start it with `nsenter --net=/run/netns/NAME -- vxmesh daemon ...` instead)", path)
	}
	return fmt.Errorf("netns %q: not a namespace file", path)
}

// fdIdentity returns the identity of the network namespace open at fd.
func fdIdentity(path string, fd int) (NetnsID, error) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return NetnsID{}, fmt.Errorf("netns %q: %w", path, err)
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return NetnsID{}, notNamespaceFile(path, fd)
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		return NetnsID{}, fmt.Errorf("netns %q: NS_GET_NSTYPE: %w", path, err)
	}
	if typ != unix.CLONE_NEWNET {
		return NetnsID{}, fmt.Errorf("netns %q: not a network namespace", path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return NetnsID{}, fmt.Errorf("netns %q: %w", path, err)
	}
	return NetnsID{Dev: st.Dev, Ino: st.Ino}, nil
}

// NetnsExists reports whether path refers to a live network namespace.
func NetnsExists(path string) bool {
	_, err := NetnsIdentity(path)
	return err == nil
}

// RunInNetns calls fn on a locked OS thread switched into the network
// namespace at nsPath: sockets and TAP devices fn creates belong to that
// namespace and keep working afterwards from any thread. The thread is
// switched back when fn returns, or discarded if that fails. fn must not
// start goroutines that expect to run in the namespace.
func RunInNetns(nsPath string, fn func() error) error {
	target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns %q: %w", nsPath, err)
	}
	defer unix.Close(target)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: open current namespace: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %q: enter: %w", nsPath, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("netns %q: leave: %w", nsPath, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// PIDsInNetns returns the processes whose network namespace is the one at
// nsPath, like `ip netns pids`, in ascending order. The calling process is
// included if it is in that namespace.
func PIDsInNetns(nsPath string) ([]int, error) {
	id, err := NetnsIdentity(nsPath)
	if err != nil {
		return nil, err
	}
	var pids []int
	err = scanProcNetns("/proc", func(pid int, ns NetnsID) {
		if ns == id {
			pids = append(pids, pid)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("netns %q: %w", nsPath, err)
	}
	slices.Sort(pids)
	return pids, nil
}

// NetnsPIDs maps the network namespace of every process but the calling
// one to its PIDs, in ascending order, with one scan of /proc: listing the
// processes of many namespaces costs one scan, not one per namespace.
//
// The caller is left out: /proc/PID/ns/net is its main thread's namespace,
// and a daemon whose main thread runs a goroutine that works in a
// container's namespace (one that makes sockets there) would be listed as
// that container's process, keeping it "running" after its command exited.
func NetnsPIDs() (map[NetnsID][]int, error) {
	return procNetnsPIDs("/proc", os.Getpid())
}

// procNetnsPIDs is NetnsPIDs of the proc file system at proc, leaving out
// process self.
func procNetnsPIDs(proc string, self int) (map[NetnsID][]int, error) {
	m := map[NetnsID][]int{}
	err := scanProcNetns(proc, func(pid int, ns NetnsID) {
		if pid != self {
			m[ns] = append(m[ns], pid)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("network namespaces of processes: %w", err)
	}
	for _, pids := range m {
		slices.Sort(pids)
	}
	return m, nil
}

// scanProcNetns calls fn with the network namespace of each process of the
// proc file system at proc. Processes that exit meanwhile (or zombies,
// which have no namespaces) are skipped.
//
// A namespace is read from the text of the process's ns/net link
// ("net:[INODE]", readlinkat relative to proc) rather than by following
// the link: a third less work per process, and a ps on a host with a
// thousand containers scans a few thousand. Every namespace is on the one
// namespace file system, whose device is that of proc/self/ns/net. A link
// whose text is not of that form is followed (stat) instead.
func scanProcNetns(proc string, fn func(pid int, ns NetnsID)) error {
	dir, err := os.Open(proc)
	if err != nil {
		return err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return err
	}
	var self unix.Stat_t
	if err := unix.Stat(proc+"/self/ns/net", &self); err != nil {
		return err
	}
	dfd := int(dir.Fd())
	buf := make([]byte, 64)
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil || pid <= 0 {
			continue
		}
		link := name + "/ns/net"
		n, err := unix.Readlinkat(dfd, link, buf)
		if err != nil {
			continue
		}
		if ino, ok := parseNetnsLink(buf[:n]); ok {
			fn(pid, NetnsID{Dev: self.Dev, Ino: ino})
			continue
		}
		var st unix.Stat_t
		if unix.Fstatat(dfd, link, &st, 0) == nil {
			fn(pid, NetnsID{Dev: st.Dev, Ino: st.Ino})
		}
	}
	return nil
}

// parseNetnsLink returns the inode of a network namespace link's text,
// "net:[INODE]" (see NetnsID.String), in decimal without leading zeros.
func parseNetnsLink(b []byte) (uint64, bool) {
	const pre = "net:["
	if len(b) < len(pre)+2 || string(b[:len(pre)]) != pre || b[len(b)-1] != ']' {
		return 0, false
	}
	digits := b[len(pre) : len(b)-1]
	if digits[0] == '0' && len(digits) > 1 {
		return 0, false
	}
	var v uint64
	for _, c := range digits {
		if c < '0' || c > '9' || v > (1<<64-1-uint64(c-'0'))/10 {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}

// DefaultKillGrace is how long KillNetns waits after SIGTERM when no grace
// period is given.
const DefaultKillGrace = 10 * time.Second

// lockThreadForGood locks the calling goroutine to its thread for good
// and returns the function to defer that puts the thread back in the
// network namespace it is in now. A goroutine that ends locked ends its
// thread, except the main thread, which the Go runtime keeps, unused: left
// in another namespace, it would make /proc/PID/ns/net name that
// namespace (the daemon's PID listed among a container's processes) and
// keep the namespace alive after its container.
func lockThreadForGood() (back func()) {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return func() {}
	}
	return func() {
		unix.Setns(orig, unix.CLONE_NEWNET)
		unix.Close(orig)
	}
}

// KillNetns stops every process in the network namespace at nsPath (except
// the caller): SIGTERM first, then SIGKILL for those still there after
// grace (at once if grace is 0; DefaultKillGrace if grace < 0). It polls
// until the namespace is empty and fails if processes survive SIGKILL for
// DefaultKillGrace (or grace, if longer).
func KillNetns(nsPath string, grace time.Duration) error {
	if grace < 0 {
		grace = DefaultKillGrace
	}
	self := os.Getpid()
	others := func() ([]int, error) {
		pids, err := PIDsInNetns(nsPath)
		return slices.DeleteFunc(pids, func(p int) bool { return p == self }), err
	}
	steps := []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{unix.SIGTERM, grace}, {unix.SIGKILL, max(grace, DefaultKillGrace)}}
	if grace == 0 {
		steps = steps[1:]
	}
	for _, step := range steps {
		pids, err := others()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			unix.Kill(pid, step.sig) // ESRCH: already gone
		}
		deadline := time.Now().Add(step.wait)
		for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
			pids, err = others()
			if err != nil || len(pids) == 0 {
				return err
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(delay)
		}
	}
	pids, err := others()
	if err == nil && len(pids) > 0 {
		err = fmt.Errorf("netns %q: processes %v survived SIGKILL", nsPath, pids)
	}
	return err
}
