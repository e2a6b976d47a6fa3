package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestNeighLimitsLeaveRoomForEveryHostPair(t *testing.T) {
	def := neighLimits{128, 512, 1024} // the kernel's defaults
	got, change := neighLimitsFor(def, 100)
	if !change {
		t.Fatal("100 hosts under the default limits: no change")
	}
	// 100 hosts each resolve 99 others, and the rest of the machine keeps
	// the room it had.
	if got[2] < 100*99+1024 || got[1] < 100*99+512 || got[0] != 128 {
		t.Fatalf("limits for 100 hosts %v, want gc_thresh3 >= %d, gc_thresh2 >= %d, gc_thresh1 128", got, 100*99+1024, 100*99+512)
	}
	if got[1] > got[2] {
		t.Fatalf("limits %v: soft limit above the hard one", got)
	}
}

func writeLimits(t *testing.T, dir string, l neighLimits) {
	t.Helper()
	if err := writeNeighLimits(dir, l, l); err != nil {
		t.Fatal(err)
	}
}

func TestRaiseNeighLimitsPutsTheOldOnesBack(t *testing.T) {
	dir := t.TempDir()
	old := neighLimits{128, 512, 1024}
	writeLimits(t, dir, old)
	restore, err := raiseNeighLimits(dir, 60, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := readNeighLimits(dir); got[2] < 60*59 {
		t.Fatalf("limits during the run %v, want gc_thresh3 >= %d", got, 60*59)
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if got, _ := readNeighLimits(dir); got != old {
		t.Fatalf("limits after the run %v, want %v back", got, old)
	}
}

func TestRaiseNeighLimitsLeavesAnotherChangeAlone(t *testing.T) {
	dir := t.TempDir()
	writeLimits(t, dir, neighLimits{128, 512, 1024})
	restore, err := raiseNeighLimits(dir, 60, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	other := neighLimits{128, 50000, 100000}
	writeLimits(t, dir, other)
	if err := restore(); err == nil {
		t.Fatal("limits changed by someone else during the run: restore gave no error")
	}
	if got, _ := readNeighLimits(dir); got != other {
		t.Fatalf("limits %v, want the other change %v kept", got, other)
	}
}

func TestRaiseNeighLimitsRefusesAGarbledFile(t *testing.T) {
	dir := t.TempDir()
	writeLimits(t, dir, neighLimits{128, 512, 1024})
	if err := os.WriteFile(filepath.Join(dir, "gc_thresh2"), []byte("lots\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := raiseNeighLimits(dir, 60, io.Discard); err == nil {
		t.Fatal("a limit that is not a number: no error")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "gc_thresh3")); string(b) != "1024\n" {
		t.Fatalf("gc_thresh3 %q changed after an error", b)
	}
}
