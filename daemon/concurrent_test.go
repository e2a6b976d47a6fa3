package daemon

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// connectedNodes is threeNodes, with claimSafeGrace, once every node sees
// the three alive.
func connectedNodes(t *testing.T) ([]*Daemon, []*fakeSandbox) {
	t.Helper()
	ds, sbs := threeNodesOn(t, tunnel.NewMemNetwork(), claimSafeGrace)
	for _, d := range ds {
		waitFor(t, d.cfg.Node+" seeing three alive nodes", func() bool {
			alive := 0
			for _, m := range d.cl.Members() {
				if m.State == "alive" {
					alive++
				}
			}
			return alive == 3
		})
	}
	return ds, sbs
}

// race runs every f at the same moment and returns their errors.
func race(fs ...func() error) []error {
	errs := make([]error, len(fs))
	var gate, wg sync.WaitGroup
	gate.Add(1)
	for i, f := range fs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gate.Wait()
			errs[i] = f()
		}()
	}
	gate.Done()
	wg.Wait()
	return errs
}

// oneWinner checks that exactly one of errs is nil and that the other
// names the conflict with a message containing one of wants; it returns
// the winner's index.
func oneWinner(t *testing.T, what string, errs []error, wants ...string) int {
	t.Helper()
	winner := -1
	for i, err := range errs {
		if err == nil {
			if winner >= 0 {
				t.Fatalf("%s: both creates succeeded", what)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatalf("%s: both failed: %v", what, errs)
	}
	loser := errs[1-winner]
	t.Logf("%s: the loser got: %v", what, loser)
	rec := httptest.NewRecorder()
	fail(rec, loser)
	if rec.Code != http.StatusConflict {
		t.Errorf("%s: the loser's error is answered with HTTP %d, want 409", what, rec.Code)
	}
	for _, w := range wants {
		if strings.Contains(loser.Error(), w) {
			return winner
		}
	}
	t.Fatalf("%s: the loser's error %q names none of %q", what, loser, wants)
	return winner
}

// agreeOnNetworks waits until every node lists exactly want (name -> the
// winner's view) with the same ID, subnet, VNI and encryption.
func agreeOnNetworks(t *testing.T, ds []*Daemon, want map[string]api.Network) {
	t.Helper()
	for _, d := range ds {
		waitFor(t, d.cfg.Node+" holding exactly the winning records", func() bool {
			got := d.Networks()
			if len(got) != len(want) {
				return false
			}
			for _, n := range got {
				w, ok := want[n.Name]
				if !ok || n.ID != w.ID || n.Subnet != w.Subnet || n.VNI != w.VNI || n.Encrypted != w.Encrypted {
					return false
				}
			}
			return true
		})
	}
}

func TestConcurrentCreateOfOneNameHasOneWinner(t *testing.T) {
	ds, _ := connectedNodes(t)
	for round := range 3 {
		name := fmt.Sprintf("web%d", round)
		var res [2]api.Network
		errs := race(
			func() (err error) {
				res[0], err = ds[0].CreateNetwork(api.NetworkCreateRequest{Name: name, Encrypted: true})
				return err
			},
			func() (err error) {
				res[1], err = ds[1].CreateNetwork(api.NetworkCreateRequest{Name: name})
				return err
			},
		)
		w := oneWinner(t, name, errs, fmt.Sprintf("network %q: created concurrently on node", name), "already exists")
		if res[w].Encrypted != (w == 0) {
			t.Fatalf("%s: the winner was told encrypted=%v", name, res[w].Encrypted)
		}
		want := map[string]api.Network{}
		for _, n := range ds[2].Networks() {
			want[n.Name] = n
		}
		want[name] = res[w]
		agreeOnNetworks(t, ds, want)
	}
}

func TestConcurrentCreatesOfOneSubnetHaveOneWinner(t *testing.T) {
	ds, _ := connectedNodes(t)
	var res [2]api.Network
	errs := race(
		func() (err error) {
			res[0], err = ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "a", Subnet: "10.40.0.0/24"})
			return err
		},
		func() (err error) {
			res[1], err = ds[2].CreateNetwork(api.NetworkCreateRequest{Name: "b", Subnet: "10.40.0.0/16"})
			return err
		},
	)
	w := oneWinner(t, "one subnet", errs, "10.40.0.0/", "overlaps")
	agreeOnNetworks(t, ds, map[string]api.Network{res[w].Name: res[w]})
}

