package cluster

import (
	"errors"
	"fmt"
	"maps"
	"math/big"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
)

// ipamTable is the node-scoped table of IPAM block claims. Each claim is its
// own entry, keyed "<network>|<block>|<node>", so claims never overwrite each
// other; the winner of a block is decided by claimWinner.
const ipamTable = "ipam-blocks"

// maxClaimAttempts bounds how many blocks one ClaimBlock call tries.
const maxClaimAttempts = 16

// parseClaim returns the network and block of a claim entry.
func parseClaim(e *Entry) (network string, block netip.Prefix, ok bool) {
	network, res, ok := parseClaimKey(e)
	if !ok {
		return "", netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(res)
	if err != nil {
		return "", netip.Prefix{}, false
	}
	return network, p, true
}

// blocksOverlap is the conflict rule of the block claim table: two claimed
// blocks exclude each other when they share an address, whatever their
// sizes (a small block inside a large one claimed by a node of the previous
// version, or an explicit address's block inside another). Resources that
// are not prefixes conflict only with themselves.
func blocksOverlap(a, b string) bool {
	pa, err := netip.ParsePrefix(a)
	pb, err2 := netip.ParsePrefix(b)
	if err != nil || err2 != nil {
		return a == b
	}
	return pa.Overlaps(pb)
}

// overlapIndex answers which claimed blocks overlap a candidate block.
type overlapIndex map[netip.Prefix][]*Entry

// covering returns the winning claim of a block that overlaps b (b
// itself, a block containing it, or one inside it), or nil.
func (idx overlapIndex) covering(b netip.Prefix) *Entry {
	return idx.coveringSized(b, idx.sizes())
}

// coveringSized is covering with the sizes of idx found already.
func (idx overlapIndex) coveringSized(b netip.Prefix, sz claimSizes) *Entry {
	for bits := b.Bits(); bits >= 0; bits-- {
		p, _ := b.Addr().Prefix(bits)
		if w := claimWinner(idx[p]); w != nil {
			return w
		}
	}
	// Blocks inside b: looked up one by one when there are few (a claim
	// asks for every block up to the lowest free one), else walked.
	var w *Entry
	take := func(claims []*Entry) {
		if e := claimWinner(claims); e != nil && (w == nil || earlier(e, w)) {
			w = e
		}
	}
	if sz.inside(b) {
		base := b.Addr().As4()
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		for _, l := range sz.lens {
			if l <= b.Bits() {
				continue
			}
			for k := uint32(0); k < 1<<(l-b.Bits()); k++ {
				a := v + k<<(32-l)
				take(idx[netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), l)])
			}
		}
		return w
	}
	for p, claims := range idx {
		if p.Bits() > b.Bits() && b.Contains(p.Addr()) {
			take(claims)
		}
	}
	return w
}

// claimSizes describes the blocks of an overlapIndex for covering: the
// prefix lengths claimed, and whether every block is masked.
type claimSizes struct {
	lens   []int
	masked bool
}

// sizes returns the claimSizes of idx.
func (idx overlapIndex) sizes() claimSizes {
	sz := claimSizes{masked: true}
	for p := range idx {
		if !slices.Contains(sz.lens, p.Bits()) {
			sz.lens = append(sz.lens, p.Bits())
		}
		if p != p.Masked() {
			sz.masked = false
		}
	}
	return sz
}

// maxInside bounds how many prefixes inside a block covering looks up
// one by one.
const maxInside = 256

// inside reports whether covering may look up the blocks inside b one by
// one: b is a masked IPv4 block, the claimed blocks are masked, and at most
// maxInside prefixes of the claimed lengths lie inside b.
func (sz claimSizes) inside(b netip.Prefix) bool {
	if !sz.masked || !b.Addr().Is4() || b != b.Masked() {
		return false
	}
	n := 0
	for _, l := range sz.lens {
		if l > b.Bits() {
			if l-b.Bits() > 8 {
				return false
			}
			n += 1 << (l - b.Bits())
		}
	}
	return n <= maxInside
}

