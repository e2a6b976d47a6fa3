package packet

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

func FuzzEthernet(f *testing.F) {
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		e := Ethernet(b)
		if !e.Valid() {
			if len(b) >= EthernetHeaderLen {
				t.Fatalf("%d bytes not valid", len(b))
			}
			return
		}
		orig := bytes.Clone(b)
		dst, src := e.Dst(), e.Src()
		if dst.IsMulticast() != (b[0]&1 == 1) {
			t.Fatal("IsMulticast disagrees with the group bit")
		}
		if len(e.Payload()) != len(b)-EthernetHeaderLen || e.EtherType() != binary.BigEndian.Uint16(b[12:]) {
			t.Fatal("payload or EtherType inconsistent with the bytes")
		}
		e.SetDst(src)
		e.SetSrc(dst)
		if e.Dst() != src || e.Src() != dst || !bytes.Equal(b[12:], orig[12:]) {
			t.Fatal("swapping addresses changed something else")
		}
	})
}

func FuzzARP(f *testing.F) {
	f.Add([]byte(arpRequest()))
	f.Fuzz(func(t *testing.T, b []byte) {
		a := ARP(b)
		if !a.Valid() {
			return
		}
		orig := bytes.Clone(b)
		sm, sip, tip := a.SenderMAC(), a.SenderIP(), a.TargetIP()
		if !sip.Is4() || !tip.Is4() {
			t.Fatal("ARP addresses must be IPv4")
		}
		mac := MAC{2, 0, 0, 0, 0, 1}
		a.MakeReply(mac, tip)
		if a.Op() != ARPReply || a.SenderMAC() != mac || a.SenderIP() != tip || a.TargetMAC() != sm || a.TargetIP() != sip {
			t.Fatal("reply does not swap sender and target")
		}
		if !a.Valid() || !bytes.Equal(b[:6], orig[:6]) || !bytes.Equal(b[ARPLen:], orig[ARPLen:]) {
			t.Fatal("MakeReply touched bytes outside the addresses and op")
		}
	})
}

func FuzzIPv4(f *testing.F) {
	f.Add(bytes.Clone(ipv4Example), []byte{10, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte, newSrc []byte) {
		p := IPv4(b)
		if !p.Valid() {
			return
		}
		if p.HeaderLen() < IPv4MinHeaderLen || p.HeaderLen() > p.TotalLen() || p.TotalLen() > len(b) {
			t.Fatalf("Valid but hl %d tl %d len %d", p.HeaderLen(), p.TotalLen(), len(b))
		}
		if len(p.Payload()) != p.TotalLen()-p.HeaderLen() || !p.Src().Is4() || !p.Dst().Is4() {
			t.Fatal("payload or addresses inconsistent")
		}
		p.SetChecksum(p.HeaderChecksum())
		if !p.ChecksumValid() {
			t.Fatal("recomputed checksum does not validate")
		}
		if len(newSrc) < 4 {
			return
		}
		src := netip.AddrFrom4([4]byte(newSrc[:4]))
		c := UpdateChecksumAddr(p.Checksum(), p.Src(), src)
		p.SetSrc(src)
		p.SetChecksum(c)
		if p.Src() != src || !p.ChecksumValid() {
			t.Fatalf("incremental update %#04x, recomputed %#04x", c, p.HeaderChecksum())
		}
	})
}

// FuzzIPv6 walks arbitrary IPv6 packets' extension headers and ND
// options: no panic, and what Transport reports lies inside the packet.
func FuzzIPv6(f *testing.F) {
	ip := make([]byte, IPv6HeaderLen, 128)
	ip[0], ip[6], ip[7] = 0x60, ProtoFragment, 255
	ip = append(ip, ProtoDestOpts, 0, 0, 0, 0, 0, 0, 1) // first fragment
	ip = append(ip, ProtoICMPv6, 0, 0, 0, 0, 0, 0, 0)   // destination options
	ip = append(ip, ICMPv6NeighborAdvert, 0, 0, 0, 0, 0, 0, 0)
	ip = append(ip, make([]byte, 16)...) // target
	ip = append(ip, NDOptTargetLinkAddr, 1, 2, 0, 0, 0, 0, 1)
	binary.BigEndian.PutUint16(ip[4:], uint16(len(ip)-IPv6HeaderLen))
	f.Add(ip)
	f.Fuzz(func(t *testing.T, b []byte) {
		p := IPv6(b)
		if !p.Valid() {
			return
		}
		end := IPv6HeaderLen + p.PayloadLen()
		proto, off, frag, ok := p.Transport()
		if !ok {
			return
		}
		if off == -1 {
			if !frag {
				t.Fatal("no upper-layer offset for a packet that is not a fragment")
			}
			return
		}
		if off < IPv6HeaderLen || off > end {
			t.Fatalf("upper layer %d at %d, outside [%d, %d]", proto, off, IPv6HeaderLen, end)
		}
		if proto != ProtoICMPv6 {
			return
		}
		m := NDMessage(b[off:end])
		if m.Valid() {
			m.LinkAddrsAre(MAC{2, 0, 0, 0, 0, 1})
			if m.Type() >= ICMPv6NeighborSolicit {
				_ = m.Target()
			}
		}
	})
}
