//go:build linux

package tunnel

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/vxmesh/vxmesh/internal/testenv"
	"time"

	"github.com/vxmesh/vxmesh/packet"
)

// gsoRun returns n datagrams of size bytes (the last one last bytes) back
// to back, datagram i filled with byte i+1.
func gsoRun(n, size, last int) []byte {
	b := make([]byte, (n-1)*size+last)
	for i := range b {
		b[i] = byte(i/size + 1)
	}
	return b
}

// readDatagrams reads until want bytes of datagrams arrived, splitting
// GRO reads by their GSOSize, and returns the datagrams and how many reads
// carried more than one.
func readDatagrams(t *testing.T, u *UDP, want int) (dgrams [][]byte, coalesced int) {
	t.Helper()
	msgs := make([]Message, 8)
	for i := range msgs {
		msgs[i].Buf = make([]byte, 1<<16)
	}
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	for got < want && time.Now().Before(deadline) {
		k, err := u.ReadBatch(msgs)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs[:k] {
			seg := m.N
			if m.GSOSize > 0 {
				seg = m.GSOSize
				coalesced++
			}
			for off := 0; off < m.N; off += seg {
				d := m.Buf[off:min(off+seg, m.N)]
				dgrams = append(dgrams, bytes.Clone(d))
				got += len(d)
			}
		}
	}
	return dgrams, coalesced
}

func checkRun(t *testing.T, dgrams [][]byte, n, size, last int) {
	t.Helper()
	if len(dgrams) != n {
		t.Fatalf("received %d datagrams, want %d", len(dgrams), n)
	}
	for i, d := range dgrams {
		want := size
		if i == n-1 {
			want = last
		}
		if len(d) != want || d[0] != byte(i+1) || d[len(d)-1] != byte(i+1) {
			t.Fatalf("datagram %d: %d bytes starting %d, want %d bytes of %d", i, len(d), d[0], want, i+1)
		}
	}
}

// TestUDPGSOSendAndGRORead sends runs with UDP_SEGMENT over loopback:
// a receiver without GRO sees separate datagrams, one with GRO reads
// them coalesced with their size in GSOSize; with GSO off the sender
// splits the run itself.
func TestUDPGSOSendAndGRORead(t *testing.T) {
	for _, tc := range []struct {
		name     string
		gso, gro bool
	}{{"gso", true, false}, {"gso+gro", true, true}, {"split", false, false}, {"split+gro", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			port := freeUDPPort(t)
			ua := listenUDP(t, "127.0.0.1", port)
			ub, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddr("127.0.0.2"), Port: port, NoGRO: !tc.gro})
			if err != nil {
				t.Fatal(err)
			}
			defer ub.Close()
			if !ua.Offloads().GSO {
				testenv.Missing(t, "UDP_SEGMENT in the kernel")
			}
			if tc.gro && !ub.Offloads().GRO {
				testenv.Missing(t, "UDP_GRO in the kernel")
			}
			ua.gso.Store(tc.gso)
			const n, size, last = 40, 1400, 321
			m := []Message{{Buf: gsoRun(n, size, last), GSOSize: size, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port)}}
			if k, err := ua.WriteBatch(m); k != 1 || err != nil {
				t.Fatalf("WriteBatch = %d, %v", k, err)
			}
			dgrams, coalesced := readDatagrams(t, ub, (n-1)*size+last)
			checkRun(t, dgrams, n, size, last)
			if tc.gro && tc.gso && coalesced == 0 {
				t.Errorf("GRO receiver read no coalesced message")
			}
			if !tc.gro && coalesced != 0 {
				t.Errorf("receiver without GRO read %d coalesced messages", coalesced)
			}
		})
	}
}

// TestUDPGSOFallback: a run the kernel refuses as one UDP_SEGMENT send
// (longer than an IP datagram) is sent again as separate datagrams and
// counted.
func TestUDPGSOFallback(t *testing.T) {
	port := freeUDPPort(t)
	ua := listenUDP(t, "127.0.0.1", port)
	ub, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddr("127.0.0.2"), Port: port, NoGRO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ub.Close()
	if !ua.Offloads().GSO {
		testenv.Missing(t, "UDP_SEGMENT in the kernel")
	}
	const n, size, last = 3, 30000, 10000
	m := []Message{{Buf: gsoRun(n, size, last), GSOSize: size, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port)}}
	if k, err := ua.WriteBatch(m); k != 1 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", k, err)
	}
	dgrams, _ := readDatagrams(t, ub, (n-1)*size+last)
	checkRun(t, dgrams, n, size, last)
	if f := ua.Offloads().GSOFallbacks; f != 1 {
		t.Errorf("GSOFallbacks = %d, want 1", f)
	}
	if !ua.Offloads().GSO {
		t.Errorf("GSO switched off by an EMSGSIZE/EINVAL refusal")
	}
}

func TestUDPGSOWriteDoesNotAllocate(t *testing.T) {
	port := freeUDPPort(t)
	ua := listenUDP(t, "127.0.0.1", port)
	ub, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddr("127.0.0.2"), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer ub.Close()
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port)
	out := make([]Message, 8)
	for i := range out {
		out[i] = Message{Buf: gsoRun(20, 1400, 1400), GSOSize: 1400, Addr: to, Hash: uint32(i)}
	}
	in := make([]Message, packet.BatchSize)
	for i := range in {
		in[i].Buf = make([]byte, 1<<16)
	}
	want := 8 * 20 * 1400
	step := func() {
		ua.WriteBatch(out)
		for got := 0; got < want; {
			k, err := ub.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range in[:k] {
				got += m.N
			}
		}
	}
	step()
	if allocs := testing.AllocsPerRun(50, step); allocs != 0 {
		t.Errorf("GSO send / GRO receive allocates %.1f times per batch", allocs)
	}
}
