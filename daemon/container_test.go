package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// TestRemoveGoneContainerTouchesNothing: after `ip netns del` (or a
// reboot) a new namespace carries the container's name; ps shows the
// container gone without the newcomer's processes, and rm forgets it
// without killing, unplugging or deleting anything of the newcomer.
func TestRemoveGoneContainerTouchesNothing(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(map[bool]string{false: "running", true: "restarted"}[restart], func(t *testing.T) {
			sb := newFakeSandbox()
			dir := t.TempDir()
			d := newTestDaemon(t, sb, dir)
			defer func() { d.Close() }()
			if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web"}); err != nil {
				t.Fatal(err)
			}
			mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
			mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c2", Create: true})
			if restart {
				d.Close()
			}
			newIno := sb.replaceNetns("/run/netns/c1", 4242)
			if restart {
				d = newTestDaemon(t, sb, dir)
			}

			c, err := d.Container("c1")
			if err != nil {
				t.Fatal(err)
			}
			if c.State != api.ContainerGone || len(c.PIDs) != 0 {
				t.Fatalf("ps c1 after its namespace was replaced: state %q pids %v, want gone without pids", c.State, c.PIDs)
			}
			if c2, _ := d.Container("c2"); c2.State != api.ContainerUp {
				t.Fatalf("ps c2: state %q, want up", c2.State)
			}
			if err := d.RemoveContainer("c1"); err != nil {
				t.Fatalf("rm of a gone container: %v", err)
			}
			if len(sb.killed) != 0 || len(sb.unplugs) != 0 || len(sb.deleted) != 0 {
				t.Fatalf("rm touched the new namespace: killed %v, unplugged %v, deleted %v", sb.killed, sb.unplugs, sb.deleted)
			}
			if _, ino, err := sb.NetnsIdentity("/run/netns/c1"); err != nil || ino != newIno || !slices.Equal(sb.pids[newIno], []int{4242}) {
				t.Fatalf("the new namespace after rm: ino %d (want %d), pids %v, %v", ino, newIno, sb.pids[newIno], err)
			}
			if _, err := d.Container("c1"); err == nil {
				t.Fatal("rm left c1 in ps")
			}
			s, err := loadState(dir)
			if err != nil || len(s.Containers) != 1 || s.Containers[0].Name != "c2" {
				t.Fatalf("saved state after rm: %+v, %v", s, err)
			}
		})
	}
}

// TestRemoveContainerWithMissingNamespace: a container whose namespace no
// longer exists at all is removed, its record forgotten.
func TestRemoveContainerWithMissingNamespace(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	sb.DeleteNamedNetns("c1")
	sb.deleted = nil
	if c, _ := d.Container("c1"); c.State != api.ContainerGone {
		t.Fatalf("ps c1 without its namespace: state %q, want gone", c.State)
	}
	if err := d.RemoveContainer("c1"); err != nil {
		t.Fatalf("rm: %v", err)
	}
	if len(d.Containers()) != 0 || len(d.Endpoints()) != 0 {
		t.Fatal("rm left the container or its endpoint")
	}
}

