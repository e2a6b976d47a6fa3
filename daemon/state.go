package daemon

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// stateFile is the name of the persisted state inside --state-dir.
const stateFile = "state.json"

// savedState is what survives a daemon restart: the control-plane
// decisions, never data-plane counters.
type savedState struct {
	Version    int              `json:"version"`
	Networks   []savedNetwork   `json:"networks"`
	Containers []savedContainer `json:"containers"`
	// Services are the cluster's services as this node last knew them,
	// each in the cluster's own record schema (svcRecord, which already
	// stays readable across versions, since nodes of two versions gossip
	// it): a cluster whose nodes all stopped gets them back from whichever
	// node starts first (see Daemon.republish).
	Services []svcRecord `json:"services,omitempty"`
	// RemovedServices are the services and networks this node saw
	// removed (by a tombstone, or replaced under their name), kept for
	// removalRetention: a node that missed the removal and announces one
	// again after the whole cluster stopped sees it removed once more.
	// The name is older than network removals; a version that knows only
	// services reads a network's as the removal of a service ID that no
	// service has.
	RemovedServices []savedRemoval `json:"removed_services,omitempty"`
}

// savedRemoval is one removed service or network: its kind, its name
// and the ID of the removed incarnation (one created again under the
// name has another), and when this node saw it go.
type savedRemoval struct {
	// Kind is removedService (empty: written before networks had
	// removals) or removedNetwork.
	Kind string    `json:"kind,omitempty"`
	Name string    `json:"name"`
	ID   string    `json:"id"`
	At   time.Time `json:"at"`
}

// Kinds of savedRemoval.
const (
	removedService = ""
	removedNetwork = "network"
)

// key identifies the removal among others.
func (r savedRemoval) key() string { return r.Kind + "\x00" + r.Name + "\x00" + r.ID }

// removalRetention is how long a removal is remembered; maxRemovals
// bounds how many (the newest are kept).
const (
	removalRetention = 30 * 24 * time.Hour
	maxRemovals      = 4096
)

// savedNetwork is a network in state.json. It is the on-disk schema:
// fields are only ever added (with omitempty), so that a file written by
// an older version still loads. netRecord is the gossip schema; the two
// are converted with netRecord.saved and savedNetwork.record.
type savedNetwork struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"`
	Subnet  string    `json:"subnet"`
	Gateway string    `json:"gateway"`
	MTU     int       `json:"mtu"`
	VNI     uint32    `json:"vni"`
	Created time.Time `json:"created"`
	// VTEPs are external RFC 7348 VTEPs of the network.
	VTEPs []string `json:"vteps,omitempty"`
	// Encrypted networks are carried in ESP between hosts with Cipher
	// (aes128-gcm or aes256-gcm). Keys are never stored here.
	Encrypted bool   `json:"encrypted,omitempty"`
	Cipher    string `json:"cipher,omitempty"`
	// StormLimit is how many flooded frames per second each container
	// port may send (see vswitch.Config.StormLimit): -1 unlimited, 0 (a
	// record written before the field existed) the default.
	StormLimit int `json:"storm_limit,omitempty"`
	// Internal networks have no egress.
	Internal bool `json:"internal,omitempty"`
	// GatewayHost is this host's gateway address on the network (the
	// routing mesh), while it has a service with published ports.
	GatewayHost string `json:"gateway_host,omitempty"`
}

// record is the network as the cluster's record.
func (s savedNetwork) record() netRecord {
	return netRecord{
		Name: s.Name, ID: s.ID, Subnet: s.Subnet, Gateway: s.Gateway, MTU: s.MTU, VNI: s.VNI,
		Created: s.Created, VTEPs: s.VTEPs, Encrypted: s.Encrypted, Cipher: s.Cipher, StormLimit: s.StormLimit,
		Internal: s.Internal,
	}
}

