//go:build !amd64

package packet

// hasSumVector is false: only amd64 has sumVector's assembly.
const hasSumVector = false

// sumVector is never called where hasSumVector is false.
func sumVector(b []byte) uint64 { panic("packet: no vector sum on this architecture") }
