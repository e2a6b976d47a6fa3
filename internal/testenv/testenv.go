// Package testenv decides, in one place, what a test does when the machine
// lacks something it needs (root, /dev/net/tun, a command, a kernel
// feature): skip, or fail when the run requires everything (RequireEnv).
// Unit tests and the e2e suite share the switch.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// RequireEnv names the environment variable that makes a missing
// requirement fail the test instead of skipping it, when set to "1". `make
// unit` and `make e2e` set it when run as root, so a CI machine without
// /dev/net/tun or network namespaces fails instead of going green.
const RequireEnv = "VXMESH_E2E_REQUIRE"

// Required reports whether missing requirements fail tests (RequireEnv=1).
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Missing ends the test because the machine lacks what: it fails with
// RequireEnv=1 and skips otherwise.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Required() {
		t.Fatalf("required but missing (%s=1): %s", RequireEnv, msg)
	}
	t.Skipf("SKIP: missing %s (set %s=1 to fail instead)", msg, RequireEnv)
}

// RequireRoot needs the effective user to be root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root")
	}
}

// RequireTUN needs root and /dev/net/tun (TAP devices).
func RequireTUN(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		Missing(t, "/dev/net/tun: %v", err)
	}
}

// RequireCommand needs the command name on PATH (from Debian package pkg).
func RequireCommand(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		Missing(t, "command %s (apt-get install %s)", name, pkg)
	}
}

// Feature is an optional kernel feature: a test that needs one skips when
// the kernel lacks it, with RequireEnv=1 too, because the machines the
// project is tested on may lack it and nothing the daemon needs depends on
// it. Every optional feature is declared here and nowhere else; anything
// not listed is required.
type Feature string

// The optional kernel features.
const (
	// KernelRFC4106 is the xfrm AEAD rfc4106(gcm(aes)) (CONFIG_CRYPTO_GCM
	// and friends), only used to check vxmesh's ESP against the kernel's:
	// vxmesh does its own ESP in userspace.
	KernelRFC4106 Feature = "rfc4106(gcm(aes)) in the kernel's crypto API"
)

// SkipWithout skips the test because the kernel lacks optional feature f;
// detail says how that was found.
func SkipWithout(t testing.TB, f Feature, detail string) {
	t.Helper()
	t.Skipf("SKIP: optional kernel feature %s missing (%s)", f, detail)
}

// WaitBlocked waits until a goroutine is parked (waiting on I/O, a channel,
// a lock...) inside the function fn, named as in a stack trace
// ("pkg.(*T).Method"), and fails the test after timeout. It proves that a
// call has begun and is blocked, for tests of what unblocks it.
func WaitBlocked(t testing.TB, fn string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if blockedIn(string(buf[:n]), fn) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine blocked in %s after %v", fn, timeout)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond) // poll interval, not synchronisation
	}
}

// blockedIn reports whether a goroutine of the stack dump is parked with
// fn on its stack.
func blockedIn(dump, fn string) bool {
	for _, g := range strings.Split(dump, "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		// "goroutine 7 [IO wait]:", "goroutine 7 [select, 2 minutes]:"
		_, state, _ := strings.Cut(header, "[")
		state, _, _ = strings.Cut(state, "]")
		if state == "" || state == "running" || state == "runnable" {
			continue
		}
		if strings.Contains(g, fn+"(") {
			return true
		}
	}
	return false
}
