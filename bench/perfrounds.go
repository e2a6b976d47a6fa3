package main

// Interleaved rounds of issue 12's goals (-rounds, -round): one iperf3
// run per row, minutes apart, compares two moments of a shared machine's
// load as much as two datapaths (the same code measured 0.70-0.77 of the
// bridge in four runs of one evening, the bridge itself 7.6-11 Gbit/s).
// So each goal comparison keeps both topologies up and measures them
// again in short rounds, the two rows back to back, their order
// alternating, and judges the median of the rounds: a ratio (or a
// latency difference) within one window of the machine's load, each
// time. The main table's single runs stay for context.

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// perfMeasure is what a goal compares.
type perfMeasure int

const (
	measureStream  perfMeasure = iota // one iperf3 stream, a / b >= goal
	measureStreams                    // cfg.streams streams, a / b >= goal
	measureRRMean                     // request/response mean, a - b <= goal us
)

// perfGoal is one of issue 12's goals: row a against its anchor row b.
type perfGoal struct {
	a, b    string
	measure perfMeasure
	// goal is the least ratio (throughput) or the largest difference in
	// microseconds (latency) that meets it; 0 marks a comparison shown
	// for context, not a goal.
	goal float64
}

// perfGoals are issue 12's datapath goals, in the order printed.
func perfGoals() []perfGoal {
	return []perfGoal{
		{"vxmesh", "kernel", measureStream, 0.8},
		{"vxmesh", "kernel", measureStreams, 0.8},
		{"vxmesh", "kernel", measureRRMean, 40},
		{"vxmesh", tapRelayTopology, measureStream, 0},
		{"vxmesh", tapRelayTopology, measureRRMean, 0},
		{"vxmesh-overlay", "kernel-vxlan", measureStream, 0.6},
		{"vxmesh-overlay", "kernel-vxlan", measureRRMean, 80},
		{"vxmesh-overlay", "kernel-vxlan-sw", measureStream, 1.3},
		{"vxmesh-esp", wireguardTopology, measureStream, 2},
	}
}

// perfSetup returns the setup of a goal's row.
func perfSetup(name string) setupFunc {
	switch name {
	case "vxmesh":
		return setupVxmesh
	case "kernel":
		return setupKernel
	case tapRelayTopology:
		return setupTAPRelay
	case "vxmesh-overlay", "vxmesh-esp":
		encrypted := name == "vxmesh-esp"
		return func(ctx context.Context, cfg config, prefix string, log io.Writer) (*built, error) {
			return setupVxmeshOverlay(ctx, cfg, prefix, log, encrypted)
		}
	case "kernel-vxlan":
		return setupKernelVXLAN
	case "kernel-vxlan-sw":
		return setupKernelVXLANSoftSeg
	case wireguardTopology:
		return setupWireguardGo
	}
	return nil
}

// perfRound is one goal's rounds: each round's value of a and of b
// (bits per second, or the mean in microseconds).
type perfRound struct {
	goal   perfGoal
	va, vb []float64
	// cpuA and cpuB are each round's daemon CPU seconds per GB of a
	// throughput measure (0 for a row without daemons).
	cpuA, cpuB []float64
	err        error
}

// scores returns each round's ratio a / b (throughput) or difference
// a - b (latency), sorted.
func (r perfRound) scores() []float64 {
	var s []float64
	for i := range min(len(r.va), len(r.vb)) {
		switch {
		case r.goal.measure == measureRRMean:
			s = append(s, r.va[i]-r.vb[i])
		case r.vb[i] > 0:
			s = append(s, r.va[i]/r.vb[i])
		}
	}
	slices.Sort(s)
	return s
}

// met reports whether score v meets the goal.
func (g perfGoal) met(v float64) bool {
	if g.measure == measureRRMean {
		return v <= g.goal
	}
	return v >= g.goal
}

// measureOnce runs one measurement of m between p's containers and
// returns its value and, for throughput, the daemons' CPU per GB.
func measureOnce(ctx context.Context, cfg config, p pair, m perfMeasure, log io.Writer) (v, cpuPerGB float64, err error) {
	switch m {
	case measureStream, measureStreams:
		streams := 1
		if m == measureStreams {
			streams = cfg.streams
		}
		r, cpu, err := iperfCPU(ctx, cfg, p, streams, log)
		return r.ReceivedBitsPerSecond, cpu, err
	default:
		r, err := measureRR(ctx, cfg, p, log)
		return float64(r.Mean()) / float64(time.Microsecond), 0, err
	}
}

// measurePerfRounds measures every goal whose two rows are wanted, in
// cfg.rounds rounds of cfg.round per row and measurement (request/response
// goals only with cfg.rr, multi-stream ones only with cfg.streams > 1).
// The goals of one pair of rows share one setup of each.
func measurePerfRounds(ctx context.Context, cfg config, want map[string]bool, prefix string, log io.Writer) []perfRound {
	if cfg.rounds <= 0 {
		return nil
	}
	rcfg := cfg
	rcfg.duration = cfg.round
	var res []perfRound
	goals := perfGoals()
	for len(goals) > 0 && ctx.Err() == nil {
		a, b := goals[0].a, goals[0].b
		var same []perfGoal
		goals = slices.DeleteFunc(goals, func(g perfGoal) bool {
			if g.a == a && g.b == b {
				same = append(same, g)
				return true
			}
			return false
		})
		same = slices.DeleteFunc(same, func(g perfGoal) bool {
			return g.measure == measureRRMean && !cfg.rr || g.measure == measureStreams && cfg.streams <= 1
		})
		if !want[a] || !want[b] || len(same) == 0 {
			continue
		}
		res = append(res, pairRounds(ctx, rcfg, same, fmt.Sprintf("%s%d", prefix, len(res)), log)...)
	}
	return res
}

