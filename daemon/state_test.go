package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vxmesh/vxmesh/sandbox"
)

// A state.json written by the previous version (savedNetwork doubled as
// the gossip record then) loads: networks, containers and endpoints come
// back as they were, and the endpoint forwards again.
func TestStateFromPreviousVersionLoads(t *testing.T) {
	b, err := os.ReadFile("testdata/state-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	sb := newFakeSandbox()
	sb.addNetns("/run/netns/c1") // inode 101, as recorded
	sb.ifaces["/run/netns/c1/eth0"] = &fakeIface{cfg: sandbox.IfaceConfig{IfName: "eth0"}}
	d := newTestDaemon(t, sb, dir)

	web, err := d.Network("web")
	if err != nil {
		t.Fatal(err)
	}
	if web.Subnet != "10.60.0.0/24" || web.VNI != 4096 || web.MTU != 1450 || web.StormLimit != 1000 || web.Encrypted {
		t.Errorf("network web: %+v", web)
	}
	sec, err := d.Network("sec")
	if err != nil {
		t.Fatal(err)
	}
	if sec.StormLimit != 500 || len(sec.VTEPs) != 1 || sec.VTEPs[0] != "192.0.2.7" {
		t.Errorf("network sec: %+v", sec)
	}
	eps := d.Endpoints()
	if len(eps) != 1 {
		t.Fatalf("endpoints: %+v", eps)
	}
	ep := eps[0]
	if ep.Name != "c1" || ep.IP != "10.60.0.2" || ep.MAC != "02:42:0a:3c:00:02" || ep.IfName != "eth0" || len(ep.Aliases) != 1 || !ep.Managed || ep.State != "up" {
		t.Errorf("endpoint: %+v", ep)
	}
	// The record is written back in the same schema.
	d.mu.Lock()
	err = d.save()
	d.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	s, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Networks) != 2 || s.Networks[1].Name != "web" || s.Networks[1].ID != "6c1f0a4e9b2d47c38e5a1f0b2c3d4e5f" || len(s.Containers) != 1 {
		t.Errorf("state written back: %+v", s)
	}
}
