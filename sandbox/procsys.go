//go:build linux

package sandbox

import (
	"io"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// procSys reads and writes the sysctls of the network namespace of the
// thread that opened it (openProcSys), through a procfs instance of its
// own, detached from every mount tree and destroyed by Close; through the
// process's /proc if the kernel refuses to make one (before Linux 5.8, or
// in a user namespace).
//
// Not through the process's /proc: each network namespace has its own
// /proc/sys/net directory, and the kernel keeps, in the one dentry hash
// chain of the name "net" under /proc/sys, an entry for every namespace
// whose sysctls were ever looked up there, and compares them one by one
// (proc_sys_compare) at each lookup: with 1,000 containers, opening one
// container's sysctl cost 1.2 ms more than with 10. A new instance's
// chain holds only this namespace's entry. It also works where /proc/sys
// is mounted read-only, as in a container.
type procSys struct {
	mnt int // the instance's mount; -1 for the process's /proc
}

// openProcSys makes the procfs instance of a procSys; it must be called
// on the thread (in the namespace) whose sysctls are wanted.
func openProcSys() procSys {
	fsfd, err := unix.Fsopen("proc", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return procSys{mnt: -1}
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return procSys{mnt: -1}
	}
	mnt, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return procSys{mnt: -1}
	}
	return procSys{mnt: mnt}
}

// Close destroys the procfs instance (its mount's last reference).
func (p procSys) Close() {
	if p.mnt >= 0 {
		unix.Close(p.mnt)
	}
}

// open opens the sysctl at path, relative to /proc/sys; errors name it
// by its /proc/sys path.
func (p procSys) open(path string, flags int) (*os.File, error) {
	name := "/proc/sys/" + path
	dir, rel := unix.AT_FDCWD, name
	if p.mnt >= 0 {
		dir, rel = p.mnt, "sys/"+path
	}
	fd, err := unix.Openat(dir, rel, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// read returns the value of the sysctl at path, without surrounding
// white space.
func (p procSys) read(path string) (string, error) {
	f, err := p.open(path, unix.O_RDONLY)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	return strings.TrimSpace(string(b)), err
}

// write sets the sysctl at path to val.
func (p procSys) write(path, val string) error {
	f, err := p.open(path, unix.O_WRONLY)
	if err != nil {
		return err
	}
	_, err = f.WriteString(val)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