type savedContainer struct {
	Name    string `json:"name"`
	Netns   string `json:"netns"`
	NsDev   uint64 `json:"ns_dev"`
	NsIno   uint64 `json:"ns_ino"`
	Managed bool   `json:"managed"`
	// HostTAP marks a Docker endpoint's container (see container.hostTAP).
	HostTAP bool `json:"host_tap,omitempty"`
	// MainPID, ExitStatus and Stopped are the main process of a container
	// made by run, its exit status once it exited, and whether the
	// container is stopped (see container.stopped).
	MainPID    int  `json:"main_pid,omitempty"`
	ExitStatus *int `json:"exit_status,omitempty"`
	Stopped    bool `json:"stopped,omitempty"`
	// Command is the main process run started, for start and the restart
	// policy; Restart the policy (absent: no), RestartCount and
	// RestartDelay (ns) its state, RestartDue a restart it had decided,
	// ManualStop a stop by `vxmesh stop`, StartedAt (Unix ns) the last
	// start of the main process (see container). A state saved before
	// them has none: such a container cannot be started again.
	Command      *api.Command `json:"command,omitempty"`
	Restart      string       `json:"restart,omitempty"`
	RestartCount int          `json:"restart_count,omitempty"`
	RestartDelay int64        `json:"restart_delay,omitempty"`
	RestartDue   bool         `json:"restart_due,omitempty"`
	ManualStop   bool         `json:"manual_stop,omitempty"`
	StartedAt    int64        `json:"started_at,omitempty"`
	// Endpoints are the container's interfaces, one per network.
	Endpoints []savedEndpoint `json:"endpoints"`
}

type savedEndpoint struct {
	Network string   `json:"network"`
	IP      string   `json:"ip"`
	MAC     string   `json:"mac"`
	IfName  string   `json:"ifname"`
	Aliases []string `json:"aliases,omitempty"`
	// Services are the services the endpoint joined as a backend.
	Services []savedSvcMember `json:"services,omitempty"`
	// Published are the endpoint's published ports (gateway.Publish
	// strings).
	Published []string `json:"published,omitempty"`
}

// The state is a snapshot, state.json, and a journal of the changes made
// since, state.journal: a change appends (and fsyncs) the records of the
// networks and containers it changed, so its cost does not grow with the
// number of containers. When the journal grows past journalCompactFactor
// times the snapshot, the state is written as a new snapshot and the
// journal emptied. A state.json of a version without the journal is a
// snapshot with an empty journal.
//
// A journal record is a 4-byte big-endian payload length, the payload's
// CRC-32C (4 bytes, big-endian) and the payload, a journalRecord in JSON.
// A crash can leave the last record torn: it fails its length or checksum
// and is dropped (with a log line) when the daemon starts, with anything
// after it. Records are whole puts or deletes of one network, container or
// service, so replaying a journal over a snapshot that already holds its changes (a
// crash between writing the snapshot and emptying the journal) yields the
// same state.
const (
	journalFile = "state.journal"
	// journalCompactFactor is how many times the snapshot's size the
	// journal may grow to before it is compacted into a new snapshot.
	journalCompactFactor = 4
	// journalMinCompact is the journal size below which it is never
	// compacted (a small state would otherwise be rewritten often).
	journalMinCompact = 256 << 10
	// maxJournalRecord bounds one record's payload.
	maxJournalRecord = 16 << 20
	journalHeader    = 8
)

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// journalRecord is one change: a network, container or service written
// (whole) or removed, by name.
type journalRecord struct {
	Network         *savedNetwork   `json:"network,omitempty"`
	Container       *savedContainer `json:"container,omitempty"`
	Service         *svcRecord      `json:"service,omitempty"`
	DeleteNetwork   string          `json:"delete_network,omitempty"`
	DeleteContainer string          `json:"delete_container,omitempty"`
	DeleteService   string          `json:"delete_service,omitempty"`
	RemovedService  *savedRemoval   `json:"removed_service,omitempty"`
}

// appendRecord appends the framed payload to b.
func appendRecord(b, payload []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(payload, crc32c))
	return append(b, payload...)
}

