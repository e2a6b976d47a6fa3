package main

import (
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

// TestTAPRelayCarriesFramesBothWays wires the tap-relay row's two
// namespaces and checks that c1 reaches c2 through the relay (ARP and
// ICMP both ways, and a ping larger than the MTU), and that the relay's
// threads end when their TAPs go away with the namespaces.
func TestTAPRelayCarriesFramesBothWays(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireTUN(t)
	testenv.RequireCommand(t, "ping", "iputils-ping")
	pfx := "vxbt" + testbed.RandomID(2) + "-"
	taps := [2]string{pfx + "t1", pfx + "t2"}
	var fds [2]int
	for i, name := range taps {
		fd, err := openRelayTAP(name)
		if err != nil {
			t.Fatal(err)
		}
		fds[i] = fd
	}
	done := make(chan error, 2)
	go func() { done <- relayFrames(fds[0], fds[1]) }()
	go func() { done <- relayFrames(fds[1], fds[0]) }()
	cleaned := false
	t.Cleanup(func() {
		if !cleaned {
			_ = testbed.Cleanup(pfx)
		}
	})
	p, err := wireRelayTAPs(pfx, taps, 1450)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []string{"56", "4000"} {
		out, err := exec.Command("ip", "netns", "exec", pfx+"c1", "ping", "-c", "2", "-W", "2", "-s", size, p.c2IP).CombinedOutput()
		if err != nil {
			t.Fatalf("ping -s %s %s through the relay: %v\n%s", size, p.c2IP, err, out)
		}
	}
	if err := testbed.Cleanup(pfx); err != nil {
		t.Fatal(err)
	}
	cleaned = true
	deadline := time.After(10 * time.Second)
	for range 2 {
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("relay ended without an error")
			}
		case <-deadline:
			t.Fatal("relay threads still running 10 s after their TAPs were deleted")
		}
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
}
