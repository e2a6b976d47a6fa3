package daemon

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// TestRunDoesNotRewriteTheState: a run appends its container's record to
// the journal; state.json, the snapshot, is not rewritten, and what one
// run writes does not grow with the containers already there.
func TestRunDoesNotRewriteTheState(t *testing.T) {
	dir := t.TempDir()
	d := newTestDaemon(t, newFakeSandbox(), dir)
	defer d.Close()
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.20.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	snap := func() (uint64, int64) {
		fi, err := os.Stat(filepath.Join(dir, stateFile))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino, fi.ModTime().UnixNano()
	}
	journal := func() int64 {
		fi, err := os.Stat(filepath.Join(dir, journalFile))
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c0", Create: true})
	ino, mtime := snap()
	var first, last int64
	for i := 1; i <= 200; i++ {
		before := journal()
		mustAttach(t, d, api.AttachRequest{Network: "web", Name: fmt.Sprintf("c%d", i), Create: true})
		grew := journal() - before
		if i == 1 {
			first = grew
		}
		last = grew
	}
	if i2, m2 := snap(); i2 != ino || m2 != mtime {
		t.Fatal("state.json was rewritten by a run")
	}
	if first <= 0 || last > first+16 {
		t.Fatalf("the journal grew by %d bytes for the 2nd run and %d for the 201st: want the same", first, last)
	}
	// Everything is there after a restart.
	d.Close()
	s, err := loadState(dir)
	if err != nil || len(s.Containers) != 201 || len(s.Networks) != 1 {
		t.Fatalf("state after 201 runs: %d containers, %d networks, %v", len(s.Containers), len(s.Networks), err)
	}
}

// TestJournalTornLastRecordIsDropped: a crash in the middle of a write
// leaves the journal's last record torn. The daemon starts with the state
// before it, says so in its log, and appends after the valid part, so
// the next change survives the next restart.
func TestJournalTornLastRecordIsDropped(t *testing.T) {
	sb := newFakeSandbox()
	dir := t.TempDir()
	d := newTestDaemon(t, sb, dir)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.21.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c2", Create: true})
	d.Close()
	jp := filepath.Join(dir, journalFile)
	fi, err := os.Stat(jp)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(jp, fi.Size()-5); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	cfg := nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, dir)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	d2 := startNode(t, cfg)
	names := func(d *Daemon) []string {
		var out []string
		for _, c := range d.Containers() {
			out = append(out, c.Name)
		}
		return out
	}
	if got := names(d2); !reflect.DeepEqual(got, []string{"c1"}) {
		t.Fatalf("containers after the torn write: %v, want [c1]", got)
	}
	if !strings.Contains(logs.String(), "state journal: dropping its torn end") {
		t.Fatalf("no log line about the torn record:\n%s", logs.String())
	}
	mustAttach(t, d2, api.AttachRequest{Network: "web", Name: "c3", Create: true})
	d2.Close()
	s, info, err := loadStateJournal(dir)
	if err != nil || info.torn != nil {
		t.Fatalf("journal after the next change: %v, %v", info.torn, err)
	}
	var got []string
	for _, c := range s.Containers {
		got = append(got, c.Name)
	}
	if !reflect.DeepEqual(got, []string{"c1", "c3"}) {
		t.Fatalf("containers after the next restart: %v, want [c1 c3]", got)
	}
}