// parseJournal returns the records of a journal and the length of its
// valid part; torn, when not nil, says why the rest (from that length on)
// is not valid.
func parseJournal(b []byte) (recs []journalRecord, valid int, torn error) {
	for valid < len(b) {
		rest := b[valid:]
		if len(rest) < journalHeader {
			return recs, valid, fmt.Errorf("%d bytes at offset %d: a record header needs %d", len(rest), valid, journalHeader)
		}
		n := binary.BigEndian.Uint32(rest)
		if n > maxJournalRecord || uint64(n) > uint64(len(rest)-journalHeader) {
			return recs, valid, fmt.Errorf("record at offset %d: length %d past the end (%d bytes left)", valid, n, len(rest)-journalHeader)
		}
		payload := rest[journalHeader : journalHeader+int(n)]
		if crc32.Checksum(payload, crc32c) != binary.BigEndian.Uint32(rest[4:]) {
			return recs, valid, fmt.Errorf("record at offset %d: checksum mismatch", valid)
		}
		var r journalRecord
		if err := json.Unmarshal(payload, &r); err != nil {
			return recs, valid, fmt.Errorf("record at offset %d: %v", valid, err)
		}
		recs = append(recs, r)
		valid += journalHeader + int(n)
	}
	return recs, valid, nil
}

// journalInfo is what loading found in the journal.
type journalInfo struct {
	// valid is the length of the journal's valid part, size its length.
	valid, size int64
	records     int
	// torn says why the bytes past valid were dropped.
	torn error
	// snapshot is the size of state.json.
	snapshot int64
}

// loadState reads the state of dir: state.json with the changes of
// state.journal applied. Missing files are an empty state.
func loadState(dir string) (*savedState, error) {
	s, _, err := loadStateJournal(dir)
	return s, err
}

// loadStateJournal is loadState that also describes the journal.
func loadStateJournal(dir string) (*savedState, journalInfo, error) {
	var info journalInfo
	s := &savedState{Version: 1}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	switch {
	case os.IsNotExist(err):
	case err != nil:
		return nil, info, err
	default:
		if err := json.Unmarshal(b, s); err != nil {
			return nil, info, fmt.Errorf("state %s: %w", filepath.Join(dir, stateFile), err)
		}
		info.snapshot = int64(len(b))
	}
	j, err := os.ReadFile(filepath.Join(dir, journalFile))
	if err != nil && !os.IsNotExist(err) {
		return nil, info, err
	}
	recs, valid, torn := parseJournal(j)
	info.valid, info.size, info.records, info.torn = int64(valid), int64(len(j)), len(recs), torn
	s.apply(recs)
	return s, info, nil
}

// apply replays journal records over s; networks, containers and
// services stay sorted by name.
func (s *savedState) apply(recs []journalRecord) {
	nets := map[string]savedNetwork{}
	for _, n := range s.Networks {
		nets[n.Name] = n
	}
	ctrs := map[string]savedContainer{}
	for _, c := range s.Containers {
		ctrs[c.Name] = c
	}
	svcs := map[string]svcRecord{}
	for _, v := range s.Services {
		svcs[v.Name] = v
	}
	removed := map[string]savedRemoval{}
	for _, r := range s.RemovedServices {
		removed[r.key()] = r
	}
	for _, r := range recs {
		switch {
		case r.Network != nil:
			nets[r.Network.Name] = *r.Network
		case r.Container != nil:
			ctrs[r.Container.Name] = *r.Container
		case r.Service != nil:
			svcs[r.Service.Name] = *r.Service
		case r.DeleteNetwork != "":
			delete(nets, r.DeleteNetwork)
		case r.DeleteContainer != "":
			delete(ctrs, r.DeleteContainer)
		case r.DeleteService != "":
			delete(svcs, r.DeleteService)
		case r.RemovedService != nil:
			removed[r.RemovedService.key()] = *r.RemovedService
		}
	}
	s.RemovedServices = s.RemovedServices[:0]
	for _, r := range removed {
		s.RemovedServices = append(s.RemovedServices, r)
	}
	sort.Slice(s.RemovedServices, func(i, j int) bool { return s.RemovedServices[i].key() < s.RemovedServices[j].key() })
	s.Networks, s.Containers, s.Services = s.Networks[:0], s.Containers[:0], s.Services[:0]
	for _, n := range nets {
		s.Networks = append(s.Networks, n)
	}
	for _, c := range ctrs {
		s.Containers = append(s.Containers, c)
	}
	for _, v := range svcs {
		s.Services = append(s.Services, v)
	}
	sort.Slice(s.Networks, func(i, j int) bool { return s.Networks[i].Name < s.Networks[j].Name })
	sort.Slice(s.Containers, func(i, j int) bool { return s.Containers[i].Name < s.Containers[j].Name })
	sort.Slice(s.Services, func(i, j int) bool { return s.Services[i].Name < s.Services[j].Name })
}

