package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/crypto/keyring"
)

// Data keys of encrypted networks (docs/architecture.md, "Encrypted
// networks"). The ring travels only over the cluster's gossip, which is
// encrypted with the cluster key, and lives only in memory: it is never
// written to the state directory.
//
//   - Table "keys" (outlives its writer): "ring" holds keyring.Ring.Marshal,
//     "rotate" a pending rotation request (any node writes it for
//     `vxmesh key rotate`; the rotator serves and deletes it).
//   - Table "keystate" (node-scoped): one entry per node (keyStateRecord)
//     with the X25519 public key of its current run (keyring.RunKey), the
//     SPIs it chose for its inbound SAs, the peers it has outbound SAs to,
//     the newest key it has installed inbound SAs for, and the rings it
//     refused. While a node has SAs it pushes the record to every member
//     (saready.go).
//
// Nonces never repeat under a key: SA key material comes from the ring
// secret and the X25519 shared secret of the two runs, so every
// daemon run has SAs of its own; an SA object lives as long as its key is
// in the ring; within a run a ring that goes backwards or brings back a
// key that left is refused (keyring.Guard) and answered by the rotator with
// a new key; and the key material of a dropped outbound SA is never used
// by a new one (keyState.spent).
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
	// Pub is the X25519 public key of the node's current run.
	Pub []byte `json:"pub"`
	// Installed is the newest key the node has inbound SAs for.
	Installed uint32 `json:"installed"`
	// SPIs are the SPIs of the node's inbound SAs, spiEntryLen bytes each
	// (appendSPI): senders seal with the SPI their receiver chose.
	SPIs []byte `json:"spis,omitempty"`
	// Out lists the node's outbound SAs in its data plane, outEntryLen
	// bytes each (appendOut): the peers it can seal frames to. The create
	// of an encrypted network waits until every alive node lists every
	// other (awaitSAs).
	Out []byte `json:"out,omitempty"`
	// SeenVersion and SeenKey are the version and newest key ID of the
	// newest ring the node accepted in this run: the rotator's answer to a
	// refused ring must not be below them.
	SeenVersion uint64 `json:"seen_version,omitempty"`
	SeenKey     uint32 `json:"seen_key,omitempty"`
	// Refused is the version of the ring the node refuses now (0: none),
	// RefusedKeys the keys in it that had left the ring, RefusedCount the
	// rings the node refused in this run.
	Refused      uint64   `json:"refused,omitempty"`
	RefusedKeys  []uint32 `json:"refused_keys,omitempty"`
	RefusedCount uint64   `json:"refused_count,omitempty"`
}

// spiEntryLen is the length of one entry of keyStateRecord.SPIs: the first
// spiPeerLen bytes of the sending run's public key, the key ID (4), the
// cipher (1) and the SPI (4), integers big-endian.
const (
	spiPeerLen  = 8
	spiEntryLen = spiPeerLen + 4 + 1 + 4
)

// outEntryLen is the length of one entry of keyStateRecord.Out: the first
// spiPeerLen bytes of the receiving run's public key, the key ID (4) and
// the cipher (1), the key ID big-endian.
const outEntryLen = spiPeerLen + 4 + 1

// appendSPI appends the entry of the inbound SA with spi from the run with
// public key peer, under key and cipher c.
func appendSPI(b, peer []byte, key uint32, c esp.Cipher, spi uint32) []byte {
	b = append(b, peer[:spiPeerLen]...)
	b = binary.BigEndian.AppendUint32(b, key)
	b = append(b, byte(c))
	return binary.BigEndian.AppendUint32(b, spi)
}

// spiFor returns the SPI the node chose for the inbound SA from the run
// with public key peer under key and cipher c.
func (r *keyStateRecord) spiFor(peer []byte, key uint32, c esp.Cipher) (uint32, bool) {
	for e := r.SPIs; len(e) >= spiEntryLen; e = e[spiEntryLen:] {
		if bytes.Equal(e[:spiPeerLen], peer[:spiPeerLen]) && binary.BigEndian.Uint32(e[spiPeerLen:]) == key && esp.Cipher(e[spiPeerLen+4]) == c {
			return binary.BigEndian.Uint32(e[spiPeerLen+5:]), true
		}
	}
	return 0, false
}

