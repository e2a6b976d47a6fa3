package daemon

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vxmesh/vxmesh/cluster"
	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
)

// Every value read from the replicated tables comes from a member holding
// the cluster key, which is not the same as being right. A network record
// goes through validateNetwork, the same check as an API request after its
// defaults are filled in; an endpoint record through decodeEndpoint. What
// fails is skipped, counted and logged once per record version.

// reservedSubnets are IPv4 ranges no overlay subnet may overlap: "this
// network", loopback (which holds the resolver's 127.0.0.11), multicast and
// the reserved class E.
var reservedSubnets = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// maxSubnetBits is the smallest subnet a network may have (a /30).
const maxSubnetBits = 30

// checkSubnet parses a network's subnet: an IPv4 prefix without host bits,
// at most a /30, outside the reserved ranges.
func checkSubnet(network, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("network %q: subnet %q: not an IPv4 CIDR", network, s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("network %q: subnet %s: host bits set (the prefix is %s)", network, p, p.Masked())
	}
	if p.Bits() > maxSubnetBits {
		return netip.Prefix{}, fmt.Errorf("network %q: subnet %s: too small (at most /%d)", network, p, maxSubnetBits)
	}
	for _, r := range reservedSubnets {
		if p.Overlaps(r) {
			return netip.Prefix{}, fmt.Errorf("network %q: subnet %s: overlaps the reserved range %s", network, p, r)
		}
	}
	return p, nil
}

// vtepRules are the addresses that cannot be external VTEPs: the vxmesh
// nodes' own (they are peers already, and a node flooding to itself loops).
type vtepRules struct {
	self  string
	nodes map[netip.Addr]string // underlay address -> node name
}

// vtepRules returns the node addresses this daemon knows now: its own and
// every member's gossip and data address.
func (d *Daemon) vtepRules() *vtepRules {
	r := &vtepRules{self: d.cfg.Node, nodes: map[netip.Addr]string{d.cfg.Advertise: d.cfg.Node}}
	if d.cl != nil {
		for _, m := range d.cl.Members() {
			for _, a := range []netip.Addr{m.Addr.Addr(), m.Meta.DataAddr.Addr()} {
				if a.IsValid() {
					r.nodes[a.Unmap()] = m.Name
				}
			}
		}
	}
	return r
}

// checkVTEP checks one external VTEP address.
func (r *vtepRules) checkVTEP(network string, v string) (netip.Addr, error) {
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() || a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return netip.Addr{}, fmt.Errorf("network %q: vtep %q: not a unicast IPv4 address", network, v)
	}
	if r == nil {
		return a, nil
	}
	switch name, ok := r.nodes[a]; {
	case ok && name == r.self:
		return netip.Addr{}, fmt.Errorf("network %q: vtep %s: is this node's address (vxmesh nodes are peers without --vtep)", network, a)
	case ok:
		return netip.Addr{}, fmt.Errorf("network %q: vtep %s: is the address of node %q (vxmesh nodes are peers without --vtep)", network, a, name)
	}
	return a, nil
}

// checkUnderlay refuses a requested subnet that holds a node's underlay
// address: containers could no longer reach that host (an overlay
// destination for the gateway), and the network's gateway could be the
// host's own address. Only new networks are checked; a record read from
// the cluster is not refused for it.
func (r *vtepRules) checkUnderlay(network, subnet string) error {
	p, err := netip.ParsePrefix(subnet)
	if err != nil || r == nil {
		return nil // validateNetwork refused it already
	}
	// The lowest such address, so the message does not change from one
	// try to the next.
	for _, a := range slices.SortedFunc(maps.Keys(r.nodes), netip.Addr.Compare) {
		name := r.nodes[a]
		if !p.Contains(a) {
			continue
		}
		if name == r.self {
			return fmt.Errorf("network %q: subnet %s: holds this node's underlay address %s (pick a subnet outside the hosts' network)", network, p, a)
		}
		return fmt.Errorf("network %q: subnet %s: holds the underlay address %s of node %q (pick a subnet outside the hosts' network)", network, p, a, name)
	}
	return nil
}

