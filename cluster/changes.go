package cluster

import (
	"slices"
	"sort"
	"strings"
)

// tableIndex holds one table's records (the same pointers as
// Cluster.entries) and its change log: one (seq, key) per local change of a
// record, in seq order. The log holds every change after floor.
type tableIndex struct {
	recs  map[string]*record
	log   []change
	floor uint64
	// rev is the value of Cluster.revs at the table's last change (a
	// record stored, changed in place or dropped): a derivation of the
	// table made at rev is still current while rev is.
	rev uint64
}

// change is one entry of a table's change log.
type change struct {
	seq uint64
	key string
}

// minLogCompact is the log length below which a table's log is never
// compacted.
const minLogCompact = 64

// indexLocked returns the index of table, creating it; c.mu must be held.
func (c *Cluster) indexLocked(table string) *tableIndex {
	t := c.byTable[table]
	if t == nil {
		t = &tableIndex{recs: map[string]*record{}}
		c.byTable[table] = t
	}
	return t
}

// recsLocked returns the records of table by key (nil when it has none);
// c.mu must be held.
func (c *Cluster) recsLocked(table string) map[string]*record {
	if t := c.byTable[table]; t != nil {
		return t.recs
	}
	return nil
}

// setLocked stores r under k and logs the change; c.mu must be held. Every
// write to c.entries goes through setLocked, dropLocked or touchLocked.
func (c *Cluster) setLocked(k tkey, r *record) {
	c.entries[k] = r
	t := c.indexLocked(k.table)
	t.recs[k.key] = r
	c.logLocked(t, k.key)
	if k.table == ipamTable {
		c.claims.update(k.key, r)
	}
}

// dropLocked removes k, a reaped or forgotten tombstone. It is not
// logged again: its delete or expiry was, and Changes reports a logged key
// that is no longer held as removed. (A log entry for it would only move
// the floor, at the next compaction, past cursors that saw the delete.)
func (c *Cluster) dropLocked(k tkey) {
	delete(c.entries, k)
	if t := c.byTable[k.table]; t != nil {
		delete(t.recs, k.key)
		c.revs++
		t.rev = c.revs
	}
	if k.table == ipamTable {
		c.claims.update(k.key, nil)
	}
}

// revLocked returns table's revision (tableIndex.rev; 0 when it has no
// index yet); c.mu must be held.
func (c *Cluster) revLocked(table string) uint64 {
	if t := c.byTable[table]; t != nil {
		return t.rev
	}
	return 0
}

// touchLocked logs a change made in place to the record of k.
func (c *Cluster) touchLocked(k tkey) {
	c.logLocked(c.indexLocked(k.table), k.key)
	if k.table == ipamTable {
		c.claims.update(k.key, c.entries[k])
	}
}

// logLocked appends key to t's change log, compacting the log when it
// holds more than twice as many changes as the table has records.
func (c *Cluster) logLocked(t *tableIndex, key string) {
	c.revs++
	t.rev = c.revs
	c.seq++
	t.log = append(t.log, change{c.seq, key})
	if len(t.log) > max(2*len(t.recs), minLogCompact) {
		t.compact()
	}
}

// compact keeps only the last change of each key still in the table. The
// changes of keys no longer held (reaped or forgotten) are dropped and the
// floor moves past them: an older cursor gets the whole table.
func (t *tableIndex) compact() {
	last := make(map[string]uint64, len(t.recs))
	for _, ch := range t.log {
		last[ch.key] = ch.seq
	}
	out := t.log[:0:0]
	for _, ch := range t.log {
		if last[ch.key] != ch.seq {
			continue
		}
		if t.recs[ch.key] == nil {
			t.floor = max(t.floor, ch.seq)
			continue
		}
		out = append(out, ch)
	}
	t.log = out
}

// Changes returns what changed in table since cursor (0: everything):
// the live entries written since, sorted by key, the keys removed since
// (deleted, expired or reaped) sorted, and the cursor for the next call.
//
// Its cost is in the number of changes since cursor, not the size of the
// table. When cursor is 0, or older than what the table's change log still
// holds (the log is compacted when it grows past twice the table), or not
// a cursor of this Cluster, the answer is a full resync: live holds every
// live entry of the table, removed is nil, and the caller must replace its
// view with live rather than apply it. An incremental answer always has a
// non-nil removed (empty when nothing was removed), so removed == nil tells
// the two apart. removed may name keys the caller never saw live (written
// and removed since cursor), and live may hold an entry written again with
// the same value.
func (c *Cluster) Changes(table string, cursor uint64) (live []Entry, removed []string, next uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next = c.seq
	t := c.byTable[table]
	if t == nil {
		if cursor == 0 || cursor > c.seq {
			return nil, nil, next
		}
		// A table never written: nothing changed since any cursor.
		return nil, []string{}, next
	}
	if cursor == 0 || cursor < t.floor || cursor > c.seq {
		live = t.liveLocked()
		sortEntries(live)
		return live, nil, next
	}
	i := sort.Search(len(t.log), func(i int) bool { return t.log[i].seq > cursor })
	seen := make(map[string]bool, len(t.log)-i)
	removed = []string{}
	for _, ch := range t.log[i:] {
		if seen[ch.key] {
			continue
		}
		seen[ch.key] = true
		if r := t.recs[ch.key]; r != nil && !r.Deleted {
			live = append(live, r.Entry.clone())
		} else {
			removed = append(removed, ch.key)
		}
	}
	sortEntries(live)
	slices.Sort(removed)
	return live, removed, next
}

// liveLocked returns copies of the live entries of t, unsorted.
func (t *tableIndex) liveLocked() []Entry {
	var out []Entry
	for _, r := range t.recs {
		if !r.Deleted {
			out = append(out, r.Entry.clone())
		}
	}
	return out
}

// sortEntries sorts entries of one table by key.
func sortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int { return strings.Compare(a.Key, b.Key) })
}
