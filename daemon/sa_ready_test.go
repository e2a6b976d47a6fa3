package daemon

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/tunnel"
)

// missingOutboundSAs names, for network inspect of net on d, the other
// hosts of ds it has no outbound SA to under the primary key.
func missingOutboundSAs(d *Daemon, ds []*Daemon, net string) []string {
	n, err := d.Network(net)
	if err != nil {
		return []string{err.Error()}
	}
	var missing []string
	for _, o := range ds {
		if o == d {
			continue
		}
		if !slices.ContainsFunc(n.SAs, func(sa api.SA) bool {
			return sa.Node == o.cfg.Node && sa.Direction == "out" && sa.State == "primary"
		}) {
			missing = append(missing, o.cfg.Node)
		}
	}
	return missing
}

// TestEncryptedNetworkIsUsableOnEveryHostAtOnce: when the create of an
// encrypted network returns, every host has an outbound SA under the
// primary key to every other, so a container's first frame on any host is
// sealed and sent, not dropped as no-sa. The first create is on h2 (the
// rotator, h1, makes the ring when it learns of the network); the second,
// of another cipher (new SAs), on h3.
func TestEncryptedNetworkIsUsableOnEveryHostAtOnce(t *testing.T) {
	ds, _ := threeNodesOn(t, tunnel.NewMemNetwork())
	everyMemberAlive(t, ds)
	for i, c := range []struct {
		on     *Daemon
		cipher string
	}{{ds[1], "aes128-gcm"}, {ds[2], "aes256-gcm"}} {
		net := fmt.Sprintf("sec%d", i)
		start := time.Now()
		if _, err := c.on.CreateNetwork(api.NetworkCreateRequest{Name: net, Subnet: fmt.Sprintf("10.6.%d.0/24", i), Encrypted: true, Cipher: c.cipher}); err != nil {
			t.Fatal(err)
		}
		t.Logf("create of %s (%s) on %s took %v", net, c.cipher, c.on.cfg.Node, time.Since(start))
		for _, d := range ds {
			if m := missingOutboundSAs(d, ds, net); len(m) > 0 {
				t.Errorf("%s right after %s (%s) was created on %s: no outbound SA to %v", d.cfg.Node, net, c.cipher, c.on.cfg.Node, m)
			}
		}
	}
}

// TestAttachOnAJoiningHostWaitsForItsSAs: a host that joins the cluster
// after an encrypted network was created has no SAs with the others until
// its key state and theirs have crossed; an attach there returns once it
// can seal to every other host and every other host to it, so the new
// container's first frame is not dropped as no-sa.
func TestAttachOnAJoiningHostWaitsForItsSAs(t *testing.T) {
	mem := tunnel.NewMemNetwork()
	var ds []*Daemon
	for i := 1; i <= 2; i++ {
		d, _ := addNode(t, mem, ds, i)
		ds = append(ds, d)
	}
	everyMemberAlive(t, ds)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Subnet: "10.6.9.0/24", Encrypted: true}); err != nil {
		t.Fatal(err)
	}
	h3, _ := addNode(t, mem, ds, 3)
	ds = append(ds, h3)
	waitFor(t, "the network on h3", func() bool { _, err := h3.Network("sec"); return err == nil })
	start := time.Now()
	mustAttach(t, h3, api.AttachRequest{Network: "sec", Name: "c3", Create: true})
	t.Logf("attach on h3 took %v", time.Since(start))
	for _, d := range ds {
		if m := missingOutboundSAs(d, ds, "sec"); len(m) > 0 {
			t.Errorf("%s right after an attach on h3, which just joined: no outbound SA to %v", d.cfg.Node, m)
		}
	}
}

// TestSAWaitsDoNotWaitAgainForPairsGivenUpOn: once a wait gave up on a
// pair (a host that is alive but makes no SAs), later waits in its scope
// skip it, so not every attach waits the whole timeout again; once the
// pair has its SA it is forgotten and waited for again should it lose it.
func TestSAWaitsDoNotWaitAgainForPairsGivenUpOn(t *testing.T) {
	ks := &keyState{}
	c := esp.AES128GCM
	h1h3, h3h1, h1h2 := saPair{"h1", "h3", c}, saPair{"h3", "h1", c}, saPair{"h1", "h2", c}
	if got := ks.notGivenUp([]saPair{h1h3, h3h1}, c, ""); len(got) != 2 {
		t.Fatalf("nothing given up on: %v, want both gaps", got)
	}
	ks.givenUp = map[saPair]bool{h1h3: true, h3h1: true}
	if got := ks.notGivenUp([]saPair{h1h3, h3h1, h1h2}, c, "h1"); !slices.Equal(got, []saPair{h1h2}) {
		t.Fatalf("with h1<->h3 given up on: %v, want h1->h2 alone", got)
	}
	if got := ks.notGivenUp([]saPair{{"h1", "h3", esp.AES256GCM}}, esp.AES256GCM, ""); len(got) != 1 {
		t.Fatalf("another cipher: %v, want the gap", got)
	}
	// h3->h1 has its SA now: forgotten, so waited for if it goes again.
	ks.notGivenUp([]saPair{h1h3}, c, "h1")
	if ks.givenUp[h3h1] || !ks.givenUp[h1h3] {
		t.Fatalf("given up on after h3->h1 got its SA: %v", ks.givenUp)
	}
	if got := ks.notGivenUp([]saPair{h1h3, h3h1}, c, ""); !slices.Equal(got, []saPair{h3h1}) {
		t.Fatalf("h3->h1 lost its SA again: %v, want it waited for", got)
	}
}
