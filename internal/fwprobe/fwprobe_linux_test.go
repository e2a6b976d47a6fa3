//go:build linux

package fwprobe

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/vxmesh/vxmesh/internal/testenv"
)

// TestCheckInANamespace asks the kernel of a fresh network namespace: clear
// while empty, not clear with an nftables forward chain (`nft add chain
// inet f fw { type filter hook forward priority 0; policy drop; }`), clear
// again with only an input chain (which CheckLocal, the NAT's rule, heeds),
// not clear with the legacy filter table.
func TestCheckInANamespace(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "nft", "nftables")
	name := fmt.Sprintf("vxmesh-fwprobe-%d", os.Getpid())
	defer enterFreshNetns(t, name)()
	in := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	check := func(clear bool, reason string) {
		t.Helper()
		if v := Check(); v.Clear != clear || !strings.Contains(v.Reason, reason) {
			t.Errorf("Check = %+v; want clear %v, reason with %q", v, clear, reason)
		}
	}
	check(true, "no nftables chain")
	in("nft", "add table inet f; add chain inet f fw { type filter hook forward priority 0; policy drop; }; add chain inet f in { type filter hook input priority 0; }")
	chains, err := ListChains()
	if err != nil || len(chains) != 2 {
		t.Fatalf("ListChains = %+v, %v; want the two chains", chains, err)
	}
	check(false, `"inet f fw" on the forward hook`)
	in("nft", "delete chain inet f fw")
	check(true, "no nftables chain")
	// The input chain left is what CheckLocal (the NAT's rule) heeds.
	if v := CheckLocal(); v.Clear || !strings.Contains(v.Reason, `"inet f in" on the input hook`) {
		t.Errorf("CheckLocal with an input chain = %+v; want not clear, naming it", v)
	}
	in("nft", "delete table inet f")
	if v := CheckLocal(); !v.Clear {
		t.Errorf("CheckLocal without chains = %+v; want clear", v)
	}
	if _, err := exec.LookPath("iptables-legacy"); err == nil {
		in("iptables-legacy", "-L", "FORWARD")
		check(false, "legacy iptables tables loaded (filter)")
	}
}

// TestWatchSeesChanges subscribes in a fresh network namespace: nothing
// is reported while nothing changes, an nftables table and chain added in
// it are reported, and the watch ends (its channel closed) with its
// context.
func TestWatchSeesChanges(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "nft", "nftables")
	name := fmt.Sprintf("vxmesh-fwwatch-%d", os.Getpid())
	leave := enterFreshNetns(t, name)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed, err := Watch(ctx) // subscribed in name's namespace
	leave()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
		t.Fatal("a change reported before anything changed")
	case <-time.After(300 * time.Millisecond):
	}
	if out, err := exec.Command("ip", "netns", "exec", name, "nft", "add table inet w; add chain inet w fw { type filter hook forward priority 0; }").CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	select {
	case _, ok := <-changed:
		if !ok {
			t.Fatal("watch ended instead of reporting the change")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no change reported 5 s after a table and a forward chain were added")
	}
	cancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-changed:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch still running 5 s after its context ended")
		}
	}
}

// enterFreshNetns locks the calling goroutine to its thread and moves the
// thread into a new named network namespace; the returned function moves
// it back and unlocks it (the namespace is deleted at the end of t).
func enterFreshNetns(t *testing.T, name string) (leave func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.NewNamed(name) // and enters it
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ns.Close()
		netns.DeleteNamed(name)
	})
	return func() {
		netns.Set(orig)
		orig.Close()
		runtime.UnlockOSThread()
	}
}
