package lb

import (
	"math/rand/v2"
)

// MaglevSize is the size of a Maglev lookup table (a prime, as the Maglev
// paper requires).
const MaglevSize = 65537

// none is "no backend" for backend indexes.
const none = -1

// avoid is the set of backend indexes a pick stays away from if it can:
// a client that is a backend of the service, the backends that failed
// the connection attempt being moved, a backend that already has a
// connection from the client's port. It lives on the caller's stack.
type avoid struct {
	n int
	i [MaxRetries + 2]int32
}

// add puts backend index i in the set (none, a repeat, or past the
// set's size: nothing).
func (a *avoid) add(i int32) {
	if i != none && a.n < len(a.i) && !a.has(i) {
		a.i[a.n] = i
		a.n++
	}
}

// has reports whether backend index i is in the set.
func (a *avoid) has(i int32) bool {
	for _, j := range a.i[:a.n] {
		if j == i {
			return true
		}
	}
	return false
}

// usable reports whether b may get a new connection at now.
func (b *backend) usable(now int64) bool {
	return b.st.cfg.Load() == uint32(Active) && b.st.ejectedUntil.Load() <= now
}

// pick chooses a backend for a new flow k of c, avoiding the backends
// in av if it can. It returns
// none if c has no active backend. With peek it returns the backend the
// next new flow would get and moves no scheduler state (round-robin
// position, smooth weights); PowerOfTwo still samples at random.
func (c *service) pick(k *flowKey, now int64, av *avoid, peek bool) int32 {
	if len(c.active) == 0 {
		return none
	}
	var i int32
	switch c.sched {
	case WeightedRoundRobin:
		i = c.pickWRR(now, av, peek)
	case LeastConns:
		i = c.pickLC(now, av, peek)
	case PowerOfTwo:
		i = c.pickP2C(now, av, peek)
	case Maglev:
		i = c.pickMaglev(k, now, av)
	default:
		i = c.pickRR(now, av, peek)
	}
	if i != none {
		return i
	}
	return c.fallback(av, peek)
}

// next returns the round-robin position a pick starts at and, unless
// peek, advances it.
func (c *service) next(peek bool) uint64 {
	if peek {
		return c.st.rr.Load()
	}
	return c.st.rr.Add(1) - 1
}

// fallback is used when every active backend is ejected or avoided: an
// active backend not in av (ejection is only a hint), or the first one
// of av if it is active (a client that is the only other backend gets
// itself; a caller moving an attempt refuses any backend of av).
func (c *service) fallback(av *avoid, peek bool) int32 {
	n := len(c.active)
	start := int((c.next(peek) + 1) % uint64(n))
	for j := range n {
		if i := c.active[(start+j)%n]; !av.has(i) && c.backends[i].st.cfg.Load() == uint32(Active) {
			return i
		}
	}
	if av.n > 0 && c.backends[av.i[0]].st.cfg.Load() == uint32(Active) {
		return av.i[0]
	}
	return none
}

func (c *service) pickRR(now int64, av *avoid, peek bool) int32 {
	n := uint64(len(c.active))
	start := c.next(peek)
	for j := range n {
		i := c.active[(start+j)%n]
		if !av.has(i) && c.backends[i].usable(now) {
			return i
		}
	}
	return none
}

// pickWRR is smooth weighted round robin: every usable backend's current
// weight grows by its weight, the largest wins and loses the total. With
// peek the weights are computed but not stored.
func (c *service) pickWRR(now int64, av *avoid, peek bool) int32 {
	c.st.mu.Lock()
	defer c.st.mu.Unlock()
	best, bestCW, total := int32(none), int64(0), int64(0)
	for _, i := range c.active {
		b := &c.backends[i]
		if av.has(i) || !b.usable(now) {
			continue
		}
		cw := b.st.cw + int64(b.weight)
		if !peek {
			b.st.cw = cw
		}
		total += int64(b.weight)
		if best == none || cw > bestCW {
			best, bestCW = i, cw
		}
	}
	if best != none && !peek {
		c.backends[best].st.cw -= total
	}
	return best
}

