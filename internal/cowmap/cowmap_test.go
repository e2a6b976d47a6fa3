package cowmap

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
)

type strMap = Map[string, int, Strings]

// TestWritersEqualPlainMaps makes random versions, each from a random
// earlier one, and checks that every version holds what a plain map
// given the same changes holds, that no version changed after it was
// written (its copies' writes did not reach it), and that versions with
// the same entries are DeepEqual however they were made.
func TestWritersEqualPlainMaps(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	type version struct {
		m    *strMap
		want map[string]int
	}
	vs := []version{{nil, map[string]int{}}}
	for step := range 600 {
		from := vs[rng.IntN(len(vs))]
		w := NewWriter(from.m)
		want := maps.Clone(from.want)
		for range 1 + rng.IntN(4) {
			k := fmt.Sprintf("k%d", rng.IntN(300))
			if rng.IntN(3) == 0 {
				w.Delete(k)
				delete(want, k)
			} else {
				v := rng.IntN(1000)
				w.Set(k, v)
				want[k] = v
			}
		}
		vs = append(vs, version{w.Map(), want})
		if len(vs) > 30 {
			vs = vs[1:]
		}
		for i, v := range vs {
			got := maps.Collect(v.m.All())
			if !maps.Equal(got, v.want) || v.m.Len() != len(v.want) {
				t.Fatalf("step %d: version %d holds %d entries (Len %d), want %d: %v", step, i, len(got), v.m.Len(), len(v.want), got)
			}
			for k, x := range v.want {
				if y, ok := v.m.Get(k); !ok || y != x {
					t.Fatalf("step %d: version %d: Get(%s) = %d, %v, want %d", step, i, k, y, ok, x)
				}
			}
		}
		fresh := NewWriter[string, int, Strings](nil)
		for k, v := range want {
			fresh.Set(k, v)
		}
		if !reflect.DeepEqual(fresh.Map(), w.Map()) {
			t.Fatalf("step %d: a version made afresh is not DeepEqual to the one written from another", step)
		}
	}
}

func TestShardsSpread(t *testing.T) {
	var s [Shards]int
	for i := range 6400 {
		s[Strings{}.Shard(fmt.Sprintf("s%04d", i))]++
		s[Addrs{}.Shard(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))]++
	}
	for i, n := range s {
		if n < 100 || n > 300 {
			t.Fatalf("shard %d has %d of 12800 keys, want about 200", i, n)
		}
	}
}