// TestJournalCompactsIntoSnapshot: the journal is folded into a new
// snapshot once it outgrows it, and a crash between writing that snapshot
// and emptying the journal loads the same state.
func TestJournalCompactsIntoSnapshot(t *testing.T) {
	dir := t.TempDir()
	st, s, err := openStateStore(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	st.minCompact = 4 << 10
	s.Networks = []savedNetwork{{Name: "web", ID: "x", Subnet: "10.0.0.0/24", Gateway: "10.0.0.1", MTU: 1450, VNI: 4096, Created: time.Unix(0, 0).UTC()}}
	maxJournal := int64(0)
	for i := range 300 {
		c := savedContainer{Name: fmt.Sprintf("c%d", i%7), Netns: "/run/netns/x", NsIno: uint64(i),
			Endpoints: []savedEndpoint{{Network: "web", IP: "10.0.0.5", MAC: "02:42:0a:00:00:05", IfName: "eth0"}}}
		s.Containers = upsert(s.Containers, c)
		p := newPending()
		if err := st.diff(p, s); err != nil {
			t.Fatal(err)
		}
		if st.needsSnapshot(len(p.buf)) {
			err = st.compact(s)
		} else {
			err = st.commit(p)
		}
		if err != nil {
			t.Fatal(err)
		}
		maxJournal = max(maxJournal, st.journal)
		got, err := loadState(dir)
		if err != nil || !reflect.DeepEqual(got.Containers, s.Containers) {
			t.Fatalf("change %d: loaded %+v, %v; want %+v", i, got.Containers, err, s.Containers)
		}
	}
	if limit := int64(4<<10) + journalCompactFactor*st.snapshot + 1024; maxJournal > limit {
		t.Fatalf("the journal grew to %d bytes, past %d", maxJournal, limit)
	}
	if st.snapshot == 0 || st.written > 300*2048 {
		t.Fatalf("snapshot %d bytes, %d bytes written in all", st.snapshot, st.written)
	}
	// A crash right after a compaction's snapshot: the journal it
	// folded in is still there and is replayed onto it.
	s.Containers = upsert(s.Containers, savedContainer{Name: "last", Netns: "/run/netns/last"})
	p := newPending()
	if err := st.diff(p, s); err != nil || st.commit(p) != nil {
		t.Fatal("last change")
	}
	oldJournal, err := os.ReadFile(filepath.Join(dir, journalFile))
	if err != nil || len(oldJournal) == 0 {
		t.Fatalf("journal before the compaction: %d bytes, %v", len(oldJournal), err)
	}
	if err := st.compact(s); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, journalFile), oldJournal, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := loadState(dir)
	if err != nil || !reflect.DeepEqual(got.Containers, s.Containers) {
		t.Fatalf("snapshot plus the journal it holds: %+v, %v", got.Containers, err)
	}
}

// upsert replaces the container of c's name in cs, or appends it, keeping
// cs sorted by name.
func upsert(cs []savedContainer, c savedContainer) []savedContainer {
	for i := range cs {
		if cs[i].Name == c.Name {
			cs[i] = c
			return cs
		}
	}
	s := &savedState{Containers: append(cs, c)}
	s.apply(nil)
	return s.Containers
}

func FuzzParseJournal(f *testing.F) {
	rec := appendRecord(nil, []byte(`{"container":{"name":"c1","netns":"/run/netns/c1","ns_dev":1,"ns_ino":2,"managed":true,"endpoints":[]}}`))
	f.Add(rec)
	f.Add(appendRecord(rec, []byte(`{"delete_container":"c1"}`)))
	f.Add(rec[:len(rec)-3])
	svc := appendRecord(nil, []byte(`{"service":{"name":"api","id":"x","endpoint_mode":"vip","vips":[{"network":"web","vip":"10.0.0.9"}],"scheduler":"rr","stop_grace_period":"10s","dns_ttl":"10s","created":"2026-01-01T00:00:00Z","created_by":"h1"}}`))
	f.Add(appendRecord(svc, []byte(`{"delete_service":"api"}`)))
	f.Add([]byte{0, 0, 0, 2, 0, 0, 0, 0, '{', '}'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, valid, torn := parseJournal(b)
		if valid > len(b) || (torn == nil) != (valid == len(b)) {
			t.Fatalf("valid %d of %d bytes, torn %v", valid, len(b), torn)
		}
		// The valid part parses alone to the same records.
		again, v2, torn2 := parseJournal(b[:valid])
		if v2 != valid || torn2 != nil || len(again) != len(recs) {
			t.Fatalf("the valid part: %d records, %d bytes, %v; want %d records", len(again), v2, torn2, len(recs))
		}
		s := &savedState{}
		s.apply(recs)
	})
}
