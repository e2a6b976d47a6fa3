package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNotANamespaceFileSaysWhy: a namespace's name seen from a mount
// namespace its bind mount did not reach is an empty file; the error says
// so and names the usual cause, while any other file gets the plain error.
func TestNotANamespaceFileSaysWhy(t *testing.T) {
	dir := t.TempDir()
	empty, full := filepath.Join(dir, "empty"), filepath.Join(dir, "full")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := NetnsIdentity(empty)
	if err == nil || !strings.Contains(err.Error(), "another mount namespace") || !strings.Contains(err.Error(), "ip netns exec") {
		t.Errorf("empty file: %v, want the mount-namespace hint", err)
	}
	_, err = NetnsIdentity(full)
	if err == nil || !strings.Contains(err.Error(), "not a namespace file") || strings.Contains(err.Error(), "mount namespace") {
		t.Errorf("non-empty file: %v, want the plain error", err)
	}
}
