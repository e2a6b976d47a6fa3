package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadKeyFileRefusesLooseMode: a cluster key that group or others can
// read is refused with a message that names the file and the fix; the
// same file with mode 0600 loads.
func TestLoadKeyFileRefusesLooseMode(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(path, []byte(EncodeKey(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660, 0o601} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadKeyFile(path)
		if err == nil {
			t.Fatalf("mode %04o: key file loaded", mode)
		}
		if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "chmod 600") {
			t.Errorf("mode %04o: error %q does not name the file and the fix", mode, msg)
		}
		if _, _, err := LoadOrCreateKeyFile(path); err == nil {
			t.Fatalf("mode %04o: LoadOrCreateKeyFile loaded the key", mode)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		os.Chmod(path, mode)
		if _, err := LoadKeyFile(path); err != nil {
			t.Fatalf("mode %04o: %v", mode, err)
		}
	}
}
