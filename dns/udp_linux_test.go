package dns

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unsafe"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// burstQuery is one query of a burst and what its answer must carry.
type burstQuery struct {
	name    string // as sent, in the case sent
	answers int    // A records in the answer
}

// sendBurst sends qs from c to addr, back to back, with IDs base+i, and
// reads one answer per query; check unpacks each and compares it with its
// query (question as sent, NOERROR, the A records), otherwise only the IDs
// are checked (so the round trip allocates nothing of its own).
func sendBurst(t *testing.T, c *net.UDPConn, addr netip.AddrPort, raws [][]byte, qs []burstQuery, buf []byte, check bool) {
	t.Helper()
	for _, raw := range raws {
		if _, err := c.WriteToUDPAddrPort(raw, addr); err != nil {
			t.Fatal(err)
		}
	}
	var seen [64]bool
	for range raws {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || n < headerLen {
			t.Fatalf("after %d answers: %x, %v", countTrue(seen[:]), buf[:n], err)
		}
		i := int(buf[0])<<8 | int(buf[1]) - 0x4000
		if i < 0 || i >= len(raws) || seen[i] {
			t.Fatalf("answer with ID %#x: no such query, or answered twice", i+0x4000)
		}
		seen[i] = true
		if !check {
			continue
		}
		r := new(mdns.Msg)
		if err := r.Unpack(buf[:n]); err != nil {
			t.Fatalf("answer to %s: %v", qs[i].name, err)
		}
		if r.Rcode != mdns.RcodeSuccess || len(r.Question) != 1 || r.Question[0].Name != qs[i].name || len(r.Answer) != qs[i].answers {
			t.Errorf("answer to %s: %v", qs[i].name, r)
		}
	}
}

func countTrue(b []bool) (n int) {
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}

// TestBurstFromOneClientIsAnsweredQueryByQuery sends bursts of queries
// from one client socket (names of different answer sizes, in mixed case,
// one for the general path): every query gets its own datagram carrying
// its own answer, whether the loop sends the answers to one client in one
// UDP_SEGMENT send (which it must do at least once over the bursts) or,
// as on kernels without it, one by one. The round trip of a burst of
// local names allocates nothing.
func TestBurstFromOneClientIsAnsweredQueryByQuery(t *testing.T) {
	names := []burstQuery{{"c2.", 1}, {"C2.Web.", 1}, {"db.", 2}, {"noAddr.", 0}, {"c2.", 1}, {"c2.", 1}}
	var qs []burstQuery
	for range 4 {
		qs = append(qs, names...)
	}
	qs = append(qs, burstQuery{"_udp.svc.", 0}) // SRV records: the general path
	raws := make([][]byte, len(qs))
	for i, q := range qs {
		m := new(mdns.Msg)
		m.SetQuestion(q.name, mdns.TypeA)
		m.Id = uint16(0x4000 + i)
		if i%2 == 1 {
			m.SetEdns0(1232, false)
		}
		raws[i], _ = m.Pack()
	}
	for _, gso := range []bool{true, false} {
		t.Run(map[bool]string{true: "segmented", false: "one by one"}[gso], func(t *testing.T) {
			s := New(Config{}, precomputed(testSource))
			s.noGSO = !gso
			addr := netip.MustParseAddrPort(serve(t, s, "c1"))
			c, err := net.ListenUDP("udp4", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, maxUDPRead)
			for range 50 {
				sendBurst(t, c, addr, raws, qs, buf, true)
				if s.stats.coalesced.Load() > 0 {
					break
				}
			}
			if got := s.stats.coalesced.Load(); gso && got == 0 {
				t.Errorf("no answers coalesced into a segmented send over 50 bursts of %d queries", len(qs))
			} else if !gso && got != 0 {
				t.Errorf("%d answers coalesced without UDP_SEGMENT", got)
			}
			local := raws[:len(raws)-1]
			if a := testing.AllocsPerRun(20, func() { sendBurst(t, c, addr, local, qs, buf, false) }); a > 0 {
				t.Errorf("%.1f allocations per burst of %d local answers, want 0", a, len(local))
			}
		})
	}
}

// sockaddr4 is the IPv4 socket address of ap as recvmmsg writes it.
func sockaddr4(ap netip.AddrPort) (sa unix.RawSockaddrInet6) {
	sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
	sa4.Family = unix.AF_INET
	sa4.Addr = ap.Addr().As4()
	p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	return sa
}

