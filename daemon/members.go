package daemon

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// membersFile, inside --state-dir, lists the cluster members this node has
// seen, so that after a restart it rejoins them even when it was started
// without --join (the first node of a cluster).
const membersFile = "members.json"

// memberRetention is how long a member that is not seen alive any more
// stays in membersFile (and is retried after a restart).
const memberRetention = 7 * 24 * time.Hour

// memberRefresh is how stale a remembered member's last sighting may get
// before the file is rewritten only to refresh it.
const memberRefresh = time.Hour

type savedMembers struct {
	Version int           `json:"version"`
	Members []savedMember `json:"members"`
}

type savedMember struct {
	Name string         `json:"name"`
	Addr netip.AddrPort `json:"addr"` // gossip address
	Seen time.Time      `json:"seen"` // last seen alive
}

// loadMembers reads dir/members.json; a missing or unreadable file is an
// empty list (the file is only a hint for rejoining).
func loadMembers(dir string) ([]savedMember, error) {
	b, err := os.ReadFile(filepath.Join(dir, membersFile))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s savedMembers
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, membersFile), err)
	}
	return s.Members, nil
}

// writeMembers replaces dir/members.json atomically.
func writeMembers(dir string, ms []savedMember) error {
	b, err := json.MarshalIndent(savedMembers{Version: 1, Members: ms}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".members-*.json")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(b)
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp.Name(), 0o600)
	}
	if werr != nil {
		return werr
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, membersFile))
}

// joinLater decides what a failed --join (err) means at start: on a node
// that was in a cluster before (members.json lists other members) its
// seeds may simply not be up yet (the whole cluster restarting at once),
// so it warns and has the cluster retry the seeds in the background with
// the saved members, and reports true; on a new node it reports false and
// the start fails (a wrong address or cluster key is best told at once).
func (d *Daemon) joinLater(err error) bool {
	ms, _ := loadMembers(d.cfg.StateDir)
	others := 0
	for _, m := range ms {
		if m.Name != d.cfg.Node && m.Addr.IsValid() && time.Since(m.Seen) <= memberRetention {
			others++
		}
	}
	if others == 0 {
		return false
	}
	var seeds []netip.AddrPort
	for _, s := range d.cfg.Join {
		if ap, perr := netip.ParseAddrPort(s); perr == nil {
			seeds = append(seeds, ap)
		} else if a, perr := netip.ParseAddr(strings.Trim(s, "[]")); perr == nil {
			seeds = append(seeds, netip.AddrPortFrom(a, uint16(d.cfg.GossipPort)))
		}
	}
	d.log.Warn("no --join address answered; this node was in a cluster before and keeps trying its seeds and saved members in the background",
		"err", err, "saved_members", others)
	d.cl.Rejoin(seeds)
	return true
}

// rejoinSavedMembers loads the members this node knew before it stopped
// and has the cluster rejoin them in the background.
func (d *Daemon) rejoinSavedMembers() {
	ms, err := loadMembers(d.cfg.StateDir)
	if err != nil {
		d.log.Warn("ignoring the saved members", "err", err)
	}
	d.known = map[string]savedMember{}
	var addrs []netip.AddrPort
	for _, m := range ms {
		if m.Name == d.cfg.Node || !m.Addr.IsValid() || time.Since(m.Seen) > memberRetention {
			continue
		}
		d.known[m.Name] = m
		addrs = append(addrs, m.Addr)
	}
	if len(addrs) > 0 {
		d.log.Info("rejoining the members known before the restart", "members", len(addrs))
		d.cl.Rejoin(addrs)
	}
}

// saveMembers records the members seen alive now in members.json when the
// list changed; only the cluster watcher calls it.
func (d *Daemon) saveMembers() {
	now := time.Now()
	changed := false
	for _, m := range d.cl.Members() {
		if m.Self || m.State != "alive" || !m.Addr.IsValid() {
			continue
		}
		old, ok := d.known[m.Name]
		if !ok || old.Addr != m.Addr || now.Sub(old.Seen) > memberRefresh {
			d.known[m.Name] = savedMember{Name: m.Name, Addr: m.Addr, Seen: now}
			changed = true
		}
	}
	for name, m := range d.known {
		if now.Sub(m.Seen) > memberRetention {
			delete(d.known, name)
			changed = true
		}
	}
	if !changed {
		return
	}
	ms := make([]savedMember, 0, len(d.known))
	for _, m := range d.known {
		ms = append(ms, m)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
	if err := writeMembers(d.cfg.StateDir, ms); err != nil {
		d.log.Error("saving the cluster members", "err", err)
	}
}
