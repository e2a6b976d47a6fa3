// Package aging is the table of MAC addresses learned from traffic that
// the switch (MAC to port) and the tunnel (inner MAC to VTEP) keep: each
// entry remembers when its MAC was last seen and lives for the table's
// aging time after that. Lookups and refreshes are lock-free and do not
// allocate; learning a new MAC is O(1) (amortised: the table grows by
// doubling), never a copy of the whole table.
package aging

import (
	"hash/maphash"
	"sync"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/packet"
)

// Entry is one learned MAC. Its value never changes (a MAC that moves gets
// a new entry); its last-seen time does.
type Entry[V comparable] struct {
	MAC   packet.MAC
	Value V
	seen  atomic.Int64
}

// Seen returns the clock reading the MAC was last seen at.
func (e *Entry[V]) Seen() int64 { return e.seen.Load() }

// Touch records that the MAC was seen at now.
func (e *Entry[V]) Touch(now int64) {
	if e.seen.Load() != now {
		e.seen.Store(now)
	}
}

// Table maps MACs to the values they were learned with. Times are
// readings of the owner's clock in nanoseconds. Its methods are safe for
// concurrent use: readers (Lookup, Range, Entry.Touch) take no lock,
// writers (Learn, Filter, Sweep) serialise on a mutex.
type Table[V comparable] struct {
	aging int64
	max   int
	seed  maphash.Seed
	tomb  *Entry[V] // marks a removed entry's slot, so that probing goes on

	slots atomic.Pointer[[]atomic.Pointer[Entry[V]]] // open addressing, linear probing; len a power of two

	mu   sync.Mutex // serialises writers
	live int        // entries in slots
	used int        // non-nil slots: entries and tombstones
}

// New returns an empty table whose entries live for aging nanoseconds
// after they were last seen and that holds at most max entries.
func New[V comparable](aging int64, max int) *Table[V] {
	t := &Table[V]{aging: aging, max: max, seed: maphash.MakeSeed(), tomb: &Entry[V]{}}
	s := make([]atomic.Pointer[Entry[V]], 16)
	t.slots.Store(&s)
	return t
}

// Live reports whether e, last seen at e.Seen(), is still alive at now:
// the one expiry rule of every learned table.
func (t *Table[V]) Live(e *Entry[V], now int64) bool { return now-e.seen.Load() < t.aging }

func (t *Table[V]) hash(mac packet.MAC) uint64 { return maphash.Bytes(t.seed, mac[:]) }

// Lookup returns mac's entry, alive or not, or nil.
func (t *Table[V]) Lookup(mac packet.MAC) *Entry[V] {
	s := *t.slots.Load()
	mask := uint64(len(s) - 1)
	for i := t.hash(mac) & mask; ; i = (i + 1) & mask {
		e := s[i].Load()
		if e == nil {
			return nil
		}
		if e != t.tomb && e.MAC == mac {
			return e
		}
	}
}

// Learn records that mac was seen with value v at now: a known MAC with
// the same value is refreshed, one with another value (it moved) gets a
// new entry, and a new MAC is added unless the table holds max live
// entries (expired ones are swept first); it reports false then.
func (t *Table[V]) Learn(mac packet.MAC, v V, now int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := *t.slots.Load()
	mask := uint64(len(s) - 1)
	for i := t.hash(mac) & mask; ; i = (i + 1) & mask {
		e := s[i].Load()
		if e == nil {
			break
		}
		if e == t.tomb || e.MAC != mac {
			continue
		}
		if e.Value == v {
			e.Touch(now)
		} else {
			s[i].Store(t.entry(mac, v, now))
		}
		return true
	}
	if t.live >= t.max {
		t.sweepLocked(func(e *Entry[V]) bool { return t.Live(e, now) })
		if t.live >= t.max {
			return false
		}
	}
	t.insertLocked(t.entry(mac, v, now))
	return true
}

func (t *Table[V]) entry(mac packet.MAC, v V, now int64) *Entry[V] {
	e := &Entry[V]{MAC: mac, Value: v}
	e.seen.Store(now)
	return e
}

// insertLocked adds e, whose MAC is not in the table.
func (t *Table[V]) insertLocked(e *Entry[V]) {
	s := *t.slots.Load()
	mask := uint64(len(s) - 1)
	for i := t.hash(e.MAC) & mask; ; i = (i + 1) & mask {
		x := s[i].Load()
		if x == nil || x == t.tomb {
			if x == nil {
				t.used++
			}
			s[i].Store(e)
			t.live++
			break
		}
	}
	if t.used > len(s)*3/4 {
		t.resizeLocked()
	}
}

// resizeLocked rebuilds the slots without tombstones, with room for twice
// the live entries. Readers holding the old slots still find every entry.
func (t *Table[V]) resizeLocked() {
	old := *t.slots.Load()
	n := 16
	for n < 4*t.live {
		n *= 2
	}
	s := make([]atomic.Pointer[Entry[V]], n)
	mask := uint64(n - 1)
	for k := range old {
		e := old[k].Load()
		if e == nil || e == t.tomb {
			continue
		}
		i := t.hash(e.MAC) & mask
		for s[i].Load() != nil {
			i = (i + 1) & mask
		}
		s[i].Store(e)
	}
	t.used = t.live
	t.slots.Store(&s)
}

// Filter removes the entries for which keep is false.
func (t *Table[V]) Filter(keep func(e *Entry[V]) bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sweepLocked(keep)
}

// Sweep removes the entries that are no longer alive at now.
func (t *Table[V]) Sweep(now int64) {
	t.Filter(func(e *Entry[V]) bool { return t.Live(e, now) })
}

func (t *Table[V]) sweepLocked(keep func(e *Entry[V]) bool) {
	s := *t.slots.Load()
	for i := range s {
		if e := s[i].Load(); e != nil && e != t.tomb && !keep(e) {
			s[i].Store(t.tomb)
			t.live--
		}
	}
}

// Range calls fn for every entry, alive or not, in no particular order.
func (t *Table[V]) Range(fn func(e *Entry[V])) {
	s := *t.slots.Load()
	for i := range s {
		if e := s[i].Load(); e != nil && e != t.tomb {
			fn(e)
		}
	}
}

// Len returns the number of entries, alive or not.
func (t *Table[V]) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.live
}
