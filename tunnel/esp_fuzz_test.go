package tunnel

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/packet"
)

// FuzzReceiveESP feeds arbitrary reads to the ESP receive path (open in
// place, inner UDP and VXLAN checks, delivery) of a VTEP with an encrypted
// network and one inbound SA, as one datagram (gso 0) or as a coalesced
// UDP_GRO read of datagrams gso bytes apart: it must never panic or read
// outside the read, and counts every datagram of it.
func FuzzReceiveESP(f *testing.F) {
	out, in := testSA(f, 0x5000ab, 8)
	seal := func(d []byte) []byte {
		buf := make([]byte, packet.BufferSize)
		start := packet.Headroom - udpHeaderLen
		n := copy(buf[start+udpHeaderLen:], d)
		putInnerUDP(buf[start:start+udpHeaderLen+n], 1, packet.VXLANPort)
		s0, s1, _ := out.Seal(buf, start, start+udpHeaderLen+n)
		return buf[s0:s1]
	}
	one := seal(vxlanDatagram(testVNI, udpFrame(macB, macA, 1, 2, 60)))
	f.Add(one, uint16(0))
	f.Add(seal(vxlanDatagram(testVNI+1, udpFrame(macB, macA, 1, 2, 60))), uint16(0))
	f.Add(seal([]byte{1, 2, 3}), uint16(0))
	f.Add([]byte{0, 0x50, 0, 0xab, 0, 0, 0, 1}, uint16(0))
	run := append(append(bytes.Clone(one), seal(vxlanDatagram(testVNI, udpFrame(macB, macA, 1, 2, 60)))...),
		seal(vxlanDatagram(testVNI, udpFrame(macB, macA, 1, 2, 20)))...)
	f.Add(run, uint16(len(one)))
	f.Add(run, uint16(len(one)-1))
	mn := NewMemNetwork()
	u, _ := mn.Listen(netip.AddrPortFrom(vtepB, packet.VXLANPort))
	eu, _ := mn.Listen(netip.AddrPortFrom(vtepB, esp.Port))
	v := New(Config{Underlay: u, ESPUnderlay: eu})
	f.Cleanup(func() { v.Close() })
	n, _ := v.AddSegment(testVNI, 0)
	n.SetCipher(esp.AES128GCM)
	n.SetPeers([]netip.Addr{vtepA})
	n.SetInput(func([][]byte, []int, int) {})
	v.SetSAs(nil, []InboundSA{{vtepA, in}})
	f.Fuzz(func(t *testing.T, d []byte, gso uint16) {
		r := &v.erx
		m := &r.msgs[0]
		m.Buf = r.bufs[0][packet.Headroom-espRxFront:]
		m.N = copy(m.Buf, d)
		if len(d) > len(m.Buf) {
			m.N = len(d) // truncated
		}
		m.Addr = netip.AddrPortFrom(vtepC, 4500)
		m.GSOSize = int(gso)
		want := uint64(1)
		if m.N <= len(m.Buf) && gso > 0 && int(gso) < m.N {
			want = uint64((m.N + int(gso) - 1) / int(gso))
		}
		before := v.Stats().RxDatagrams
		v.receive(r, r.msgs[:1], true)
		if got := v.Stats().RxDatagrams - before; got != want {
			t.Fatalf("read of %d bytes, gso %d: counted %d datagrams, want %d", m.N, gso, got, want)
		}
	})
}
