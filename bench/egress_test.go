package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestEgressRatiosJudgeTheGoal(t *testing.T) {
	got := egressRatios(map[string]float64{"vxmesh": 3, "slirp4netns": 1, "slirp4netns-65520": 6, "host": 12})
	want := []egressRatio{
		{"throughput vxmesh / slirp4netns", 3, ">= 2: met"},
		{"throughput vxmesh / slirp4netns-65520", 0.5, "(context)"},
		{"throughput vxmesh / host", 0.25, "(context)"},
	}
	if len(got) != len(want) {
		t.Fatalf("ratios %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("ratio %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if r := egressRatios(map[string]float64{"vxmesh": 1.5, "slirp4netns": 1}); len(r) != 1 || r[0].goal != ">= 2: not met" {
		t.Errorf("1.5x: %+v, want the goal not met", r)
	}
	// A row that failed has no ratio rather than a zero or an infinity.
	if r := egressRatios(map[string]float64{"vxmesh": 2}); len(r) != 0 {
		t.Errorf("ratios without slirp4netns or host: %+v", r)
	}
}

func TestPrintEgressShowsFailedRows(t *testing.T) {
	var b bytes.Buffer
	printEgress(&b, config{duration: 5e9}, []egressRow{
		{name: "vxmesh", desc: "d", gbps: 2.5},
		{name: "slirp4netns", desc: "d", err: errors.New("slirp4netns not installed")},
	})
	out := b.String()
	for _, w := range []string{"vxmesh", "2.50", "slirp4netns", "failed: slirp4netns not installed"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "vxmesh / slirp4netns") {
		t.Errorf("a ratio against a failed row:\n%s", out)
	}
}
