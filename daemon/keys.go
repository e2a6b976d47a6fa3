package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/crypto/keyring"
	"github.com/vxmesh/vxmesh/tunnel"
)

// Data keys of encrypted networks (DESIGN §5). The ring travels only over
// the cluster's gossip, which is encrypted with the cluster key, and lives
// only in memory: it is never written to the state directory.
//
//   - Table "keys" (outlives its writer): "ring" holds keyring.Ring.Marshal,
//     "rotate" a pending rotation request (any node writes it for
//     `vxmesh key rotate`; the rotator serves and deletes it).
//   - Table "keystate" (node-scoped): one entry per node with the random
//     epoch of its current run (keyring.Endpoint.Epoch) and the newest key
//     it has installed inbound SAs for.
//
// The rotator is the alive node with the lowest name. It creates the ring
// when the first encrypted network appears, rotates it every
// --key-rotation-interval and on request, and promotes a pending key only
// when every alive node reports it installed (keyring.ReadyToPromote), so
// every receiver accepts a key before any sender uses it.
const (
	tblKeys     = "keys"
	tblKeyState = "keystate"
	keyRingKey  = "ring"
	keyRotate   = "rotate"

	// DefaultKeyRotationInterval is how often the data keys are rotated.
	DefaultKeyRotationInterval = 12 * time.Hour
	// rotateWait bounds how long `key rotate` waits for the new key to
	// become primary.
	rotateWait = 60 * time.Second
)

// keyStateRecord is a node's entry in the keystate table.
type keyStateRecord struct {
	Epoch     uint64 `json:"epoch"`
	Installed uint32 `json:"installed"`
}

// rotateRequest is the value of the rotation request entry.
type rotateRequest struct {
	ID   string    `json:"id"`
	Node string    `json:"node"`
	At   time.Time `json:"at"`
}

// saID identifies one derived SA of this daemon run. The local epoch is
// fixed for the run, so it is not part of the ID. An SA object, once made,
// is kept for as long as its key is in the ring: making it again would
// start its sequence numbers (so its nonces) over under the same key, and
// its replay window empty.
type saID struct {
	out       bool
	peer      string
	peerEpoch uint64
	keyID     uint32
	secret    keyring.Secret
	cipher    esp.Cipher
}

// saObj is one derived SA: its parameters (key material, in memory only:
// for key export) and the data-path object.
type saObj struct {
	spec esp.SA
	out  *esp.Outbound
	in   *esp.Inbound
}

// peerSAs are the SAs in use with one peer node for one cipher.
type peerSAs struct {
	node string
	addr netip.Addr // the peer's VTEP address
	// out seals with the primary key; in holds the inbound SA of every key
	// of the ring, newest first.
	out     *saObj
	outKey  uint32
	in      []*saObj
	inKeys  []uint32
	inState []string
}

// keyState is the daemon's key management state, guarded by d.mu.
type keyState struct {
	epoch     uint64
	ring      *keyring.Ring
	sas       map[saID]*saObj
	installed map[esp.Cipher][]*peerSAs // what the data plane uses now
	published keyStateRecord
	// onInstall, when set, receives the SAs to install in the data plane.
	onInstall func(map[esp.Cipher][]*peerSAs) error
}

func newKeyState() (*keyState, error) {
	epoch, err := keyring.NewEpoch(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("node epoch: %w", err)
	}
	return &keyState{epoch: epoch, sas: map[saID]*saObj{}}, nil
}

// defineKeyTables declares the key tables on cl.
func defineKeyTables(cl *cluster.Cluster) error {
	if err := cl.DefineTable(tblKeys, cluster.TableOptions{}); err != nil {
		return err
	}
	return cl.DefineTable(tblKeyState, cluster.TableOptions{NodeScoped: true})
}

// publishKeyState announces this node's epoch and installed key.
func (d *Daemon) publishKeyState(rec keyStateRecord) {
	b, _ := json.Marshal(rec)
	if err := d.cl.Put(tblKeyState, d.cfg.Node, b); err != nil {
		d.log.Error("publishing key state", "err", err)
		return
	}
	d.keys.published = rec
}

