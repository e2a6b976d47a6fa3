package daemon

import (
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// templateSandbox is a fakeSandbox that makes mount templates: it records
// the directories it was asked for and those removed.
type templateSandbox struct {
	*fakeSandbox
	rootShared bool

	mu      sync.Mutex
	made    []string
	removed []string
}

func (s *templateSandbox) RootMountShared() (bool, error) { return s.rootShared, nil }

func (s *templateSandbox) MakeMountTemplate(dir string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.made = append(s.made, dir)
	return filepath.Join(dir, "template"), nil
}

func (s *templateSandbox) RemoveMountTemplate(dir string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removed = append(s.removed, dir)
	return nil
}

// TestMountTemplateModes: the daemon makes a mount template when
// --mount-template asks for one (auto: only on a host whose root mount is
// shared), tells `run` and `exec` its path with the container's
// namespaces, and removes it when it stops.
func TestMountTemplateModes(t *testing.T) {
	for _, c := range []struct {
		mode       string
		rootShared bool
		want       bool
	}{
		{"", true, true}, {MountTemplateAuto, true, true}, {MountTemplateAuto, false, false},
		{MountTemplateAlways, false, true}, {MountTemplateNever, true, false},
	} {
		dir := t.TempDir()
		sb := &templateSandbox{fakeSandbox: newFakeSandbox(), rootShared: c.rootShared}
		cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, dir)
		cfg.MountTemplate = c.mode
		d := startNode(t, cfg)
		want := ""
		if c.want {
			want = filepath.Join(dir, mountTemplateDir, "template")
		}
		if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web"}); err != nil {
			t.Fatal(err)
		}
		ep := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
		ctr, err := d.Container("c1")
		if err != nil {
			t.Fatal(err)
		}
		if ep.MountNS != want || ctr.MountNS != want {
			t.Errorf("mode %q, root shared %v: run is told %q, exec %q; want %q", c.mode, c.rootShared, ep.MountNS, ctr.MountNS, want)
		}
		d.Close()
		sb.mu.Lock()
		if c.want && (len(sb.made) != 1 || len(sb.removed) != 1 || sb.removed[0] != sb.made[0]) {
			t.Errorf("mode %q: made %v, removed %v; want one made and removed", c.mode, sb.made, sb.removed)
		}
		if !c.want && len(sb.made) != 0 {
			t.Errorf("mode %q, root shared %v: made a template %v", c.mode, c.rootShared, sb.made)
		}
		sb.mu.Unlock()
	}
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), newFakeSandbox(), t.TempDir())
	cfg.MountTemplate = "sometimes"
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), `mount template "sometimes"`) {
		t.Errorf("mode sometimes: %v", err)
	}
}
