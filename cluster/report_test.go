package cluster

import (
	"fmt"
	"slices"
	"strings"
)

// tableReport describes, for a failure message, what each node holds of
// table against want (the keys every node should hold): how many entries,
// which of want it lacks, its Lamport clock and digest, the members as it
// sees them, the owners whose entries it expired (gone), the burst and
// catch-up state and its counters. It is what an investigator of a node
// that did not converge needs first: whether the node refused the owner
// (gone), never heard of the entry, or heard and lost it.
func tableReport(cs []*Cluster, table string, want []string) string {
	var b strings.Builder
	for _, c := range cs {
		have := map[string]bool{}
		for _, e := range c.List(table) {
			have[e.Key] = true
		}
		var lack []string
		for _, k := range want {
			if !have[k] {
				lack = append(lack, k)
			}
		}
		c.mu.Lock()
		var members, gone, versions []string
		for _, mi := range c.members {
			st := mi.state
			if mi.suspect {
				st += "(suspect)"
			}
			members = append(members, mi.name+"="+st)
		}
		for o := range c.gone {
			gone = append(gone, o)
		}
		for _, k := range lack {
			if r := c.entries[tkey{table, k}]; r != nil {
				versions = append(versions, fmt.Sprintf("%s v%d by %s deleted=%v expired=%v", k, r.Version, r.Owner, r.Deleted, r.expired))
			}
		}
		clock, digest := c.clock, c.digestLocked()
		c.mu.Unlock()
		slices.Sort(members)
		slices.Sort(gone)
		fmt.Fprintf(&b, "\n  %s: %d entries, lacks %v (records of those: %v); clock %d, digest %x; members %v; gone %v; queue %d, burst %v, catch-up running %v; counters %v",
			c.LocalName(), len(have), lack, versions, clock, digest, members, gone,
			c.queue.NumQueued(), c.burst.Load(), c.catchUpOn.Load(), c.Drops())
	}
	return b.String()
}