func TestConcurrentCreatesOfOneVNIHaveOneWinner(t *testing.T) {
	ds, _ := connectedNodes(t)
	var res [2]api.Network
	errs := race(
		func() (err error) {
			res[0], err = ds[1].CreateNetwork(api.NetworkCreateRequest{Name: "a", Subnet: "10.43.0.0/24", VNI: 7000})
			return err
		},
		func() (err error) {
			res[1], err = ds[2].CreateNetwork(api.NetworkCreateRequest{Name: "b", Subnet: "10.44.0.0/24", VNI: 7000})
			return err
		},
	)
	w := oneWinner(t, "one VNI", errs, "vni 7000")
	agreeOnNetworks(t, ds, map[string]api.Network{res[w].Name: res[w]})
}

// Two creates without --subnet or --vni at once both succeed, with
// different subnets and VNIs: what was chosen automatically is chosen
// again when another node's create wins it.
func TestConcurrentCreatesPickDistinctSubnetsAndVNIs(t *testing.T) {
	ds, _ := connectedNodes(t)
	var res [3]api.Network
	errs := race(
		func() (err error) { res[0], err = ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "x"}); return err },
		func() (err error) { res[1], err = ds[1].CreateNetwork(api.NetworkCreateRequest{Name: "y"}); return err },
		func() (err error) { res[2], err = ds[2].CreateNetwork(api.NetworkCreateRequest{Name: "z"}); return err },
	)
	want := map[string]api.Network{}
	subnets, vnis := map[string]string{}, map[uint32]string{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
		n := res[i]
		if o, dup := subnets[n.Subnet]; dup {
			t.Fatalf("subnet %s given to %s and %s", n.Subnet, o, n.Name)
		}
		if o, dup := vnis[n.VNI]; dup {
			t.Fatalf("VNI %d given to %s and %s", n.VNI, o, n.Name)
		}
		subnets[n.Subnet], vnis[n.VNI] = n.Name, n.Name
		want[n.Name] = n
	}
	agreeOnNetworks(t, ds, want)
}

func TestConcurrentAttachWithOneIPHasOneWinner(t *testing.T) {
	ds, _ := connectedNodes(t)
	if _, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.41.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, "web on "+d.cfg.Node, func() bool { _, err := d.Network("web"); return err == nil })
	}
	for round, ip := range []string{"10.41.0.50", "10.41.0.100", "10.41.0.200"} {
		name := fmt.Sprintf("c%d", round)
		errs := race(
			func() error {
				_, err := ds[1].Attach(api.AttachRequest{Network: "web", Name: name, Create: true, IP: ip})
				return err
			},
			func() error {
				_, err := ds[2].Attach(api.AttachRequest{Network: "web", Name: name, Create: true, IP: ip})
				return err
			},
		)
		w := oneWinner(t, ip, errs, "held by node", "already in use")
		winner := ds[1+w].cfg.Node
		for _, d := range ds {
			waitFor(t, d.cfg.Node+" seeing "+ip+" once, on "+winner, func() bool {
				n, _ := d.Network("web")
				count := 0
				for _, ep := range n.Endpoints {
					if ep.IP == ip {
						count++
						if ep.Node != winner {
							return false
						}
					}
				}
				return count == 1
			})
		}
	}
}

// TestEncryptedRecordIsNeverDowngraded makes a cleartext record of the same
// name (another create, as after a partition) meet an encrypted network:
// every node must end up with the encrypted one.
func TestEncryptedRecordIsNeverDowngraded(t *testing.T) {
	ds, _ := connectedNodes(t)
	sec, err := ds[0].CreateNetwork(api.NetworkCreateRequest{Name: "sec", Subnet: "10.42.0.0/24", Encrypted: true})
	if err != nil {
		t.Fatal(err)
	}
	agreeOnNetworks(t, ds, map[string]api.Network{"sec": sec})
	// h3 writes a cleartext record for the name with a newer version, as
	// the other side of a healed partition would.
	rec := netRecord{Name: "sec", ID: "0123456789abcdef0123456789abcdef", Subnet: "10.42.0.0/24",
		Gateway: "10.42.0.1", MTU: 1450, VNI: sec.VNI}
	b, _ := json.Marshal(rec)
	if err := ds[2].cl.Put(tblNetworks, "sec", b); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		waitFor(t, d.cfg.Node+" holding the encrypted record of sec", func() bool {
			e, ok := d.cl.Get(tblNetworks, "sec")
			var got netRecord
			return ok && json.Unmarshal(e.Value, &got) == nil && got.Encrypted && got.ID == sec.ID
		})
	}
	agreeOnNetworks(t, ds, map[string]api.Network{"sec": sec})
}