// appendOut appends the entry of the outbound SA to the run with public key
// peer, under key and cipher c.
func appendOut(b, peer []byte, key uint32, c esp.Cipher) []byte {
	b = append(b, peer[:spiPeerLen]...)
	b = binary.BigEndian.AppendUint32(b, key)
	return append(b, byte(c))
}

// sendsTo reports whether the node has an outbound SA of cipher c to the
// run with public key peer under a key that ok accepts.
func (r *keyStateRecord) sendsTo(peer []byte, c esp.Cipher, ok func(key uint32) bool) bool {
	for e := r.Out; len(e) >= outEntryLen; e = e[outEntryLen:] {
		if bytes.Equal(e[:spiPeerLen], peer[:spiPeerLen]) && esp.Cipher(e[spiPeerLen+4]) == c && ok(binary.BigEndian.Uint32(e[spiPeerLen:])) {
			return true
		}
	}
	return false
}

// decodeKeyState parses and checks a keystate value: a valid public key
// (keyring.CheckPublic: length, not of small order), whole SPI and
// outbound entries with known ciphers and nonzero keys, unreserved SPIs.
// Errors never quote the input.
func decodeKeyState(b []byte) (keyStateRecord, error) {
	return decodeKeyStateWith(b, keyring.CheckPublic)
}

// decodeKeyStateWith is decodeKeyState with checkPub in place of
// keyring.CheckPublic (keyState.checkPublic, which remembers the keys that
// passed).
func decodeKeyStateWith(b []byte, checkPub func([]byte) error) (keyStateRecord, error) {
	var rec keyStateRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return keyStateRecord{}, errors.New("not a key state record")
	}
	if err := checkPub(rec.Pub); err != nil {
		return keyStateRecord{}, err
	}
	if len(rec.SPIs)%spiEntryLen != 0 {
		return keyStateRecord{}, fmt.Errorf("SPI list of %d bytes", len(rec.SPIs))
	}
	for e := rec.SPIs; len(e) > 0; e = e[spiEntryLen:] {
		key, c, spi := binary.BigEndian.Uint32(e[spiPeerLen:]), esp.Cipher(e[spiPeerLen+4]), binary.BigEndian.Uint32(e[spiPeerLen+5:])
		if key == 0 || c.KeyLen() == 0 || spi < 256 {
			return keyStateRecord{}, fmt.Errorf("SPI entry: key %d, %v, SPI %d", key, c, spi)
		}
	}
	if len(rec.Out)%outEntryLen != 0 {
		return keyStateRecord{}, fmt.Errorf("outbound SA list of %d bytes", len(rec.Out))
	}
	for e := rec.Out; len(e) > 0; e = e[outEntryLen:] {
		if key, c := binary.BigEndian.Uint32(e[spiPeerLen:]), esp.Cipher(e[spiPeerLen+4]); key == 0 || c.KeyLen() == 0 {
			return keyStateRecord{}, fmt.Errorf("outbound SA entry: key %d, %v", key, c)
		}
	}
	if len(rec.RefusedKeys) > keyring.MaxKeys {
		return keyStateRecord{}, fmt.Errorf("%d refused keys", len(rec.RefusedKeys))
	}
	if len(rec.SPIs) == 0 {
		rec.SPIs = nil
	}
	if len(rec.Out) == 0 {
		rec.Out = nil
	}
	if len(rec.RefusedKeys) == 0 {
		rec.RefusedKeys = nil
	}
	return rec, nil
}

// rotateRequest is the value of the rotation request entry.
type rotateRequest struct {
	ID   string    `json:"id"`
	Node string    `json:"node"`
	At   time.Time `json:"at"`
}

