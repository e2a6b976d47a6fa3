package daemon

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
)

// An endpoint's address is its node's only if it lies in an IPAM block that
// node holds (cluster.ClaimBlock): the block table decides who may use an
// address, never the order of node names. A record outside its node's
// blocks, or claiming an address another record claims too, is refused and
// reported; none of the conflicting records is preferred.

// endpointSet is the endpoints table as this node uses it.
type endpointSet struct {
	// accepted are this node's own records and the other nodes' records
	// that pass the block check. They are pointers to records never
	// changed, shared by the sets: a new set copies the list of pointers
	// (8 bytes per record), not the records.
	accepted []*epRecord
	// refused lists, by network, the other nodes' records refused, each as
	// "NAME@NODE IP: reason".
	refused map[string][]string
	// seq numbers the sets the incremental builder makes (0: made from
	// scratch), and keys are the table keys of accepted (set by the
	// builder only): see endpointSetSince.
	seq  uint64
	keys []string
}

// lookup returns the accepted record k, if any, by binary search on keys
// (a set made by the builder).
func (s endpointSet) lookup(k epID) (*epRecord, bool) {
	i, ok := slices.BinarySearch(s.keys, epKey(k.node, k.network, k.name))
	if !ok {
		return nil, false
	}
	return s.accepted[i], true
}

// blockOf returns the IPAM block of subnet that holds a.
func blockOf(subnet netip.Prefix, a netip.Addr) netip.Prefix {
	p, _ := a.Prefix(blockBits(subnet))
	return p
}

// endpointSetCache keeps the last endpointSet with the cluster generation
// it was computed at: one change (a run) asks for the set several times
// (the data plane, DNS, the mesh listeners, reconcile). A new generation
// updates the set incrementally (epSetBuilder). It has its own lock:
// endpointSet does not need d.mu.
type endpointSetCache struct {
	mu  sync.Mutex
	ok  bool
	gen uint64
	set endpointSet
	b   epSetBuilder
	// rev is the endpoint feed's revision the builder last took in.
	rev uint64
}

// endpointSet validates the endpoints table and checks every other node's
// record against the blocks its node holds; it depends only on the
// cluster's tables and membership, so it is derived again only when
// those changed (cluster.Generation), and then only for the records a
// change can affect. The set is shared: callers only read it. It does not
// need d.mu.
func (d *Daemon) endpointSet() endpointSet {
	c := &d.epSet
	c.mu.Lock()
	defer c.mu.Unlock()
	gen := d.cl.Generation() // before reading what the set is made of
	if c.ok && c.gen == gen {
		return c.set
	}
	in := d.endpointSetInput()
	var rev uint64
	in.recs, in.delta, rev = d.endpointsSince(c.rev)
	c.ok, c.gen, c.set, c.rev = true, gen, c.b.update(in), rev
	return c.set
}

// endpointSetSince is endpointSet, with the records (possibly more) whose
// accepted version may differ from the one in the set numbered seq, or
// false if that is not known (walk the whole set).
func (d *Daemon) endpointSetSince(seq uint64) (endpointSet, []epID, bool) {
	set := d.endpointSet()
	c := &d.epSet
	c.mu.Lock()
	defer c.mu.Unlock()
	// The builder may have made newer sets meanwhile: their changes are
	// a superset of set's.
	ids, ok := c.b.changedSince(seq)
	return set, ids, ok
}

// addrTaken reports whether a valid endpoint record (accepted or not) of
// the set's last derivation has address a on network.
func (c *endpointSetCache) addrTaken(network string, a netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.b.atAddr[epAt{network, a}]) > 0
}

// addrs calls f with each address that a valid endpoint record of the
// set's last derivation (accepted or not) has on network.
func (c *endpointSetCache) addrs(network string, f func(netip.Addr)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for at := range c.b.atAddr {
		if at.network == network {
			f(at.ip)
		}
	}
}