// stateStore writes the state of a state directory as snapshot and
// journal. It remembers what is on disk (each network's, container's and
// service's encoded record) to write only what changed. The daemon's d.mu
// guards it.
type stateStore struct {
	dir        string
	networks   map[string][]byte
	containers map[string][]byte
	services   map[string][]byte
	removed    map[string][]byte // by savedRemoval.key
	// snapshot and journal are the sizes of state.json and of the
	// journal's valid part.
	snapshot, journal int64
	// dirty is set when an append failed part-way: the journal's end is
	// unknown, so the next save writes a snapshot instead.
	dirty bool
	// written counts the bytes written (journal and snapshots).
	written int64
	// minCompact replaces journalMinCompact (tests).
	minCompact int64
}

// openStateStore loads the state of dir. A torn end of the journal is
// dropped from the file (and logged) before anything is appended.
func openStateStore(dir string, log *slog.Logger) (*stateStore, *savedState, error) {
	s, info, err := loadStateJournal(dir)
	if err != nil {
		return nil, nil, err
	}
	st := &stateStore{dir: dir, snapshot: info.snapshot, journal: info.valid}
	if info.torn != nil {
		log.Warn("state journal: dropping its torn end (a crash during a write)", "file", filepath.Join(dir, journalFile),
			"records", info.records, "dropped_bytes", info.size-info.valid, "err", info.torn)
		if err := os.Truncate(filepath.Join(dir, journalFile), info.valid); err != nil {
			st.dirty = true
		}
	}
	st.remember(s)
	if info.snapshot == 0 {
		// A new state directory (or one without its snapshot) starts
		// with one, so the journal always has a base on disk.
		if err := st.compact(s); err != nil {
			return nil, nil, fmt.Errorf("state %s: %w", filepath.Join(dir, stateFile), err)
		}
	}
	return st, s, nil
}

// remember records s as what is on disk.
func (st *stateStore) remember(s *savedState) {
	st.networks, st.containers, st.services, st.removed = map[string][]byte{}, map[string][]byte{}, map[string][]byte{}, map[string][]byte{}
	for _, n := range s.Networks {
		st.networks[n.Name], _ = json.Marshal(n)
	}
	for _, c := range s.Containers {
		st.containers[c.Name], _ = json.Marshal(c)
	}
	for _, v := range s.Services {
		st.services[v.Name], _ = json.Marshal(v)
	}
	for _, r := range s.RemovedServices {
		st.removed[r.key()], _ = json.Marshal(r)
	}
}

// pending is the records of one save and the cache changes they make.
type pending struct {
	buf        []byte
	networks   map[string][]byte // nil value: deleted
	containers map[string][]byte
	services   map[string][]byte
	removed    map[string][]byte
	// snapshot says the save must write a snapshot: disk holds what no
	// journal record can take away.
	snapshot bool
}

// add appends rec and notes name's new encoding (nil: deleted) in cache,
// one of p's maps.
func (p *pending) add(rec journalRecord, encoded []byte, cache map[string][]byte, name string) error {
	payload, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	p.buf = appendRecord(p.buf, payload)
	cache[name] = encoded
	return nil
}

func newPending() *pending {
	return &pending{networks: map[string][]byte{}, containers: map[string][]byte{}, services: map[string][]byte{}, removed: map[string][]byte{}}
}

