package daemon

import (
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
