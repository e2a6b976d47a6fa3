package daemon

import (
	"fmt"
	"net/netip"
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
	block = block.Masked()
	for a := block.Addr(); block.Contains(a); a = a.Next() {
		if usableHost(subnet, a) && !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no free address left in %s", block)
}

// blockBits is the prefix length of the address blocks nodes claim in a
// subnet: sixteen blocks per subnet, at least 16 addresses each (a small
// subnet is a single block).
func blockBits(subnet netip.Prefix) int {
	b := subnet.Bits() + 4
	if b > 28 {
		b = 28
	}
	if b < subnet.Bits() {
		b = subnet.Bits()
	}
	return b
}

// macForIP derives the endpoint MAC from its IPv4 address the way Docker
// does: 02:42 followed by the four address bytes.
func macForIP(a netip.Addr) [6]byte {
	b := a.As4()
	return [6]byte{0x02, 0x42, b[0], b[1], b[2], b[3]}
}
