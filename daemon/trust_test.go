package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/tunnel"
)

// TestKeyExportNeedsRootCredentials: key export is answered only to a
// caller whose uid is known to be 0; a request without peer credentials
// (not over the Unix socket, or SO_PEERCRED failed) is refused like one
// from another uid.
func TestKeyExportNeedsRootCredentials(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	defer d.Close()
	h := d.Handler()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want int
	}{
		{"no peer credentials", context.Background(), http.StatusForbidden},
		{"uid 1000", context.WithValue(context.Background(), peerUIDKey{}, uint32(1000)), http.StatusForbidden},
		{"uid 0", context.WithValue(context.Background(), peerUIDKey{}, uint32(0)), http.StatusOK},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/v1/keys/export?format=wireshark", nil).WithContext(tc.ctx)
		h.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("%s: status %d, want %d: %s", tc.name, rec.Code, tc.want, rec.Body)
			continue
		}
		if tc.want == http.StatusForbidden {
			var e api.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || !strings.Contains(e.Error, "root only") {
				t.Errorf("%s: body %s does not say why", tc.name, rec.Body)
			}
		}
	}
}

// TestDaemonRefusesReadableClusterKey: a daemon does not start with a
// cluster key file that its group or others can read, whether given with
// --cluster-key-file or found in the state directory.
func TestDaemonRefusesReadableClusterKey(t *testing.T) {
	k, _ := cluster.GenerateKey()
	for _, given := range []bool{true, false} {
		dir := t.TempDir()
		path := filepath.Join(dir, "cluster.key")
		if err := os.WriteFile(path, []byte(cluster.EncodeKey(k)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, 0o644)
		cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), newFakeSandbox(), dir)
		if given {
			cfg.ClusterKeyFile = path
		}
		d, err := New(cfg)
		if err == nil {
			d.Close()
			t.Fatalf("given=%v: daemon started with a cluster key of mode 0644", given)
		}
		if !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("given=%v: error %q does not say how to fix it", given, err)
		}
	}
}
