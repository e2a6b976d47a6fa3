package cniplugin

import (
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
)

// DefaultStateDir is where the vxmesh-cni binary records which CNI
// configuration made each attachment (Plugin.StateDir).
const DefaultStateDir = "/var/lib/cni/vxmesh"

// The records are empty files, STATEDIR/net-CONFIG/ATTACHMENT: CONFIG the
// configuration's name and ATTACHMENT the container's daemon name (which
// starts with NamePrefix) and the interface joined by "/", each
// path-escaped (so no name leaves the directory, "." and ".." included,
// and the join is unambiguous). GC reads them to
// leave alone what another configuration on the same vxmesh network
// attached; the daemon knows only the vxmesh network.

// recordName is the file name of the record of ctr's ifname.
func recordName(ctr, ifname string) string { return url.PathEscape(ctr + "/" + ifname) }

// configDir is the directory of config's records.
func (p *Plugin) configDir(config string) string {
	return filepath.Join(p.StateDir, "net-"+url.PathEscape(config))
}

func (p *Plugin) recordPath(config, ctr, ifname string) string {
	return filepath.Join(p.configDir(config), recordName(ctr, ifname))
}

// record notes that configuration config attached ctr's ifname.
func (p *Plugin) record(config, ctr, ifname string) error {
	if p.StateDir == "" {
		return nil
	}
	path := p.recordPath(config, ctr, ifname)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, nil, 0o600)
}

// forget removes config's record of ctr's ifname, if any.
func (p *Plugin) forget(config, ctr, ifname string) error {
	if p.StateDir == "" {
		return nil
	}
	if err := os.Remove(p.recordPath(config, ctr, ifname)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	os.Remove(p.configDir(config)) // once empty
	return nil
}

// recordedByOther reports whether a configuration other than config
// recorded ctr's ifname: an attachment config's GC must not touch.
func (p *Plugin) recordedByOther(config, ctr, ifname string) bool {
	if p.StateDir == "" {
		return false
	}
	dirs, _ := os.ReadDir(p.StateDir)
	own := filepath.Base(p.configDir(config))
	name := recordName(ctr, ifname)
	for _, d := range dirs {
		if !d.IsDir() || d.Name() == own {
			continue
		}
		if _, err := os.Stat(filepath.Join(p.StateDir, d.Name(), name)); err == nil {
			return true
		}
	}
	return false
}

// forgetGone removes config's records of attachments that no longer
// exist (detached by hand, or removed while a runtime missed its DEL);
// exist holds the recordName of every attachment there is.
func (p *Plugin) forgetGone(config string, exist map[string]bool) {
	if p.StateDir == "" {
		return
	}
	dir := p.configDir(config)
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !exist[e.Name()] {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	os.Remove(dir) // once empty
}