// saID identifies one derived SA of this daemon run. The local run key is
// fixed for the run, so it is not part of the ID. An SA object, once made,
// is kept for as long as its key is in the ring (and, outbound, its
// receiver publishes its SPI): making it again would start its sequence
// numbers (so its nonces) over under the same key, and its replay window
// empty.
type saID struct {
	out     bool
	peer    string
	peerPub [keyring.PubLen]byte
	keyID   uint32
	secret  keyring.Secret
	cipher  esp.Cipher
	// spi is, outbound, the SPI the receiver chose; inbound 0 (this node
	// chooses it when it makes the SA).
	spi uint32
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
	pub  []byte     // the public key of the peer's run
	addr netip.Addr // the peer's VTEP address
	// out seals with the primary key (or, until the peer publishes its
	// SPI for it, the newest older key the peer has); nil while the peer
	// has published no SPI for this node. in holds the inbound SA of every
	// key of the ring, newest first.
	out     *saObj
	outKey  uint32
	in      []*saObj
	inKeys  []uint32
	inState []string
}

// keyState is the daemon's key management state, guarded by d.mu.
type keyState struct {
	run  *keyring.RunKey
	pub  []byte
	rand io.Reader // SPIs and keys: crypto/rand.Reader
	// guard decides which rings this run uses; ring is the newest it
	// accepted. refused counts the rings refused; lastRefused is the one
	// refused now (nil once a ring is accepted), refusedRing its encoding.
	guard       keyring.Guard
	ring        *keyring.Ring
	refused     uint64
	lastRefused *keyring.RefusedError
	refusedRing []byte
	sas         map[saID]*saObj
	// inSPIs are the SPIs of every inbound SA made in this run, dropped
	// ones included: a new inbound SA never shares an SPI, so never key
	// material (the SPI is part of the derivation), with an earlier one.
	inSPIs map[uint32]bool
	// spent holds the SHA-256 of the key and salt of every outbound SA
	// dropped in this run: no outbound SA is made again with them.
	spent     map[[32]byte]bool
	shared    map[[keyring.PubLen]byte][]byte // X25519 shared secret by peer run
	installed map[esp.Cipher][]*peerSAs       // what the data plane is to use
	published []byte                          // the keystate value last published
	// goodPubs are the run keys that passed keyring.CheckPublic (an
	// X25519 multiplication, too dear for every read of the keystate
	// table on every reconcile); pubChecks counts the checks made.
	goodPubs  map[[keyring.PubLen]byte]bool
	pubChecks int
	// states are the valid keystate records by node as of statesCursor
	// (clusterKeyStates).
	states       map[string]keyStateRecord
	statesCursor uint64
	// givenUp are the pairs an SA wait gave up on (awaitSAs): not waited
	// for again until they have their SA.
	givenUp map[saPair]bool
}

// maxGoodPubs bounds goodPubs: past it the set starts over.
const maxGoodPubs = 4096

// checkPublic is keyring.CheckPublic, remembering the keys that pass.
func (ks *keyState) checkPublic(pub []byte) error {
	if len(pub) == keyring.PubLen && ks.goodPubs[[keyring.PubLen]byte(pub)] {
		return nil
	}
	ks.pubChecks++
	if err := keyring.CheckPublic(pub); err != nil {
		return err
	}
	if ks.goodPubs == nil || len(ks.goodPubs) >= maxGoodPubs {
		ks.goodPubs = map[[keyring.PubLen]byte]bool{}
	}
	ks.goodPubs[[keyring.PubLen]byte(pub)] = true
	return nil
}

func newKeyState() (*keyState, error) {
	run, err := keyring.NewRunKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &keyState{
		run: run, pub: run.Public(), rand: rand.Reader,
		sas: map[saID]*saObj{}, inSPIs: map[uint32]bool{}, spent: map[[32]byte]bool{},
		shared: map[[keyring.PubLen]byte][]byte{},
	}, nil
}

// defineKeyTables declares the key tables on cl.
func defineKeyTables(cl *cluster.Cluster) error {
	if err := cl.DefineTable(tblKeys, cluster.TableOptions{}); err != nil {
		return err
	}
	return cl.DefineTable(tblKeyState, cluster.TableOptions{NodeScoped: true})
}

