package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/vxmesh/vxmesh/cluster"
)

// A network create is confirmed with every alive member before it is
// answered: the creating node claims the network's name, subnet and VNI
// together in the tblNetClaims claim table (cluster.Claim, the mechanism
// of IPAM block claims), publishes the record once it has won, then
// releases the claim; from then on the published record itself makes a
// conflicting claim lose (netClaimTaken).
const (
	tblNetClaims  = "network-claims"
	netClaimGroup = "net"
	// maxCreateAttempts bounds how often a create re-picks a subnet or
	// VNI it chose itself after losing them to a concurrent create.
	maxCreateAttempts = 8
)

// netClaim is what a network create claims: none of its parts may be
// shared with another network.
type netClaim struct {
	name   string
	subnet netip.Prefix
	vni    uint32
}

func (c netClaim) String() string {
	return c.name + "," + c.subnet.String() + "," + strconv.FormatUint(uint64(c.vni), 10)
}

func parseNetClaim(s string) (netClaim, bool) {
	parts := strings.Split(s, ",")
	if len(parts) != 3 {
		return netClaim{}, false
	}
	p, err := netip.ParsePrefix(parts[1])
	v, err2 := strconv.ParseUint(parts[2], 10, 32)
	if err != nil || err2 != nil {
		return netClaim{}, false
	}
	return netClaim{name: parts[0], subnet: p, vni: uint32(v)}, true
}

// clashes reports whether two networks cannot coexist.
func (c netClaim) clashes(o netClaim) bool {
	return c.name == o.name || c.vni == o.vni || overlaps(c.subnet, o.subnet)
}

// netClaimsConflict is the conflict rule of tblNetClaims.
func netClaimsConflict(a, b string) bool {
	ca, ok1 := parseNetClaim(a)
	cb, ok2 := parseNetClaim(b)
	if !ok1 || !ok2 {
		return a == b
	}
	return ca.clashes(cb)
}

// netClaimTaken returns the records of cl's networks table that clash
// with the claimed network: such a claim must lose.
func netClaimTaken(cl *cluster.Cluster) func(group, resource string) []cluster.Entry {
	return func(group, resource string) []cluster.Entry {
		want, ok := parseNetClaim(resource)
		if group != netClaimGroup || !ok {
			return nil
		}
		var out []cluster.Entry
		for _, e := range cl.List(tblNetworks) {
			var rec netRecord
			if json.Unmarshal(e.Value, &rec) != nil {
				continue
			}
			p, err := netip.ParsePrefix(rec.Subnet)
			if err != nil {
				p = netip.Prefix{}
			}
			if want.clashes(netClaim{name: rec.Name, subnet: p, vni: rec.VNI}) {
				out = append(out, e)
			}
		}
		return out
	}
}

// createChoice is what a create may change when it loses part of its
// claim: the parts the user did not give.
type createChoice struct {
	autoSubnet bool
	autoVNI    bool
}

// claimNetwork confirms rec's name, subnet and VNI with every alive
// member. When a concurrent create wins a subnet or VNI that was chosen
// automatically, it picks another (and reserves it in d.creating) and
// tries again; when it wins the name or a part the user gave, the create
// fails with a conflict naming the other node. On success the caller
// publishes rec and then calls releaseNetworkClaim. Callers do not hold
// d.mu: each claim is a round trip to every member.
func (d *Daemon) claimNetwork(rec *netRecord, choice createChoice) error {
	subnet, err := netip.ParsePrefix(rec.Subnet)
	if err != nil {
		return fmt.Errorf("network %q: subnet: %w", rec.Name, err)
	}
	claim := netClaim{name: rec.Name, subnet: subnet, vni: rec.VNI}
	avoid := avoidList{vnis: map[uint32]bool{}}
	for attempt := 1; ; attempt++ {
		err := d.cl.Claim(tblNetClaims, netClaimGroup, claim.String())
		if err == nil {
			rec.Subnet, rec.VNI = claim.subnet.String(), claim.vni
			return nil
		}
		var lost *cluster.ClaimConflict
		if !errors.As(err, &lost) {
			return fmt.Errorf("network %q: %w", rec.Name, err)
		}
		if known, ok := parseNetClaim(lost.Resource); ok {
			avoid.subnets = append(avoid.subnets, known.subnet)
			avoid.vnis[known.vni] = true
		}
		avoid.last = attempt == maxCreateAttempts
		d.mu.Lock()
		next, err := d.repickNetwork(rec, claim, lost, choice, avoid)
		d.mu.Unlock()
		if err != nil {
			return err
		}
		claim = next
		d.log.Debug("network create lost part of its claim, trying again", "network", rec.Name, "node", lost.Node, "subnet", claim.subnet, "vni", claim.vni)
	}
}

