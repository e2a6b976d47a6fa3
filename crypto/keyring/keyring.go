// Package keyring holds the data keys of encrypted overlay networks: a ring
// of at most three keys (the primary, used for sending, and up to two
// secondaries, accepted on receipt), the two-phase rotation that makes a new
// key receivable everywhere before anyone sends with it, the derivation of
// one ESP SA per direction between two daemon runs (RunKey, DeriveSA), the
// Guard that keeps a run from taking a ring that goes backwards, and the
// binary encoding the cluster carries over its encrypted gossip.
//
// A Ring is an immutable value: every change returns a new Ring with a
// higher Version, so the control plane can replicate it and the data plane
// can hold snapshots without locks.
//
// Rotation (docs/architecture.md, "Encrypted networks"). The rotating node (the alive node with the
// lowest name) calls Rotate: the new key enters the ring as pending, receive
// only. Every node installs inbound SAs for every key in the ring and
// reports the highest key ID it has installed. When ReadyToPromote says that
// all alive nodes have the pending key, the rotator calls Promote: the
// pending key becomes the primary and nodes move their outbound SAs to it.
// Receivers still hold the old primary as a secondary, so packets in flight
// under it are accepted; the oldest key leaves the ring at the next Rotate.
//
// Keys never appear in String, Format, GoString or JSON output of any type
// here; only Marshal (for encrypted gossip) and ExportWireshark (an explicit
// operator request) reveal key material.
package keyring

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/vxmesh/vxmesh/crypto/esp"
)

// SecretLen is the length of a data key's secret.
const SecretLen = 32

// MaxKeys is the most keys a ring holds: a primary and two secondaries, or,
// during a rotation, a pending key, the primary and one secondary.
const MaxKeys = 3

// Secret is the random material of a data key. It formats as "[redacted]"
// with every fmt verb and in JSON and text encodings.
type Secret [SecretLen]byte

const redacted = "[redacted]"

// String returns "[redacted]".
func (Secret) String() string { return redacted }

// GoString returns "[redacted]".
func (Secret) GoString() string { return redacted }

// Format writes "[redacted]" for every verb.
func (Secret) Format(f fmt.State, _ rune) { io.WriteString(f, redacted) }

// MarshalText returns "[redacted]", so encoding/json and friends never
// write the secret.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Key is one data key.
type Key struct {
	// ID is the key's generation: 1 for a ring's first key, one more for
	// each rotation. IDs never repeat within a ring's history.
	ID uint32
	// Created is when the key was generated (to the second).
	Created time.Time
	// Secret is the key material; SAs are derived from it.
	Secret Secret
}

// String describes the key without its secret.
func (k Key) String() string {
	return fmt.Sprintf("key %d created %s secret %s", k.ID, k.Created.UTC().Format(time.RFC3339), redacted)
}

// GoString is String.
func (k Key) GoString() string { return k.String() }

// Format writes String for every verb.
func (k Key) Format(f fmt.State, _ rune) { io.WriteString(f, k.String()) }

// Ring is the set of data keys of a cluster at one version. Treat it as
// read-only: methods return new Rings.
type Ring struct {
	// Version increases with every change of the ring.
	Version uint64
	// PrimaryID is the ID of the key used for sending.
	PrimaryID uint32
	// Keys are newest first, at most MaxKeys, IDs strictly decreasing.
	// Keys[0] is either the primary or, during a rotation, the pending
	// key, in which case Keys[1] is the primary.
	Keys []Key
}

// Errors of ring operations.
var (
	// ErrRotationPending: Rotate while a key is pending, or Promote of a
	// pending key not yet installed everywhere.
	ErrRotationPending = errors.New("keyring: a rotation is already in progress")
	// ErrNothingPending: Promote without a pending key.
	ErrNothingPending = errors.New("keyring: no pending key to promote")
)

func newKey(rand io.Reader, id uint32, now time.Time) (Key, error) {
	k := Key{ID: id, Created: time.Unix(now.Unix(), 0)}
	if _, err := io.ReadFull(rand, k.Secret[:]); err != nil {
		return Key{}, fmt.Errorf("keyring: generating key %d: %w", id, err)
	}
	return k, nil
}