// clusterRing decodes the ring entry, or returns nil.
func (d *Daemon) clusterRing() *keyring.Ring {
	e, ok := d.cl.Get(tblKeys, keyRingKey)
	if !ok {
		return nil
	}
	r, err := keyring.Unmarshal(e.Value)
	if err != nil {
		d.log.Warn("ignoring a malformed key ring entry", "owner", e.Owner, "err", err)
		return nil
	}
	return r
}

// clusterKeyStates decodes the keystate table by node.
func (d *Daemon) clusterKeyStates() map[string]keyStateRecord {
	out := map[string]keyStateRecord{}
	for _, e := range d.cl.List(tblKeyState) {
		var rec keyStateRecord
		if err := json.Unmarshal(e.Value, &rec); err != nil || e.Key != e.Owner {
			continue
		}
		out[e.Owner] = rec
	}
	return out
}

// liveMembers returns the names of the alive (or suspect) members, self
// included, sorted.
func liveMembers(ms []cluster.Member) []string {
	var out []string
	for _, m := range ms {
		if m.State == cluster.StateAlive || m.State == cluster.StateSuspect {
			out = append(out, m.Name)
		}
	}
	sort.Strings(out)
	return out
}

// ringState names a key's place in r.
func ringState(r *keyring.Ring, id uint32) string {
	switch {
	case id == r.PrimaryID:
		return "primary"
	case id > r.PrimaryID:
		return "pending"
	}
	return "secondary"
}

