package vswitch

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/netdev/netdevtest"
	"github.com/vxmesh/vxmesh/packet"
)

const off = packet.Headroom

var (
	macA  = packet.MAC{0x02, 0x42, 10, 0, 1, 2}
	macB  = packet.MAC{0x02, 0x42, 10, 0, 1, 3}
	macC  = packet.MAC{0x02, 0x42, 10, 0, 1, 4}
	macGW = packet.MAC{0x02, 0x42, 10, 0, 1, 1}
	ipA   = netip.MustParseAddr("10.0.1.2")
	ipB   = netip.MustParseAddr("10.0.1.3")
	ipC   = netip.MustParseAddr("10.0.1.4")
	ipGW  = netip.MustParseAddr("10.0.1.1")
)

// fakeClock is a manually advanced clock for aging tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// ether builds an Ethernet frame.
func ether(dst, src packet.MAC, typ uint16, payload []byte) []byte {
	f := make([]byte, packet.EthernetHeaderLen, packet.EthernetHeaderLen+len(payload))
	packet.Ethernet(f).SetDst(dst)
	packet.Ethernet(f).SetSrc(src)
	binary.BigEndian.PutUint16(f[12:], typ)
	return append(f, payload...)
}

// ipv4Frame builds an IPv4/UDP frame with a valid header checksum.
func ipv4Frame(dst, src packet.MAC, srcIP, dstIP netip.Addr) []byte {
	ip := make(packet.IPv4, 28)
	ip[0], ip[3], ip[8], ip[9] = 0x45, 28, 64, packet.ProtoUDP
	ip.SetSrc(srcIP)
	ip.SetDst(dstIP)
	ip.SetChecksum(ip.HeaderChecksum())
	return ether(dst, src, packet.EtherTypeIPv4, ip)
}

// arpFrame builds an ARP request from (mac, ip) asking for target,
// broadcast.
func arpFrame(mac packet.MAC, ip, target netip.Addr) []byte {
	a := make(packet.ARP, packet.ARPLen)
	copy(a, []byte{0, 1, 8, 0, 6, 4, 0, packet.ARPRequest})
	copy(a[8:14], mac[:])
	s, t := ip.As4(), target.As4()
	copy(a[14:18], s[:])
	copy(a[24:28], t[:])
	return ether(packet.Broadcast, mac, packet.EtherTypeARP, a)
}

// batch lays frames out at the headroom offset like a device read does.
func batch(frames ...[]byte) ([][]byte, []int) {
	bufs := make([][]byte, len(frames))
	sizes := make([]int, len(frames))
	for i, f := range frames {
		bufs[i] = make([]byte, packet.BufferSize)
		sizes[i] = copy(bufs[i][off:], f)
	}
	return bufs, sizes
}

func input(r *Port, frames ...[]byte) {
	bufs, sizes := batch(frames...)
	r.Input(bufs, sizes, off)
}

func addPort(t testing.TB, s *Switch, p Sink, cfg PortConfig) *Port {
	t.Helper()
	r, err := s.AddPort(p, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// recorders attaches n Recorder ports named p0..pn-1 without MACs.
func recorders(t testing.TB, s *Switch, n int) ([]*netdevtest.Recorder, []*Port) {
	recs := make([]*netdevtest.Recorder, n)
	refs := make([]*Port, n)
	for i := range recs {
		recs[i] = &netdevtest.Recorder{}
		refs[i] = addPort(t, s, recs[i], PortConfig{Name: string(rune('a'+i)) + "port"})
	}
	return recs, refs
}

func counts(recs []*netdevtest.Recorder) []int {
	out := make([]int, len(recs))
	for i, r := range recs {
		out[i] = len(r.Frames())
	}
	return out
}

func resetAll(recs []*netdevtest.Recorder) {
	for _, r := range recs {
		r.Reset()
	}
}

func findFDB(s *Switch, mac packet.MAC) (FDBEntry, bool) {
	for _, e := range s.FDB() {
		if e.MAC == mac {
			return e, true
		}
	}
	return FDBEntry{}, false
}

func portStats(s *Switch, name string) PortStats {
	for _, p := range s.Stats().Ports {
		if p.Name == name {
			return p
		}
	}
	return PortStats{}
}

// tcpSuperSegment builds an IPv4/TCP frame carrying payload bytes and the
// offload slot of a TSO super-segment of gso_size mss.
func tcpSuperSegment(dst, src packet.MAC, srcIP, dstIP netip.Addr, payload, mss int) (frame, slot []byte) {
	ip := make(packet.IPv4, 20+20+payload)
	ip[0], ip[8], ip[9] = 0x45, 64, packet.ProtoTCP
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip.SetSrc(srcIP)
	ip.SetDst(dstIP)
	ip.SetChecksum(ip.HeaderChecksum())
	ip[20+12], ip[20+13] = 5<<4, 0x10 // data offset 5, ACK
	slot = make([]byte, packet.OffloadLen)
	packet.OffloadOf(slot).Set(packet.OffloadNeedsCsum, packet.GSOTCPv4, 54, mss, 34, 16)
	return ether(dst, src, packet.EtherTypeIPv4, ip), slot
}

// batchWithSlots is batch with each frame's offload slot set.
func batchWithSlots(frames, slots [][]byte) ([][]byte, []int) {
	bufs, sizes := batch(frames...)
	for i, s := range slots {
		copy(bufs[i], s)
	}
	return bufs, sizes
}
