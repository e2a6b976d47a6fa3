package daemon

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/sandbox"
	"github.com/vxmesh/vxmesh/tunnel"
)

func TestHolderOfAnySize(t *testing.T) {
	blocks := map[netip.Prefix]string{
		netip.MustParsePrefix("10.81.0.0/28"):  "h1",
		netip.MustParsePrefix("10.81.32.0/20"): "old",
		netip.MustParsePrefix("10.81.32.0/28"): "h2", // inside old's: the larger decides
	}
	for ip, want := range map[string]string{"10.81.0.5": "h1", "10.81.0.17": "", "10.81.40.9": "old", "10.81.32.3": "old"} {
		_, got, ok := holderOf(blocks, netip.MustParseAddr(ip))
		if got != want || ok != (want != "") {
			t.Errorf("holderOf(%s) = %q, %v; want %q", ip, got, ok, want)
		}
	}
}

func TestEmptyBlocksIgnoreTheGateway(t *testing.T) {
	held := []netip.Prefix{netip.MustParsePrefix("10.5.0.0/29"), netip.MustParsePrefix("10.5.0.8/29"), netip.MustParsePrefix("10.5.0.16/29")}
	used := map[netip.Addr]bool{netip.MustParseAddr("10.5.0.1"): true, netip.MustParseAddr("10.5.0.9"): true, netip.MustParseAddr("10.5.1.3"): true}
	got := emptyBlocks(held, used, netip.MustParseAddr("10.5.0.1"))
	want := []netip.Prefix{held[0], held[2]}
	if !slices.Equal(got, want) {
		t.Fatalf("emptyBlocks = %v, want %v", got, want)
	}
}

// newHoldDownDaemon is newTestDaemon with the given block hold-down.
func newHoldDownDaemon(t *testing.T, holdDown time.Duration) *Daemon {
	t.Helper()
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), newFakeSandbox(), t.TempDir())
	cfg.blockHoldDown = holdDown
	return startNode(t, cfg)
}

// TestEmptyBlockReleasedAfterHoldDown: a block whose last address was
// freed stays this node's for the hold-down, counted from its last rm (a
// run right after the rm reuses it and starts the hold-down over), then
// is given back to the cluster.
func TestEmptyBlockReleasedAfterHoldDown(t *testing.T) {
	const hold = time.Hour // the test drives the clock
	d := newHoldDownDaemon(t, hold)
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.7.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	// .2-.7 fill the first /29, .8 starts the second.
	for i := 2; i <= 8; i++ {
		mustAttach(t, d, api.AttachRequest{Network: "web", Name: fmt.Sprintf("c%d", i), Create: true})
	}
	second := netip.MustParsePrefix("10.7.0.8/29")
	if got := d.cl.ClaimedBlocks("web"); !slices.Contains(got, second) {
		t.Fatalf("blocks %v, want %s among them", got, second)
	}
	if err := d.RemoveContainer("c8"); err != nil {
		t.Fatal(err)
	}
	// The test's clock runs a day ahead of the daemon's own sweeps (real
	// time), which therefore all fall within the sweep interval of the
	// test's last one and do nothing.
	t0 := time.Now().Add(24 * time.Hour)
	d.releaseEmptyBlocks(t0)
	if got := d.cl.ClaimedBlocks("web"); !slices.Contains(got, second) {
		t.Fatalf("block %s released at once: %v", second, got)
	}
	// A run right after the rm: the block is still this node's.
	if ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "again", Create: true}); ep.IP != "10.7.0.8" {
		t.Fatalf("run after rm got %s, want 10.7.0.8", ep.IP)
	}
	if err := d.RemoveContainer("again"); err != nil {
		t.Fatal(err)
	}
	d.releaseEmptyBlocks(t0.Add(2 * time.Second))
	d.releaseEmptyBlocks(t0.Add(hold))
	if got := d.cl.ClaimedBlocks("web"); !slices.Contains(got, second) {
		t.Fatalf("block %s released before its hold-down: %v", second, got)
	}
	d.releaseEmptyBlocks(t0.Add(2*time.Second + hold))
	if got := d.cl.ClaimedBlocks("web"); slices.Contains(got, second) || !slices.Contains(got, netip.MustParsePrefix("10.7.0.0/29")) {
		t.Fatalf("after the hold-down the blocks are %v; want %s given back and the first kept", got, second)
	}
	// The next run claims a block again.
	if ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "later", Create: true}); ep.IP != "10.7.0.8" {
		t.Fatalf("run after the release got %s, want 10.7.0.8", ep.IP)
	}
}

