package tunnel

import (
	"encoding/binary"

	"github.com/vxmesh/vxmesh/packet"
)

// flowHash hashes the inner flow of Ethernet frame f (at least
// EthernetHeaderLen bytes): both MAC addresses and the EtherType, then for
// IPv4 and IPv6 (behind at most one VLAN tag) both addresses and the
// protocol, and the ports of TCP, UDP and SCTP when the packet is not a
// fragment. Frames of one flow hash alike; the result only spreads flows
// over source ports, it is not a security boundary.
func flowHash(f []byte) uint32 {
	h := mix(0x736f6d6570736575, binary.BigEndian.Uint64(f[0:8]))
	h = mix(h, uint64(binary.BigEndian.Uint32(f[8:12]))<<16|uint64(binary.BigEndian.Uint16(f[12:14])))
	et, off := binary.BigEndian.Uint16(f[12:14]), packet.EthernetHeaderLen
	if et == packet.EtherTypeVLAN && len(f) >= off+4 {
		h = mix(h, uint64(binary.BigEndian.Uint16(f[14:16])&0x0fff))
		et, off = binary.BigEndian.Uint16(f[16:18]), off+4
	}
	var proto uint8
	l4 := -1
	switch et {
	case packet.EtherTypeIPv4:
		ip := f[off:]
		if len(ip) < packet.IPv4MinHeaderLen || ip[0]>>4 != 4 {
			break
		}
		proto = ip[9]
		h = mix(h, uint64(binary.BigEndian.Uint32(ip[12:16]))<<32|uint64(binary.BigEndian.Uint32(ip[16:20])))
		h = mix(h, uint64(proto))
		// Only the first fragment has ports: leave them out of every
		// fragment so a flow's fragments stay together.
		if binary.BigEndian.Uint16(ip[6:8])&0x3fff == 0 {
			l4 = off + int(ip[0]&0x0f)*4
		}
	case packet.EtherTypeIPv6:
		ip := f[off:]
		if len(ip) < 40 || ip[0]>>4 != 6 {
			break
		}
		proto = ip[6]
		for i := 8; i < 40; i += 8 {
			h = mix(h, binary.BigEndian.Uint64(ip[i:i+8]))
		}
		h = mix(h, uint64(proto))
		l4 = off + 40
	}
	if l4 >= 0 && l4+4 <= len(f) && (proto == packet.ProtoTCP || proto == packet.ProtoUDP || proto == protoSCTP) {
		h = mix(h, uint64(binary.BigEndian.Uint32(f[l4:l4+4])))
	}
	return uint32(h ^ h>>32)
}

const protoSCTP = 132

// mix folds v into the running hash h (a multiply-xorshift round).
func mix(h, v uint64) uint64 {
	h ^= v
	h *= 0x9e3779b97f4a7c15
	h ^= h >> 29
	h *= 0xbf58476d1ce4e5b9
	return h ^ h>>32
}
