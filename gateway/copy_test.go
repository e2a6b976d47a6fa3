package gateway

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// TestCopyConnAllocatesNothing: a flow's copy takes its buffer from a
// pool, so a short connection's copy (a request or a response, then EOF)
// allocates nothing once the pool is warm, and bulk data (a buffer filled
// to the brim, which switches to the large buffer) neither.
func TestCopyConnAllocatesNothing(t *testing.T) {
	for _, size := range []int{64, copyBufSmall * 3} {
		src := strings.NewReader(strings.Repeat("x", size))
		var dst bytes.Buffer
		dst.Grow(size)
		copyConn(&dst, src) // warm the pool
		allocs := testing.AllocsPerRun(100, func() {
			src.Seek(0, io.SeekStart)
			dst.Reset()
			n, rerr, werr := copyConn(&dst, src)
			if n != int64(size) || rerr != nil || werr != nil {
				t.Fatalf("copyConn of %d bytes: %d, %v, %v", size, n, rerr, werr)
			}
		})
		if allocs != 0 {
			t.Errorf("copyConn of %d bytes: %.1f allocations per copy, want 0", size, allocs)
		}
	}
}
