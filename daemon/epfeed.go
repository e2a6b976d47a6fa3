package daemon

import (
	"slices"
	"sort"
	"strings"

	"github.com/vxmesh/vxmesh/cluster"
)

// epFeed is clusterEndpoints' copy of the endpoints table, kept with
// cluster.Changes: a change decodes only the entries written since the
// last read and patches the sorted list, instead of listing, copying and
// sorting the whole table. It also logs the IDs of the records it changed,
// so that the endpoint set re-judges only those (since). Guarded by
// epDecodeCache.mu.
type epFeed struct {
	cursor uint64      // of cluster.Changes
	keys   []string    // the table keys of out, sorted
	out    []*epRecord // the valid records, by key; replaced, never changed (nor the records: a change copies 8 bytes per record)
	rev    uint64      // counts the changes of out
	log    []epChange  // each change of out after floor, by rev
	floor  uint64
}

// epChange is one entry of epFeed's log: the record id was added, changed
// or removed at rev.
type epChange struct {
	rev uint64
	id  epID
}

// epDelta is what changed in the valid endpoint records since a feed
// revision: the records added or changed (their current version) and the
// ids of those removed or no longer valid.
type epDelta struct {
	live []*epRecord
	gone []epID
}

// minEpLog is the log length below which epFeed never drops its log.
const minEpLog = 64

// apply brings the feed up to a cluster.Changes answer; decode returns an
// entry's record and whether it is valid. A full answer (removed == nil)
// replaces the list.
func (f *epFeed) apply(live []cluster.Entry, removed []string, next uint64, decode func(cluster.Entry) (epRecord, bool)) {
	f.cursor = next
	if removed == nil {
		f.keys, f.out = make([]string, 0, len(live)), make([]*epRecord, 0, len(live))
		for _, e := range live {
			if rec, ok := decode(e); ok {
				f.keys, f.out = append(f.keys, e.Key), append(f.out, &rec)
			}
		}
		f.rev++
		f.log, f.floor = nil, f.rev
		return
	}
	if len(live) == 0 && len(removed) == 0 {
		return
	}
	type change struct {
		key string
		rec epRecord
		ok  bool
	}
	chs := make([]change, 0, len(live)+len(removed))
	for _, e := range live {
		rec, ok := decode(e)
		chs = append(chs, change{e.Key, rec, ok})
	}
	for _, k := range removed {
		chs = append(chs, change{key: k})
	}
	slices.SortFunc(chs, func(a, b change) int { return strings.Compare(a.key, b.key) })
	keys := make([]string, 0, len(f.keys)+len(live))
	out := make([]*epRecord, 0, len(f.keys)+len(live))
	i := 0
	for _, ch := range chs {
		j := i + sort.SearchStrings(f.keys[i:], ch.key)
		keys, out = append(keys, f.keys[i:j]...), append(out, f.out[i:j]...)
		i = j
		had := i < len(f.keys) && f.keys[i] == ch.key
		if had {
			f.note(idOf(*f.out[i]))
			i++
		}
		if ch.ok {
			keys, out = append(keys, ch.key), append(out, &ch.rec)
			if !had {
				f.note(idOf(ch.rec))
			}
		}
	}
	f.keys, f.out = append(keys, f.keys[i:]...), append(out, f.out[i:]...)
	if len(f.log) > max(2*len(f.out), minEpLog) {
		f.log, f.floor = nil, f.rev // older revisions diff the whole list
	}
}

// note logs a change of record id.
func (f *epFeed) note(id epID) {
	f.rev++
	f.log = append(f.log, epChange{f.rev, id})
}

// since returns what changed after revision rev, or nil when the log no
// longer reaches back to it (the caller diffs the whole list).
func (f *epFeed) since(rev uint64) *epDelta {
	if rev < f.floor || rev > f.rev {
		return nil
	}
	i := sort.Search(len(f.log), func(i int) bool { return f.log[i].rev > rev })
	d := &epDelta{}
	seen := make(map[epID]bool, len(f.log)-i)
	for _, ch := range f.log[i:] {
		if seen[ch.id] {
			continue
		}
		seen[ch.id] = true
		key := epKey(ch.id.node, ch.id.network, ch.id.name)
		if j, ok := slices.BinarySearch(f.keys, key); ok {
			d.live = append(d.live, f.out[j])
		} else {
			d.gone = append(d.gone, ch.id)
		}
	}
	return d
}

// readLocked brings the feed up to the cluster's endpoints table, noting
// each invalid entry written since the last read as refused; c.mu is held.
func (c *epDecodeCache) readLocked(cl *cluster.Cluster, refuse func(cluster.Entry, error)) {
	live, removed, next := cl.Changes(tblEndpoints, c.feed.cursor)
	c.feed.apply(live, removed, next, func(e cluster.Entry) (epRecord, bool) {
		rec, err := decodeEndpoint(e)
		c.decodes++
		if err != nil {
			refuse(e, err)
			return rec, false
		}
		return rec, true
	})
}
