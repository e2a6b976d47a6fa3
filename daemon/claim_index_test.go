package daemon

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
)

// TestUnheldEndpointsEqualFresh makes random runs, removals, releases of
// this node's blocks and claims of another node (blocks of this node's
// size and a larger one over them), and checks after each that the
// endpoints holdBlocks would keep the blocks of (unheldEndpoints, which
// looks only at what changed since every endpoint was found held) are the
// endpoints a fresh look at every one finds outside this node's blocks.
func TestUnheldEndpointsEqualFresh(t *testing.T) {
	d := newTestDaemon(t, newFakeSandbox(), t.TempDir())
	t.Cleanup(d.Close)
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.30.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	peer := fuzzPeer(t, d)
	// await waits until the daemon has the peer's claim key (or, gone,
	// has it no more).
	await := func(key string, gone bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, ok := d.cl.Get("ipam-blocks", key)
			if ok != gone {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the peer's claim %q never reached the daemon (gone %v)", key, gone)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var ctrs, peerClaims []string
	next := 0
	for step := range 400 {
		switch op := rng.IntN(8); {
		case op <= 1 || len(ctrs) == 0:
			name := fmt.Sprintf("c%03d", next)
			next++
			req := api.AttachRequest{Network: "web", Name: name, Create: true}
			if rng.IntN(2) == 0 { // spread over the blocks: some hold one endpoint
				req.IP = netip.AddrFrom4([4]byte{10, 30, 0, byte(2 + rng.IntN(120))}).String()
			}
			if _, err := d.Attach(req); err == nil {
				ctrs = append(ctrs, name)
			}
		case op == 2:
			i := rng.IntN(len(ctrs))
			if err := d.RemoveContainer(ctrs[i]); err != nil {
				t.Fatal(err)
			}
			ctrs = slices.Delete(ctrs, i, i+1)
		case op == 3:
			if held := d.cl.ClaimedBlocks("web"); len(held) > 0 {
				if err := d.cl.ReleaseBlock("web", held[rng.IntN(len(held))]); err != nil {
					t.Fatal(err)
				}
			}
		case op == 4 && len(peerClaims) < 2:
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 30, 0, byte(16 * rng.IntN(8))}), 28)
			if rng.IntN(4) == 0 {
				p = netip.MustParsePrefix("10.30.0.64/26")
			}
			key := "web|" + p.String() + "|peer"
			if err := peer.Put("ipam-blocks", key, nil); err != nil {
				t.Fatal(err)
			}
			await(key, false)
			peerClaims = append(peerClaims, key)
		case len(peerClaims) > 0:
			i := rng.IntN(len(peerClaims))
			if err := peer.Delete("ipam-blocks", peerClaims[i]); err != nil {
				t.Fatal(err)
			}
			await(peerClaims[i], true)
			peerClaims = slices.Delete(peerClaims, i, i+1)
		}
		d.mu.Lock()
		held := map[string]map[netip.Prefix]string{}
		for name := range d.networks {
			held[name] = d.cl.Blocks(name)
		}
		var got, want []string
		for _, ep := range d.unheldEndpoints(held) {
			got = append(got, ep.ctr.name+" "+ep.ip.String())
		}
		for _, n := range d.networks {
			for _, ep := range d.endpointsOf(n) {
				if _, holder, _ := holderOf(held[n.rec.Name], ep.ip); holder != d.cfg.Node {
					want = append(want, ep.ctr.name+" "+ep.ip.String())
				}
			}
		}
		hold := rng.IntN(2) == 0
		d.mu.Unlock()
		if hold {
			d.holdBlocks()
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: endpoints outside this node's blocks: kept check finds %v, a fresh one %v", step, got, want)
		}
	}
}
