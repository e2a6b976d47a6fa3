package cluster

import "net/netip"

// claimIndex holds the live claims of the IPAM block table by network and
// block, parsed once when a claim is stored, changed or dropped
// (setLocked, touchLocked, dropLocked), so that a block claim looks at the
// claims of its network by block instead of parsing every claim of every
// network (claimsLocked, conflictingLocked). c.mu guards it.
type claimIndex struct {
	// at is where each indexed key is.
	at map[string]claimAt
	// nets holds, by network and block, the records of the live claims
	// by key (the same pointers as Cluster.entries).
	nets map[string]map[netip.Prefix]map[string]*record
}

// claimAt is the network and block of an indexed claim.
type claimAt struct {
	network string
	block   netip.Prefix
}

// update makes the index follow the record of key, r (nil when dropped):
// it is indexed when live and a claim of a block.
func (x *claimIndex) update(key string, r *record) {
	if old, ok := x.at[key]; ok {
		delete(x.at, key)
		blocks := x.nets[old.network]
		delete(blocks[old.block], key)
		if len(blocks[old.block]) == 0 {
			delete(blocks, old.block)
		}
		if len(blocks) == 0 {
			delete(x.nets, old.network)
		}
	}
	if r == nil || r.Deleted {
		return
	}
	network, block, ok := parseClaim(&r.Entry)
	if !ok {
		return
	}
	if x.at == nil {
		x.at, x.nets = map[string]claimAt{}, map[string]map[netip.Prefix]map[string]*record{}
	}
	x.at[key] = claimAt{network, block}
	if x.nets[network] == nil {
		x.nets[network] = map[netip.Prefix]map[string]*record{}
	}
	if x.nets[network][block] == nil {
		x.nets[network][block] = map[string]*record{}
	}
	x.nets[network][block][key] = r
}