// New returns a ring with one fresh key (ID 1) from rand (crypto/rand.Reader
// in production), primary at once: there is no traffic to protect yet.
func New(rand io.Reader, now time.Time) (*Ring, error) {
	k, err := newKey(rand, 1, now)
	if err != nil {
		return nil, err
	}
	return &Ring{Version: 1, PrimaryID: 1, Keys: []Key{k}}, nil
}

// Key returns the key with the given ID.
func (r *Ring) Key(id uint32) (Key, bool) {
	for _, k := range r.Keys {
		if k.ID == id {
			return k, true
		}
	}
	return Key{}, false
}

// Primary returns the key to send with.
func (r *Ring) Primary() Key {
	k, _ := r.Key(r.PrimaryID)
	return k
}

// Pending returns the key added by Rotate and not yet promoted.
func (r *Ring) Pending() (Key, bool) {
	if len(r.Keys) > 0 && r.Keys[0].ID != r.PrimaryID {
		return r.Keys[0], true
	}
	return Key{}, false
}

// Due reports whether a rotation should start at now: no rotation is in
// progress and the newest key is at least interval old.
func (r *Ring) Due(now time.Time, interval time.Duration) bool {
	if _, pending := r.Pending(); pending || len(r.Keys) == 0 {
		return false
	}
	return !now.Before(r.Keys[0].Created.Add(interval))
}

// Rotate starts a rotation: it returns a ring with a new key, pending
// (accepted on receipt, not used for sending), and without the oldest key
// if the ring would exceed MaxKeys. It fails with ErrRotationPending while
// an earlier rotation is not promoted.
func (r *Ring) Rotate(rand io.Reader, now time.Time) (*Ring, error) {
	if _, pending := r.Pending(); pending {
		return nil, ErrRotationPending
	}
	k, err := newKey(rand, r.Keys[0].ID+1, now)
	if err != nil {
		return nil, err
	}
	keys := append([]Key{k}, r.Keys...)
	if len(keys) > MaxKeys {
		keys = keys[:MaxKeys]
	}
	return &Ring{Version: r.Version + 1, PrimaryID: r.PrimaryID, Keys: keys}, nil
}

// ReadyToPromote reports whether the pending key may become the primary:
// every alive node (the rotator included) has reported, in installed,
// that it has inbound SAs for a key at least as new as the pending one.
// Nodes that are not alive are not waited for; a node that joins later
// receives the whole ring before it takes traffic.
func (r *Ring) ReadyToPromote(alive []string, installed map[string]uint32) bool {
	p, ok := r.Pending()
	if !ok {
		return false
	}
	for _, n := range alive {
		if installed[n] < p.ID {
			return false
		}
	}
	return true
}

// Promote ends a rotation: the pending key becomes the primary and the old
// primary a secondary. The caller checks ReadyToPromote first.
func (r *Ring) Promote() (*Ring, error) {
	p, ok := r.Pending()
	if !ok {
		return nil, ErrNothingPending
	}
	return &Ring{Version: r.Version + 1, PrimaryID: p.ID, Keys: slices.Clone(r.Keys)}, nil
}

// Validate checks the ring's invariants: 1..MaxKeys keys, IDs nonzero and
// strictly decreasing, the primary in the ring and at most one key (the
// newest) newer than it.
func (r *Ring) Validate() error {
	if len(r.Keys) == 0 || len(r.Keys) > MaxKeys {
		return fmt.Errorf("keyring: %d keys (want 1..%d)", len(r.Keys), MaxKeys)
	}
	for i, k := range r.Keys {
		if k.ID == 0 {
			return errors.New("keyring: key ID 0")
		}
		if i > 0 && k.ID >= r.Keys[i-1].ID {
			return fmt.Errorf("keyring: key IDs not strictly decreasing (%d after %d)", k.ID, r.Keys[i-1].ID)
		}
	}
	second := uint32(0)
	if len(r.Keys) > 1 {
		second = r.Keys[1].ID
	}
	if r.PrimaryID != r.Keys[0].ID && r.PrimaryID != second {
		return fmt.Errorf("keyring: primary %d is not the newest or second newest key", r.PrimaryID)
	}
	return nil
}

// String describes the ring without key material.
func (r *Ring) String() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "ring v%d primary %d keys", r.Version, r.PrimaryID)
	for _, k := range r.Keys {
		fmt.Fprintf(&b, " %d", k.ID)
	}
	return b.String()
}

