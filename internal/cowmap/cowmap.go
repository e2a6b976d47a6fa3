// Package cowmap is a map for immutable snapshots that change a few keys
// at a time: its entries are spread over a fixed number of shards, and a
// new version (Writer) shares the shards of the one it is made from,
// copying a shard only at its first write. A change of one key in a map
// of n keys then copies about n/Shards entries, not n, while every
// published version stays unchanged for its readers.
package cowmap

import (
	"iter"
	"maps"
	"net/netip"
)

// Shards is the number of shards of a Map.
const Shards = 64

// Hasher picks the shard of a key. Its zero value is used.
type Hasher[K any] interface {
	Shard(K) int
}

// Strings shards string keys (FNV-1a).
type Strings struct{}

// Shard returns the shard of s.
func (Strings) Shard(s string) int {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return int(h % Shards)
}

// Addrs shards netip.Addr keys (FNV-1a of the 16-byte form).
type Addrs struct{}

// Shard returns the shard of a.
func (Addrs) Shard(a netip.Addr) int {
	b := a.As16()
	h := uint32(2166136261)
	for _, c := range b {
		h ^= uint32(c)
		h *= 16777619
	}
	return int(h % Shards)
}

// Map is one version of a sharded map. A published Map is never changed:
// changes are made on a Writer's copy. The zero value and nil are empty
// maps. Two Maps with the same entries made by any sequence of Writer
// calls are equal to reflect.DeepEqual (an emptied shard is dropped).
type Map[K comparable, V any, H Hasher[K]] struct {
	shards [Shards]map[K]V
	n      int
}

// Get returns the value of k.
func (m *Map[K, V, H]) Get(k K) (V, bool) {
	if m == nil {
		var zero V
		return zero, false
	}
	var h H
	v, ok := m.shards[h.Shard(k)][k]
	return v, ok
}

// Len returns the number of entries.
func (m *Map[K, V, H]) Len() int {
	if m == nil {
		return 0
	}
	return m.n
}

// All iterates over the entries, in no particular order.
func (m *Map[K, V, H]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		if m == nil {
			return
		}
		for _, s := range m.shards {
			for k, v := range s {
				if !yield(k, v) {
					return
				}
			}
		}
	}
}

// Writer makes a new version of a Map.
type Writer[K comparable, V any, H Hasher[K]] struct {
	m     *Map[K, V, H]
	owned [Shards]bool
}

// NewWriter returns a writer of a copy of old (nil: an empty map). The
// copy shares old's shards until they are written.
func NewWriter[K comparable, V any, H Hasher[K]](old *Map[K, V, H]) *Writer[K, V, H] {
	m := &Map[K, V, H]{}
	if old != nil {
		*m = *old
	}
	return &Writer[K, V, H]{m: m}
}

// Map returns the version being written; it may be read (not written by
// others) meanwhile, and is published once the writer is no longer used.
func (w *Writer[K, V, H]) Map() *Map[K, V, H] { return w.m }

// own makes shard i the writer's own copy.
func (w *Writer[K, V, H]) own(i int) {
	if w.owned[i] {
		return
	}
	w.owned[i] = true
	if s := w.m.shards[i]; s != nil {
		w.m.shards[i] = maps.Clone(s)
	} else {
		w.m.shards[i] = map[K]V{}
	}
}

// Set sets the value of k.
func (w *Writer[K, V, H]) Set(k K, v V) {
	var h H
	i := h.Shard(k)
	w.own(i)
	if _, ok := w.m.shards[i][k]; !ok {
		w.m.n++
	}
	w.m.shards[i][k] = v
}

// Delete removes k.
func (w *Writer[K, V, H]) Delete(k K) {
	var h H
	i := h.Shard(k)
	if _, ok := w.m.shards[i][k]; !ok {
		return
	}
	w.own(i)
	delete(w.m.shards[i], k)
	w.m.n--
	if len(w.m.shards[i]) == 0 {
		// A later write makes a new shard.
		w.m.shards[i], w.owned[i] = nil, false
	}
}