// putRecord adds to p the record of v under name (made by put) if its
// encoding differs from disk's, what is on disk; a nil v with name adds
// del instead, if disk has name. pend is p's map of the same kind.
func putRecord[T any](p *pending, disk, pend map[string][]byte, name string, v *T, put func(*T) journalRecord, del journalRecord) error {
	old, had := disk[name]
	if v == nil {
		if !had {
			return nil
		}
		return p.add(del, nil, pend, name)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if had && bytes.Equal(old, b) {
		return nil
	}
	return p.add(put(v), b, pend, name)
}

// putContainer adds c to p if it differs from what is on disk; a nil c
// with name removes it.
func (st *stateStore) putContainer(p *pending, name string, c *savedContainer) error {
	return putRecord(p, st.containers, p.containers, name, c,
		func(c *savedContainer) journalRecord { return journalRecord{Container: c} }, journalRecord{DeleteContainer: name})
}

// putNetwork is putContainer for a network.
func (st *stateStore) putNetwork(p *pending, name string, n *savedNetwork) error {
	return putRecord(p, st.networks, p.networks, name, n,
		func(n *savedNetwork) journalRecord { return journalRecord{Network: n} }, journalRecord{DeleteNetwork: name})
}

// putService is putContainer for a service.
func (st *stateStore) putService(p *pending, name string, v *svcRecord) error {
	return putRecord(p, st.services, p.services, name, v,
		func(v *svcRecord) journalRecord { return journalRecord{Service: v} }, journalRecord{DeleteService: name})
}

// diffServices adds to p every difference between svcs and the services
// on disk, and the removals not on disk yet (expired ones are dropped by
// the next snapshot).
func (st *stateStore) diffServices(p *pending, svcs []svcRecord, removed []savedRemoval) error {
	seen := map[string]bool{}
	for i := range svcs {
		seen[svcs[i].Name] = true
		if err := st.putService(p, svcs[i].Name, &svcs[i]); err != nil {
			return err
		}
	}
	for name := range st.services {
		if !seen[name] {
			st.putService(p, name, nil)
		}
	}
	kept := 0
	for i := range removed {
		if _, had := st.removed[removed[i].key()]; had {
			kept++
			continue
		}
		b, err := json.Marshal(removed[i])
		if err != nil {
			return err
		}
		if err := p.add(journalRecord{RemovedService: &removed[i]}, b, p.removed, removed[i].key()); err != nil {
			return err
		}
	}
	// A removal forgotten (a network kept for the containers on it) or
	// expired is still on disk: the journal cannot drop one, a snapshot
	// does.
	p.snapshot = p.snapshot || kept < len(st.removed)
	return nil
}

// diff adds to p every difference between s and what is on disk.
func (st *stateStore) diff(p *pending, s *savedState) error {
	seen := map[string]bool{}
	for i := range s.Networks {
		seen[s.Networks[i].Name] = true
		if err := st.putNetwork(p, s.Networks[i].Name, &s.Networks[i]); err != nil {
			return err
		}
	}
	for name := range st.networks {
		if !seen[name] {
			st.putNetwork(p, name, nil)
		}
	}
	clear(seen)
	for i := range s.Containers {
		seen[s.Containers[i].Name] = true
		if err := st.putContainer(p, s.Containers[i].Name, &s.Containers[i]); err != nil {
			return err
		}
	}
	for name := range st.containers {
		if !seen[name] {
			st.putContainer(p, name, nil)
		}
	}
	return st.diffServices(p, s.Services, s.RemovedServices)
}

// needsSnapshot reports whether the journal, grown by n bytes, should be
// compacted into a snapshot instead.
func (st *stateStore) needsSnapshot(n int) bool {
	size := st.journal + int64(n)
	minCompact := st.minCompact
	if minCompact == 0 {
		minCompact = journalMinCompact
	}
	return st.dirty || (size > minCompact && size > journalCompactFactor*st.snapshot)
}

// commit appends p's records to the journal in one write and fsync, and
// then remembers them. On failure nothing is remembered.
func (st *stateStore) commit(p *pending) error {
	if len(p.buf) == 0 {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(st.dir, journalFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(p.buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// Cut what may have been written, so the next record follows a
		// valid one; if that fails too, the next save compacts.
		if os.Truncate(filepath.Join(st.dir, journalFile), st.journal) != nil {
			st.dirty = true
		}
		return err
	}
	st.journal += int64(len(p.buf))
	st.written += int64(len(p.buf))
	for _, c := range []struct{ from, to map[string][]byte }{{p.networks, st.networks}, {p.containers, st.containers}, {p.services, st.services}, {p.removed, st.removed}} {
		for name, b := range c.from {
			if b == nil {
				delete(c.to, name)
			} else {
				c.to[name] = b
			}
		}
	}
	return nil
}

// compact writes s as the new snapshot and empties the journal.
func (st *stateStore) compact(s *savedState) error {
	n, err := writeState(st.dir, s)
	if err != nil {
		return err
	}
	st.written += int64(n)
	st.snapshot = int64(n)
	// The snapshot holds every change of the journal: a crash before the
	// journal is emptied replays them onto it, to the same state.
	f, err := os.OpenFile(filepath.Join(st.dir, journalFile), os.O_WRONLY|os.O_TRUNC|os.O_CREATE, 0o600)
	if err == nil {
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		st.dirty = true
		return err
	}
	syncDir(st.dir) // the journal may have just been created
	st.journal, st.dirty = 0, false
	st.remember(s)
	return nil
}

// writeState replaces dir/state.json atomically (write, fsync, rename,
// fsync of the directory), so a crash leaves either the old or the new
// state, never a torn file. It returns the bytes written.
func writeState(dir string, s *savedState) (int, error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(dir, ".state-*.json")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, err
	}
	if err := os.Chmod(tmp.Name(), 0o600); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		return 0, err
	}
	syncDir(dir)
	return len(b), nil
}

// syncDir makes the directory's entries (a rename, a new file) durable.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// currentState is the state to persist; callers hold d.mu.
func (d *Daemon) currentState() *savedState {
	s := &savedState{Version: 1}
	for _, n := range d.sortedNetworks() {
		sn := n.rec.saved()
		if n.gwHost.IsValid() {
			sn.GatewayHost = n.gwHost.String()
		}
		s.Networks = append(s.Networks, sn)
	}
	for _, c := range d.sortedContainers() {
		s.Containers = append(s.Containers, c.saved())
	}
	s.Services = d.servicesToSave()
	s.RemovedServices = d.removals.list(time.Now())
	return s
}

// saved is the container as the state keeps it.
func (c *container) saved() savedContainer {
	sc := savedContainer{Name: c.name, Netns: c.netns, NsDev: c.nsDev, NsIno: c.nsIno, Managed: c.managed, HostTAP: c.hostTAP,
		MainPID: c.mainPID, ExitStatus: c.exitStatus, Stopped: c.stopped,
		Command: c.command, RestartCount: c.restarts.count, RestartDelay: int64(c.restarts.delay),
		RestartDue: c.restartTimer != nil || c.restartDue, ManualStop: c.manualStop}
	if c.policy.Name != "" && c.policy.Name != api.RestartNo {
		sc.Restart = c.policy.String()
	}
	if !c.startedAt.IsZero() {
		sc.StartedAt = c.startedAt.UnixNano()
	}
	for _, ep := range c.sortedEndpoints() {
		sc.Endpoints = append(sc.Endpoints, ep.saved())
	}
	return sc
}

// saveContainer persists the change of one container (or its removal)
// alone: its cost does not grow with the number of containers. Callers
// hold d.mu.
func (d *Daemon) saveContainer(name string) error {
	return d.persist([]string{name})
}

// persist appends the changes of the containers named in only, or (only
// nil) every change, to the journal, or compacts the journal into a new
// snapshot when it has grown enough; callers hold d.mu.
func (d *Daemon) persist(only []string) error {
	if d.store == nil {
		st, _, err := openStateStore(d.cfg.StateDir, d.log)
		if err != nil {
			return fmt.Errorf("saving state: %w", err)
		}
		d.store = st
	}
	p := newPending()
	var full *savedState
	var err error
	if only == nil {
		full = d.currentState()
		err = d.store.diff(p, full)
	}
	for _, name := range only {
		if err != nil {
			break
		}
		if c := d.containers[name]; c != nil {
			sc := c.saved()
			err = d.store.putContainer(p, name, &sc)
		} else {
			err = d.store.putContainer(p, name, nil)
		}
	}
	if err == nil && (p.snapshot || d.store.needsSnapshot(len(p.buf))) {
		if full == nil {
			full = d.currentState()
		}
		err = d.store.compact(full)
	} else if err == nil {
		err = d.store.commit(p)
	}
	if err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}

// jsonSize is the size of s as state.json.
func jsonSize(s *savedState) (int, error) {
	b, err := json.MarshalIndent(s, "", "  ")
	return len(b), err
}