// parseVTEPs validates external VTEP addresses (against rules, when not
// nil) and returns them sorted and de-duplicated.
func parseVTEPs(network string, in []string, rules *vtepRules) ([]string, error) {
	set := map[netip.Addr]bool{}
	for _, v := range in {
		a, err := rules.checkVTEP(network, v)
		if err != nil {
			return nil, err
		}
		set[a] = true
	}
	out := make([]netip.Addr, 0, len(set))
	for a := range set {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	strs := make([]string, len(out))
	for i, a := range out {
		strs[i] = a.String()
	}
	return strs, nil
}

// validateNetwork checks a complete network record: what CreateNetwork
// builds from a request and what the networks table holds go through this
// same function, so a record is used only if the API would have made it.
func validateNetwork(rec *netRecord, rules *vtepRules) error {
	if err := checkName("network", rec.Name); err != nil {
		return err
	}
	if _, err := hex.DecodeString(rec.ID); err != nil || len(rec.ID) != 2*networkIDBytes || strings.ToLower(rec.ID) != rec.ID {
		return fmt.Errorf("network %q: id %q: not %d lower-case hex digits", rec.Name, rec.ID, 2*networkIDBytes)
	}
	subnet, err := checkSubnet(rec.Name, rec.Subnet)
	if err != nil {
		return err
	}
	if gw, err := netip.ParseAddr(rec.Gateway); err != nil || !usableHost(subnet, gw) {
		return fmt.Errorf("network %q: gateway %q: not a host address of %s", rec.Name, rec.Gateway, subnet)
	}
	if rec.MTU < minMTU || rec.MTU > maxNetworkMTU {
		return fmt.Errorf("network %q: mtu %d: out of range %d-%d", rec.Name, rec.MTU, minMTU, maxNetworkMTU)
	}
	if rec.VNI < 1 || rec.VNI > maxVNI {
		return fmt.Errorf("network %q: vni %d: out of range 1-%d", rec.Name, rec.VNI, maxVNI)
	}
	// 0: a record from before storm limits, which gets the default.
	if rec.StormLimit < -1 || rec.StormLimit > maxStormLimit {
		return fmt.Errorf("network %q: storm limit %d: out of range -1-%d", rec.Name, rec.StormLimit, maxStormLimit)
	}
	switch {
	case rec.Encrypted:
		c, err := esp.ParseCipher(rec.Cipher)
		if err != nil {
			return fmt.Errorf("network %q: %w", rec.Name, err)
		}
		if c.String() != rec.Cipher {
			return fmt.Errorf("network %q: cipher %q: not canonical (%s)", rec.Name, rec.Cipher, c)
		}
		if len(rec.VTEPs) > 0 {
			return fmt.Errorf("network %q: external VTEPs cannot be peers of an encrypted network (they do not have its keys)", rec.Name)
		}
	case rec.Cipher != "":
		return fmt.Errorf("network %q: a cipher needs an encrypted network (--encrypted)", rec.Name)
	}
	vteps, err := parseVTEPs(rec.Name, rec.VTEPs, rules)
	if err != nil {
		return err
	}
	if !slices.Equal(vteps, rec.VTEPs) && len(rec.VTEPs) > 0 {
		return fmt.Errorf("network %q: vteps %v: not sorted, unique and canonical", rec.Name, rec.VTEPs)
	}
	return nil
}

// decodeNetwork decodes and validates a networks-table entry.
func decodeNetwork(e cluster.Entry, rules *vtepRules) (netRecord, error) {
	var rec netRecord
	if err := json.Unmarshal(e.Value, &rec); err != nil {
		return rec, fmt.Errorf("network %q: %w", e.Key, err)
	}
	if rec.Name != e.Key {
		return rec, fmt.Errorf("network %q: the record names network %q", e.Key, rec.Name)
	}
	return rec, validateNetwork(&rec, rules)
}

// maxAliases bounds the aliases of an endpoint record.
const maxAliases = 64

// decodeEndpoint decodes and validates an endpoints-table entry: the
// record of its owner, under its own key, with the address-derived MAC
// that Attach gives every endpoint.
func decodeEndpoint(e cluster.Entry) (epRecord, error) {
	var rec epRecord
	if err := json.Unmarshal(e.Value, &rec); err != nil {
		return rec, fmt.Errorf("endpoint %q: %w", e.Key, err)
	}
	rec.version = e.Version
	if rec.Node != e.Owner || e.Key != epKey(rec.Node, rec.Network, rec.Name) {
		return rec, fmt.Errorf("endpoint %q: record of %q on %q written by node %q", e.Key, rec.Name, rec.Node, e.Owner)
	}
	if rec.Gateway {
		if err := checkGatewayRecord(e.Key, &rec); err != nil {
			return rec, err
		}
	} else if err := checkName("container", rec.Name); err != nil {
		return rec, err
	}
	if err := checkName("network", rec.Network); err != nil {
		return rec, err
	}
	ip, err := netip.ParseAddr(rec.IP)
	if err != nil || !ip.Is4() || ip.String() != rec.IP {
		return rec, fmt.Errorf("endpoint %q: ip %q: not an IPv4 address", e.Key, rec.IP)
	}
	mac, err := packet.ParseMAC(rec.MAC)
	if err != nil || mac != packet.MAC(macForIP(ip)) {
		return rec, fmt.Errorf("endpoint %q: mac %q: not the address-derived %s", e.Key, rec.MAC, packet.MAC(macForIP(ip)))
	}
	if len(rec.Aliases) > maxAliases {
		return rec, fmt.Errorf("endpoint %q: %d aliases, at most %d", e.Key, len(rec.Aliases), maxAliases)
	}
	for _, a := range rec.Aliases {
		if err := checkName("alias", a); err != nil {
			return rec, fmt.Errorf("endpoint %q: %w", e.Key, err)
		}
	}
	return rec, checkMemberships(e.Key, rec.Services)
}

// refusals counts the table records a daemon refuses and logs each record
// version once, however often reconcile reads it again.
type refusals struct {
	mu     sync.Mutex
	seen   map[string]bool
	counts map[string]uint64
}

// maxRefusalsSeen bounds the remembered record versions.
const maxRefusalsSeen = 4096

// note records that the given version of key (written by owner) was refused
// for reason; the first time it is counted and logged.
func (r *refusals) note(log *slog.Logger, reason, key, owner string, version uint64, err error) {
	id := fmt.Sprintf("%s\x00%s\x00%s\x00%d", reason, key, owner, version)
	r.mu.Lock()
	if r.seen[id] {
		r.mu.Unlock()
		return
	}
	if r.seen == nil || len(r.seen) >= maxRefusalsSeen {
		r.seen = map[string]bool{}
	}
	if r.counts == nil {
		r.counts = map[string]uint64{}
	}
	r.seen[id] = true
	r.counts[reason]++
	r.mu.Unlock()
	log.Warn("refusing an invalid record from the cluster (logged once per record version)",
		"reason", reason, "key", key, "owner", owner, "version", version, "err", err)
}

// snapshot returns the counters.
func (r *refusals) snapshot() map[string]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.counts) == 0 {
		return nil
	}
	out := make(map[string]uint64, len(r.counts))
	for k, v := range r.counts {
		out[k] = v
	}
	return out
}

