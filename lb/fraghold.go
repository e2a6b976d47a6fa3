package lb

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/vxmesh/vxmesh/packet"
)

// DefaultFragHeld is how many fragments a Conntrack holds by default
// while their datagram's first fragment has not come (see Hold).
const DefaultFragHeld = 64

// heldFrag is a later fragment held until its first fragment comes.
type heldFrag struct {
	k       fragKey // as it came (namespace: network and direction)
	t       *Table  // whose counters
	buf     []byte  // a copy of the frame; grown, never shrunk
	expires int64   // 0: free
	ready   bool    // released: the first came; rk is the datagram as it left
	rk      fragKey // (namespace zero)
}

// fragHold holds later fragments that came before their first: a fixed
// set of slots whose buffers are allocated on first use and reused, so
// holding allocates only until every slot has held a fragment as large.
type fragHold struct {
	mu    sync.Mutex
	n     atomic.Int32 // slots in use: TakeHeld costs one load when none is
	held  atomic.Uint64
	slots []heldFrag
}

// hold copies the later fragment f (key k) into a slot for t until now +
// ttl; a full set of slots gives up its oldest fragment (counted on its
// table: ReasonFragTimeout if it expired, else ReasonFragment).
func (h *fragHold) hold(t *Table, k fragKey, f []byte, now, ttl int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var at *heldFrag
	for i := range h.slots {
		s := &h.slots[i]
		if s.expires == 0 {
			at = s
			break
		}
		if at == nil || s.expires < at.expires {
			at = s // the oldest (expired ones first: all wait as long)
		}
	}
	if at == nil {
		return
	}
	switch {
	case at.expires > now:
		at.t.count(ReasonFragment, Drop) // forgotten for room
		h.n.Add(-1)
	case at.expires != 0:
		at.t.count(ReasonFragTimeout, Drop)
		h.n.Add(-1)
	}
	at.k, at.t, at.buf, at.expires, at.ready = k, t, append(at.buf[:0], f...), now+ttl, false
	h.n.Add(1)
	h.held.Add(1)
}

// sweep gives up the fragments that have been held past their time
// (counted on their tables as ReasonFragTimeout), so that they are
// counted when they expire rather than when their slot is next needed.
// It costs one atomic load while nothing is held.
func (h *fragHold) sweep(now int64) {
	if h.n.Load() == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.slots {
		if s := &h.slots[i]; s.expires != 0 && s.expires <= now {
			s.t.count(ReasonFragTimeout, Drop)
			s.expires = 0
			h.n.Add(-1)
		}
	}
}

// discard gives up the fragments held for datagram k of t, whose first
// fragment was refused for reason r: each is counted under r.
func (h *fragHold) discard(t *Table, k fragKey, r Reason) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.slots {
		if s := &h.slots[i]; s.expires != 0 && !s.ready && s.t == t && s.k == k {
			t.count(r, Drop)
			s.expires = 0
			h.n.Add(-1)
		}
	}
}

// release readies the fragments held for datagram k of t: rewritten from
// its first fragment's FragTable entry (accounted there), or unchanged if
// the first was no translated flow's (pass). They leave through TakeHeld.
func (h *fragHold) release(t *Table, k fragKey, pass bool, now int64) {
	if h.n.Load() == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.slots {
		s := &h.slots[i]
		if s.expires == 0 || s.ready || s.t != t || s.k != k {
			continue
		}
		if s.expires <= now {
			t.count(ReasonFragTimeout, Drop)
			s.expires = 0
			h.n.Add(-1)
			continue
		}
		f := s.buf
		ip := packet.IPv4(f[offIP:])
		if !pass {
			hit := t.ct.frags.recall(k.ns, ip[:ip.TotalLen()], now)
			if !hit.ok {
				continue
			}
			dir := k.ns & 1
			rewriteLater(f, dir, hit.v)
			if dir == dirFwd {
				countFrag(t.snap.Load().get(k.dst), hit.be, len(f))
			} else {
				countFrag(t.snap.Load().get(hit.v.Addr), hit.be, len(f))
			}
		}
		s.ready = true
		s.rk = fragKey{id: k.id, proto: k.proto, src: [4]byte(f[offIPSrc:]), dst: [4]byte(f[offIPDst:])}
	}
}

// take copies a ready fragment of t's datagram rk into dst and frees its
// slot; it returns the length, 0 if there is none, or the negative length
// if dst is too short.
func (h *fragHold) take(t *Table, dst []byte, rk fragKey) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range h.slots {
		s := &h.slots[i]
		if s.expires == 0 || !s.ready || s.t != t || s.rk != rk {
			continue
		}
		if len(dst) < len(s.buf) {
			return -len(s.buf)
		}
		s.expires = 0
		h.n.Add(-1)
		return copy(dst, s.buf)
	}
	return 0
}

// TakeHeld writes into dst a fragment the balancer held (Verdict Hold)
// that is ready to leave because frame, a first fragment that Translate
// or Untranslate just handled (Forward or Pass), is its datagram's first
// fragment; the held fragment was rewritten as frame was. It returns the
// length written, 0 if there is none (more may follow: call it until 0),
// or, if dst is shorter than the fragment, minus the length needed
// (nothing taken). The fragment has no offload metadata. It costs one
// atomic load while nothing is held.
func (t *Table) TakeHeld(dst, frame []byte) int {
	if t.ct.hold.n.Load() == 0 {
		return 0
	}
	ip, ok := fragIP(frame)
	if !ok || FragOf(ip) != First {
		return 0
	}
	rk := fragKey{id: binary.BigEndian.Uint16(ip[4:6]), proto: ip.Protocol(), src: [4]byte(ip[12:16]), dst: [4]byte(ip[16:20])}
	return t.ct.hold.take(t, dst, rk)
}
