// Package hashmix holds the 64-bit mixing function the packet path's
// hash tables (the routing mesh's ingress-return table, the published-port
// NAT) spread their keys with.
package hashmix

// Mix is MurmurHash3's 64-bit finalizer (fmix64): every input bit
// affects every output bit, so a table can take its shard from the low
// bits and its bucket from the high ones. Keys are seeded by the caller
// (xor a random seed in first) so that flows cannot be chosen to collide.
func Mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
