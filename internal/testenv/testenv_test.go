package testenv

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMissingFailsWhenRequired runs a child test that calls Missing, with
// and without RequireEnv, and checks that it fails and skips respectively.
func TestMissingFailsWhenRequired(t *testing.T) {
	if os.Getenv("TESTENV_CHILD") == "1" {
		Missing(t, "a thing")
		return
	}
	for _, tc := range []struct {
		require string
		fail    bool
		out     string
	}{{"1", true, "required but missing"}, {"0", false, "SKIP: missing a thing"}} {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestMissingFailsWhenRequired$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTENV_CHILD=1", RequireEnv+"="+tc.require)
		out, err := cmd.CombinedOutput()
		if (err != nil) != tc.fail || !strings.Contains(string(out), tc.out) {
			t.Errorf("%s=%s: err %v, output:\n%s", RequireEnv, tc.require, err, out)
		}
	}
}

func parkHere(ch chan struct{}) { <-ch }

// TestWaitBlockedSeesAParkedGoroutine: WaitBlocked returns for a goroutine
// parked in a channel receive, and blockedIn does not take a function that
// is not on any stack.
func TestWaitBlockedSeesAParkedGoroutine(t *testing.T) {
	ch := make(chan struct{})
	defer close(ch)
	go parkHere(ch)
	WaitBlocked(t, "testenv.parkHere", 5*time.Second)
	buf := make([]byte, 1<<20)
	if blockedIn(string(buf[:runtime.Stack(buf, true)]), "testenv.notOnAnyStack") {
		t.Error("blockedIn found a function no goroutine runs")
	}
}
