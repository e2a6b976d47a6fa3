package keyring

import (
	"crypto/rand"
	"errors"
	"testing"
	"time"
)

// TestGuardRefusesReturningKeysAndOlderRings: once a key has left an
// accepted ring, no ring with it is accepted again in this run, nor a ring
// older (by version or newest key) than one accepted.
func TestGuardRefusesReturningKeysAndOlderRings(t *testing.T) {
	var g Guard
	r1 := mustNew(t)
	if err := g.Accept(r1); err != nil {
		t.Fatal(err)
	}
	r := r1
	var rings []*Ring
	for i := range 3 {
		var err error
		if r, err = r.Rotate(rand.Reader, t0.Add(time.Duration(i+1)*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := g.Accept(r); err != nil {
			t.Fatal(err)
		}
		if r, err = r.Promote(); err != nil {
			t.Fatal(err)
		}
		if err := g.Accept(r); err != nil {
			t.Fatal(err)
		}
		rings = append(rings, r)
	}
	// r holds keys 4, 3, 2; key 1 has left.
	if v, n := g.Floor(); v != r.Version || n != 4 || g.Retired() != 1 {
		t.Fatalf("floor v%d key %d, %d retired", v, n, g.Retired())
	}
	if err := g.Accept(r); err != nil {
		t.Fatalf("the same ring again: %v", err)
	}
	k5, _ := newKey(rand.Reader, 5, t0)
	returning := &Ring{Version: r.Version + 5, PrimaryID: 1, Keys: []Key{k5, r1.Keys[0]}}
	relabeled := &Ring{Version: r.Version + 5, PrimaryID: 5, Keys: []Key{{ID: 5, Created: t0, Secret: r1.Keys[0].Secret}, r.Keys[0]}}
	older := rings[1]
	lowVersion := &Ring{Version: r.Version - 1, PrimaryID: 5, Keys: []Key{k5, r.Keys[0]}}
	for name, bad := range map[string]*Ring{"returning key": returning, "returning secret under a new ID": relabeled, "older ring": older, "lower version": lowVersion} {
		err := g.Accept(bad)
		var re *RefusedError
		if !errors.As(err, &re) || re.Version != bad.Version {
			t.Errorf("%s: accepted or wrong error: %v", name, err)
		}
	}
	var re *RefusedError
	if errors.As(g.Check(returning), &re); re == nil || len(re.Returning) != 1 || re.Returning[0] != 1 {
		t.Errorf("returning keys not named: %+v", re)
	}
	// Refusals change nothing: the next legitimate ring is accepted.
	next, _ := r.Rotate(rand.Reader, t0.Add(10*time.Hour))
	if err := g.Accept(next); err != nil {
		t.Fatal(err)
	}
}

// TestSupersede: the rotator's answer to a refused ring drops the named
// keys and any pending key, has a key and a version above the floors
// given, and passes every guard that refused the bad ring.
func TestSupersede(t *testing.T) {
	var g Guard
	r := mustNew(t)
	g.Accept(r)
	r, _ = r.Rotate(rand.Reader, t0)
	g.Accept(r)
	r, _ = r.Promote()
	g.Accept(r)
	r, _ = r.Rotate(rand.Reader, t0) // keys 3 (pending), 2 (primary), 1
	g.Accept(r)
	s, err := r.Supersede(rand.Reader, t0, 40, 7, []uint32{1})
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != 41 || s.Keys[0].ID != 8 || s.PrimaryID != 2 || len(s.Keys) != 2 || s.Keys[1].ID != 2 {
		t.Fatalf("superseded: %v", s)
	}
	if p, ok := s.Pending(); !ok || p.ID != 8 {
		t.Fatalf("the new key is not pending: %v", s)
	}
	if err := g.Accept(s); err != nil {
		t.Fatal(err)
	}
	// The primary dropped: the new key is the primary at once.
	s2, err := s.Supersede(rand.Reader, t0, 0, 0, []uint32{2})
	if err != nil || s2.PrimaryID != s2.Keys[0].ID || len(s2.Keys) != 1 || s2.Version != s.Version+1 {
		t.Fatalf("%v, %v", s2, err)
	}
	if _, err := (&Ring{Version: 1<<64 - 1, PrimaryID: 1, Keys: []Key{{ID: 1}}}).Supersede(rand.Reader, t0, 0, 0, nil); err == nil {
		t.Error("superseded a ring at the last version")
	}
}