// pickLC takes the usable backend with the fewest active connections;
// ties go round robin so that an idle service still spreads.
func (c *service) pickLC(now int64, av *avoid, peek bool) int32 {
	n := uint64(len(c.active))
	start := c.next(peek)
	best, min := int32(none), int64(0)
	for j := range n {
		i := c.active[(start+j)%n]
		b := &c.backends[i]
		if av.has(i) || !b.usable(now) {
			continue
		}
		if a := b.st.active.Load(); best == none || a < min {
			best, min = i, a
		}
	}
	return best
}

// pickP2C samples two distinct active backends and takes the one with
// fewer active connections; if neither is usable it falls back to pickLC.
func (c *service) pickP2C(now int64, av *avoid, peek bool) int32 {
	n := len(c.active)
	if n == 1 {
		return c.pickLC(now, av, peek)
	}
	x := rand.IntN(n)
	y := rand.IntN(n - 1)
	if y >= x {
		y++
	}
	a, b := c.active[x], c.active[y]
	okA := !av.has(a) && c.backends[a].usable(now)
	okB := !av.has(b) && c.backends[b].usable(now)
	switch {
	case okA && okB:
		if c.backends[b].st.active.Load() < c.backends[a].st.active.Load() {
			return b
		}
		return a
	case okA:
		return a
	case okB:
		return b
	}
	return c.pickLC(now, av, peek)
}

// pickMaglev looks the flow up in the Maglev table; if that backend is not
// usable it probes the following table slots, which is the same on every
// host that sees the same backends unusable.
func (c *service) pickMaglev(k *flowKey, now int64, av *avoid) int32 {
	h := k.maglevHash()
	for j := range uint64(64) {
		i := int32(c.maglev[(h+j)%MaglevSize])
		if !av.has(i) && c.backends[i].usable(now) {
			return i
		}
	}
	return none
}

// buildMaglev fills a Maglev lookup table (Eisenbud et al., NSDI 2016,
// §3.4) with the backends at indexes idx, each taking as many slots per
// round as its weight (so shares follow weights). Each backend's
// permutation comes from a fixed hash of its address, and backends are
// visited in address order, so the table depends only on the backend set
// and weights.
func buildMaglev(bs []backend, idx []int32) []uint16 {
	n := len(idx)
	if n == 0 {
		return nil
	}
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n)
	for j, i := range idx {
		offset[j] = fnv64(bs[i].ip[:], 0x9e3779b97f4a7c15) % MaglevSize
		skip[j] = fnv64(bs[i].ip[:], 0xc2b2ae3d27d4eb4f)%(MaglevSize-1) + 1
	}
	const empty = 0xffffffff
	tab := make([]uint32, MaglevSize)
	for k := range tab {
		tab[k] = empty
	}
	filled := 0
	for {
		for j, i := range idx {
			for range bs[i].weight { // a weight-w backend takes w slots a round
				c := (offset[j] + next[j]*skip[j]) % MaglevSize
				for tab[c] != empty {
					next[j]++
					c = (offset[j] + next[j]*skip[j]) % MaglevSize
				}
				tab[c] = uint32(i)
				next[j]++
				if filled++; filled == MaglevSize {
					out := make([]uint16, MaglevSize)
					for k, v := range tab {
						out[k] = uint16(v)
					}
					return out
				}
			}
		}
	}
}

// fnv64 is FNV-1a over b, started from basis: a fixed (host-independent)
// hash for Maglev permutations.
func fnv64(b []byte, basis uint64) uint64 {
	h := basis
	for _, c := range b {
		h ^= uint64(c)
		h *= 0x100000001b3
	}
	return h
}

// mix64 is a fixed 64-bit finalizer (splitmix64).
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
