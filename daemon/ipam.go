package daemon

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// defaultPool is where networks created without --subnet get a /24, as
// Docker's default address pool for overlay networks does.
var defaultPool = netip.MustParsePrefix("10.0.0.0/8")

// overlaps reports whether two prefixes share any address.
func overlaps(a, b netip.Prefix) bool {
	return a.Overlaps(b)
}

// pickSubnet returns the first /24 of the default pool that overlaps none
// of used.
func pickSubnet(used []netip.Prefix) (netip.Prefix, error) {
	base := defaultPool.Addr().As4()
	for i := 0; i < 1<<16; i++ {
		cand := netip.PrefixFrom(netip.AddrFrom4([4]byte{base[0], byte(i >> 8), byte(i), 0}), 24)
		free := true
		for _, u := range used {
			if overlaps(cand, u) {
				free = false
				break
			}
		}
		if free {
			return cand, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("the default address pool %s is exhausted", defaultPool)
}

// firstHost returns the first usable address of p (the network address + 1).
func firstHost(p netip.Prefix) netip.Addr {
	return p.Masked().Addr().Next()
}

// broadcastAddr returns the last address of an IPv4 prefix.
func broadcastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// usableHost reports whether a is a host address of p: inside it and
// neither its network nor its broadcast address.
func usableHost(p netip.Prefix, a netip.Addr) bool {
	if !a.Is4() || !p.Contains(a) {
		return false
	}
	if p.Bits() >= 31 {
		return true
	}
	return a != p.Masked().Addr() && a != broadcastAddr(p)
}

// allocate returns the lowest address of block that is a usable host
// address of subnet and not in used.
func allocate(block netip.Prefix, used map[netip.Addr]bool, subnet netip.Prefix) (netip.Addr, error) {
	return allocateFunc(block, func(a netip.Addr) bool { return used[a] }, subnet)
}

// allocateFunc is allocate with taken in place of the used set.
func allocateFunc(block netip.Prefix, taken func(netip.Addr) bool, subnet netip.Prefix) (netip.Addr, error) {
	block = block.Masked()
	for a := block.Addr(); block.Contains(a); a = a.Next() {
		if usableHost(subnet, a) && !taken(a) {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no free address left in %s", block)
}

// Address blocks: a node hands out addresses only from the blocks of the
// subnet it holds in the cluster's block table (cluster.ClaimBlockFunc), so
// two nodes never hand out the same address. Blocks are small and of one
// size per subnet, claimed one at a time as a node needs addresses and
// given back when empty (releaseEmptyBlocks).
//
// The size is fixed per subnet rather than grown with a node's use: every
// freed block then fits any node, a busy node's blocks never fragment the
// subnet for the others, and which block an address belongs to stays a
// function of the address (checked by every node on every record). The
// cost is one claim round (a round trip to every member) per block's worth
// of new addresses: per 14-16 containers on a /28.
const (
	// largestBlockBits is the block size of large subnets: a /28 (16
	// addresses), so a /16 holds 4,096 blocks.
	largestBlockBits = 28
	// smallestBlockBits bounds how far small subnets are cut: a /30 (4
	// addresses).
	smallestBlockBits = 30
	// minBlocksBits is log2 of how many blocks a subnet is cut into at least, when the
	// blocks can stay at or above smallestBlockBits: a /24 into 32 /29s,
	// so more than sixteen hosts can run containers on it.
	minBlocksBits = 5
)

// blockBits is the prefix length of the address blocks nodes claim in a
// subnet: /28 blocks in subnets of /23 and larger, smaller ones (at least
// 32 per subnet, down to /30) in smaller subnets, and the whole subnet when
// it is a /30 or smaller.
func blockBits(subnet netip.Prefix) int {
	b := max(subnet.Bits()+minBlocksBits, largestBlockBits)
	b = min(b, smallestBlockBits)
	return max(b, subnet.Bits())
}

// holderOf returns the claimed block of blocks (a network's block table,
// block -> holder) that holds a, and its holder. Blocks of any size count:
// a node of the previous version claimed one large block per host. When
// blocks of several sizes hold a (claimed during a partition), the largest
// decides, the same on every node.
func holderOf(blocks map[netip.Prefix]string, a netip.Addr) (netip.Prefix, string, bool) {
	for bits := 0; bits <= a.BitLen(); bits++ {
		p, _ := a.Prefix(bits)
		if holder, ok := blocks[p]; ok {
			return p, holder, true
		}
	}
	return netip.Prefix{}, "", false
}

// blockSizes lists the prefix lengths of blocks, shortest first: holderOf
// need only look at those (holderOfSized).
func blockSizes(blocks map[netip.Prefix]string) []int {
	var out []int
	for b := range blocks {
		if !slices.Contains(out, b.Bits()) {
			out = append(out, b.Bits())
		}
	}
	slices.Sort(out)
	return out
}

// holderOfSized is holderOf for blocks whose prefix lengths are sizes
// (blockSizes): one look-up per size instead of one per prefix length.
func holderOfSized(blocks map[netip.Prefix]string, sizes []int, a netip.Addr) (netip.Prefix, string, bool) {
	for _, bits := range sizes {
		p, _ := a.Prefix(bits)
		if holder, ok := blocks[p]; ok {
			return p, holder, true
		}
	}
	return netip.Prefix{}, "", false
}

// macForIP derives the endpoint MAC from its IPv4 address the way Docker
// does: 02:42 followed by the four address bytes.
func macForIP(a netip.Addr) [6]byte {
	b := a.As4()
	return [6]byte{0x02, 0x42, b[0], b[1], b[2], b[3]}
}

// defaultBlockHoldDown is how long a block of this node's stays claimed
// after its last address was freed, so that a run right after an rm
// does not give the block back and claim it again.
const defaultBlockHoldDown = 10 * time.Second

// blockSweepInterval bounds how often releaseEmptyBlocks looks at the
// blocks (it runs after each reconcile).
const blockSweepInterval = time.Second

// blockRef names one block of one network.
type blockRef struct {
	network string
	block   netip.Prefix
}

// blockTracker is the daemon's state of its own blocks' release; d.mu
// guards it. The maps are made on first use.
type blockTracker struct {
	// emptySince is when each held block was first seen without an
	// address in use.
	emptySince map[blockRef]time.Time
	// releasing are the blocks being given back: nothing is allocated
	// from them.
	releasing map[blockRef]bool
	// busy counts, by network, the allocations between choosing and
	// reserving an address (a block claimed for them is empty until
	// then).
	busy      map[string]int
	lastSweep time.Time
}

// isReleasing reports whether a lies in a block of network being given
// back; callers hold d.mu.
func (t *blockTracker) isReleasing(network string, a netip.Addr) bool {
	for r := range t.releasing {
		if r.network == network && r.block.Contains(a) {
			return true
		}
	}
	return false
}

// inUse notes that a of network is taken again: the hold-down of its
// block starts over from the next time it is found empty; callers hold
// d.mu.
func (t *blockTracker) inUse(network string, a netip.Addr) {
	for r := range t.emptySince {
		if r.network == network && r.block.Contains(a) {
			delete(t.emptySince, r)
		}
	}
}

// setBusy counts an allocation on network in (+1) or out (-1); callers
// hold d.mu.
func (t *blockTracker) setBusy(network string, delta int) {
	if t.busy == nil {
		t.busy = map[string]int{}
	}
	t.busy[network] += delta
	if t.busy[network] <= 0 {
		delete(t.busy, network)
	}
}

// emptyBlocks returns the blocks of held in which no address of used
// other than the gateway gw lies.
func emptyBlocks(held []netip.Prefix, used map[netip.Addr]bool, gw netip.Addr) []netip.Prefix {
	sizes := map[int]bool{}
	for _, b := range held {
		sizes[b.Bits()] = true
	}
	inUse := map[netip.Prefix]bool{}
	for a := range used {
		if a == gw {
			continue
		}
		for bits := range sizes {
			p, _ := a.Prefix(bits)
			inUse[p] = true
		}
	}
	var out []netip.Prefix
	for _, b := range held {
		if !inUse[b] {
			out = append(out, b)
		}
	}
	return out
}

// emptyHeldBlocks is emptyBlocks(held, d.usedIPs(n), n.gw) without a walk
// of every address when it can: a block of the network's block size in
// which this node has an endpoint (the kept per-block counts) is in use,
// so only the other blocks are looked at with the full list, made only if
// there are any. It runs after every reconcile pass. Callers hold d.mu.
func (d *Daemon) emptyHeldBlocks(n *localNetwork, held []netip.Prefix) []netip.Prefix {
	d.ipTaken(n) // brings the per-block counts up to date
	var unsure []netip.Prefix
	for _, b := range held {
		if d.localInBlock[n.rec.Name][b.Masked()] == 0 {
			unsure = append(unsure, b)
		}
	}
	if len(unsure) == 0 {
		return nil
	}
	return emptyBlocks(unsure, d.usedIPs(n), n.gw)
}

// blocksToRelease decides, at now, which of this node's blocks have been
// empty for the hold-down and marks them releasing; callers hold d.mu.
func (d *Daemon) blocksToRelease(now time.Time) []blockRef {
	t := &d.blocks
	if t.emptySince == nil {
		t.emptySince, t.releasing = map[blockRef]time.Time{}, map[blockRef]bool{}
	}
	holdDown := d.cfg.blockHoldDown
	if holdDown <= 0 {
		holdDown = defaultBlockHoldDown
	}
	seen := map[blockRef]bool{}
	var out []blockRef
	for name, n := range d.networks {
		held := d.cl.ClaimedBlocks(name)
		if len(held) == 0 || t.busy[name] > 0 {
			continue
		}
		for _, b := range d.emptyHeldBlocks(n, held) {
			r := blockRef{name, b}
			seen[r] = true
			since, ok := t.emptySince[r]
			switch {
			case t.releasing[r]:
			case !ok:
				t.emptySince[r] = now
			case now.Sub(since) >= holdDown:
				t.releasing[r] = true
				out = append(out, r)
			}
		}
	}
	for r := range t.emptySince {
		if !seen[r] || t.releasing[r] {
			delete(t.emptySince, r)
		}
	}
	return out
}

// releaseEmptyBlocks gives back the blocks of this node that have held no
// address for the hold-down, so that other nodes can claim them. It takes
// d.mu itself; the releases are cluster writes made without it.
func (d *Daemon) releaseEmptyBlocks(now time.Time) {
	d.mu.Lock()
	if now.Sub(d.blocks.lastSweep) < blockSweepInterval {
		d.mu.Unlock()
		return
	}
	d.blocks.lastSweep = now
	rel := d.blocksToRelease(now)
	d.mu.Unlock()
	for _, r := range rel {
		if err := d.cl.ReleaseBlock(r.network, r.block); err != nil {
			d.log.Warn("releasing an empty address block", "network", r.network, "block", r.block, "err", err)
		} else {
			d.log.Debug("released an empty address block", "network", r.network, "block", r.block)
		}
	}
	d.mu.Lock()
	for _, r := range rel {
		delete(d.blocks.releasing, r)
	}
	d.mu.Unlock()
}

// noBlockCause is the reason a block claim failed, without the network
// name the caller's message already gives.
func noBlockCause(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, ": "); i >= 0 && strings.HasPrefix(msg, "network ") {
		return msg[i+2:]
	}
	return msg
}
