package packet

import (
	"net/netip"
	"testing"
)

func TestProbeFrameChecksums(t *testing.T) {
	src, dst := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.1.3")
	for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoICMP} {
		for _, size := range []int{0, 1400} {
			f, err := ProbeFrame(Probe{DstMAC: MAC{2}, SrcMAC: MAC{4}, Src: src, Dst: dst, Proto: proto, SPort: 40000, DPort: 80, Size: size})
			if err != nil {
				t.Fatal(err)
			}
			ip := IPv4(Ethernet(f).Payload())
			if !ip.Valid() || !ip.ChecksumValid() || ip.Src() != src || ip.Dst() != dst || ip.Protocol() != proto {
				t.Fatalf("proto %d: bad IPv4 header % x", proto, ip[:20])
			}
			if size > 0 && ip.TotalLen() != size {
				t.Fatalf("proto %d: length %d, want %d", proto, ip.TotalLen(), size)
			}
			l4 := ip[20:]
			acc := uint64(0)
			if proto != ProtoICMP {
				acc = PseudoHeaderSum(src, dst, proto, len(l4))
			}
			if Fold(Sum(l4, acc)) != 0 {
				t.Fatalf("proto %d: bad L4 checksum", proto)
			}
		}
	}
	a := ARP(Ethernet(ARPRequestFrame(MAC{2, 1}, src, dst)).Payload())
	if !a.Valid() || a.Op() != ARPRequest || a.SenderIP() != src || a.TargetIP() != dst || a.SenderMAC() != (MAC{2, 1}) {
		t.Fatalf("ARP request % x", a)
	}
	if _, err := ProbeFrame(Probe{Src: src, Dst: dst, Proto: 47}); err == nil {
		t.Fatal("GRE probe built")
	}
}