// encryptedCiphers returns the ciphers of the local encrypted networks.
func (d *Daemon) encryptedCiphers() []esp.Cipher {
	var out []esp.Cipher
	for _, n := range d.networks {
		if c := n.cipher; c != 0 && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// reconcileKeys installs the SAs of the current ring with every peer,
// reports what is installed, and, on the rotator, creates, rotates and
// promotes keys; callers hold d.mu.
func (d *Daemon) reconcileKeys() {
	ks := d.keys
	ring := d.clusterRing()
	members := d.cl.Members()
	states := d.clusterKeyStates()
	ciphers := d.encryptedCiphers()

	installed := uint32(0)
	if ring != nil {
		if err := d.installSAs(ring, ciphers, members, states); err != nil {
			d.log.Error("installing security associations", "err", err)
		} else {
			installed = ring.Keys[0].ID
		}
	}
	ks.ring = ring
	if want := (keyStateRecord{Epoch: ks.epoch, Installed: installed}); want != ks.published {
		d.publishKeyState(want)
		states[d.cfg.Node] = want
	}

	live := liveMembers(members)
	if len(live) == 0 || live[0] != d.cfg.Node {
		return
	}
	now := time.Now()
	var next *keyring.Ring
	var err error
	switch {
	case ring == nil:
		if len(ciphers) == 0 && !d.anyEncryptedInCluster() {
			return
		}
		next, err = keyring.New(rand.Reader, now)
	case func() bool { _, p := ring.Pending(); return p }():
		inst := map[string]uint32{}
		for n, s := range states {
			inst[n] = s.Installed
		}
		if !ring.ReadyToPromote(live, inst) {
			return
		}
		next, err = ring.Promote()
	default:
		_, requested := d.cl.Get(tblKeys, keyRotate)
		if !requested && !ring.Due(now, d.cfg.KeyRotationInterval) {
			return
		}
		next, err = ring.Rotate(rand.Reader, now)
		if err == nil && requested {
			defer d.cl.Delete(tblKeys, keyRotate)
		}
	}
	if err != nil {
		d.log.Error("data key ring", "err", err)
		return
	}
	if err := d.cl.Put(tblKeys, keyRingKey, next.Marshal()); err != nil {
		d.log.Error("publishing the data key ring", "err", err)
		return
	}
	d.log.Info("data key ring changed", "ring", next.String())
}

// anyEncryptedInCluster reports whether the networks table has an
// encrypted network (one this node failed to set up counts too).
func (d *Daemon) anyEncryptedInCluster() bool {
	for _, rec := range d.clusterNetworks() {
		if rec.Encrypted {
			return true
		}
	}
	return false
}

// sa returns the SA object for id, deriving and caching it if new.
func (d *Daemon) sa(id saID, k keyring.Key, self, peer keyring.Endpoint) (*saObj, error) {
	if o := d.keys.sas[id]; o != nil {
		return o, nil
	}
	sender, receiver := peer, self
	if id.out {
		sender, receiver = self, peer
	}
	spec, err := keyring.DeriveSA(k, id.cipher, sender, receiver)
	if err != nil {
		return nil, err
	}
	o := &saObj{spec: spec}
	if id.out {
		o.out, err = esp.NewOutboundSA(spec)
	} else {
		o.in, err = esp.NewInboundSA(spec)
	}
	if err != nil {
		return nil, err
	}
	d.keys.sas[id] = o
	return o, nil
}

// installSAs derives (or reuses) the SAs of every key of ring with every
// peer whose epoch is known, for every cipher in use, hands them to
// the data plane and forgets the SAs of keys that left the ring.
func (d *Daemon) installSAs(ring *keyring.Ring, ciphers []esp.Cipher, members []cluster.Member, states map[string]keyStateRecord) error {
	ks := d.keys
	self := keyring.Endpoint{Node: d.cfg.Node, Epoch: ks.epoch}
	primary := ring.Primary()
	sets := map[esp.Cipher][]*peerSAs{}
	for _, c := range ciphers {
		for _, m := range members {
			st, ok := states[m.Name]
			// Whatever its membership state: a node wrongly declared
			// dead still gets and sends frames (its endpoints outlive
			// its death by --node-grace), and its keystate entry leaves
			// with them.
			if m.Self || !ok || !m.Meta.DataAddr.IsValid() {
				continue
			}
			peer := keyring.Endpoint{Node: m.Name, Epoch: st.Epoch}
			ps := &peerSAs{node: m.Name, addr: m.Meta.DataAddr.Addr()}
			o, err := d.sa(saID{out: true, peer: m.Name, peerEpoch: st.Epoch, keyID: primary.ID, secret: primary.Secret, cipher: c}, primary, self, peer)
			if err != nil {
				return fmt.Errorf("outbound SA to %s: %w", m.Name, err)
			}
			ps.out, ps.outKey = o, primary.ID
			for _, k := range ring.Keys {
				o, err := d.sa(saID{peer: m.Name, peerEpoch: st.Epoch, keyID: k.ID, secret: k.Secret, cipher: c}, k, self, peer)
				if err != nil {
					return fmt.Errorf("inbound SA from %s: %w", m.Name, err)
				}
				ps.in = append(ps.in, o)
				ps.inKeys = append(ps.inKeys, k.ID)
				ps.inState = append(ps.inState, ringState(ring, k.ID))
			}
			sets[c] = append(sets[c], ps)
		}
	}
	if ks.onInstall != nil {
		if err := ks.onInstall(sets); err != nil {
			return err
		}
	}
	ks.installed = sets
	for id := range ks.sas {
		if k, ok := ring.Key(id.keyID); !ok || k.Secret != id.secret {
			delete(ks.sas, id)
		}
	}
	return nil
}

// saViews describes the installed SAs of cipher c with every peer, for
// network inspect: parameters and counters, never keys.
func (d *Daemon) saViews(c esp.Cipher) []api.SA {
	var out []api.SA
	for _, ps := range d.keys.installed[c] {
		view := func(dir string, key uint32, state string, s esp.Stats) api.SA {
			v := api.SA{
				Node: ps.node, VTEP: ps.addr.String(), Direction: dir, Key: key, State: state,
				SPI: fmt.Sprintf("0x%08x", s.SPI), Cipher: s.Cipher.String(), Seq: s.Seq,
				Packets: s.Packets, Bytes: s.Bytes,
			}
			for r, n := range s.Drops {
				if n > 0 {
					if v.Drops == nil {
						v.Drops = map[string]uint64{}
					}
					v.Drops[esp.Reason(r).String()] = n
				}
			}
			return v
		}
		if ps.out != nil {
			out = append(out, view("out", ps.outKey, ringState(d.keys.ring, ps.outKey), ps.out.out.Stats()))
		}
		for i, o := range ps.in {
			out = append(out, view("in", ps.inKeys[i], ps.inState[i], o.in.Stats()))
		}
	}
	return out
}

// Keys describes the data key ring without key material.
func (d *Daemon) Keys() api.Keys {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.keysView()
}

func (d *Daemon) keysView() api.Keys {
	v := api.Keys{Keys: []api.KeyInfo{}, Nodes: []api.KeyNode{}, RotationInterval: d.cfg.KeyRotationInterval.Seconds()}
	if live := liveMembers(d.cl.Members()); len(live) > 0 {
		v.Rotator = live[0]
	}
	if r := d.clusterRing(); r != nil {
		v.Version, v.Primary = r.Version, r.PrimaryID
		if p, ok := r.Pending(); ok {
			v.Pending = p.ID
		}
		for _, k := range r.Keys {
			v.Keys = append(v.Keys, api.KeyInfo{ID: k.ID, Created: k.Created.UTC(), State: ringState(r, k.ID)})
		}
	}
	for n, s := range d.clusterKeyStates() {
		v.Nodes = append(v.Nodes, api.KeyNode{Node: n, Installed: s.Installed})
	}
	sort.Slice(v.Nodes, func(i, j int) bool { return v.Nodes[i].Node < v.Nodes[j].Node })
	return v
}

// RotateKey asks the rotator for a new data key and waits until the new
// key is the primary on this node (at most rotateWait, or until ctx ends).
func (d *Daemon) RotateKey(ctx context.Context) (api.Keys, error) {
	d.mu.Lock()
	r := d.clusterRing()
	if r == nil {
		d.mu.Unlock()
		return api.Keys{}, conflict("key rotate: there are no data keys yet (they are created with the first encrypted network)")
	}
	newest := r.Keys[0].ID
	id := make([]byte, 8)
	rand.Read(id)
	b, _ := json.Marshal(rotateRequest{ID: hex.EncodeToString(id), Node: d.cfg.Node, At: time.Now().UTC()})
	if err := d.cl.Put(tblKeys, keyRotate, b); err != nil {
		d.mu.Unlock()
		return api.Keys{}, fmt.Errorf("key rotate: %w", err)
	}
	d.reconcile()
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, rotateWait)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		d.mu.Lock()
		r := d.keys.ring
		v := d.keysView()
		d.mu.Unlock()
		if r != nil && r.PrimaryID > newest {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("key rotate: requested, but no key newer than %d is primary after %s (the rotator %q waits until every alive node has installed the new key)", newest, rotateWait, v.Rotator)
		case <-t.C:
		}
	}
}

