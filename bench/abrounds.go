package main

// A/B of two vxmesh binaries in one run (-ab PATH). Comparing a data-path
// change by running the bench once per binary compares two moments of a
// shared machine's load: on the 2-vCPU VM, seven A-then-B pairs under a
// rising load showed the second binary 10% cheaper per GB in every pair,
// and the difference vanished when the same runs were ordered ABBA. So
// -ab keeps each topology up twice, once with each binary, and measures
// the two back to back in rounds, order alternating (AB, BA, AB, ...),
// like issue 12's goals: each round's ratio comes from one window of the
// machine's load.

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/vxmesh/vxmesh/internal/testbed"
)

// abTopologies are the rows -ab can compare: those that run vxmesh
// daemons.
var abTopologies = []string{"vxmesh", "vxmesh-overlay", "vxmesh-esp"}

// abGoals returns the comparisons of topology name between binary b (the
// candidate, first: ratios are b / a) and binary a (-binary), with the
// measures cfg asks for. They are shown for context, never judged.
func abGoals(cfg config, name string) []perfGoal {
	a, b := name+" (-binary)", name+" (-ab)"
	goals := []perfGoal{{b, a, measureStream, 0}}
	if cfg.streams > 1 {
		goals = append(goals, perfGoal{b, a, measureStreams, 0})
	}
	if cfg.rr {
		goals = append(goals, perfGoal{b, a, measureRRMean, 0})
	}
	return goals
}

// abSetups returns the setups of an A/B pair's rows: setup with the -ab
// binary first (the a of its goals), then with -binary.
func abSetups(cfg config, setup setupFunc) [2]setupFunc {
	return [2]setupFunc{withBinary(setup, cfg.abBinary), withBinary(setup, cfg.binary)}
}

// withBinary returns setup building its row with vxmesh binary bin.
func withBinary(setup setupFunc, bin string) setupFunc {
	return func(ctx context.Context, cfg config, prefix string, log io.Writer) (*built, error) {
		cfg.binary = bin
		return setup(ctx, cfg, prefix, log)
	}
}

// abNames returns the topologies -only names for -ab (all of
// abTopologies if it names none), or an error for one -ab cannot compare.
func abNames(only string) ([]string, error) {
	if only == "" {
		return abTopologies, nil
	}
	var names []string
	for _, n := range strings.Split(only, ",") {
		n = strings.TrimSpace(n)
		if !slices.Contains(abTopologies, n) {
			return nil, fmt.Errorf("-ab compares %s; -only names %q", strings.Join(abTopologies, ", "), n)
		}
		names = append(names, n)
	}
	return names, nil
}

// runAB is the -ab mode: for each topology, the binary of -ab against
// -binary in cfg.rounds interleaved rounds.
func runAB(ctx context.Context, cfg config, out, log io.Writer) error {
	if err := checkTools(); err != nil {
		return err
	}
	names, err := abNames(cfg.only)
	if err != nil {
		return err
	}
	if cfg.rounds <= 0 {
		return fmt.Errorf("-ab needs -rounds of at least 1")
	}
	if err := abBinariesExist(cfg); err != nil {
		return err
	}
	rcfg := cfg
	rcfg.duration = cfg.round
	prefix := "vxab" + testbed.RandomID(2) + "-"
	loadBefore := loadAvg()
	var rounds []perfRound
	for i, name := range names {
		if ctx.Err() != nil {
			break
		}
		rounds = append(rounds, roundsOf(ctx, rcfg, abGoals(cfg, name), abSetups(cfg, perfSetup(name)), fmt.Sprintf("%s%d", prefix, i), log)...)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	fmt.Fprintf(out, "\nA/B, interleaved: %d rounds of %v per row and measurement, the two rows back to back, order alternating; rows \"NAME (-ab)\" run %s (columns a), rows \"NAME (-binary)\" run %s (columns b); value = median of the rounds' a / b (throughput) or a - b (request/response mean)\n\n",
		cfg.rounds, cfg.round, cfg.abBinary, cfg.binary)
	printRoundsTable(out, cfg, rounds)
	printLoad(out, loadBefore, loadAvg())
	return nil
}

// abBinariesExist checks that both binaries are files: -binary alone
// falls back to building ./cmd/vxmesh, which in an A/B would silently
// measure the working tree against itself or the other side.
func abBinariesExist(cfg config) error {
	for _, b := range []struct{ flag, path string }{{"-binary", cfg.binary}, {"-ab", cfg.abBinary}} {
		if st, err := os.Stat(b.path); err != nil || st.IsDir() {
			return fmt.Errorf("%s %s: an A/B needs two built vxmesh binaries (go build -o PATH ./cmd/vxmesh)", b.flag, b.path)
		}
	}
	return nil
}
