package esp

import (
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

// The benchmarks report throughput per core for 1400-byte frames (the
// inner datagram is 1416 bytes: inner UDP and VXLAN headers in front).

func benchKey(b *testing.B, name string) []byte {
	if name == "aes128-gcm" {
		return testKey16
	}
	return testKey32
}

func BenchmarkSeal(b *testing.B) {
	for _, c := range []string{"aes128-gcm", "aes256-gcm"} {
		b.Run(c, func(b *testing.B) {
			out, _ := pair(b, benchKey(b, c))
			buf, s, e := datagram(1400, 1)
			b.SetBytes(int64(e - s))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := out.Seal(buf, s, e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkOpen(b *testing.B) {
	for _, c := range []string{"aes128-gcm", "aes256-gcm"} {
		b.Run(c, func(b *testing.B) {
			out, in := pair(b, benchKey(b, c))
			// Seal a ring of distinct packets ahead of time, so Open sees
			// fresh sequence numbers; re-seal the ring when it runs out.
			const ring = 256
			bufs := make([][]byte, ring)
			bounds := make([][2]int, ring)
			reseal := func() {
				for i := range bufs {
					if bufs[i] == nil {
						bufs[i] = make([]byte, packet.BufferSize)
					}
					buf, s, e := fillDatagram(bufs[i], 1400, byte(i))
					es, ee, err := out.Seal(buf, s, e)
					if err != nil {
						b.Fatal(err)
					}
					bufs[i], bounds[i] = buf, [2]int{es, ee}
				}
			}
			reseal()
			b.SetBytes(1416)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if i == ring {
					b.StopTimer()
					reseal()
					i = 0
					b.StartTimer()
				}
				if _, _, _, err := in.Open(bufs[i], bounds[i][0], bounds[i][1]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// BenchmarkSealParallel seals from GOMAXPROCS goroutines on one SA, the
// contention case of the shared atomic sequence number.
func BenchmarkSealParallel(b *testing.B) {
	out, _ := pair(b, testKey16)
	b.SetBytes(1416)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		buf, s, e := datagram(1400, 1)
		for pb.Next() {
			if _, _, err := out.Seal(buf, s, e); err != nil {
				b.Fatal(err)
			}
		}
	})
}
