//go:build linux

// Package mounttest holds the mount set-ups that the mount template's
// tests (sandbox unit tests and the e2e suite) share: a directory made a
// mount point with a chosen propagation, and a mount made later under it
// that a process sees or not depending on where its mount namespace was
// copied from. Root only; everything is unmounted when the test ends.
package mounttest

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// BindSelf makes dir a mount point of its own with the given propagation
// (unix.MS_SHARED or unix.MS_PRIVATE).
func BindSelf(t testing.TB, dir string, propagation uintptr) {
	t.Helper()
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if err := unix.Mount("", dir, "", propagation, ""); err != nil {
		t.Fatal(err)
	}
}

// MountMarker mounts a tmpfs on dir/late holding a file "marker" with
// text, and returns the file's path.
func MountMarker(t testing.TB, dir, text string) string {
	t.Helper()
	late := filepath.Join(dir, "late")
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", late, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(late, unix.MNT_DETACH) })
	marker := filepath.Join(late, "marker")
	if err := os.WriteFile(marker, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return marker
}
