package main

// Interleaved rounds of the published-port section (-publish-rounds): on
// a machine whose other load comes and goes, one wrk run per row, a
// minute apart, compares two moments of that load as much as two front
// doors. Each goal comparison (a vxmesh front door against the HAProxy
// of the host its client enters) is measured again in short rounds, the
// two rows' wrk runs back to back, their order alternating (a b, b a, a b,
// ...), and the printed ratio is the median of the rounds' ratios, with
// their spread: a ratio within one window of the machine's load, each
// time.

import (
	"context"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"
)

// PubRounds is one goal comparison measured in rounds: row A's new
// connections per second against its anchor B's.
type PubRounds struct {
	A, B string
	// ConnsA and ConnsB are each round's conn/s (Connection: close);
	// CPUA and CPUB the CPU time per connection of the path: the
	// daemons' (h1 + h2) plus, for a proxy row, the proxy's.
	ConnsA, ConnsB []float64
	CPUA, CPUB     []time.Duration
	Err            error
}

// Ratios returns the rounds' ratios A / B, sorted (rounds where B made
// no connection are left out).
func (p PubRounds) Ratios() []float64 {
	var rs []float64
	for i := range min(len(p.ConnsA), len(p.ConnsB)) {
		if p.ConnsB[i] > 0 {
			rs = append(rs, p.ConnsA[i]/p.ConnsB[i])
		}
	}
	slices.Sort(rs)
	return rs
}

// publishAnchor is the row whose new conn/s row's goal is measured
// against: the HAProxy of the host row's client enters ("" for rows
// that are no vxmesh front door).
func publishAnchor(row string) string {
	switch row {
	case rowPubVxmesh, rowPubMeshLocal:
		return rowPubHAProxy
	case rowPubMeshRemote:
		return rowPubHAProxyRemote
	}
	return ""
}

// measureRounds measures each goal comparison of the rows that were
// measured without error in cfg.publishRounds rounds of cfg.publishRound
// each row.
func measureRounds(ctx context.Context, cfg config, rows []PublishRow, log io.Writer) []PubRounds {
	by := map[string]*PublishRow{}
	for i := range rows {
		if rows[i].Err == nil {
			by[rows[i].Name] = &rows[i]
		}
	}
	secs := fmt.Sprint(max(1, int(cfg.publishRound.Seconds())))
	var res []PubRounds
	for _, a := range []string{rowPubVxmesh, rowPubMeshLocal, rowPubMeshRemote} {
		ra, rb := by[a], by[publishAnchor(a)]
		if ra == nil || rb == nil {
			continue
		}
		pr := PubRounds{A: ra.Name, B: rb.Name}
		fmt.Fprintf(log, "publish: %d interleaved rounds of wrk -d %ss (Connection: close), %s and %s\n", cfg.publishRounds, secs, ra.Name, rb.Name)
		for i := 0; i < cfg.publishRounds && pr.Err == nil && ctx.Err() == nil; i++ {
			order := []*PublishRow{ra, rb}
			if i%2 == 1 {
				order = []*PublishRow{rb, ra}
			}
			for _, r := range order {
				wr, cpu, err := wrkCPU(ctx, cfg, r, secs, false)
				if err != nil {
					pr.Err = fmt.Errorf("round %d, %s: %w", i+1, r.Name, err)
					break
				}
				if r == ra {
					pr.ConnsA, pr.CPUA = append(pr.ConnsA, wr.RequestsPerSec), append(pr.CPUA, cpu.daemon+cpu.proxy)
				} else {
					pr.ConnsB, pr.CPUB = append(pr.ConnsB, wr.RequestsPerSec), append(pr.CPUB, cpu.daemon+cpu.proxy)
				}
			}
		}
		res = append(res, pr)
	}
	return res
}

// printRounds prints the interleaved comparisons: per pair the median
// ratio of the rounds with its range, how many rounds met the goal, and
// each row's median conn/s and CPU time per connection of its path.
func printRounds(out io.Writer, cfg config, rounds []PubRounds) {
	if len(rounds) == 0 {
		return
	}
	fmt.Fprintf(out, "\nnew conn/s, interleaved: %d rounds of wrk -d %ds per row, the two rows back to back, order alternating; ratio = median of the rounds' ratios (min - max); CPU/conn = daemons h1+h2 (+ HAProxy)\n\n",
		cfg.publishRounds, max(1, int(cfg.publishRound.Seconds())))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "new conn/s\tratio (median)\tmin - max\trounds > 1\tconn/s a\tconn/s b\tCPU/conn a\tCPU/conn b\tgoal\t")
	var failed []string
	for _, p := range rounds {
		name := fmt.Sprintf("%s / %s", p.A, p.B)
		rs := p.Ratios()
		if p.Err != nil || len(rs) == 0 {
			fmt.Fprintf(tw, "%s\tfailed (below)\t\t\t\t\t\t\t\t\n", name)
			failed = append(failed, fmt.Sprintf("%s: rounds failed: %v", name, p.Err))
			continue
		}
		above := 0
		for _, r := range rs {
			if r > 1 {
				above++
			}
		}
		m := median(rs)
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f - %.2f\t%d of %d\t%.0f\t%.0f\t%s\t%s\t> 1: %s\t\n", name, m, rs[0], rs[len(rs)-1], above, len(rs),
			medianOf(p.ConnsA), medianOf(p.ConnsB), fmtCPU(medianDur(p.CPUA)), fmtCPU(medianDur(p.CPUB)), metOrNot(m > 1))
	}
	tw.Flush()
	for _, f := range failed {
		fmt.Fprintln(out, f)
	}
}

// medianOf is the median of xs (0 if empty), xs left unsorted.
func medianOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return median(slices.Sorted(slices.Values(xs)))
}

// medianDur is the median of ds (0 if empty).
func medianDur(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(medianOf(xs))
}