// claimWinner is the deterministic winner among claims of one block: the
// earliest claim (see earlier).
func claimWinner(claims []*Entry) *Entry {
	var w *Entry
	for _, e := range claims {
		if w == nil || earlier(e, w) {
			w = e
		}
	}
	return w
}

// claimsLocked returns the live claims of network, by block.
func (c *Cluster) claimsLocked(network string) map[netip.Prefix][]*Entry {
	blocks := c.claims.nets[network]
	out := make(map[netip.Prefix][]*Entry, len(blocks))
	for b, recs := range blocks {
		for _, r := range recs {
			e := r.Entry
			out[b] = append(out[b], &e)
		}
	}
	return out
}

// claimsWalkLocked is claimsLocked derived from every record of the
// table (the reference the index is tested against).
func (c *Cluster) claimsWalkLocked(network string) map[netip.Prefix][]*Entry {
	out := map[netip.Prefix][]*Entry{}
	for _, r := range c.recsLocked(ipamTable) {
		if r.Deleted {
			continue
		}
		if n, b, ok := parseClaim(&r.Entry); ok && n == network {
			e := r.Entry
			out[b] = append(out[b], &e)
		}
	}
	return out
}

// Blocks returns the claimed blocks of network and their owner (the winner
// when several nodes claimed the same block).
func (c *Cluster) Blocks(network string) map[netip.Prefix]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.blocksLocked(network))
}

// blocksMemo is the block table of one network as derived at a revision
// of the claims table.
type blocksMemo struct {
	rev    uint64
	owners map[netip.Prefix]string
}

// blocksLocked is Blocks, shared: callers only read it. Every attach
// asks for it (the endpoint set, the allocation), and deriving it parses
// every claim of the table, so it is kept until the claims table changes
// (its revision). c.mu must be held.
func (c *Cluster) blocksLocked(network string) map[netip.Prefix]string {
	rev := c.revLocked(ipamTable)
	if m, ok := c.blocks[network]; ok && m.rev == rev {
		return m.owners
	}
	out := map[netip.Prefix]string{}
	for b, claims := range c.claimsLocked(network) {
		out[b] = claimWinner(claims).Owner
	}
	if c.blocks == nil {
		c.blocks = map[string]blocksMemo{}
	}
	if len(c.blocks) > maxBlocksMemo {
		clear(c.blocks)
	}
	c.blocks[network] = blocksMemo{rev: rev, owners: out}
	return out
}

// maxBlocksMemo bounds the networks blocksLocked keeps a table of
// (networks that were removed are forgotten when it is reached).
const maxBlocksMemo = 1024

// ReleaseBlock gives up this node's claim on block of network.
func (c *Cluster) ReleaseBlock(network string, block netip.Prefix) error {
	return c.ReleaseClaim(ipamTable, network, block.String())
}

// nthBlock returns the idx-th block of size bits in subnet.
func nthBlock(subnet netip.Prefix, bits int, idx uint64) netip.Prefix {
	a := subnet.Addr()
	if a.Is4() { // without big.Int: a claim walks every block held
		b := a.As4()
		v := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
		v += idx << (32 - bits)
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), bits)
	}
	raw := a.AsSlice()
	v := new(big.Int).SetBytes(raw)
	off := new(big.Int).Lsh(new(big.Int).SetUint64(idx), uint(a.BitLen()-bits))
	v.Add(v, off)
	out := v.FillBytes(make([]byte, len(raw)))
	na, _ := netip.AddrFromSlice(out)
	return netip.PrefixFrom(na, bits)
}

