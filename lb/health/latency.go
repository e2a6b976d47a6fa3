package health

import "time"

// LatencyBounds are the upper bounds of the check duration histogram
// (Prober.Latencies); a last bucket counts the slower checks.
var LatencyBounds = [...]time.Duration{
	time.Millisecond, 5 * time.Millisecond, 25 * time.Millisecond, 100 * time.Millisecond,
	500 * time.Millisecond, time.Second,
}

// Latency is a histogram of check durations.
type Latency struct {
	Count uint64
	Sum   time.Duration
	Max   time.Duration
	// Buckets[i] counts the checks that took up to LatencyBounds[i]; the
	// last bucket, one more than the bounds, counts the slower ones.
	Buckets []uint64
}

// latency is a group's histogram, guarded by Prober.mu.
type latency struct {
	count    uint64
	sum, max time.Duration
	buckets  [len(LatencyBounds) + 1]uint64
}

func (l *latency) observe(d time.Duration) {
	l.count++
	l.sum += d
	l.max = max(l.max, d)
	i := 0
	for i < len(LatencyBounds) && d > LatencyBounds[i] {
		i++
	}
	l.buckets[i]++
}

// Latencies returns the check duration histogram of every group
// (Target.Group) that has a target; a group's histogram starts afresh
// when it had none for a while (its targets were all removed).
func (p *Prober) Latencies() map[string]Latency {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]Latency, len(p.groups))
	for g, l := range p.groups {
		out[g] = Latency{Count: l.count, Sum: l.sum, Max: l.max, Buckets: append([]uint64(nil), l.buckets[:]...)}
	}
	return out
}

// observeLocked adds a check of t that took d to its group's histogram.
// p.mu is held.
func (p *Prober) observeLocked(t *target, d time.Duration) {
	if t.Group == "" {
		return
	}
	l := p.groups[t.Group]
	if l == nil {
		l = &latency{}
		p.groups[t.Group] = l
	}
	l.observe(d)
}

// pruneGroupsLocked forgets the histograms of groups without a target.
// p.mu is held.
func (p *Prober) pruneGroupsLocked() {
	for g := range p.groups {
		used := false
		for _, t := range p.targets {
			if t.Group == g {
				used = true
				break
			}
		}
		if !used {
			delete(p.groups, g)
		}
	}
}
