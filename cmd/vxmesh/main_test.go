package main

import (
	"bytes"
	"flag"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseInterleavedFlags(t *testing.T) {
	env := &cliEnv{stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}}
	fs := newFlags(env, "network inspect", true)
	pos, rest, err := fs.parse([]string{"web", "--format", "json", "--socket", "/s"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pos) != 1 || pos[0] != "web" || fs.format != "json" || fs.socket != "/s" || rest != nil {
		t.Fatalf("pos=%v rest=%v format=%q socket=%q", pos, rest, fs.format, fs.socket)
	}
	fs = newFlags(env, "x", true)
	if _, _, err := fs.parse([]string{"--format", "yaml"}); err == nil || !strings.Contains(err.Error(), "want table, json or a Go template") {
		t.Fatalf("bad --format: %v", err)
	}
	fs = newFlags(env, "x", false)
	if _, _, err := fs.parse([]string{"-h"}); err != flag.ErrHelp {
		t.Fatalf("-h: %v", err)
	}
}

func TestCLIErrorsAreOneLineWithStatus(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"bogus"}, 2, `vxmesh: unknown command "bogus"`},
		{[]string{"network", "create"}, 2, "vxmesh network create: want a network name"},
		{[]string{"network", "ls", "--socket", "/nonexistent/vxmesh.sock"}, 1, "cannot reach the vxmesh daemon at /nonexistent/vxmesh.sock"},
		{[]string{"run", "--network", "web", "--name", "c1", "--", "no-such-command-xyz"}, 127, `command "no-such-command-xyz"`},
		{[]string{"run", "-d", "--rm", "--network", "web", "--name", "c1", "--", "true"}, 2, "vxmesh run: -d and --rm: choose one"},
		{[]string{"attach", "--network", "web"}, 2, "vxmesh attach: want --network NET and --name NAME"},
	} {
		var out, errb bytes.Buffer
		code := runCLI(&cliEnv{stdout: &out, stderr: &errb}, tc.args)
		msg := errb.String()
		if code != tc.code || !strings.Contains(msg, tc.want) || strings.Count(strings.TrimSpace(msg), "\n") != 0 {
			t.Errorf("vxmesh %s: code %d, stderr %q; want code %d and one line containing %q", strings.Join(tc.args, " "), code, msg, tc.code, tc.want)
		}
	}
}

func TestGlobalSocketFlag(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"--socket /s network ls", "network ls --socket=/s"},
		{"--socket=/s ps --format json", "ps --socket=/s --format json"},
		{"ps", "ps"},
	} {
		got, err := globalSocket(strings.Fields(tc.in))
		if err != nil || strings.Join(got, " ") != tc.want {
			t.Errorf("globalSocket(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := globalSocket([]string{"--socket", "/s"}); err == nil {
		t.Error("--socket without a command accepted")
	}
}

// TestNoGoroutineRunsOnTheMainThread: main keeps the main thread, so a
// goroutine that switches its thread into a container's namespace never
// moves the whole process there (/proc/PID/ns/net is the main thread's).
// Without init's lock, several of these goroutines land on it in a run.
func TestNoGoroutineRunsOnTheMainThread(t *testing.T) {
	var onMain atomic.Int64
	for range 50 {
		var wg sync.WaitGroup
		for range 64 {
			wg.Go(func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				if unix.Gettid() == os.Getpid() {
					onMain.Add(1)
				}
			})
		}
		wg.Wait()
	}
	if n := onMain.Load(); n > 0 {
		t.Errorf("%d goroutines ran on the main thread", n)
	}
}