// avoidList is what the claims that beat a create took; last is set on
// its last attempt.
type avoidList struct {
	subnets []netip.Prefix
	vnis    map[uint32]bool
	last    bool
}

// repickNetwork decides what a create does after losing claim to the
// claim lost names: fail, or claim again with another automatically
// chosen subnet or VNI (reserved in d.creating); callers hold d.mu.
func (d *Daemon) repickNetwork(rec *netRecord, claim netClaim, lost *cluster.ClaimConflict, choice createChoice, avoid avoidList) (netClaim, error) {
	// Learn the records published meanwhile (a taken answer carried
	// them) and what the winning claim was.
	if err := d.reconcile(); err != nil {
		d.log.Error("data plane", "err", err)
	}
	other, known := parseNetClaim(lost.Resource)
	if n := d.networks[rec.Name]; n != nil || (known && other.name == rec.Name) {
		node := lost.Node
		if e, ok := d.cl.Get(tblNetworks, rec.Name); ok {
			node = e.Owner
		}
		return claim, conflict("network %q: created concurrently on node %s", rec.Name, node)
	}
	var used []netip.Prefix
	usedVNIs := map[uint32]string{}
	for _, n := range d.networks {
		used = append(used, n.subnet)
		usedVNIs[n.rec.VNI] = n.rec.Name
	}
	for name, c := range d.creating {
		if name != rec.Name {
			used = append(used, c.subnet)
			usedVNIs[c.vni] = name
		}
	}
	subnetLost := known && overlaps(other.subnet, claim.subnet)
	vniLost := known && other.vni == claim.vni
	for _, p := range used {
		subnetLost = subnetLost || overlaps(p, claim.subnet)
	}
	_, vniTaken := usedVNIs[claim.vni]
	vniLost = vniLost || vniTaken
	switch {
	case subnetLost && !choice.autoSubnet:
		return claim, conflict("network %q: subnet %s: taken concurrently on node %s", rec.Name, claim.subnet, lost.Node)
	case vniLost && !choice.autoVNI:
		return claim, conflict("network %q: vni %d: taken concurrently on node %s", rec.Name, claim.vni, lost.Node)
	case !subnetLost && !vniLost, avoid.last:
		return claim, conflict("network %q: created concurrently on node %s", rec.Name, lost.Node)
	}
	if subnetLost {
		p, err := pickSubnet(append(append(used, avoid.subnets...), d.underlaySubnets(d.vtepRules())...))
		if err != nil {
			return claim, fmt.Errorf("network %q: %w", rec.Name, err)
		}
		claim.subnet = p
		rec.Gateway = firstHost(p).String()
	}
	if vniLost {
		claim.vni = d.freeVNIExcept(avoid.vnis)
	}
	d.creating[rec.Name] = claim
	return claim, nil
}

// releaseNetworkClaim gives up the claim of a created network once its
// record is published (the record itself now protects it).
func (d *Daemon) releaseNetworkClaim(rec netRecord) {
	if err := d.cl.ReleaseClaim(tblNetClaims, netClaimGroup, netClaimOf(rec).String()); err != nil {
		d.log.Warn("releasing network claim", "network", rec.Name, "err", err)
	}
}

// netClaimOf is the claim a create of rec made.
func netClaimOf(rec netRecord) netClaim {
	subnet, _ := netip.ParsePrefix(rec.Subnet)
	return netClaim{name: rec.Name, subnet: subnet, vni: rec.VNI}
}

// netClaimRef names this node's claim entry of a create of rec.
func (d *Daemon) netClaimRef(rec netRecord) cluster.Ref {
	return d.cl.ClaimRef(tblNetClaims, netClaimGroup, netClaimOf(rec).String())
}

// freeVNIExcept is freeVNI that also skips the VNIs in avoid.
func (d *Daemon) freeVNIExcept(avoid map[uint32]bool) uint32 {
	taken := map[uint32]bool{}
	for _, n := range d.networks {
		taken[n.rec.VNI] = true
	}
	for _, c := range d.creating {
		taken[c.vni] = true
	}
	v := uint32(firstVNI)
	for taken[v] || avoid[v] {
		v++
	}
	return v
}