// blockSave makes the next state save fail: state.json and the journal
// become non-empty directories, which no rename can replace and no open
// for writing can open (even for root). The returned function undoes it.
func blockSave(t *testing.T, dir string) func() {
	t.Helper()
	var undo []func()
	for _, name := range []string{stateFile, journalFile} {
		p := filepath.Join(dir, name)
		_, err := os.Stat(p)
		existed := err == nil
		if existed {
			if err := os.Rename(p, p+".aside"); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Join(p, "x"), 0o700); err != nil {
			t.Fatal(err)
		}
		undo = append(undo, func() {
			if err := os.RemoveAll(p); err != nil {
				t.Fatal(err)
			}
			if existed {
				if err := os.Rename(p+".aside", p); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	return func() {
		for _, f := range undo {
			f()
		}
	}
}

// TestFailedSaveLeavesRemovableContainer: when the state cannot be saved,
// rm and detach fail and change nothing: the container keeps its
// interfaces and stays listed, and the same command succeeds once the
// state directory is writable again.
func TestFailedSaveLeavesRemovableContainer(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	d := newTestDaemon(t, sb, dir)
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	d.CreateNetwork(api.NetworkCreateRequest{Name: "db"})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	mustAttach(t, d, api.AttachRequest{Network: "db", Name: "c1", Netns: "/run/netns/c1"})

	unblock := blockSave(t, dir)
	if err := d.Detach("c1", "db"); err == nil || !strings.Contains(err.Error(), "saving state") {
		t.Fatalf("detach with a failing save: %v", err)
	}
	if err := d.RemoveContainer("c1"); err == nil || !strings.Contains(err.Error(), "saving state") {
		t.Fatalf("rm with a failing save: %v", err)
	}
	c, err := d.Container("c1")
	if err != nil || len(c.Endpoints) != 2 || len(sb.unplugs) != 0 || len(sb.deleted) != 0 {
		t.Fatalf("after failed saves: %+v, %v; unplugged %v, deleted %v", c, err, sb.unplugs, sb.deleted)
	}
	for _, ep := range c.Endpoints {
		if ep.State != "up" || sb.iface("/run/netns/c1", ep.IfName) == nil {
			t.Fatalf("endpoint %s after failed saves: %+v", ep.Network, ep)
		}
	}

	unblock()
	if err := d.Detach("c1", "db"); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveContainer("c1"); err != nil {
		t.Fatal(err)
	}
	if len(d.Containers()) != 0 || !slices.Equal(sb.deleted, []string{"c1"}) {
		t.Fatalf("after rm: containers %+v, deleted %v", d.Containers(), sb.deleted)
	}
	if s, err := loadState(dir); err != nil || len(s.Containers) != 0 {
		t.Fatalf("saved state after rm: %+v, %v", s, err)
	}
}

// TestSecondNetworkGetsEth1: a container's second network is eth1 with its
// own address, and each interface is offered its network's gateway: Plug
// adds the default route only where the namespace has none
// (TestPlugAddsADefaultRouteOnlyWhereNone), so the first network keeps it.
// Detaching the first then asks for the default route via the remaining
// network's gateway (added if the namespace has none), as Docker moves it.
func TestSecondNetworkGetsEth1(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.1.0.0/24"})
	d.CreateNetwork(api.NetworkCreateRequest{Name: "db", Subnet: "10.2.0.0/24"})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	ep := mustAttach(t, d, api.AttachRequest{Network: "db", Name: "c1", Netns: "/run/netns/c1"})
	if ep.IfName != "eth1" {
		t.Fatalf("second interface %q, want eth1", ep.IfName)
	}
	eth0, eth1 := sb.iface("/run/netns/c1", "eth0"), sb.iface("/run/netns/c1", "eth1")
	if eth0.cfg.Gateway.String() != "10.1.0.1" || eth1.cfg.Gateway.String() != "10.2.0.1" || eth1.cfg.Addr.String() != "10.2.0.2/24" {
		t.Fatalf("eth0 %+v, eth1 %+v: want each with its network's gateway", eth0.cfg, eth1.cfg)
	}
	if err := d.Detach("c1", "web"); err != nil {
		t.Fatal(err)
	}
	sb.mu.Lock()
	got := strings.Join(sb.defaultRoutes, ",")
	sb.mu.Unlock()
	if got != "/run/netns/c1/eth1 via 10.2.0.1" {
		t.Fatalf("default routes asked for after web's detach: %q, want eth1 via 10.2.0.1", got)
	}
	if err := d.Detach("c1", "db"); err != nil {
		t.Fatal(err)
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if len(sb.defaultRoutes) != 1 {
		t.Fatalf("default routes asked for after the last detach: %q", sb.defaultRoutes)
	}
}

// TestStartSweepsOrphans: a daemon killed in the middle of `run` leaves a
// prefixed namespace and a half-made TAP that no record owns; the next
// start removes them and keeps the namespaces of its containers (gone
// ones included) and everything without its prefix.
func TestStartSweepsOrphans(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, dir)
	cfg.NetnsPrefix = "t-"
	d := startNode(t, cfg)
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c2", Create: true})
	d.Close()

	sb.addNetns("/run/netns/t-orphan")
	sb.addNetns("/run/netns/other")
	sb.replaceNetns("/run/netns/t-c2") // c2 is gone; the name is kept
	sb.taps = []string{"vxp0123456789ab"}
	cfg = nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, dir)
	cfg.NetnsPrefix = "t-"
	d = startNode(t, cfg)
	defer d.Close()
	if !slices.Equal(sb.deleted, []string{"t-orphan"}) || sb.taps != nil {
		t.Fatalf("sweep deleted namespaces %v, left TAPs %v; want t-orphan deleted and no TAP left", sb.deleted, sb.taps)
	}
	for _, p := range []string{"/run/netns/t-c1", "/run/netns/t-c2", "/run/netns/other"} {
		if _, _, err := sb.NetnsIdentity(p); err != nil {
			t.Errorf("sweep removed %s: %v", p, err)
		}
	}
	if c, err := d.Container("c1"); err != nil || c.State != api.ContainerUp {
		t.Fatalf("c1 after the sweep: %+v, %v", c, err)
	}
}

// TestAttachToGoneContainerRefused: a second network for a container
// whose namespace path now names another namespace is refused, even when
// the request names the container's old namespace by another path: the
// interface would land in the newcomer.
func TestAttachToGoneContainerRefused(t *testing.T) {
	sb := newFakeSandbox()
	d := newTestDaemon(t, sb, t.TempDir())
	defer d.Close()
	d.CreateNetwork(api.NetworkCreateRequest{Name: "web"})
	d.CreateNetwork(api.NetworkCreateRequest{Name: "db"})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	sb.ns["/proc/9/ns/net"] = sb.ns["/run/netns/c1"] // a process still in the old namespace
	sb.replaceNetns("/run/netns/c1")
	_, err := d.Attach(api.AttachRequest{Network: "db", Name: "c1", PID: 9})
	if err == nil || !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("attach to a gone container: %v", err)
	}
	if sb.iface("/run/netns/c1", "eth1") != nil {
		t.Fatal("the refused attach plugged an interface into the new namespace")
	}
}