// layout describes b's messages: for each, the queries its answers answer
// ("0,2") and the segment size it sends with (0: none).
func layout(b *batch) string {
	var parts []string
	for m := range b.nOut {
		h := b.out[m].Hdr
		iov := unsafe.Slice(h.Iov, h.Iovlen)
		var qs []string
		for _, v := range iov {
			// The answer buffer is that of the answer's index; find it.
			for j := range b.nAns {
				if v.Base == &b.outBuf[j][0] {
					qs = append(qs, string(rune('0'+b.ansFrom[j])))
					if int(v.Len) != int(b.ansLen[j]) {
						qs = append(qs, "badlen")
					}
				}
			}
		}
		name := (*unix.RawSockaddrInet6)(unsafe.Pointer(h.Name))
		if name != &b.names[b.ansFromOf(iov[0].Base)] {
			qs = append(qs, "badname")
		}
		seg := 0
		if h.Control != nil {
			c := unsafe.Slice(h.Control, h.Controllen)
			ch := (*unix.Cmsghdr)(unsafe.Pointer(h.Control))
			if ch.Level != unix.SOL_UDP || ch.Type != unix.UDP_SEGMENT {
				qs = append(qs, "badcmsg")
			}
			seg = int(*(*uint16)(unsafe.Pointer(&c[unix.CmsgLen(0)])))
		}
		parts = append(parts, strings.Join(qs, ",")+"/"+string(rune('0'+seg/10))+string(rune('0'+seg%10)))
	}
	return strings.Join(parts, " ")
}

// ansFromOf is the query answered by the answer buffer at p.
func (b *batch) ansFromOf(p *byte) int {
	for j := range b.nAns {
		if p == &b.outBuf[j][0] {
			return int(b.ansFrom[j])
		}
	}
	return -1
}

// TestGroupPutsEqualAnswersToOneClientInOneSend: answers of equal length
// to the same client address go in one message with UDP_SEGMENT of their
// length, in query order, with one shorter answer to it last; a different
// port, a longer answer or no GSO makes separate messages; split sends
// the rest one by one.
func TestGroupPutsEqualAnswersToOneClientInOneSend(t *testing.T) {
	a := netip.MustParseAddrPort("127.0.0.1:4000")
	other := netip.MustParseAddrPort("127.0.0.1:4001")
	b := newBatch()
	// Queries 0..7 from a, other, a, a, other, a, a, a; answers to all
	// but 4, of lengths 36, 36, 36, 40, -, 36, 30, 20.
	from := []netip.AddrPort{a, other, a, a, other, a, a, a}
	for i, ap := range from {
		b.names[i] = sockaddr4(ap)
		b.in[i].Hdr.Namelen = unix.SizeofSockaddrInet4
	}
	b.nIn = len(from)
	for _, x := range []struct{ from, n int }{{0, 36}, {1, 36}, {2, 36}, {3, 40}, {5, 36}, {6, 30}, {7, 20}} {
		b.ansFrom[b.nAns], b.ansLen[b.nAns] = uint8(x.from), uint16(x.n)
		b.nAns++
	}
	b.group(true)
	if got, want := layout(b), "0,2,5,6/36 1/00 3,7/40"; got != want {
		t.Errorf("with GSO: messages %q, want %q", got, want)
	}
	b.split(0)
	if got, want := layout(b), "0/00 2/00 5/00 6/00 1/00 3/00 7/00"; got != want {
		t.Errorf("split from message 0: messages %q, want %q", got, want)
	}
	b.group(false)
	if got, want := layout(b), "0/00 1/00 2/00 3/00 5/00 6/00 7/00"; got != want {
		t.Errorf("without GSO: messages %q, want %q", got, want)
	}

	// 20 answers of 4000 bytes to a (EDNS clients take that much) and a
	// short one: no send carries more than one datagram can (65507).
	b.nAns = 0
	for i := range 21 {
		b.names[i] = sockaddr4(a)
		b.in[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		b.ansFrom[i], b.ansLen[i] = uint8(i), 4000
	}
	b.ansLen[20] = 3600
	b.nAns = 21
	b.group(true)
	if b.nOut != 2 {
		t.Fatalf("%d messages for 21 answers, want 2 (16 + 5)", b.nOut)
	}
	for m, want := range []int{16, 5} {
		if got := int(b.out[m].Hdr.Iovlen); got != want {
			t.Errorf("message %d carries %d answers, want %d", m, got, want)
		}
	}
}

// TestBurstOfLargeAnswersToOneClient: answers near the 4096-byte EDNS
// limit, many to one client, still arrive one per query, whole (no
// segmented send may exceed one datagram's 64 KiB).
func TestBurstOfLargeAnswersToOneClient(t *testing.T) {
	big := Records{TTL: LocalTTL}
	for i := range 240 {
		big.Addrs = append(big.Addrs, netip.AddrFrom4([4]byte{10, 9, byte(i / 200), byte(i%200 + 1)}))
	}
	src := precomputed(fakeSource{names: map[string]map[string]Records{"c1": {"big": big}}})
	s := New(Config{}, src)
	addr := netip.MustParseAddrPort(serve(t, s, "c1"))
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadBuffer(1 << 20)
	var qs []burstQuery
	var raws [][]byte
	for i := range 24 {
		m := new(mdns.Msg)
		m.SetQuestion("big.", mdns.TypeA)
		m.Id = uint16(0x4000 + i)
		m.SetEdns0(4096, false)
		raw, _ := m.Pack()
		raws, qs = append(raws, raw), append(qs, burstQuery{"big.", len(big.Addrs)})
	}
	buf := make([]byte, maxUDPRead)
	for range 20 {
		sendBurst(t, c, addr, raws, qs, buf, true)
		if s.stats.coalesced.Load() > 0 {
			return
		}
	}
	t.Errorf("no large answers coalesced into a segmented send over 20 bursts")
}