// pairRounds builds the rows of goals (all of one pair) and measures
// them in rounds.
func pairRounds(ctx context.Context, cfg config, goals []perfGoal, prefix string, log io.Writer) []perfRound {
	return roundsOf(ctx, cfg, goals, [2]setupFunc{perfSetup(goals[0].a), perfSetup(goals[0].b)}, prefix, log)
}

// roundsOf builds goals' rows a and b (all goals of one pair) with
// setups and measures them in rounds.
func roundsOf(ctx context.Context, cfg config, goals []perfGoal, setups [2]setupFunc, prefix string, log io.Writer) []perfRound {
	res := make([]perfRound, len(goals))
	for i, g := range goals {
		res[i].goal = g
	}
	fail := func(err error) []perfRound {
		for i := range res {
			res[i].err = err
		}
		return res
	}
	a, b := goals[0].a, goals[0].b
	fmt.Fprintf(log, "rounds: %d interleaved rounds of %v per measurement, %s and %s\n", cfg.rounds, cfg.duration, a, b)
	var sides [2]*built
	for i, name := range []string{a, b} {
		bt, err := setups[i](ctx, cfg, fmt.Sprintf("%s%c", prefix, 'a'+i), log)
		if err != nil {
			return fail(fmt.Errorf("%s: %w", name, err))
		}
		defer bt.close()
		if err := waitReachable(ctx, bt.pair); err != nil {
			return fail(fmt.Errorf("%s: %w", name, bt.fail(err)))
		}
		sides[i] = bt
	}
	for round := 0; round < cfg.rounds && ctx.Err() == nil; round++ {
		for gi := range res {
			r := &res[gi]
			if r.err != nil {
				continue
			}
			order := []int{0, 1}
			if round%2 == 1 {
				order = []int{1, 0}
			}
			for _, side := range order {
				v, cpu, err := measureOnce(ctx, cfg, sides[side].pair, r.goal.measure, io.Discard)
				if err != nil {
					r.err = fmt.Errorf("round %d, %s: %w", round+1, []string{a, b}[side], sides[side].fail(err))
					break
				}
				if side == 0 {
					r.va, r.cpuA = append(r.va, v), append(r.cpuA, cpu)
				} else {
					r.vb, r.cpuB = append(r.vb, v), append(r.cpuB, cpu)
				}
			}
		}
	}
	return res
}

// printPerfRounds prints the goals' rounds: per goal the median ratio
// (or difference) with its range, how many rounds met the goal, each
// row's median value and the verdict.
func printPerfRounds(out io.Writer, cfg config, rounds []perfRound) {
	if len(rounds) == 0 {
		return
	}
	fmt.Fprintf(out, "\nissue 12 goals, interleaved: %d rounds of %v per row and measurement, the two rows back to back, order alternating; value = median of the rounds' ratios (throughput) or differences (request/response mean)\n\n",
		cfg.rounds, cfg.round)
	printRoundsTable(out, cfg, rounds)
}

// printRoundsTable prints the table of printPerfRounds, without its title.
func printRoundsTable(out io.Writer, cfg config, rounds []perfRound) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "goal\tmeasure\tvalue (median)\tmin - max\trounds meeting\ta (median)\tb (median)\tCPU s/GB a\tCPU s/GB b\tgoal\t")
	var failed []string
	for _, r := range rounds {
		g := r.goal
		name := g.a + " / " + g.b
		what, unit, goal := "1 stream", "Gbit/s", fmt.Sprintf(">= %.1f", g.goal)
		switch g.measure {
		case measureStreams:
			what = fmt.Sprintf("%d streams", cfg.streams)
		case measureRRMean:
			what, unit, goal = "RR mean", "us", fmt.Sprintf("<= +%.0f us", g.goal)
		}
		s := r.scores()
		if r.err != nil || len(s) == 0 {
			fmt.Fprintf(tw, "%s\t%s\tfailed (below)\t\t\t\t\t\t\t%s\t\n", name, what, goal)
			failed = append(failed, fmt.Sprintf("%s %s: %v", name, what, r.err))
			continue
		}
		n := 0
		for _, v := range s {
			if g.met(v) {
				n++
			}
		}
		meeting := fmt.Sprintf("%d of %d", n, len(s))
		if g.goal == 0 {
			meeting = "-"
		}
		verdict := goal + ": NOT met"
		switch {
		case g.goal == 0:
			verdict = "(context)"
		case g.met(median(s)):
			verdict = goal + ": met"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s - %s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name, what,
			fmtScore(g, median(s)), fmtScore(g, s[0]), fmtScore(g, s[len(s)-1]), meeting,
			fmtValue(unit, medianOf(r.va)), fmtValue(unit, medianOf(r.vb)),
			fmtCPUPerGB(medianOf(r.cpuA)), fmtCPUPerGB(medianOf(r.cpuB)), verdict)
	}
	tw.Flush()
	if len(failed) > 0 {
		fmt.Fprintf(out, "\n%s\n", strings.Join(failed, "\n"))
	}
}

// fmtScore formats a round's ratio or latency difference.
func fmtScore(g perfGoal, v float64) string {
	if g.measure == measureRRMean {
		return fmt.Sprintf("%+.0f us", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// fmtValue formats a row's median value in unit.
func fmtValue(unit string, v float64) string {
	if unit == "us" {
		return fmt.Sprintf("%.1f us", v)
	}
	return fmt.Sprintf("%.2f Gbit/s", v/1e9)
}
