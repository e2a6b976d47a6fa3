package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/crypto/keyring"
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
			// The CLI prefixes "vxmesh key export: ".
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || !strings.Contains(e.Error, "root only") || strings.Contains(e.Error, "key export: ") {
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

// saMaterial is the key and salt of an SA: two SA objects with the same
// material and their own sequence numbers would reuse nonces.
func saMaterial(s esp.SA) string {
	return hex.EncodeToString(s.Key) + "/" + hex.EncodeToString(s.Salt[:])
}

// checkNoReuse fails if an installed SA of d has the material of an SA
// object seen before that is not this object: a second outbound object
// starts its sequence numbers (nonces) at 1 again, a second inbound one
// accepts replays of what the first accepted.
func checkNoReuse(t *testing.T, d *Daemon, seen map[string]any) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, list := range d.keys.installed {
		for _, ps := range list {
			objs := map[*saObj]any{}
			if ps.out != nil {
				objs[ps.out] = ps.out.out
			}
			for _, o := range ps.in {
				objs[o] = o.in
			}
			for o, dp := range objs {
				m := saMaterial(o.spec)
				if prev, ok := seen[m]; ok && prev != dp {
					t.Fatalf("%s: a second SA object with the key and salt of an earlier one (SA with %s, key %d): its nonces or replay window start over", d.cfg.Node, ps.node, ps.outKey)
				}
				seen[m] = dp
			}
		}
	}
}

// TestReturningKeyNeverReusesNonces: a ring that brings back a key that
// has left the ring (here: a newer ring version with the first key as
// primary again, as a Lamport winner written by a confused or stale
// node would) must not make any node create SAs again under key material
// it has used: it is refused, counted, and the rotator answers it with a
// new key.
func TestReturningKeyNeverReusesNonces(t *testing.T) {
	ds, _ := threeNodes(t)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Subnet: "10.6.0.0/24", Encrypted: true}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "key 1 and SAs with both peers", func() bool {
			n, err := d.Network("sec")
			return err == nil && d.Keys().Primary == 1 && len(n.SAs) == 4
		})
	}
	seen := map[*Daemon]map[string]any{}
	for _, d := range ds {
		seen[d] = map[string]any{}
	}
	// Each outbound SA seals a packet, so its sequence number is past 1.
	seal := func() {
		for _, d := range ds {
			d.mu.Lock()
			for _, list := range d.keys.installed {
				for _, ps := range list {
					if ps.out != nil {
						buf := make([]byte, 200)
						if _, _, err := ps.out.out.Seal(buf, 40, 60); err != nil {
							t.Error(err)
						}
					}
				}
			}
			d.mu.Unlock()
			checkNoReuse(t, d, seen[d])
		}
	}
	seal()
	ds[0].mu.Lock()
	first := ds[0].clusterRing()
	ds[0].mu.Unlock()
	// Three rotations: key 1 leaves every ring.
	for want := uint32(2); want <= 4; want++ {
		if k, err := ds[1].RotateKey(context.Background()); err != nil || k.Primary != want {
			t.Fatalf("rotate to %d: %+v, %v", want, k, err)
		}
		for _, d := range ds {
			waitFor(t, "the new primary everywhere", func() bool { p, _ := primaryOf(d); return p == want })
		}
		seal()
	}
	// Key 1 comes back as the primary of a newer ring, beside a new key.
	ds[2].mu.Lock()
	cur := ds[2].clusterRing()
	ds[2].mu.Unlock()
	fresh, err := keyring.New(rand.Reader, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	k5 := fresh.Keys[0]
	k5.ID = 5
	forged := &keyring.Ring{Version: cur.Version + 10, PrimaryID: 1, Keys: []keyring.Key{k5, first.Keys[0]}}
	if err := forged.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := ds[2].cl.Put(tblKeys, keyRingKey, forged.Marshal()); err != nil {
		t.Fatal(err)
	}
	// Every node refuses it, the rotator answers with a ring whose new
	// key becomes the primary; at no time is key material used twice.
	for _, d := range ds {
		waitFor(t, "a new primary after the refused ring", func() bool {
			for _, d := range ds {
				checkNoReuse(t, d, seen[d])
			}
			p, _ := primaryOf(d)
			return p == 5 && !hasSecret(d, first.Keys[0].Secret) && !hasSecret(d, k5.Secret)
		})
	}
	seal()
	// The refusal is counted once by every node that saw the ring (a
	// node may get the rotator's answer before the forged ring, and then
	// has nothing to refuse), at least one did, and key ls on every node
	// shows every node's count.
	waitFor(t, "the refusals in key ls", func() bool {
		own := map[string]uint64{}
		total := uint64(0)
		for _, d := range ds {
			r := d.Keys().RingsRefused
			if r > 1 {
				t.Fatalf("%s counted the refused ring %d times", d.cfg.Node, r)
			}
			own[d.cfg.Node] = r
			total += r
		}
		if total == 0 {
			return false
		}
		for _, d := range ds {
			k := d.Keys()
			if len(k.Nodes) != len(ds) {
				return false
			}
			for _, kn := range k.Nodes {
				if kn.RingsRefused != own[kn.Node] {
					return false
				}
			}
		}
		return true
	})
	// The ring entry deleted: every node keeps its ring, the rotator
	// publishes a new key on it, and no key material is used twice.
	if err := ds[2].cl.Delete(tblKeys, keyRingKey); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "a new primary after the ring entry was deleted", func() bool {
			for _, d := range ds {
				checkNoReuse(t, d, seen[d])
			}
			p, _ := primaryOf(d)
			return p == 6
		})
	}
	seal()
}