// ExportWireshark writes the keys of this node's installed SAs as lines of
// Wireshark's esp_sa table. THE OUTPUT CONTAINS KEYS: it is for an
// operator's explicit request (vxmesh key export --wireshark, root only).
func (d *Daemon) ExportWireshark() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var sas []keyring.WiresharkSA
	self := d.cfg.Advertise
	ciphers := make([]esp.Cipher, 0, len(d.keys.installed))
	for c := range d.keys.installed {
		ciphers = append(ciphers, c)
	}
	slices.Sort(ciphers)
	for _, c := range ciphers {
		for _, ps := range d.keys.installed[c] {
			if ps.out != nil {
				sas = append(sas, keyring.WiresharkSA{Src: self, Dst: ps.addr, SA: ps.out.spec})
			}
			for _, o := range ps.in {
				sas = append(sas, keyring.WiresharkSA{Src: ps.addr, Dst: self, SA: o.spec})
			}
		}
	}
	var b bytes.Buffer
	if err := keyring.ExportWireshark(&b, sas...); err != nil {
		return "", err
	}
	return b.String(), nil
}

// installTunnelSAs hands the SAs to the VTEP: per peer, the outbound SA of
// each cipher and the inbound SAs of every key.
func (d *Daemon) installTunnelSAs(sets map[esp.Cipher][]*peerSAs) error {
	var out []tunnel.OutboundSA
	var in []tunnel.InboundSA
	for _, list := range sets {
		for _, ps := range list {
			out = append(out, tunnel.OutboundSA{Peer: ps.addr, SA: ps.out.out})
			for _, o := range ps.in {
				in = append(in, tunnel.InboundSA{Peer: ps.addr, SA: o.in})
			}
		}
	}
	return d.vtep.SetSAs(out, in)
}