// ClaimBlock claims a free block of blockBits bits (e.g. 26 for a /26) of the
// subnet of network for this node and returns it. The node may then allocate
// addresses from it alone. Each call claims one more block.
//
// Guarantee: after writing its claim, the node sends it over TCP to every
// member whose claims still count (all but those that left or have been
// dead for Config.NodeGrace) and waits until each has answered with the
// claims it knows for that block. An alive member that does not answer
// makes ClaimBlock fail with an error after Config.ClaimTimeout; a member
// declared dead is waited for until it answers or has been dead for
// NodeGrace, because failure detection on a busy host can declare a live
// member dead for a moment, and that member may be claiming the same block.
// The earliest claim (Lamport version, then node name) wins, and a block
// that a node already holds after such a round is never given up to a later
// claim. Hence two nodes that have not each been cut off from the other for
// NodeGrace can never both obtain the same block, however their calls
// interleave; the loser withdraws its claim and tries another block.
//
// During a partition longer than NodeGrace each side only confirms with the
// nodes it can reach, so two sides can claim the same free block. After the partition heals, Blocks
// reports the single winner everywhere; ClaimedBlocks lets a node check which
// of its blocks it still wins. Claims vanish with their node (node-scoped
// table), so blocks of a node dead for NodeGrace become free again.
func (c *Cluster) ClaimBlock(network string, subnet netip.Prefix, blockBits int) (netip.Prefix, error) {
	return c.ClaimBlockFunc(network, subnet, blockBits, nil)
}

// ClaimBlockFunc is ClaimBlock limited to the blocks for which usable (when
// not nil) returns true, so that a caller never claims a block it cannot
// allocate from (one whose addresses are all in use already).
func (c *Cluster) ClaimBlockFunc(network string, subnet netip.Prefix, blockBits int, usable func(netip.Prefix) bool) (netip.Prefix, error) {
	if !subnet.IsValid() {
		return netip.Prefix{}, fmt.Errorf("network %q: invalid subnet", network)
	}
	subnet = subnet.Masked()
	if blockBits < subnet.Bits() || blockBits > subnet.Addr().BitLen() {
		return netip.Prefix{}, fmt.Errorf("network %q: block size /%d does not fit subnet %s", network, blockBits, subnet)
	}
	if err := c.checkBlockName(network, subnet); err != nil {
		return netip.Prefix{}, err
	}
	c.claimMu.Lock()
	defer c.claimMu.Unlock()

	// Take the lowest free block, so that addresses are handed out in
	// order as users expect (.2 first); nodes that claim the same block at
	// the same moment are sorted out by the confirmation round.
	n := blockBits - subnet.Bits()
	total := uint64(1) << min(n, 24)

	tried := map[netip.Prefix]bool{}
	for attempt := 0; attempt < maxClaimAttempts; attempt++ {
		c.mu.Lock()
		claimed := overlapIndex(c.claimsLocked(network))
		c.mu.Unlock()
		sz := claimed.sizes()
		// The first try takes the lowest free block. After a loss, the
		// other losers of that round are likely after the next one too:
		// each picks at random among the lowest free blocks, as many as
		// there are members, so that a cluster-wide scale-out settles in
		// a few rounds instead of one round per node.
		want := 1
		if attempt > 0 {
			want = max(int(c.alive.Load()), 2)
		}
		var cands []netip.Prefix
		for i := uint64(0); i < total && len(cands) < want; i++ {
			b := nthBlock(subnet, blockBits, i)
			if !tried[b] && claimed.coveringSized(b, sz) == nil && (usable == nil || usable(b)) {
				cands = append(cands, b)
			}
		}
		var block netip.Prefix
		if len(cands) > 0 {
			block = cands[rand.IntN(len(cands))]
		}
		if !block.IsValid() {
			return netip.Prefix{}, fmt.Errorf("network %q: no free /%d block left in %s", network, blockBits, subnet)
		}
		err := c.claimLocked(ipamTable, network, block.String())
		if err == nil {
			return block, nil
		}
		if _, lost := err.(*ClaimConflict); !lost {
			return netip.Prefix{}, fmt.Errorf("network %q: %w", network, err)
		}
		tried[block] = true
		c.log.Debug("lost block claim, trying another", "network", network, "block", block)
	}
	return netip.Prefix{}, fmt.Errorf("network %q: could not claim a /%d block of %s after %d conflicts", network, blockBits, subnet, maxClaimAttempts)
}

