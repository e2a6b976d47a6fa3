package gateway

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

// synFrame builds an Ethernet/IPv4/TCP frame with flags.
func synFrame(flags uint8) []byte {
	f := make([]byte, packet.EthernetHeaderLen+20+20)
	binary.BigEndian.PutUint16(f[12:], packet.EtherTypeIPv4)
	ip := packet.IPv4(f[packet.EthernetHeaderLen:])
	ip[0], ip[8], ip[9] = 0x45, 64, packet.ProtoTCP
	binary.BigEndian.PutUint16(ip[2:], 40)
	ip.SetSrc(ctrAddr.Addr())
	ip.SetDst(outside)
	binary.BigEndian.PutUint16(ip[20:], 40000)
	binary.BigEndian.PutUint16(ip[22:], 80)
	binary.BigEndian.PutUint32(ip[24:], 0xdeadbeef)
	ip[33] = flags
	return f
}

// TestSYNTable: a SYN is noted once and taken by its flow; a SYN-ACK, a
// SYN to the gateway and other frames are not noted.
func TestSYNTable(t *testing.T) {
	var st synTable
	f := Flow{Proto: packet.ProtoTCP, Src: netip.AddrPortFrom(ctrAddr.Addr(), 40000), Dst: netip.AddrPortFrom(outside, 80)}
	st.note(synFrame(0x12), gwAddr.Addr())
	st.note(synFrame(0x10), gwAddr.Addr())
	st.note(synFrame(0x02), outside)
	if _, ok := st.take(f); ok {
		t.Fatal("a SYN-ACK, an ACK or a SYN to the gateway was noted")
	}
	st.note(synFrame(0x02), gwAddr.Addr())
	if s, ok := st.take(f); !ok || s.seq != 0xdeadbeef || s.ipLen != 40 {
		t.Fatalf("take = %+v, %v; want seq 0xdeadbeef, length 40", s, ok)
	}
	if _, ok := st.take(f); ok {
		t.Fatal("a SYN was taken twice")
	}
}

// FuzzNoteSYN: any frame is noted without a panic, and what is noted is
// a SYN without ACK whose addresses and ports it holds.
func FuzzNoteSYN(f *testing.F) {
	f.Add(synFrame(0x02))
	f.Add(synFrame(0x12))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, frame []byte) {
		var st synTable
		st.note(frame, gwAddr.Addr())
		for k, v := range st.syn {
			ip := packet.IPv4(frame[packet.EthernetHeaderLen:])
			ihl := int(ip[0]&0x0f) * 4
			if ip.Src() != k.src.Addr() || ip.Dst() != k.dst.Addr() || ip[ihl+13]&0x12 != 0x02 ||
				binary.BigEndian.Uint32(ip[ihl+4:]) != v.seq {
				t.Fatalf("noted %+v %+v from a frame that does not hold it", k, v)
			}
		}
	})
}
