package esp

// The anti-replay window follows RFC 6479: a ring of 64-bit words indexed
// by the low bits of the sequence number. Moving the window forward clears
// only the words it enters; nothing is shifted.
const (
	windowWords = 256              // ring length in words, a power of two
	windowBits  = windowWords * 64 // bits in the ring
	windowMask  = windowBits - 1   // bit index of a sequence number in the ring
	wordMask    = windowWords - 1  // word index in the ring

	// WindowSize is how many sequence numbers, up to and including the
	// highest one received, the anti-replay window tracks: a packet whose
	// sequence number is WindowSize or more below the highest is refused
	// as a replay. It is also the W of extended sequence number inference
	// (RFC 4303 Appendix A). One word of the ring is kept for the partly
	// filled word at the top, as RFC 6479 does. 16320: several
	// goroutines seal to one peer at once, each holding a run of sealed
	// datagrams, so valid packets arrive this far out of order (see
	// tunnel's espMaxSealers); the ring costs 2 KiB per inbound SA.
	WindowSize = windowBits - 64
)

// The window must hold at least 8192 packets; does not compile otherwise.
const _ = uint(WindowSize - 8192)

// window is the replay state of one inbound SA. It is not safe for
// concurrent use; Inbound guards it with a mutex.
type window struct {
	top  uint64 // highest authenticated sequence number, 0 before the first
	bits [windowWords]uint64
}

// check reports whether seq is new: not zero, not older than the window and
// not marked in it. It does not change the window.
func (w *window) check(seq uint64) bool {
	if seq == 0 {
		return false
	}
	if seq > w.top {
		return true
	}
	if w.top-seq >= WindowSize {
		return false
	}
	b := seq & windowMask
	return w.bits[b>>6]&(1<<(b&63)) == 0
}

// update marks seq as received, moving the window forward if seq is above
// it. It reports false, and changes nothing, if check(seq) is false: a
// duplicate that passed check concurrently is caught here.
func (w *window) update(seq uint64) bool {
	if !w.check(seq) {
		return false
	}
	if seq > w.top {
		cur, next := w.top>>6, seq>>6
		n := next - cur
		if n > windowWords {
			n = windowWords
		}
		for i := uint64(1); i <= n; i++ {
			w.bits[(cur+i)&wordMask] = 0
		}
		w.top = seq
	}
	b := seq & windowMask
	w.bits[b>>6] |= 1 << (b & 63)
	return true
}

// infer returns the 64-bit sequence number whose low 32 bits are lo, as RFC
// 4303 Appendix A2.2 infers the high bits from the window: the candidate in
// the window or ahead of it, nearest to the top. It reports false when the
// result would fall below 1 or above 2^64-1.
func (w *window) infer(lo uint32) (uint64, bool) {
	tl, th := uint32(w.top), uint32(w.top>>32)
	bottom := tl - (WindowSize - 1) // wraps when the window spans two subspaces
	var hi uint32
	if tl >= WindowSize-1 {
		// Case A: the window lies within one 2^32 subspace.
		hi = th
		if lo < bottom {
			if th == ^uint32(0) {
				return 0, false
			}
			hi = th + 1
		}
	} else {
		// Case B: the window's bottom lies in the previous subspace.
		hi = th
		if lo >= bottom {
			if th == 0 {
				return 0, false
			}
			hi = th - 1
		}
	}
	return uint64(hi)<<32 | uint64(lo), true
}
