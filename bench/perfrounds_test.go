package main

import (
	"strings"
	"testing"
	"time"
)

// TestPerfRoundsJudgeTheMedian checks that a goal is judged on the median
// of its rounds, not on one round: throughput as a ratio (at least the
// goal), request/response as a difference (at most the goal).
func TestPerfRoundsJudgeTheMedian(t *testing.T) {
	stream := perfGoal{"vxmesh", "kernel", measureStream, 0.8}
	rr := perfGoal{"vxmesh", "kernel", measureRRMean, 40}
	rounds := []perfRound{
		// ratios 0.5, 0.9, 0.85: median 0.85, two rounds meet 0.8.
		// The daemons' CPU per GB of a: median 1.10; b has no daemon.
		{goal: stream, va: []float64{5e9, 9e9, 8.5e9}, vb: []float64{10e9, 10e9, 10e9}, cpuA: []float64{1.2, 1.0, 1.1}, cpuB: []float64{0, 0, 0}},
		// differences +10, +60, +50 us: median +50, one round meets 40.
		{goal: rr, va: []float64{30, 80, 70}, vb: []float64{20, 20, 20}},
	}
	if got := rounds[0].scores(); len(got) != 3 || got[0] != 0.5 || got[2] != 0.9 {
		t.Fatalf("throughput scores %v, want the sorted ratios 0.5, 0.85, 0.9", got)
	}
	var out strings.Builder
	printPerfRounds(&out, config{rounds: 3, round: 2 * time.Second, streams: 4}, rounds)
	lines := strings.Split(out.String(), "\n")
	want := map[string][]string{
		"1 stream": {"0.85", "0.50 - 0.90", "2 of 3", "8.50 Gbit/s", "10.00 Gbit/s", "1.10", ">= 0.8: met"},
		"RR mean":  {"+50 us", "+10 us - +60 us", "1 of 3", "70.0 us", "20.0 us", "<= +40 us: NOT met"},
	}
	for what, fields := range want {
		found := false
		for _, l := range lines {
			if !strings.Contains(l, what) || !strings.HasPrefix(l, "vxmesh / kernel") {
				continue
			}
			found = true
			for _, f := range fields {
				if !strings.Contains(l, f) {
					t.Errorf("%s row %q lacks %q", what, l, f)
				}
			}
		}
		if !found {
			t.Errorf("no %s row in:\n%s", what, out.String())
		}
	}
}

// TestPerfRoundsShowFailures checks that a goal whose rounds failed is
// printed as failed with its error, not as a value.
func TestPerfRoundsShowFailures(t *testing.T) {
	var out strings.Builder
	printPerfRounds(&out, config{rounds: 3, round: time.Second, streams: 4}, []perfRound{
		{goal: perfGoal{"vxmesh-esp", wireguardTopology, measureStream, 2}, err: errTest("wireguard-go: no UAPI socket")},
	})
	if s := out.String(); !strings.Contains(s, "failed (below)") || !strings.Contains(s, "no UAPI socket") {
		t.Fatalf("failed goal not shown as failed:\n%s", s)
	}
}

// TestEveryGoalRowHasASetup checks that each goal's rows can be built.
func TestEveryGoalRowHasASetup(t *testing.T) {
	for _, g := range perfGoals() {
		for _, name := range []string{g.a, g.b} {
			if perfSetup(name) == nil {
				t.Errorf("goal %s / %s: no setup for %s", g.a, g.b, name)
			}
		}
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }
