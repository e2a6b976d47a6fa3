package cluster

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkClaimBlock claims (and gives back) one more /28 of a /16 on a
// lone node that holds 60 or 600 blocks already (about 1,000 and 10,000
// addresses in use): the claim should cost about the same at both.
func BenchmarkClaimBlock(b *testing.B) {
	for _, held := range []int{60, 600} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			key := make([]byte, 32)
			c, err := Start(testConfig("n1", key, 0, &logSink{}))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			subnet := netip.MustParsePrefix("10.82.0.0/16")
			for range held {
				if _, err := c.ClaimBlock("sc", subnet, 28); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for range b.N {
				p, err := c.ClaimBlockFunc("sc", subnet, 28, func(netip.Prefix) bool { return true })
				if err != nil {
					b.Fatal(err)
				}
				if err := c.ReleaseBlock("sc", p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
