package keyring

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// Guard decides, for one daemon run, which rings the node may use. The
// cluster replicates the ring by Lamport version, so a stale or confused
// writer can make an older ring, or a ring with a key that has already
// left, win. A node that used such a ring would make SAs again under key
// material it has used: the new outbound SA repeats the old one's nonces,
// the new inbound SA accepts replays of what the old one accepted. Guard
// refuses a ring that goes backwards (newest key ID or Version lower than
// those of a ring accepted before) or that holds a key that has left an
// accepted ring (a retired key, kept for the whole run). The zero Guard
// accepts any valid ring first.
type Guard struct {
	version uint64
	newest  uint32
	current map[Secret]uint32 // keys of the last accepted ring
	retired map[Secret]uint32 // keys that left an accepted ring, by ID
}

// RefusedError is why Check refused a ring.
type RefusedError struct {
	// Version is the refused ring's version.
	Version uint64
	// Returning are the IDs, in the refused ring, of retired keys.
	Returning []uint32
	reason    string
}

// Error implements error.
func (e *RefusedError) Error() string {
	return fmt.Sprintf("keyring: refusing ring v%d: %s", e.Version, e.reason)
}

// Check reports whether r may be used: nil, or a *RefusedError.
func (g *Guard) Check(r *Ring) error {
	if err := r.Validate(); err != nil {
		return &RefusedError{Version: r.Version, reason: err.Error()}
	}
	var back []string
	if r.Version < g.version {
		back = append(back, fmt.Sprintf("version older than v%d", g.version))
	}
	if r.Keys[0].ID < g.newest {
		back = append(back, fmt.Sprintf("newest key %d older than key %d", r.Keys[0].ID, g.newest))
	}
	e := &RefusedError{Version: r.Version}
	for _, k := range r.Keys {
		if id, ok := g.retired[k.Secret]; ok {
			e.Returning = append(e.Returning, k.ID)
			back = append(back, fmt.Sprintf("key %d is key %d, which has left the ring", k.ID, id))
		}
	}
	if len(back) == 0 {
		return nil
	}
	e.reason = fmt.Sprint(back)
	return e
}

// Accept checks r and, if it may be used, records it: its version and
// newest key become the floor, and the keys of the previously accepted ring
// that r lacks are retired.
func (g *Guard) Accept(r *Ring) error {
	if err := g.Check(r); err != nil {
		return err
	}
	next := make(map[Secret]uint32, len(r.Keys))
	for _, k := range r.Keys {
		next[k.Secret] = k.ID
	}
	for s, id := range g.current {
		if _, ok := next[s]; !ok {
			if g.retired == nil {
				g.retired = map[Secret]uint32{}
			}
			g.retired[s] = id
		}
	}
	g.current = next
	g.version = max(g.version, r.Version)
	g.newest = max(g.newest, r.Keys[0].ID)
	return nil
}

// Floor returns the highest version and newest key ID accepted so far.
func (g *Guard) Floor() (version uint64, newest uint32) { return g.version, g.newest }

// Retired returns how many keys have left the accepted rings this run.
func (g *Guard) Retired() int { return len(g.retired) }

// Supersede returns the ring the rotator publishes to replace a ring that
// some node refused: r (the rotator's accepted ring) without the keys in
// drop and without a pending key, plus a new pending key whose ID is above
// both r's and minID, at a version above both r's and minVersion, so that
// every node's Guard accepts it. If r's primary is dropped, the new key is
// the primary at once (nothing else can be sent with).
func (r *Ring) Supersede(rand io.Reader, now time.Time, minVersion uint64, minID uint32, drop []uint32) (*Ring, error) {
	id := max(r.Keys[0].ID, minID)
	if id >= 1<<32-1 || max(r.Version, minVersion) >= 1<<64-1 {
		return nil, fmt.Errorf("keyring: cannot supersede %v: key IDs or versions exhausted", r)
	}
	k, err := newKey(rand, id+1, now)
	if err != nil {
		return nil, err
	}
	next := &Ring{Version: max(r.Version, minVersion) + 1, PrimaryID: k.ID, Keys: []Key{k}}
	for _, old := range r.Keys {
		if old.ID > r.PrimaryID || slices.Contains(drop, old.ID) || len(next.Keys) == MaxKeys {
			continue
		}
		next.Keys = append(next.Keys, old)
		if old.ID == r.PrimaryID {
			next.PrimaryID = r.PrimaryID
		}
	}
	if err := next.Validate(); err != nil {
		return nil, err
	}
	return next, nil
}
