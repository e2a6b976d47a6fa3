package packet

import "golang.org/x/sys/cpu"

// hasSumVector reports whether this CPU (and its OS) runs sumVector: AVX2,
// which x/sys/cpu reports only when the OS saves the ymm state.
var hasSumVector = cpu.X86.HasAVX2

// sumVector returns the sum of b's little-endian 32-bit words as a plain
// integer, 128 bytes an iteration in eight ymm accumulators. len(b) must
// be a positive multiple of 128 and at most 1<<30, so nothing overflows.
//
//go:noescape
func sumVector(b []byte) uint64
