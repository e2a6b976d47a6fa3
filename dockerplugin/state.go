package dockerplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// The plugin's endpoint records outlive the daemon: Docker calls Join,
// Leave and DeleteEndpoint with IDs only, and a daemon restarted between
// CreateEndpoint and those must still know the endpoint's network and
// address. They are kept in Config.StateFile, rewritten whole on every
// change (a few records per running Docker container).

// savedState is the state file's content.
type savedState struct {
	// Endpoints are by Docker endpoint ID.
	Endpoints map[string]savedEndpoint `json:"endpoints"`
}

// savedEndpoint is one endpointInfo as saved.
type savedEndpoint struct {
	Network string `json:"network"`
	IP      string `json:"ip"`
	Held    bool   `json:"held,omitempty"`
}

// loadState reads the endpoint records of a previous run; a missing file
// is no record.
func loadState(path string) (map[string]endpointInfo, error) {
	out := map[string]endpointInfo{}
	if path == "" {
		return out, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, fmt.Errorf("docker plugin state: %w", err)
	}
	eps, err := parseState(b)
	if err != nil {
		// Kept aside, not overwritten by the next save: what it held
		// can still be read and repaired by hand.
		aside := path + ".bad"
		if rerr := os.Rename(path, aside); rerr != nil {
			return eps, fmt.Errorf("%w (and it could not be set aside: %v)", err, rerr)
		}
		return eps, fmt.Errorf("%w (set aside as %s)", err, aside)
	}
	return eps, nil
}

// parseState decodes a state file; a bad record is an error naming it.
func parseState(b []byte) (map[string]endpointInfo, error) {
	out := map[string]endpointInfo{}
	var s savedState
	if err := json.Unmarshal(b, &s); err != nil {
		return out, fmt.Errorf("docker plugin state: %v", err)
	}
	for id, e := range s.Endpoints {
		if _, _, err := names(id); err != nil {
			return map[string]endpointInfo{}, fmt.Errorf("docker plugin state: %w", err)
		}
		ip, err := netip.ParseAddr(e.IP)
		if err != nil || !ip.Is4() || e.Network == "" {
			return map[string]endpointInfo{}, fmt.Errorf("docker plugin state: endpoint %.12s: network %q, address %q: want a network and an IPv4 address", id, e.Network, e.IP)
		}
		out[id] = endpointInfo{network: e.Network, ip: ip, held: e.Held}
	}
	return out, nil
}

// saveLocked writes the endpoint records (the file is replaced
// atomically); callers hold p.mu.
func (p *Plugin) saveLocked() error {
	path := p.cfg.StateFile
	if path == "" {
		return nil
	}
	s := savedState{Endpoints: map[string]savedEndpoint{}}
	for id, e := range p.eps {
		s.Endpoints[id] = savedEndpoint{Network: e.network, IP: e.ip.String(), Held: e.held}
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".docker-plugin-*.tmp")
	if err != nil {
		return fmt.Errorf("docker plugin state: %w", err)
	}
	_, err = tmp.Write(append(b, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("docker plugin state: %w", err)
	}
	return nil
}

// restore takes over the endpoint records of a previous run: the
// address of one that was not joined yet (the daemon forgot its hold
// when it stopped) is held again, so that Join still gets it. A joined
// endpoint's address is its container's (the daemon restored it).
func (p *Plugin) restore(eps map[string]endpointInfo) {
	attached := map[string]bool{}
	for _, e := range p.cfg.Backend.Endpoints() {
		attached[e.Name] = true
	}
	for id, ep := range eps {
		ctr, _, _ := names(id)
		if ep.held && !attached[ctr] {
			if _, err := p.cfg.Backend.ReserveAddress(ep.network, ep.ip); err != nil {
				p.log.Warn("docker endpoint: address not held again after a restart", "endpoint", id, "network", ep.network, "ip", ep.ip, "err", err)
			}
		}
	}
	p.eps = eps
	if len(eps) > 0 {
		p.log.Info("docker endpoints restored", "count", len(eps))
	}
}

// removeStopped removes the endpoints whose container stopped while the
// daemon was down: Docker's Leave and DeleteEndpoint for them failed, so
// none is coming. Those are the endpoints the daemon restored down (their
// sandbox is gone) that no running container of the Docker Engine has.
// Without an answer from the Engine nothing is removed.
func (p *Plugin) removeStopped() {
	down := map[string]string{} // container -> network
	for _, e := range p.cfg.Backend.Endpoints() {
		if e.State != "up" && strings.HasPrefix(e.Name, "docker-") {
			down[e.Name] = e.Network
		}
	}
	p.mu.Lock()
	var ids []string
	for id := range p.eps {
		if ctr, _, _ := names(id); down[ctr] != "" {
			ids = append(ids, id)
		}
	}
	p.mu.Unlock()
	for _, id := range ids {
		ctr, _, _ := names(id)
		_, running, err := p.cfg.Engine.ContainerName(p.ctx, id)
		if err != nil {
			p.log.Warn("docker endpoints: stopped containers' endpoints not removed", "err", err)
			return
		}
		if running {
			continue
		}
		if err := p.cfg.Backend.Detach(ctr, down[ctr]); err != nil {
			p.log.Warn("docker endpoint of a stopped container not removed", "container", ctr, "err", err)
			continue
		}
		p.mu.Lock()
		delete(p.eps, id)
		if err := p.saveLocked(); err != nil {
			p.log.Warn("docker endpoint: its record stays in the state file", "endpoint", id, "err", err)
		}
		p.mu.Unlock()
		p.log.Info("docker endpoint of a container that stopped while the daemon was down removed", "container", ctr, "network", down[ctr])
	}
}

// nameRestored gives the restored endpoints that have no name yet their
// container's name as alias (nameLater): a daemon stopped between Join
// and the moment the Engine listed the started container never named it,
// and the container ran on unresolvable from other hosts.
func (p *Plugin) nameRestored() {
	unnamed := map[string]string{} // container -> network
	for _, e := range p.cfg.Backend.Endpoints() {
		if len(e.Aliases) == 0 && strings.HasPrefix(e.Name, "docker-") {
			unnamed[e.Name] = e.Network
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range p.eps {
		ctr, _, _ := names(id)
		if network := unnamed[ctr]; network != "" {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.nameLater(ctr, network, id)
			}()
		}
	}
}