// epDecodeCache remembers decodeEndpoint's result for each endpoint
// entry, so that listing the endpoints table decodes only the entries that
// changed since the last listing: at a thousand endpoints, decoding every
// record's JSON on every change made each run slower than the last.
// decodeEndpoint depends only on the entry, so a cached result is used only
// for an entry with the same owner, version and value bytes. The records
// handed out share their slices (Aliases, Services): callers only read
// them. It has its own lock: listing does not need d.mu.
type epDecodeCache struct {
	mu      sync.Mutex
	m       map[string]*epDecoded
	listing uint64 // counts decodeAll calls
	decodes uint64 // counts decodeEndpoint calls
	// feed is clusterEndpoints' copy of the table.
	feed epFeed
}

// epDecoded is one cached decodeEndpoint result and what it was decoded
// from.
type epDecoded struct {
	owner   string
	version uint64
	value   []byte
	rec     epRecord
	err     error
	listing uint64 // the last decodeAll that saw the entry
}

// epDecodeSlack is how many cached entries that the latest listing did not
// see (deleted endpoints) may stay before they are dropped.
const epDecodeSlack = 256

// decodeAll returns decodeEndpoint's result for each entry of es (the
// caller's copies, as cluster.List returns them: the cache keeps them),
// decoding only those it has not decoded before.
func (c *epDecodeCache) decodeAll(es []cluster.Entry, each func(e cluster.Entry, rec epRecord, err error)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.decodeAllLocked(es, each)
}

// decodeAllLocked is decodeAll for callers that hold c.mu.
func (c *epDecodeCache) decodeAllLocked(es []cluster.Entry, each func(e cluster.Entry, rec epRecord, err error)) {
	if c.m == nil {
		c.m = map[string]*epDecoded{}
	}
	c.listing++
	for _, e := range es {
		x := c.m[e.Key]
		if x == nil || x.owner != e.Owner || x.version != e.Version || !bytes.Equal(x.value, e.Value) {
			rec, err := decodeEndpoint(e)
			c.decodes++
			x = &epDecoded{owner: e.Owner, version: e.Version, value: e.Value, rec: rec, err: err}
			c.m[e.Key] = x
		}
		x.listing = c.listing
		each(e, x.rec, x.err)
	}
	if len(c.m) > len(es)+epDecodeSlack {
		for k, x := range c.m {
			if x.listing != c.listing {
				delete(c.m, k)
			}
		}
	}
}