// TestNetworkFullNamesNetworkAndSubnet: when no block has a free address
// left, run fails naming the network and its subnet.
func TestNetworkFullNamesNetworkAndSubnet(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "tiny", Subnet: "10.9.0.0/28"}); err != nil {
		t.Fatal(err)
	}
	for i := 2; i <= 14; i++ {
		mustAttach(t, d, api.AttachRequest{Network: "tiny", Name: fmt.Sprintf("c%d", i), Create: true})
	}
	_, err := d.Attach(api.AttachRequest{Network: "tiny", Name: "one-too-many", Create: true})
	if err == nil || !strings.Contains(err.Error(), `network "tiny"`) || !strings.Contains(err.Error(), "10.9.0.0/28") {
		t.Fatalf("attach to a full network: %v", err)
	}
}

// TestStateWithLargeBlocksLoads: the state of a node of the previous
// version, whose endpoints lie anywhere in the /20 it held, loads; the node
// holds small blocks around them, another node accepts its endpoints and
// allocates from the rest of the subnet.
func TestStateWithLargeBlocksLoads(t *testing.T) {
	b, err := os.ReadFile("testdata/state-bigblocks.json")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	sb := newFakeSandbox()
	for i := 1; i <= 3; i++ {
		sb.addNetns(fmt.Sprintf("/run/netns/c%d", i)) // inodes 101-103, as recorded
		sb.ifaces[fmt.Sprintf("/run/netns/c%d/eth0", i)] = &fakeIface{cfg: sandbox.IfaceConfig{IfName: "eth0"}}
	}
	mem := tunnel.NewMemNetwork()
	h1 := newNode(t, mem, "h1", netip.MustParseAddr("127.0.0.1"), sb, dir)
	defer h1.Close()
	dir2 := t.TempDir()
	key, _ := readFile(dir + "/cluster.key")
	writeFile(t, dir2+"/cluster.key", key)
	h2 := newNode(t, mem, "h2", netip.MustParseAddr("127.0.0.2"), newFakeSandbox(), dir2,
		h1.cfg.Advertise.String()+":"+fmt.Sprint(h1.cfg.GossipPort))
	defer h2.Close()

	if eps := h1.Endpoints(); len(eps) != 3 || eps[2].IP != "10.81.47.254" || eps[2].State != "up" {
		t.Fatalf("endpoints after load: %+v", eps)
	}
	waitFor(t, "h1's three endpoints accepted by h2", func() bool {
		n, err := h2.Network("sc")
		return err == nil && len(n.Endpoints) == 3 && len(n.Conflicts) == 0
	})
	if ep := mustAttach(t, h2, api.AttachRequest{Network: "sc", Name: "x", Create: true}); ep.IP != "10.81.0.2" {
		t.Fatalf("h2's first address %s, want 10.81.0.2", ep.IP)
	}
	// h1 keeps allocating next to its endpoints, in its own blocks.
	if ep := mustAttach(t, h1, api.AttachRequest{Network: "sc", Name: "c4", Create: true}); ep.IP != "10.81.32.0" {
		t.Fatalf("h1's next address %s, want 10.81.32.0 (the lowest free of its block 10.81.32.0/28)", ep.IP)
	}
	for _, b := range h1.cl.ClaimedBlocks("sc") {
		if b.Bits() != 28 {
			t.Fatalf("h1 holds %s: want /28 blocks only", b)
		}
	}
}

// TestHolderOfSizedEqualsHolderOf: looking only at the prefix lengths the
// block table has finds the same block and holder as trying every length.
func TestHolderOfSizedEqualsHolderOf(t *testing.T) {
	blocks := map[netip.Prefix]string{
		netip.MustParsePrefix("10.0.0.0/28"):  "a",
		netip.MustParsePrefix("10.0.0.16/28"): "b",
		netip.MustParsePrefix("10.0.0.0/23"):  "old",
		netip.MustParsePrefix("10.0.2.0/29"):  "c",
	}
	sizes := blockSizes(blocks)
	for i := range 1 << 12 {
		a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		b1, h1, ok1 := holderOf(blocks, a)
		b2, h2, ok2 := holderOfSized(blocks, sizes, a)
		if b1 != b2 || h1 != h2 || ok1 != ok2 {
			t.Fatalf("%s: holderOf %s %q %v, holderOfSized %s %q %v", a, b1, h1, ok1, b2, h2, ok2)
		}
	}
}
