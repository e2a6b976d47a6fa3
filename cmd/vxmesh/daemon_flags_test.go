package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestDaemonRefusesRxSocketsOutOfRange(t *testing.T) {
	for _, n := range []string{"0", "-1", "65"} {
		var out, errb bytes.Buffer
		code := runCLI(&cliEnv{stdout: &out, stderr: &errb}, []string{"daemon", "--rx-sockets", n})
		want := "--rx-sockets " + n + ": out of range 1-64"
		if code != 2 || !strings.Contains(errb.String(), want) {
			t.Errorf("daemon --rx-sockets %s: code %d, stderr %q; want 2 and %q", n, code, errb.String(), want)
		}
	}
}

func TestDaemonRefusesBusyPollOutOfRange(t *testing.T) {
	for _, d := range []string{"-1µs", "2s"} {
		var out, errb bytes.Buffer
		code := runCLI(&cliEnv{stdout: &out, stderr: &errb}, []string{"daemon", "--busy-poll", d})
		want := "--busy-poll " + d + ": out of range 0-1s"
		if code != 2 || !strings.Contains(errb.String(), want) {
			t.Errorf("daemon --busy-poll %s: code %d, stderr %q; want 2 and %q", d, code, errb.String(), want)
		}
	}
}