// Encoding (all integers big-endian):
//
//	"VXKR" | format 1 (1 byte) | Version (8) | PrimaryID (4) | n (1)
//	n times: ID (4) | Created, Unix seconds (8) | Secret (32)
const (
	magic      = "VXKR"
	format     = 1
	headerLen  = len(magic) + 1 + 8 + 4 + 1
	keyRecLen  = 4 + 8 + SecretLen
	maxEncoded = headerLen + MaxKeys*keyRecLen
)

// Marshal encodes the ring, secrets included, for the cluster's encrypted
// gossip. Never store or log the result in the clear.
func (r *Ring) Marshal() []byte {
	b := make([]byte, 0, headerLen+len(r.Keys)*keyRecLen)
	b = append(b, magic...)
	b = append(b, format)
	b = binary.BigEndian.AppendUint64(b, r.Version)
	b = binary.BigEndian.AppendUint32(b, r.PrimaryID)
	b = append(b, byte(len(r.Keys)))
	for _, k := range r.Keys {
		b = binary.BigEndian.AppendUint32(b, k.ID)
		b = binary.BigEndian.AppendUint64(b, uint64(k.Created.Unix()))
		b = append(b, k.Secret[:]...)
	}
	return b
}

// Unmarshal decodes what Marshal encoded. It is strict: wrong magic or
// format, a length that is not exactly that of the declared keys, or a ring
// that fails Validate is an error; errors never quote the input.
func Unmarshal(b []byte) (*Ring, error) {
	if len(b) < headerLen || len(b) > maxEncoded {
		return nil, fmt.Errorf("keyring: encoded ring of %d bytes", len(b))
	}
	if string(b[:4]) != magic || b[4] != format {
		return nil, errors.New("keyring: not an encoded ring (bad magic or format)")
	}
	r := &Ring{Version: binary.BigEndian.Uint64(b[5:]), PrimaryID: binary.BigEndian.Uint32(b[13:])}
	n := int(b[17])
	if len(b) != headerLen+n*keyRecLen {
		return nil, fmt.Errorf("keyring: %d bytes for %d keys", len(b), n)
	}
	r.Keys = make([]Key, n)
	for i := range r.Keys {
		p := b[headerLen+i*keyRecLen:]
		k := &r.Keys[i]
		k.ID = binary.BigEndian.Uint32(p)
		secs := binary.BigEndian.Uint64(p[4:])
		if secs > 1<<40 {
			return nil, fmt.Errorf("keyring: key %d: creation time out of range", k.ID)
		}
		k.Created = time.Unix(int64(secs), 0)
		copy(k.Secret[:], p[12:12+SecretLen])
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// Endpoint is one end of an SA: a node name and the X25519 public key of
// the node's current daemon run (RunKey.Public).
type Endpoint struct {
	Node string
	Pub  []byte
}

// RunKey is the ephemeral X25519 key pair of one daemon run. Every run makes
// a new one (NewRunKey) and publishes its public half; the SAs between two
// runs are keyed by the ring's secret and the two runs' X25519 shared
// secret (DeriveSA). So a restarted sender, whose sequence numbers start at
// 1 again, never repeats a nonce under a key, a restarted receiver, whose
// replay window starts empty, never accepts what was captured before, and
// the cluster key plus recorded gossip do not give the SA keys of a run
// whose private key is gone (forward secrecy). The private key lives in
// memory only.
type RunKey struct {
	priv *ecdh.PrivateKey
}

// PubLen is the length of a run's public key.
const PubLen = 32

// NewRunKey makes a run key from rand (crypto/rand.Reader in production).
func NewRunKey(rand io.Reader) (*RunKey, error) {
	priv, err := ecdh.X25519().GenerateKey(rand)
	if err != nil {
		return nil, fmt.Errorf("keyring: run key: %w", err)
	}
	return &RunKey{priv: priv}, nil
}

// Public returns the public key to publish.
func (k *RunKey) Public() []byte { return k.priv.PublicKey().Bytes() }

// String hides the private key.
func (k *RunKey) String() string { return "run key [redacted]" }

// CheckPublic checks a peer's published public key: PubLen bytes and not a
// point of small order (whose shared secret with any key is all zeros, RFC
// 7748 section 6.1), whatever its encoding.
func CheckPublic(pub []byte) error {
	_, err := checkedPublic(pub)
	return err
}

// lowOrderProbe is a fixed private key used to test a public key for small
// order: X25519 clamps every scalar to a multiple of the cofactor, so the
// result is all zeros exactly for the points of small order.
var lowOrderProbe = func() *ecdh.PrivateKey {
	k, err := ecdh.X25519().NewPrivateKey(bytes.Repeat([]byte{0x5a}, 32))
	if err != nil {
		panic(err)
	}
	return k
}()

func checkedPublic(pub []byte) (*ecdh.PublicKey, error) {
	if len(pub) != PubLen {
		return nil, fmt.Errorf("keyring: public key of %d bytes (want %d)", len(pub), PubLen)
	}
	p, err := ecdh.X25519().NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("keyring: public key: %w", err)
	}
	if _, err := lowOrderProbe.ECDH(p); err != nil {
		return nil, errors.New("keyring: public key is a point of small order")
	}
	return p, nil
}

// Shared returns the X25519 shared secret of this run and the run that
// published pub, after CheckPublic.
func (k *RunKey) Shared(pub []byte) ([]byte, error) {
	p, err := checkedPublic(pub)
	if err != nil {
		return nil, err
	}
	s, err := k.priv.ECDH(p)
	if err != nil {
		return nil, fmt.Errorf("keyring: shared secret: %w", err)
	}
	return s, nil
}

// RandomSPI returns a random SPI from rand that is not reserved (0..255)
// and for which taken reports false: receivers choose the SPIs of their
// inbound SAs this way and publish them, as IKE does.
func RandomSPI(rand io.Reader, taken func(uint32) bool) (uint32, error) {
	var b [4]byte
	for range 64 {
		if _, err := io.ReadFull(rand, b[:]); err != nil {
			return 0, fmt.Errorf("keyring: SPI: %w", err)
		}
		if spi := binary.BigEndian.Uint32(b[:]); spi >= 256 && !taken(spi) {
			return spi, nil
		}
	}
	return 0, errors.New("keyring: no free SPI found in 64 draws")
}

// DeriveSA returns the SA that sender uses to send to receiver under key k
// with cipher c and the SPI the receiver chose: its AES key and salt,
// derived with HKDF-SHA256 (RFC 5869) from the key's secret followed by
// shared, the X25519 shared secret of the two endpoints' runs
// (RunKey.Shared), with the key ID, the cipher, the SPI and both endpoints
// as info. So each direction between two runs, each key, each cipher and
// each SPI has its own key material; sender and receiver derive the same
// SA. The SA uses extended sequence numbers.
func DeriveSA(k Key, c esp.Cipher, spi uint32, shared []byte, sender, receiver Endpoint) (esp.SA, error) {
	if c.KeyLen() == 0 {
		return esp.SA{}, fmt.Errorf("keyring: unknown %v", c)
	}
	if spi < 256 {
		return esp.SA{}, fmt.Errorf("keyring: SPI %d is reserved", spi)
	}
	if len(shared) != 32 {
		return esp.SA{}, fmt.Errorf("keyring: shared secret of %d bytes (want 32)", len(shared))
	}
	if sender.Node == "" || receiver.Node == "" || len(sender.Node) > 255 || len(receiver.Node) > 255 {
		return esp.SA{}, errors.New("keyring: node names must be 1..255 bytes")
	}
	if len(sender.Pub) != PubLen || len(receiver.Pub) != PubLen {
		return esp.SA{}, errors.New("keyring: endpoint without a public key")
	}
	if sender.Node == receiver.Node {
		return esp.SA{}, fmt.Errorf("keyring: node %q cannot have an SA to itself", sender.Node)
	}
	info := []byte("vxmesh esp sa v2")
	info = append(info, byte(c))
	info = binary.BigEndian.AppendUint32(info, k.ID)
	info = binary.BigEndian.AppendUint32(info, spi)
	for _, e := range []Endpoint{sender, receiver} {
		info = append(info, byte(len(e.Node)))
		info = append(info, e.Node...)
		info = append(info, e.Pub...)
	}
	ikm := make([]byte, 0, SecretLen+len(shared))
	ikm = append(append(ikm, k.Secret[:]...), shared...)
	okm, err := hkdf.Key(sha256.New, ikm, nil, string(info), c.KeyLen()+esp.SaltLen)
	clear(ikm)
	if err != nil {
		return esp.SA{}, err
	}
	sa := esp.SA{SPI: spi, Cipher: c, Key: okm[:c.KeyLen()]}
	copy(sa.Salt[:], okm[c.KeyLen():])
	return sa, nil
}
