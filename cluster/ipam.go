package cluster

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// ipamTable is the node-scoped table of IPAM block claims. Each claim is its
// own entry, keyed "<network>|<block>|<node>", so claims never overwrite each
// other; the winner of a block is decided by claimWinner.
const ipamTable = "ipam-blocks"

// maxClaimAttempts bounds how many blocks one ClaimBlock call tries.
const maxClaimAttempts = 16

func claimPrefix(network string, block netip.Prefix) string {
	return network + "|" + block.String() + "|"
}

// parseClaim returns the network and block of a claim entry.
func parseClaim(e *Entry) (network string, block netip.Prefix, ok bool) {
	rest, found := strings.CutSuffix(e.Key, "|"+e.Owner)
	if !found {
		return "", netip.Prefix{}, false
	}
	i := strings.LastIndexByte(rest, '|')
	if i < 0 {
		return "", netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(rest[i+1:])
	if err != nil {
		return "", netip.Prefix{}, false
	}
	return rest[:i], p, true
}

// claimWinner is the deterministic winner among claims of one block: the
// earliest claim (lowest Lamport version), then the lower node name. Lamport
// order makes "earliest" causal: a node that saw a claim before writing its
// own always writes a higher version.
func claimWinner(claims []*Entry) *Entry {
	var w *Entry
	for _, e := range claims {
		if w == nil || e.Version < w.Version || (e.Version == w.Version && e.Owner < w.Owner) {
			w = e
		}
	}
	return w
}

// claimsLocked returns the live claims of network, by block.
func (c *Cluster) claimsLocked(network string) map[netip.Prefix][]*Entry {
	out := map[netip.Prefix][]*Entry{}
	for k, r := range c.entries {
		if k.table != ipamTable || r.Deleted {
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
	out := map[netip.Prefix]string{}
	for b, claims := range c.claimsLocked(network) {
		out[b] = claimWinner(claims).Owner
	}
	return out
}

// ReleaseBlock gives up this node's claim on block of network.
func (c *Cluster) ReleaseBlock(network string, block netip.Prefix) error {
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	c.mu.Lock()
	delete(c.settled, claimPrefix(network, block))
	c.mu.Unlock()
	return c.Delete(ipamTable, claimPrefix(network, block)+c.cfg.NodeName)
}

// nthBlock returns the idx-th block of size bits in subnet.
func nthBlock(subnet netip.Prefix, bits int, idx uint64) netip.Prefix {
	a := subnet.Addr()
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
// member it sees alive and waits until each has answered with the claims it
// knows for that block (a member that stops answering must first be declared
// dead by failure detection; until then ClaimBlock fails with an error after
// Config.ClaimTimeout). The earliest claim (Lamport version, then node name)
// wins, and a block that a node already holds after such a round is never
// given up to a later claim. Hence two nodes that see each other as alive can
// never both obtain the same block, however their calls interleave; the loser
// withdraws its claim and tries another block.
//
// During a partition each side only confirms with the nodes it can reach, so
// two sides can claim the same free block. After the partition heals, Blocks
// reports the single winner everywhere; ClaimedBlocks lets a node check which
// of its blocks it still wins. Claims vanish with their node (node-scoped
// table), so blocks of a node dead for NodeGrace become free again.
func (c *Cluster) ClaimBlock(network string, subnet netip.Prefix, blockBits int) (netip.Prefix, error) {
	if !subnet.IsValid() {
		return netip.Prefix{}, fmt.Errorf("network %q: invalid subnet", network)
	}
	subnet = subnet.Masked()
	if blockBits < subnet.Bits() || blockBits > subnet.Addr().BitLen() {
		return netip.Prefix{}, fmt.Errorf("network %q: block size /%d does not fit subnet %s", network, blockBits, subnet)
	}
	if network == "" || len(claimPrefix(network, subnet))+len(c.cfg.NodeName) > maxKeyLen {
		return netip.Prefix{}, fmt.Errorf("network %q: invalid name", network)
	}
	c.claimMu.Lock()
	defer c.claimMu.Unlock()

	// Take the lowest free block, so that addresses are handed out in
	// order as users expect (.2 first); nodes that claim the same block at
	// the same moment are sorted out by the confirmation round below.
	n := blockBits - subnet.Bits()
	total := uint64(1) << min(n, 24)
	start := uint64(0)

	tried := map[netip.Prefix]bool{}
	for attempt := 0; attempt < maxClaimAttempts; attempt++ {
		c.mu.Lock()
		claimed := c.claimsLocked(network)
		c.mu.Unlock()
		var block netip.Prefix
		for i := uint64(0); i < total; i++ {
			b := nthBlock(subnet, blockBits, (start+i)%total)
			if len(claimed[b]) == 0 && !tried[b] {
				block = b
				break
			}
		}
		if !block.IsValid() {
			return netip.Prefix{}, fmt.Errorf("network %q: no free /%d block left in %s", network, blockBits, subnet)
		}
		key := claimPrefix(network, block) + c.cfg.NodeName
		if err := c.Put(ipamTable, key, nil); err != nil {
			return netip.Prefix{}, err
		}
		won, err := c.settleClaim(network, block)
		if err != nil || !won {
			c.Delete(ipamTable, key)
		}
		if err != nil {
			return netip.Prefix{}, err
		}
		if won {
			c.mu.Lock()
			c.settled[claimPrefix(network, block)] = true
			c.mu.Unlock()
			return block, nil
		}
		tried[block] = true
		c.log.Debug("lost block claim, trying another", "network", network, "block", block)
	}
	return netip.Prefix{}, fmt.Errorf("network %q: could not claim a /%d block of %s after %d conflicts", network, blockBits, subnet, maxClaimAttempts)
}

// ClaimedBlocks returns the blocks of network this node has claimed and
// still wins, lowest first (so addresses are handed out in order).
func (c *Cluster) ClaimedBlocks(network string) []netip.Prefix {
	var out []netip.Prefix
	for b, owner := range c.Blocks(network) {
		if owner == c.cfg.NodeName {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

// settleClaim runs the confirmation round of ClaimBlock and decides.
func (c *Cluster) settleClaim(network string, block netip.Prefix) (bool, error) {
	prefix := claimPrefix(network, block)
	c.mu.Lock()
	r := c.entries[tkey{ipamTable, prefix + c.cfg.NodeName}]
	if r == nil || r.Deleted {
		c.mu.Unlock()
		return false, nil
	}
	mine := r.Entry.clone()
	c.nextID++
	id := c.nextID
	peers := map[string]*memberlist.Node{}
	for _, mi := range c.members {
		if mi.state == StateAlive && mi.name != c.cfg.NodeName {
			peers[mi.name] = &memberlist.Node{Name: mi.name, Addr: mi.addr.Addr().AsSlice(), Port: mi.addr.Port()}
		}
	}
	ch := make(chan *message, len(peers)+1)
	c.waiters[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, id)
		c.mu.Unlock()
	}()

	req := (&message{Type: msgClaimReq, ID: id, From: c.cfg.NodeName, Entries: []Entry{mine}}).encode()
	for _, p := range peers {
		c.spawn(func() {
			if err := c.sendReliable(p, req); err != nil {
				c.log.Debug("send block claim", "node", p.Name, "err", err)
			}
		})
	}
	held := false
	deadline := time.NewTimer(c.cfg.ClaimTimeout)
	defer deadline.Stop()
	recheck := time.NewTicker(50 * time.Millisecond)
	defer recheck.Stop()
	for len(peers) > 0 {
		select {
		case m := <-ch:
			held = held || m.Held
			delete(peers, m.From)
		case <-recheck.C:
			// Members declared dead meanwhile no longer need to answer.
			c.mu.Lock()
			for name := range peers {
				if mi := c.members[name]; mi == nil || mi.state != StateAlive {
					delete(peers, name)
				}
			}
			c.mu.Unlock()
		case <-deadline.C:
			names := make([]string, 0, len(peers))
			for name := range peers {
				names = append(names, name)
			}
			return false, fmt.Errorf("network %q: claim of block %s not confirmed by %s within %v", network, block, strings.Join(names, ", "), c.cfg.ClaimTimeout)
		case <-c.stop:
			return false, errors.New("cluster is closed")
		}
	}
	if held {
		return false, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w := claimWinner(c.claimsLocked(network)[block])
	return w != nil && w.Owner == c.cfg.NodeName, nil
}

// answerClaim replies to a claim request with every claim this node knows
// for the block (the request's claim is already merged) and whether this
// node holds the block after its own confirmation round.
func (c *Cluster) answerClaim(req *message) {
	if len(req.Entries) != 1 || req.Entries[0].Table != ipamTable {
		return
	}
	network, block, ok := parseClaim(&req.Entries[0])
	if !ok {
		return
	}
	c.mu.Lock()
	resp := &message{Type: msgClaimResp, ID: req.ID, From: c.cfg.NodeName, Held: c.settled[claimPrefix(network, block)]}
	for _, e := range c.claimsLocked(network)[block] {
		resp.Entries = append(resp.Entries, *e)
	}
	mi := c.members[req.From]
	var to *memberlist.Node
	if mi != nil {
		to = &memberlist.Node{Name: mi.name, Addr: mi.addr.Addr().AsSlice(), Port: mi.addr.Port()}
	}
	c.mu.Unlock()
	if to == nil {
		return
	}
	b := resp.encode()
	c.spawn(func() {
		if err := c.sendReliable(to, b); err != nil {
			c.log.Debug("answer block claim", "node", to.Name, "err", err)
		}
	})
}

// ClaimBlockAt makes this node hold block of network's subnet, with the
// same confirmation round as ClaimBlock: a node whose endpoints keep their
// addresses across a restart claims their blocks again, and an address
// asked for explicitly is taken only from a block this node can hold. It
// fails, naming the holder, when another node holds the block.
func (c *Cluster) ClaimBlockAt(network string, subnet, block netip.Prefix) error {
	if !subnet.IsValid() || !block.IsValid() || block.Bits() < subnet.Bits() || !subnet.Contains(block.Addr()) || block != block.Masked() {
		return fmt.Errorf("network %q: block %s is not a block of %s", network, block, subnet)
	}
	if network == "" || len(claimPrefix(network, block))+len(c.cfg.NodeName) > maxKeyLen {
		return fmt.Errorf("network %q: invalid name", network)
	}
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	holder, held := c.Blocks(network)[block]
	switch {
	case held && holder == c.cfg.NodeName:
		return nil
	case held:
		return fmt.Errorf("network %q: address block %s is held by node %q", network, block, holder)
	}
	key := claimPrefix(network, block) + c.cfg.NodeName
	if err := c.Put(ipamTable, key, nil); err != nil {
		return err
	}
	won, err := c.settleClaim(network, block)
	if err != nil || !won {
		c.Delete(ipamTable, key)
	}
	if err != nil {
		return err
	}
	if !won {
		return fmt.Errorf("network %q: address block %s was claimed by another node first", network, block)
	}
	c.mu.Lock()
	c.settled[claimPrefix(network, block)] = true
	c.mu.Unlock()
	return nil
}

// KeepBlock records this node's claim on block of network without a
// confirmation round, for a block its endpoints already use: after a
// restart the claims of the previous run are overwritten by the cluster,
// while the endpoints keep their addresses. It writes nothing and returns
// an error naming the holder when another node holds the block.
func (c *Cluster) KeepBlock(network string, subnet, block netip.Prefix) error {
	if !subnet.IsValid() || !block.IsValid() || block.Bits() < subnet.Bits() || !subnet.Contains(block.Addr()) || block != block.Masked() {
		return fmt.Errorf("network %q: block %s is not a block of %s", network, block, subnet)
	}
	if network == "" || len(claimPrefix(network, block))+len(c.cfg.NodeName) > maxKeyLen {
		return fmt.Errorf("network %q: invalid name", network)
	}
	c.claimMu.Lock()
	defer c.claimMu.Unlock()
	switch holder, held := c.Blocks(network)[block]; {
	case held && holder == c.cfg.NodeName:
		return nil
	case held:
		return fmt.Errorf("network %q: address block %s is held by node %q", network, block, holder)
	}
	return c.Put(ipamTable, claimPrefix(network, block)+c.cfg.NodeName, nil)
}