// ClaimBlockAt claims the given block of network for this node, with the
// guarantee of ClaimBlock. It succeeds at once when this node already
// holds the block, and fails naming the holder when another node does.
func (c *Cluster) ClaimBlockAt(network string, block netip.Prefix) error {
	return c.holdBlock(network, block, func() error {
		err := c.claimLocked(ipamTable, network, block.String())
		var lost *ClaimConflict
		if errors.As(err, &lost) {
			return heldBy(network, block, lost.Node)
		}
		if err != nil {
			return fmt.Errorf("network %q: %w", network, err)
		}
		return nil
	})
}

// holdBlock checks block, then, holding claimMu, returns nil if this node
// already holds it, an error naming the holder if another node holds it or
// a block overlapping it, and otherwise what take returns.
func (c *Cluster) holdBlock(network string, block netip.Prefix, take func() error) error {
	if !block.IsValid() || block != block.Masked() {
		return fmt.Errorf("network %q: invalid block %s", network, block)
	}
	if err := c.checkBlockName(network, block); err != nil {
		return err
	}
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	c.mu.Lock()
	claims := overlapIndex(c.claimsLocked(network))
	c.mu.Unlock()
	w := claimWinner(claims[block])
	switch {
	case w != nil && w.Owner == c.cfg.NodeName:
		return nil
	case w != nil:
		return heldBy(network, block, w.Owner)
	}
	// A block overlapping another node's (of another size) is that
	// node's; one inside a larger block of this node's is held already.
	if o := claims.covering(block); o != nil {
		if o.Owner != c.cfg.NodeName {
			return heldBy(network, block, o.Owner)
		}
		for bits := block.Bits() - 1; bits >= 0; bits-- {
			if p, _ := block.Addr().Prefix(bits); claimWinner(claims[p]) == o {
				return nil
			}
		}
	}
	return take()
}

func heldBy(network string, block netip.Prefix, node string) error {
	return fmt.Errorf("network %q: address block %s is held by node %q", network, block, node)
}

// checkBlockName checks that claims of network fit a table key.
func (c *Cluster) checkBlockName(network string, p netip.Prefix) error {
	if network == "" || strings.Contains(network, "|") || len(claimKey(network, p.String()))+len(c.cfg.NodeName) > maxKeyLen {
		return fmt.Errorf("network %q: invalid name", network)
	}
	return nil
}

// ClaimedBlocks returns the blocks of network this node has claimed and
// still wins, lowest address first: the blocks it may allocate from.
//
// A block whose claim this node is still confirming is left out, although
// Blocks already names this node its winner: the round may yet lose it to
// an earlier claim of another node (which this node has not heard of
// until that node answers), and an address handed out from it meanwhile
// would then lie in the other node's block.
func (c *Cluster) ClaimedBlocks(network string) []netip.Prefix {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []netip.Prefix
	for b, owner := range c.blocksLocked(network) {
		if owner == c.cfg.NodeName && (c.claiming == "" || c.claiming != settledKey(ipamTable, network, b.String())) {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// KeepBlock records this node's claim on block of network without a
// confirmation round, for a block its endpoints already use: after a
// restart the claims of the previous run are overwritten by the cluster,
// while the endpoints keep their addresses. It writes nothing and returns
// an error naming the holder when another node holds the block.
func (c *Cluster) KeepBlock(network string, block netip.Prefix) error {
	return c.holdBlock(network, block, func() error {
		return c.Put(ipamTable, claimKey(network, block.String())+c.cfg.NodeName, nil)
	})
}
