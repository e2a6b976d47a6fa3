package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/vxmesh/vxmesh/crypto/keyring"
)

// TestKeyStatesCheckEachRunKeyOnce reads the keystate table many times (as
// every reconcile does): each run key is checked for small order once,
// not on every read, and a bad key is still refused on every read.
func TestKeyStatesCheckEachRunKeyOnce(t *testing.T) {
	ks, err := newKeyState()
	if err != nil {
		t.Fatal(err)
	}
	good := ks.pub
	for range 100 {
		if err := ks.checkPublic(good); err != nil {
			t.Fatalf("own run key refused: %v", err)
		}
	}
	if ks.pubChecks != 1 {
		t.Fatalf("a run key read 100 times was checked %d times, want 1", ks.pubChecks)
	}
	bad := make([]byte, keyring.PubLen) // the zero point: small order
	for i := range 3 {
		if err := ks.checkPublic(bad); err == nil {
			t.Fatalf("read %d: a small-order key was accepted", i)
		}
	}
}

// TestKeyStatesDecodeOnlyWhatChanged reads the keystate table as every
// reconcile does: records that did not change since the last read are not
// decoded again (an endpoint change elsewhere leaves the table as it is,
// and decoding every node's record on each reconcile was a fifth of a
// daemon's CPU under endpoint churn), and what changed is seen.
func TestKeyStatesDecodeOnlyWhatChanged(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	d.mu.Lock()
	defer d.mu.Unlock()
	own, ok := d.clusterKeyStates()[d.cfg.Node]
	if !ok {
		t.Fatal("no key state of this node")
	}
	val, _ := json.Marshal(own)
	// Fifty records under other keys: invalid (a node writes only its
	// own), but each is read.
	for i := range 50 {
		if err := d.cl.Put(tblKeyState, fmt.Sprintf("n%d", i), val); err != nil {
			t.Fatal(err)
		}
	}
	if got := d.clusterKeyStates(); len(got) != 1 {
		t.Fatalf("%d key states, want this node's only: %v", len(got), got)
	}
	allocs := testing.AllocsPerRun(20, func() { d.clusterKeyStates() })
	if allocs > 20 {
		t.Errorf("reading an unchanged table of 51 records: %.0f allocations, want under 20 (no record decoded again)", allocs)
	}
	// A change is seen: this node's record made invalid, then valid.
	if err := d.cl.Put(tblKeyState, d.cfg.Node, []byte("{")); err != nil {
		t.Fatal(err)
	}
	if got := d.clusterKeyStates(); len(got) != 0 {
		t.Fatalf("after this node's record became invalid: %v, want none", got)
	}
	if err := d.cl.Put(tblKeyState, d.cfg.Node, val); err != nil {
		t.Fatal(err)
	}
	got := d.clusterKeyStates()
	if s, ok := got[d.cfg.Node]; len(got) != 1 || !ok || !bytes.Equal(s.Pub, own.Pub) {
		t.Fatalf("after this node's record was written again: %v, want it", got)
	}
	// The map is the caller's.
	delete(got, d.cfg.Node)
	if _, ok := d.clusterKeyStates()[d.cfg.Node]; !ok {
		t.Fatal("deleting from a returned map changed the next read")
	}
}
