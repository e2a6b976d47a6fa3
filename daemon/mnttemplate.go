package daemon

import (
	"fmt"
	"path/filepath"

	"github.com/vxmesh/vxmesh/sandbox"
)

// Mount template modes (Config.MountTemplate, `--mount-template`).
const (
	// MountTemplateAuto uses a template when the host's root mount is
	// shared, so that what is mounted later still reaches containers.
	MountTemplateAuto = "auto"
	// MountTemplateAlways uses one on any host; on a host whose root
	// mount is private, containers see the mounts of the daemon's start
	// (and later ones only under shared mounts).
	MountTemplateAlways = "always"
	// MountTemplateNever starts containers from a copy of the host's
	// mount namespace, as before templates (O(containers) per start).
	MountTemplateNever = "never"
)

// mountTemplateDir is where, in the state directory, the template is
// bind-mounted (a private mount point of its own).
const mountTemplateDir = "mnt"

// mountTemplateSandbox makes the mount namespace that container processes
// start from (sandbox.MakeMountTemplate). A Sandbox without it (the
// tests' fakes) has none: processes start from the host's namespace.
type mountTemplateSandbox interface {
	RootMountShared() (bool, error)
	MakeMountTemplate(dir string) (string, error)
	RemoveMountTemplate(dir string) error
}

func (linuxSandbox) RootMountShared() (bool, error) { return sandbox.RootMountShared() }
func (linuxSandbox) MakeMountTemplate(dir string) (string, error) {
	return sandbox.MakeMountTemplate(dir)
}
func (linuxSandbox) RemoveMountTemplate(dir string) error { return sandbox.RemoveMountTemplate(dir) }

// validMountTemplate checks a Config.MountTemplate ("" is auto).
func validMountTemplate(mode string) error {
	switch mode {
	case "", MountTemplateAuto, MountTemplateAlways, MountTemplateNever:
		return nil
	}
	return fmt.Errorf("mount template %q: want %s, %s or %s", mode, MountTemplateAuto, MountTemplateAlways, MountTemplateNever)
}

// setupMountTemplate makes the mount template as Config.MountTemplate
// asks and sets d.mountNS to its path ("" when processes start from the
// host's namespace). A template that cannot be made is logged, not fatal:
// containers then start as without one.
func (d *Daemon) setupMountTemplate() {
	sb, ok := d.sb.(mountTemplateSandbox)
	mode := d.cfg.MountTemplate
	if !ok || mode == MountTemplateNever {
		return
	}
	dir := filepath.Join(d.cfg.StateDir, mountTemplateDir)
	if mode != MountTemplateAlways {
		shared, err := sb.RootMountShared()
		if err != nil || !shared {
			// One left by a daemon started with always goes.
			sb.RemoveMountTemplate(dir)
			if err != nil {
				d.log.Warn("containers start from a copy of the host's mount namespace: cannot tell whether its root mount is shared", "err", err)
			} else {
				d.log.Info("containers start from a copy of the host's mount namespace: its root mount is not shared, so a template would not see later mounts (--mount-template always uses one anyway)")
			}
			return
		}
	}
	path, err := sb.MakeMountTemplate(dir)
	if err != nil {
		d.log.Warn("containers start from a copy of the host's mount namespace", "err", err)
		return
	}
	d.mountNS = path
	d.log.Info("containers start from a mount template", "path", path, "mode", mode)
}

// removeMountTemplate unmounts the template at shutdown; running
// containers keep their own copies.
func (d *Daemon) removeMountTemplate() {
	sb, ok := d.sb.(mountTemplateSandbox)
	if !ok || d.mountNS == "" {
		return
	}
	if err := sb.RemoveMountTemplate(filepath.Dir(d.mountNS)); err != nil {
		d.log.Warn("removing the mount template", "err", err)
	}
}