// hasSecret reports whether d's ring holds a key with secret s.
func hasSecret(d *Daemon, s keyring.Secret) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, k := range d.keys.ring.Keys {
		if k.Secret == s {
			return true
		}
	}
	return false
}

// repeatingSPIs is a random source whose draws keep coming back to values
// already drawn (A, A B, A B C, ...): SPIs a receiver has given out.
type repeatingSPIs struct{ n, i, lim uint32 }

func (r *repeatingSPIs) Read(b []byte) (int, error) {
	for i := range b {
		if i%4 == 0 {
			r.i++
			if r.i > r.lim {
				r.lim++
				r.i = 1
			}
		}
		b[i] = byte((0x1000 + r.i) >> (8 * (3 - i%4)))
	}
	return len(b), nil
}

// TestReceiversChooseSPIs: each node chooses the SPIs of its inbound SAs,
// unique in its own table even when its random source repeats itself,
// publishes them, and its peers seal with them; nodes may choose the same
// SPIs as each other. Every SA is installed.
func TestReceiversChooseSPIs(t *testing.T) {
	ds, _ := threeNodes(t)
	for _, d := range ds {
		d.mu.Lock()
		d.keys.rand = &repeatingSPIs{lim: 1}
		d.mu.Unlock()
	}
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Subnet: "10.7.0.0/24", Encrypted: true}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "key 1 everywhere", func() bool { k := d.Keys(); return k.Primary == 1 && len(k.Nodes) == 3 })
	}
	if _, err := ds[1].RotateKey(context.Background()); err != nil {
		t.Fatal(err)
	}
	views := map[string][]api.SA{}
	for _, d := range ds {
		waitFor(t, "SAs of two keys with both peers", func() bool {
			n, err := d.Network("sec")
			views[d.cfg.Node] = n.SAs
			return err == nil && len(n.SAs) == 2*(1+2)
		})
	}
	shared := false
	for _, d := range ds {
		in := map[string]bool{}
		for _, sa := range views[d.cfg.Node] {
			if sa.Direction != "in" {
				continue
			}
			if in[sa.SPI] {
				t.Fatalf("%s: two inbound SAs with SPI %s", d.cfg.Node, sa.SPI)
			}
			in[sa.SPI] = true
			// The sender seals to this node with the SPI it chose.
			for _, o := range views[sa.Node] {
				if o.Direction == "out" && o.Node == d.cfg.Node && o.Key == sa.Key && o.SPI != sa.SPI {
					t.Errorf("%s seals to %s under key %d with SPI %s, %s chose %s", sa.Node, d.cfg.Node, sa.Key, o.SPI, d.cfg.Node, sa.SPI)
				}
			}
			for _, other := range ds {
				for _, o := range views[other.cfg.Node] {
					shared = shared || other != d && o.Direction == "in" && o.SPI == sa.SPI
				}
			}
		}
	}
	if !shared {
		t.Error("the nodes' repeating random sources gave no SPI to two nodes: the test does not test collisions")
	}
}