// publishKeyState announces this node's run key, inbound SPIs, outbound
// SAs, installed key and refusals, if they changed. While it has SAs the
// record is pushed to every alive member (cluster.Push) rather than left
// to gossip: a sender needs its receiver's SPI before it can seal the
// first frame, and the create of an encrypted network waits for every
// node's record (awaitSAs).
func (d *Daemon) publishKeyState(rec keyStateRecord) {
	b, _ := json.Marshal(rec)
	if bytes.Equal(b, d.keys.published) {
		return
	}
	if err := d.cl.Put(tblKeyState, d.cfg.Node, b); err != nil {
		d.log.Error("publishing key state", "err", err)
		return
	}
	d.keys.published = b
	if len(rec.SPIs) > 0 || len(rec.Out) > 0 {
		if err := d.cl.Push(cluster.Ref{Table: tblKeyState, Key: d.cfg.Node}); err != nil {
			d.log.Error("pushing key state", "err", err)
		}
	}
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

// clusterKeyStates decodes the keystate table by node; invalid records
// (decodeKeyState) count as missing. Only the records written or removed
// since the last call are decoded (cluster.Changes): every reconcile reads
// the table, and an endpoint change elsewhere does not change it. The map
// is the caller's; the records in it are shared and read-only. Callers
// hold d.mu.
func (d *Daemon) clusterKeyStates() map[string]keyStateRecord {
	ks := d.keys
	live, removed, next := d.cl.Changes(tblKeyState, ks.statesCursor)
	if removed == nil || ks.states == nil {
		ks.states = map[string]keyStateRecord{} // a full resync
	}
	ks.statesCursor = next
	for _, k := range removed {
		delete(ks.states, k)
	}
	for _, e := range live {
		rec, err := decodeKeyStateWith(e.Value, ks.checkPublic)
		if err != nil || e.Key != e.Owner {
			d.log.Debug("ignoring a key state record", "node", e.Owner, "err", err)
			delete(ks.states, e.Key)
			continue
		}
		ks.states[e.Owner] = rec
	}
	return maps.Clone(ks.states)
}

// checkRing makes r the ring in use if the guard accepts it; otherwise it
// keeps the ring in use and records the refusal (counted once per ring).
func (d *Daemon) checkRing(r *keyring.Ring) {
	ks := d.keys
	err := ks.guard.Accept(r)
	if err == nil {
		ks.ring, ks.lastRefused, ks.refusedRing = r, nil, nil
		return
	}
	var re *keyring.RefusedError
	if !errors.As(err, &re) {
		re = &keyring.RefusedError{Version: r.Version}
	}
	if b := r.Marshal(); !bytes.Equal(b, ks.refusedRing) {
		ks.refused++
		ks.refusedRing = b
		d.log.Warn("refusing the cluster's data key ring; keeping the one in use", "ring", r.String(), "in_use", ks.ring, "err", err)
	}
	ks.lastRefused = re
}

// ownKeyState is the keystate record of this node.
func (d *Daemon) ownKeyState(installed uint32) keyStateRecord {
	ks := d.keys
	rec := keyStateRecord{Pub: ks.pub, Installed: installed, RefusedCount: ks.refused}
	rec.SeenVersion, rec.SeenKey = ks.guard.Floor()
	if ks.lastRefused != nil {
		rec.Refused, rec.RefusedKeys = ks.lastRefused.Version, ks.lastRefused.Returning
	}
	ciphers := make([]esp.Cipher, 0, len(ks.installed))
	for c := range ks.installed {
		ciphers = append(ciphers, c)
	}
	slices.Sort(ciphers)
	var entries, outs [][]byte
	for _, c := range ciphers {
		for _, ps := range ks.installed[c] {
			for i, o := range ps.in {
				entries = append(entries, appendSPI(nil, ps.pub, ps.inKeys[i], c, o.spec.SPI))
			}
			if ps.out != nil {
				outs = append(outs, appendOut(nil, ps.pub, ps.outKey, c))
			}
		}
	}
	slices.SortFunc(entries, bytes.Compare) // a stable value: republished only on change
	slices.SortFunc(outs, bytes.Compare)
	rec.SPIs = bytes.Join(entries, nil)
	rec.Out = bytes.Join(outs, nil)
	return rec
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

// reconcileKeys checks the cluster's ring (checkRing), derives the SAs of
// the ring in use with every peer, applies the desired data-plane state
// (applyDataplane, which carries them) and returns what it could not
// apply, reports what is installed, and, on the rotator, creates, rotates
// and promotes keys and answers refused rings; callers hold d.mu.
func (d *Daemon) reconcileKeys() error {
	ks := d.keys
	cr := d.clusterRing()
	members := d.cl.Members()
	states := d.clusterKeyStates()
	ciphers := d.encryptedCiphers()

	if cr != nil {
		d.checkRing(cr)
	}
	installed := uint32(0)
	var saErr error
	if ring := ks.ring; ring != nil {
		if saErr = d.installSAs(ring, ciphers, members, states); saErr != nil {
			d.log.Error("deriving security associations", "err", saErr)
		}
	}
	// Inbound SAs are in the data plane before this node reports the key
	// installed (senders start using it only then). The VTEP installs
	// every SA that does not collide with another (SPIs chosen here are
	// unique, so that is not expected) and names the rest in applyErr.
	applyErr := d.applyDataplane()
	if ring := ks.ring; ring != nil && saErr == nil {
		installed = ring.Keys[0].ID
	}
	rec := d.ownKeyState(installed)
	d.publishKeyState(rec)
	states[d.cfg.Node] = rec

	d.rotateKeys(cr, members, states, ciphers)
	return applyErr
}

// rotateKeys is the rotator's part of reconcileKeys: it publishes the
// next ring, if any (nextRing). Other nodes do nothing.
func (d *Daemon) rotateKeys(cr *keyring.Ring, members []cluster.Member, states map[string]keyStateRecord, ciphers []esp.Cipher) {
	live := liveMembers(members)
	if len(live) == 0 || live[0] != d.cfg.Node {
		return
	}
	next, served, err := d.nextRing(cr, live, states, ciphers)
	if err != nil {
		d.log.Error("data key ring", "err", err)
		return
	}
	if next == nil {
		return
	}
	if err := d.cl.Put(tblKeys, keyRingKey, next.Marshal()); err != nil {
		d.log.Error("publishing the data key ring", "err", err)
		return
	}
	// Every node needs the ring before it can make SAs (and the create
	// of the first encrypted network waits for them): not by gossip.
	if err := d.cl.Push(cluster.Ref{Table: tblKeys, Key: keyRingKey}); err != nil {
		d.log.Error("pushing the data key ring", "err", err)
	}
	if served {
		d.cl.Delete(tblKeys, keyRotate)
	}
	d.log.Info("data key ring changed", "ring", next.String())
}

// nextRing is the rotator's decision: the ring to publish after the
// cluster's ring cr, or nil for none, and whether it serves a rotation
// request. A ring that a live node refuses is superseded at once;
// otherwise the ring is created with the first encrypted network, a
// pending key promoted once every live node has it, and a new key added
// when the newest is due or a rotation was asked for.
func (d *Daemon) nextRing(cr *keyring.Ring, live []string, states map[string]keyStateRecord, ciphers []esp.Cipher) (next *keyring.Ring, served bool, err error) {
	now := time.Now()
	base := d.keys.ring
	if cr == nil && base == nil {
		if len(ciphers) == 0 && !d.anyEncryptedInCluster() {
			return nil, false, nil
		}
		next, err = keyring.New(d.keys.rand, now)
		return next, false, err
	}
	if base != nil && (cr == nil || refusedByAny(cr, live, states)) {
		// The ring entry is gone (while this node has a ring) or refused:
		// a new key on the ring in use, above every node's floors.
		minV, minID := d.keys.guard.Floor()
		var drop []uint32
		for _, n := range live {
			st := states[n]
			minV, minID = max(minV, st.SeenVersion), max(minID, st.SeenKey)
			if cr != nil && base == cr && st.Refused == cr.Version {
				drop = append(drop, st.RefusedKeys...)
			}
		}
		what := "missing"
		if cr != nil {
			what = cr.String()
		}
		d.log.Warn("superseding a data key ring that is missing or refused", "ring", what, "refused_keys", drop)
		next, err = base.Supersede(d.keys.rand, now, minV, minID, drop)
		return next, false, err
	}
	if _, pending := cr.Pending(); pending {
		inst := map[string]uint32{}
		for n, s := range states {
			inst[n] = s.Installed
		}
		if !cr.ReadyToPromote(live, inst) {
			return nil, false, nil
		}
		next, err = cr.Promote()
		return next, false, err
	}
	_, requested := d.cl.Get(tblKeys, keyRotate)
	if !requested && !cr.Due(now, d.cfg.KeyRotationInterval) {
		return nil, false, nil
	}
	next, err = cr.Rotate(d.keys.rand, now)
	return next, requested, err
}

// refusedByAny reports whether a live node (this one included) refuses cr.
func refusedByAny(cr *keyring.Ring, live []string, states map[string]keyStateRecord) bool {
	for _, n := range live {
		if st, ok := states[n]; ok && st.Refused != 0 && st.Refused == cr.Version {
			return true
		}
	}
	return false
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

// sharedWith returns the X25519 shared secret of this run and the run
// with public key pub, computed once per peer run.
func (d *Daemon) sharedWith(pub [keyring.PubLen]byte) ([]byte, error) {
	ks := d.keys
	if s := ks.shared[pub]; s != nil {
		return s, nil
	}
	s, err := ks.run.Shared(pub[:])
	if err != nil {
		return nil, err
	}
	ks.shared[pub] = s
	return s, nil
}

// material identifies an SA's key and salt, the pair a nonce is unique
// under.
func material(sa esp.SA) [32]byte {
	h := sha256.New()
	h.Write(sa.Key)
	h.Write(sa.Salt[:])
	return [32]byte(h.Sum(nil))
}

// sa returns the SA object for id, deriving and caching it if new. A new
// inbound SA gets an SPI of its own (keyring.RandomSPI, never used before
// in this run); a new outbound SA uses id.spi, the receiver's, and is
// refused if its key material was used by an SA dropped in this run.
func (d *Daemon) sa(id saID, k keyring.Key) (*saObj, error) {
	ks := d.keys
	if o := ks.sas[id]; o != nil {
		return o, nil
	}
	shared, err := d.sharedWith(id.peerPub)
	if err != nil {
		return nil, err
	}
	self := keyring.Endpoint{Node: d.cfg.Node, Pub: ks.pub}
	peer := keyring.Endpoint{Node: id.peer, Pub: id.peerPub[:]}
	sender, receiver, spi := peer, self, id.spi
	if id.out {
		sender, receiver = self, peer
	} else if spi, err = keyring.RandomSPI(ks.rand, func(s uint32) bool { return ks.inSPIs[s] }); err != nil {
		return nil, err
	}
	spec, err := keyring.DeriveSA(k, id.cipher, spi, shared, sender, receiver)
	if err != nil {
		return nil, err
	}
	if id.out && ks.spent[material(spec)] {
		return nil, fmt.Errorf("refusing to make the outbound SA to %s under key %d (SPI 0x%08x) again: its sequence numbers would repeat nonces", id.peer, id.keyID, spi)
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
	if !id.out {
		ks.inSPIs[spi] = true
	}
	ks.sas[id] = o
	return o, nil
}

// installSAs derives (or reuses) the SAs of every key of ring with every
// peer whose run key is known, for every cipher in use, records them for
// the data plane (keyState.installed) and forgets the SAs that can no
// longer be used (dropSAs). An inbound SA that cannot be made is an error (the node must not report the
// key installed); an outbound one is logged and the peer left without.
func (d *Daemon) installSAs(ring *keyring.Ring, ciphers []esp.Cipher, members []cluster.Member, states map[string]keyStateRecord) error {
	ks := d.keys
	sets := map[esp.Cipher][]*peerSAs{}
	var inErrs []error
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
			ps := &peerSAs{node: m.Name, pub: st.Pub, addr: m.Meta.DataAddr.Addr()}
			pub := [keyring.PubLen]byte(st.Pub)
			for _, k := range ring.Keys {
				o, err := d.sa(saID{peer: m.Name, peerPub: pub, keyID: k.ID, secret: k.Secret, cipher: c}, k)
				if err != nil {
					inErrs = append(inErrs, fmt.Errorf("inbound SA from %s under key %d: %w", m.Name, k.ID, err))
					continue
				}
				ps.in = append(ps.in, o)
				ps.inKeys = append(ps.inKeys, k.ID)
				ps.inState = append(ps.inState, ringState(ring, k.ID))
			}
			d.pickOutbound(ps, ring, c, &st)
			sets[c] = append(sets[c], ps)
		}
	}
	// The next applyDataplane installs them.
	ks.installed = sets
	d.dropSAs(ring, states)
	return errors.Join(inErrs...)
}

// pickOutbound sets ps.out: the SA of the primary key with the SPI the peer
// published for it or, until the peer has published that, of the newest
// older key of the ring it has (it still accepts those).
func (d *Daemon) pickOutbound(ps *peerSAs, ring *keyring.Ring, c esp.Cipher, st *keyStateRecord) {
	for _, k := range ring.Keys {
		if k.ID > ring.PrimaryID {
			continue
		}
		spi, ok := st.spiFor(d.keys.pub, k.ID, c)
		if !ok {
			continue
		}
		o, err := d.sa(saID{out: true, peer: ps.node, peerPub: [keyring.PubLen]byte(st.Pub), keyID: k.ID, secret: k.Secret, cipher: c, spi: spi}, k)
		if err != nil {
			d.log.Error("outbound SA", "peer", ps.node, "key", k.ID, "err", err)
			continue
		}
		ps.out, ps.outKey = o, k.ID
		return
	}
}

// dropSAs forgets the SAs of keys that left ring and the outbound SAs whose
// receiver now publishes another SPI for the same run, key and cipher
// (it made a new inbound SA). The key material of a dropped outbound SA is
// remembered (spent) so no SA is made with it again in this run.
func (d *Daemon) dropSAs(ring *keyring.Ring, states map[string]keyStateRecord) {
	ks := d.keys
	for id, o := range ks.sas {
		k, ok := ring.Key(id.keyID)
		drop := !ok || k.Secret != id.secret
		if st, known := states[id.peer]; !drop && id.out && known && bytes.Equal(st.Pub, id.peerPub[:]) {
			spi, ok := st.spiFor(ks.pub, id.keyID, id.cipher)
			drop = ok && spi != id.spi
		}
		if !drop {
			continue
		}
		if id.out {
			ks.spent[material(o.spec)] = true
		}
		delete(ks.sas, id)
	}
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

// Keys describes the data key ring in use on this node, and the rings
// refused, without key material.
func (d *Daemon) Keys() api.Keys {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.keysView()
}

func (d *Daemon) keysView() api.Keys {
	v := api.Keys{Keys: []api.KeyInfo{}, Nodes: []api.KeyNode{}, RotationInterval: d.cfg.KeyRotationInterval.Seconds(), RingsRefused: d.keys.refused}
	if live := liveMembers(d.cl.Members()); len(live) > 0 {
		v.Rotator = live[0]
	}
	if r := d.keys.ring; r != nil {
		v.Version, v.Primary = r.Version, r.PrimaryID
		if p, ok := r.Pending(); ok {
			v.Pending = p.ID
		}
		for _, k := range r.Keys {
			v.Keys = append(v.Keys, api.KeyInfo{ID: k.ID, Created: k.Created.UTC(), State: ringState(r, k.ID)})
		}
	}
	for n, s := range d.clusterKeyStates() {
		v.Nodes = append(v.Nodes, api.KeyNode{Node: n, Installed: s.Installed, RingsRefused: s.RefusedCount})
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
		return api.Keys{}, conflict("there are no data keys yet (they are created with the first encrypted network)")
	}
	newest := r.Keys[0].ID
	id := make([]byte, 8)
	rand.Read(id)
	b, _ := json.Marshal(rotateRequest{ID: hex.EncodeToString(id), Node: d.cfg.Node, At: time.Now().UTC()})
	if err := d.cl.Put(tblKeys, keyRotate, b); err != nil {
		d.mu.Unlock()
		return api.Keys{}, fmt.Errorf("asking for a new key: %w", err)
	}
	if err := d.reconcile(); err != nil {
		d.log.Error("data plane", "err", err)
	}
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
			return v, fmt.Errorf("requested, but no key newer than %d is primary after %s (the rotator %q waits until every alive node has installed the new key)", newest, rotateWait, v.Rotator)
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
