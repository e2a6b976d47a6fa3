package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

func TestRunFailsClearlyAndLeavesNothing(t *testing.T) {
	if err := CheckPrereqs(); err != nil {
		testenv.Missing(t, "%v", err)
	}
	var out bytes.Buffer
	// A prefix of its own: a demo run at the same time by someone else
	// (vxdemoXXXX-) is not this run's leftovers.
	prefix := "vxdemotest" + testbed.RandomID(2) + "-"
	err := run(context.Background(), &out, "/nonexistent/vxmesh", prefix)
	if err == nil {
		t.Fatalf("demo with a missing binary succeeded:\n%s", out.String())
	}
	if !strings.Contains(err.Error(), "daemon") {
		t.Errorf("error does not say the daemon failed: %v", err)
	}
	if !strings.Contains(out.String(), "nothing left behind") {
		t.Errorf("transcript does not report cleanup:\n%s", out.String())
	}
	if left, _ := testbed.ListNetns(prefix); len(left) != 0 {
		t.Errorf("namespaces left behind: %v", left)
	}
}

func TestServerSawNamesTheBackendAndTheClient(t *testing.T) {
	text := "Accepted connection from 192.168.7.200, port 43550\n[  5] local 10.42.0.5 port 5201 connected to 192.168.7.200 port 43560\n[ ID] Interval           Transfer     Bitrate\n"
	local, peer, err := serverSaw(text)
	if err != nil || local != "10.42.0.5" || peer != "192.168.7.200" {
		t.Errorf("serverSaw: %q, %q, %v; want the backend 10.42.0.5 and the client 192.168.7.200", local, peer, err)
	}
	if _, _, err := serverSaw("iperf3: error - the server is busy running a test\n"); err == nil || !strings.Contains(err.Error(), "names no connection") {
		t.Errorf("serverSaw of a busy server's output: %v, want an error", err)
	}
}