// endpointSetInput is what the endpoint set is derived from, read from
// the cluster now.
func (d *Daemon) endpointSetInput() epSetInput {
	return epSetInput{
		self: d.cfg.Node, nets: d.clusterNetworks(), blocksOf: d.cl.Blocks, recs: d.clusterEndpoints(),
		refuse: func(rec epRecord, err error) {
			d.refused.note(d.log, "endpoint-conflict", epKey(rec.Node, rec.Network, rec.Name), rec.Node, rec.version, err)
		},
	}
}

// computeEndpointSet is endpointSet derived from scratch.
func (d *Daemon) computeEndpointSet() endpointSet {
	return fullEndpointSet(d.endpointSetInput())
}

// checkOwnership reports why rec may not use ip on network nr, whose
// block table is blocks, if so.
func checkOwnership(rec epRecord, nr netRecord, ip netip.Addr, blocks map[netip.Prefix]string) error {
	subnet := netip.MustParsePrefix(nr.Subnet) // validated by decodeNetwork
	if !usableHost(subnet, ip) || ip.String() == nr.Gateway {
		return fmt.Errorf("address %s: not a host address of %s", ip, subnet)
	}
	switch b, holder, ok := holderOf(blocks, ip); {
	case !ok:
		return fmt.Errorf("address %s: block %s is held by no node", ip, blockOf(subnet, ip))
	case holder != rec.Node:
		return fmt.Errorf("address %s: block %s is held by node %q", ip, b, holder)
	}
	return nil
}

// heldCheck is the endpointsOf list and block table of a network at which
// holdBlocks found every endpoint's block held by this node.
type heldCheck struct {
	eps    []*endpoint
	blocks map[netip.Prefix]string
}

// holdBlocks makes this node hold the IPAM block of every address its
// endpoints use (and of the VIPs of the services it created): after a
// restart its claims from the previous run are gone (the cluster
// overwrites them), but the endpoints kept their addresses. A block
// another node holds is reported once: that endpoint's record is then
// refused by the other nodes.
//
// It decides under d.mu (blocksToKeep) and keeps the blocks without it:
// KeepBlock waits for a claim round of this node in progress (the
// cluster's claims are one at a time), which lasts seconds, or up to the
// node grace while a dead member is waited for; with d.mu held, every API
// request waited that long too. Callers do not hold d.mu.
func (d *Daemon) holdBlocks() {
	d.mu.Lock()
	var keep []blockKeep
	if !d.stopping {
		keep = d.blocksToKeep()
	}
	d.mu.Unlock()
	for _, k := range keep {
		if err := d.cl.KeepBlock(k.network, k.block); err != nil && k.what != "" {
			d.refused.note(d.log, "own-endpoint-conflict", epKey(d.cfg.Node, k.network, k.name), d.cfg.Node, 0,
				fmt.Errorf("this node's %s: the other nodes refuse it: %w", k.what, err))
		}
	}
}

// blockKeep is a block holdBlocks keeps, and what a refusal of it is
// reported as: the endpoint record name and the address's description
// ("" for a service VIP, not reported).
type blockKeep struct {
	network    string
	block      netip.Prefix
	name, what string
}

