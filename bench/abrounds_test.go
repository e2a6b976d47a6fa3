package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestABBuildsEachSideWithItsBinary: the first row of an A/B pair runs
// the -ab binary and the second -binary, so the printed ratio is the
// candidate over the base, and nothing else of the config changes.
func TestABBuildsEachSideWithItsBinary(t *testing.T) {
	var got []string
	fake := func(_ context.Context, cfg config, _ string, _ io.Writer) (*built, error) {
		got = append(got, cfg.binary+"/"+cfg.only)
		return nil, errTest("not built")
	}
	cfg := config{binary: "bin/base", abBinary: "/tmp/candidate", only: "vxmesh", rounds: 1, round: time.Second}
	setups := abSetups(cfg, fake)
	res := roundsOf(context.Background(), cfg, abGoals(cfg, "vxmesh"), setups, "t", io.Discard)
	if len(got) != 1 || got[0] != "/tmp/candidate/vxmesh" {
		t.Fatalf("first side built with %q, want the -ab binary and the rest of the config", got)
	}
	if len(res) != 1 || res[0].err == nil || !strings.Contains(res[0].err.Error(), "not built") {
		t.Fatalf("a failed setup is not reported: %+v", res)
	}
	if _, err := setups[1](context.Background(), cfg, "t", io.Discard); err == nil || got[1] != "bin/base/vxmesh" {
		t.Fatalf("second side built with %q, want -binary", got)
	}
}

func TestABGoalsFollowTheMeasuresAsked(t *testing.T) {
	g := abGoals(config{streams: 4, rr: true}, "vxmesh-overlay")
	if len(g) != 3 || g[0].measure != measureStream || g[1].measure != measureStreams || g[2].measure != measureRRMean {
		t.Fatalf("goals %+v, want stream, streams, RR", g)
	}
	for _, x := range g {
		if x.goal != 0 || !strings.Contains(x.a, "(-ab)") || !strings.Contains(x.b, "(-binary)") {
			t.Fatalf("goal %+v: want a context comparison of (-ab) over (-binary)", x)
		}
	}
	if g := abGoals(config{streams: 1}, "vxmesh"); len(g) != 1 {
		t.Fatalf("one stream, no RR: %d goals, want 1", len(g))
	}
}

func TestABNames(t *testing.T) {
	if n, err := abNames(""); err != nil || len(n) != len(abTopologies) {
		t.Fatalf("no -only: %v %v, want every A/B topology", n, err)
	}
	if n, err := abNames("vxmesh, vxmesh-overlay"); err != nil || len(n) != 2 || n[1] != "vxmesh-overlay" {
		t.Fatalf("-only vxmesh,vxmesh-overlay: %v %v", n, err)
	}
	if _, err := abNames("vxmesh,kernel"); err == nil || !strings.Contains(err.Error(), `"kernel"`) {
		t.Fatalf("-only with a kernel row: %v, want an error naming it", err)
	}
}

func TestABNeedsTwoBuiltBinaries(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "vxmesh")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := abBinariesExist(config{binary: bin, abBinary: bin}); err != nil {
		t.Fatalf("two files: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "none")
	if err := abBinariesExist(config{binary: missing, abBinary: bin}); err == nil || !strings.Contains(err.Error(), "-binary "+missing) {
		t.Fatalf("missing -binary: %v, want an error naming it", err)
	}
	if err := abBinariesExist(config{binary: bin, abBinary: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "-ab ") {
		t.Fatalf("-ab a directory: %v, want an error naming -ab", err)
	}
}