// blocksToKeep returns the blocks holdBlocks keeps, each once, in the
// order it keeps them: those of this node's endpoints (by container and
// interface name), of its gateway host addresses and of the VIPs of the
// services it created, where this node holds none. Callers hold d.mu.
func (d *Daemon) blocksToKeep() []blockKeep {
	held := map[string]map[netip.Prefix]string{}
	for name := range d.networks {
		held[name] = d.cl.Blocks(name)
	}
	var keep []blockKeep
	listed := map[blockRef]bool{}
	add := func(k blockKeep) {
		if r := (blockRef{k.network, k.block}); !listed[r] {
			listed[r] = true
			keep = append(keep, k)
		}
	}
	unheld := d.unheldEndpoints(held)
	sort.Slice(unheld, func(i, j int) bool {
		if a, b := unheld[i].ctr.name, unheld[j].ctr.name; a != b {
			return a < b
		}
		return unheld[i].ifname < unheld[j].ifname
	})
	for _, ep := range unheld {
		add(blockKeep{ep.net.rec.Name, blockOf(ep.net.subnet, ep.ip), ep.ctr.name, "endpoint " + ep.ip.String()})
	}
	// So do this node's gateway host addresses (the routing mesh).
	for _, n := range d.sortedNetworks() {
		if !n.gwHost.IsValid() {
			continue
		}
		name := n.rec.Name
		if held[name] == nil {
			held[name] = d.cl.Blocks(name)
		}
		if b := blockOf(n.subnet, n.gwHost); held[name][b] != d.cfg.Node {
			add(blockKeep{name, b, gatewayRecordName, "gateway host address " + n.gwHost.String()})
		}
	}
	// The VIPs of the services this node created came from its blocks:
	// it keeps them, so that no other node claims the block and hands a
	// VIP out before it learns the service (every node's usedIPs counts
	// the VIPs it knows).
	for _, s := range d.clusterServices() {
		if s.rec.CreatedBy != d.cfg.Node {
			continue
		}
		for network, vip := range s.vips {
			n := d.networks[network]
			if n == nil || !vip.IsValid() || !n.subnet.Contains(vip) {
				continue
			}
			if held[network] == nil {
				held[network] = d.cl.Blocks(network)
			}
			if _, _, ok := holderOf(held[network], vip); !ok {
				add(blockKeep{network: network, block: blockOf(n.subnet, vip)})
			}
		}
	}
	return keep
}

// unheldEndpoints returns this node's endpoints whose address lies in no
// block it holds in held (each network's block table), and notes in
// heldChecked the networks where there is none. A network's endpoints are
// looked at again only when they or its block table changed since every
// one was found held: then only the endpoints added since, and, when the
// table changed, those in the blocks that changed (a claim of a block
// changes one; looked up through the per-block counts). A pass per run
// over every endpoint cost O(endpoints) with d.mu held. Callers hold d.mu.
func (d *Daemon) unheldEndpoints(held map[string]map[netip.Prefix]string) []*endpoint {
	var unheld []*endpoint
	if d.heldChecked == nil {
		d.heldChecked = map[string]heldCheck{}
	}
	for name, n := range d.networks {
		eps := d.endpointsOf(n)
		hc, ok := d.heldChecked[name]
		sameBlocks := ok && maps.Equal(hc.blocks, held[name])
		if sameBlocks && sameEndpoints(hc.eps, eps) {
			continue
		}
		check := eps
		if sameBlocks || (ok && d.stillHeld(n, changedBlocks(hc.blocks, held[name]), held[name])) {
			_, check = diffEndpoints(hc.eps, eps)
		}
		sizes, all := blockSizes(held[name]), true
		for _, ep := range check {
			if _, holder, _ := holderOfSized(held[name], sizes, ep.ip); holder != d.cfg.Node {
				unheld, all = append(unheld, ep), false
			}
		}
		if all {
			d.heldChecked[name] = heldCheck{eps, maps.Clone(held[name])}
		} else {
			delete(d.heldChecked, name)
		}
	}
	for name := range d.heldChecked {
		if d.networks[name] == nil {
			delete(d.heldChecked, name)
		}
	}
	return unheld
}

// stillHeld reports whether every address of this node's endpoints on n
// that lies in one of the changed blocks is in a block this node holds in
// blocks (n's block table): the holder of an address outside them did not
// change. It answers false (look at every endpoint) when the changed
// blocks hold more addresses than n has endpoints. Callers hold d.mu.
func (d *Daemon) stillHeld(n *localNetwork, changed []netip.Prefix, blocks map[netip.Prefix]string) bool {
	d.ipTaken(n) // brings the kept addresses of endpointsOf(n) up to date
	local := d.ipsByNet[n.rec.Name]
	addrs, ok := blockAddrs(changed, len(local))
	if !ok {
		return false
	}
	sizes := blockSizes(blocks)
	for a := range addrs {
		if local[a] == 0 {
			continue
		}
		if _, holder, _ := holderOfSized(blocks, sizes, a); holder != d.cfg.Node {
			return false
		}
	}
	return true
}
