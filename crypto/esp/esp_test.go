package esp

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/packet"
)

var (
	testKey16 = []byte("0123456789abcdef")
	testKey32 = []byte("0123456789abcdef0123456789abcdef")
	testSalt  = []byte{0xde, 0xad, 0xbe, 0xef}
)

func pair(t testing.TB, key []byte) (*Outbound, *Inbound) {
	t.Helper()
	out, err := NewOutbound(0x1234_5678, key, testSalt)
	if err != nil {
		t.Fatal(err)
	}
	in, err := NewInbound(0x1234_5678, key, testSalt)
	if err != nil {
		t.Fatal(err)
	}
	return out, in
}

// innerStart is where the tunnel puts the inner UDP header: in front of the
// VXLAN header, which is in front of the frame at packet.Headroom.
const innerStart = packet.Headroom - packet.VXLANHeaderLen - 8

// datagram fills a data-path buffer as the tunnel would: inner UDP header,
// VXLAN header, a frame of n bytes; it returns the buffer and the
// datagram's bounds.
func datagram(n int, fill byte) ([]byte, int, int) {
	return fillDatagram(make([]byte, packet.BufferSize), n, fill)
}

// fillDatagram is datagram in an existing buffer.
func fillDatagram(buf []byte, n int, fill byte) ([]byte, int, int) {
	end := packet.Headroom + n
	u := buf[innerStart:]
	binary.BigEndian.PutUint16(u[0:], 49152)
	binary.BigEndian.PutUint16(u[2:], packet.VXLANPort)
	binary.BigEndian.PutUint16(u[4:], uint16(end-innerStart))
	packet.PutVXLAN(buf[packet.Headroom-packet.VXLANHeaderLen:], 4097)
	for i := packet.Headroom; i < end; i++ {
		buf[i] = fill + byte(i)
	}
	return buf, innerStart, end
}

func TestRoundTrip(t *testing.T) {
	for _, key := range [][]byte{testKey16, testKey32} {
		out, in := pair(t, key)
		for n := 0; n <= 1500; n += 1 + n/7 {
			buf, s, e := datagram(n, byte(n))
			want := append([]byte{}, buf...)
			es, ee, err := out.Seal(buf, s, e)
			if err != nil {
				t.Fatal(err)
			}
			if es != s-HeaderLen || ee != e+Overhead(e-s)-HeaderLen || (ee-es-HeaderLen-ICVLen)%4 != 0 {
				t.Fatalf("n %d: bounds %d..%d for %d..%d", n, es, ee, s, e)
			}
			if !bytes.Equal(buf[:es], want[:es]) {
				t.Fatalf("n %d: Seal changed bytes in front of the packet", n)
			}
			if bytes.Contains(buf[es:ee], want[packet.Headroom:e]) && n > 16 {
				t.Fatalf("n %d: cleartext visible after Seal", n)
			}
			is, ie, nh, err := in.Open(buf, es, ee)
			if err != nil {
				t.Fatalf("n %d: Open: %v", n, err)
			}
			if is != s || ie != e || nh != ProtoUDP || !bytes.Equal(buf[is:ie], want[s:e]) {
				t.Fatalf("n %d: Open gives %d..%d nh %d", n, is, ie, nh)
			}
			if !bytes.Equal(buf[:es], want[:es]) {
				t.Fatalf("n %d: Open changed bytes in front of the packet", n)
			}
		}
		so, si := out.Stats(), in.Stats()
		if so.Packets != si.Packets || so.Bytes != si.Bytes || so.Seq != si.Seq || so.Seq != so.Packets {
			t.Fatalf("stats out %+v in %+v", so, si)
		}
	}
}

// TestIndependentDecrypt opens Seal's output with crypto/cipher directly,
// laid out as RFC 4303/4106 say, not as this package does.
func TestIndependentDecrypt(t *testing.T) {
	out, _ := pair(t, testKey32)
	out.seq.Store(0x1_0000_0005) // high bits in use
	buf, s, e := datagram(1400, 7)
	clear := append([]byte{}, buf[s:e]...)
	es, ee, err := out.Seal(buf, s, e)
	if err != nil {
		t.Fatal(err)
	}
	p := buf[es:ee]
	spi, seqLo, iv := p[0:4], p[4:8], p[8:16]
	if binary.BigEndian.Uint32(spi) != 0x12345678 || binary.BigEndian.Uint32(seqLo) != 6 ||
		binary.BigEndian.Uint64(iv) != 0x1_0000_0006 {
		t.Fatalf("header %x", p[:16])
	}
	block, _ := aes.NewCipher(testKey32)
	g, _ := cipher.NewGCM(block)
	nonce := append(append([]byte{}, testSalt...), iv...)
	aad := append(append(append([]byte{}, spi...), 0, 0, 0, 1), seqLo...) // SPI || seq-hi || seq-lo
	pt, err := g.Open(nil, nonce, p[16:], aad)
	if err != nil {
		t.Fatal("independent open:", err)
	}
	nh, pad := pt[len(pt)-1], int(pt[len(pt)-2])
	if nh != 17 || !bytes.Equal(pt[:len(pt)-2-pad], clear) {
		t.Fatalf("next header %d, payload mismatch", nh)
	}
	for i := range pad {
		if pt[len(pt)-2-pad+i] != byte(i+1) {
			t.Fatalf("padding %x", pt[len(pt)-2-pad:])
		}
	}
}

func TestOpenRefusals(t *testing.T) {
	out, in := pair(t, testKey16)
	seal := func() ([]byte, int, int) {
		buf, s, e := datagram(100, 1)
		es, ee, err := out.Seal(buf, s, e)
		if err != nil {
			t.Fatal(err)
		}
		return buf, es, ee
	}
	check := func(name string, err, want error) {
		t.Helper()
		if err != want {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	for i := ICVLen; i < 140; i += 13 { // flip a bit anywhere but the SPI
		buf, es, ee := seal()
		buf[es+4+i%(ee-es-4)] ^= 0x10
		_, _, _, err := in.Open(buf, es, ee)
		if err != ErrAuth && err != ErrReplay {
			t.Errorf("bit flip at %d: %v", i, err)
		}
	}
	buf, es, ee := seal()
	_, _, _, err := in.Open(buf, es, ee-1)
	check("truncated", err, ErrAuth)
	_, _, _, err = in.Open(buf, es, es+MinLen-1)
	check("too short", err, ErrMalformed)
	_, _, _, err = in.Open(buf, 4, ee)
	check("no scratch room", err, ErrMalformed)
	_, _, _, err = in.Open(buf[:ee-1], es, ee)
	check("end beyond len", err, ErrMalformed)

	_, wrong := pair(t, []byte("fedcba9876543210"))
	buf, es, ee = seal()
	_, _, _, err = wrong.Open(buf, es, ee)
	check("wrong key", err, ErrAuth)
	buf, es, ee = seal() // a failed Open may have overwritten the ciphertext

	other, _ := NewInbound(0x999, testKey16, testSalt)
	_, _, _, err = other.Open(buf, es, ee)
	check("other SPI", err, ErrUnknownSPI)

	_, _, _, err = in.Open(buf, es, ee)
	check("good", err, nil)
	buf2 := append([]byte{}, buf...)
	_, _, _, err = in.Open(buf2, es, ee)
	check("replay", err, ErrReplay)

	st := in.Stats()
	if st.Drops[ReasonReplay] != 1 || st.Drops[ReasonMalformed] != 3 || st.Drops[ReasonAuth] < 2 {
		t.Errorf("drops %v", st.Drops)
	}
}

// TestBadPadding seals, by hand, packets whose trailer is wrong after
// authentication.
func TestBadPadding(t *testing.T) {
	_, in := pair(t, testKey16)
	block, _ := aes.NewCipher(testKey16)
	g, _ := cipher.NewGCM(block)
	for i, trailer := range [][]byte{{1, 3, 2, 17}, {9, 17}, {1, 1, 2, 17}} {
		seq := uint64(i + 1)
		p := binary.BigEndian.AppendUint32(nil, 0x12345678)
		p = binary.BigEndian.AppendUint32(p, uint32(seq))
		p = binary.BigEndian.AppendUint64(p, seq)
		nonce := append(append([]byte{}, testSalt...), p[8:16]...)
		aad := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(nil, 0x12345678), seq)
		pt := append([]byte("0123456789"), trailer...)
		p = g.Seal(p, nonce, pt, aad)
		buf := append(make([]byte, 32), p...)
		if _, _, _, err := in.Open(buf, 32, len(buf)); err != ErrMalformed {
			t.Errorf("trailer %x: %v, want ErrMalformed", trailer, err)
		}
	}
}

func TestSealBounds(t *testing.T) {
	out, _ := pair(t, testKey16)
	buf := make([]byte, 100)
	if _, _, err := out.Seal(buf, HeaderLen+ScratchLen-1, 50); err != ErrMalformed {
		t.Error("no headroom:", err)
	}
	if _, _, err := out.Seal(buf, 40, 90); err != ErrMalformed {
		t.Error("no tailroom:", err)
	}
	if _, _, err := out.Seal(buf, 40, 39); err != ErrMalformed {
		t.Error("end < start:", err)
	}
	// Tailroom may be beyond len, within cap.
	if _, e, err := out.Seal(buf[:60], 40, 60); err != nil || e > 100 {
		t.Error("within cap:", e, err)
	}
	if out.Seq() != 1 {
		t.Errorf("refused seals used sequence numbers: %d", out.Seq())
	}
}

func TestSeqExhausted(t *testing.T) {
	out, err := NewOutboundSA(SA{SPI: 300, Key: testKey16, NoESN: true})
	if err != nil {
		t.Fatal(err)
	}
	out.seq.Store(1<<32 - 2)
	buf, s, e := datagram(10, 0)
	if _, _, err := out.Seal(buf, s, e); err != nil {
		t.Fatal("last sequence number:", err)
	}
	for range 3 {
		if _, _, err := out.Seal(buf, s, e); err != ErrSeqExhausted {
			t.Fatal("beyond 2^32-1:", err)
		}
	}
	esn, _ := NewOutbound(300, testKey16, testSalt)
	esn.seq.Store(1<<64 - 1)
	if _, _, err := esn.Seal(buf, s, e); err != ErrSeqExhausted {
		t.Fatal("ESN beyond 2^64-1:", err)
	}
	if st := esn.Stats(); st.Drops[ReasonSeqExhausted] != 1 || st.Seq != 1<<64-1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestConcurrentSeal seals from many goroutines and checks that every
// sequence number (so every IV) is used once and every packet opens.
func TestConcurrentSeal(t *testing.T) {
	out, in := pair(t, testKey16)
	const workers, per = 8, 300
	results := make([][][]byte, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				buf, s, e := datagram(64, byte(w*per+i))
				es, ee, err := out.Seal(buf, s, e)
				if err != nil {
					t.Error(err)
					return
				}
				results[w] = append(results[w], buf[:ee:ee][es-ScratchLen:])
			}
		})
	}
	wg.Wait()
	seen := map[uint32]bool{}
	var pkts [][]byte
	for _, r := range results {
		for _, p := range r {
			seq := binary.BigEndian.Uint32(p[ScratchLen+4:])
			if seen[seq] {
				t.Fatalf("sequence number %d used twice", seq)
			}
			seen[seq] = true
			pkts = append(pkts, p)
		}
	}
	// Open concurrently as well, each packet twice: exactly one accepted.
	var ok, replay sync.Map
	for w := range workers {
		wg.Go(func() {
			for i, p := range pkts {
				if (i+w)%2 != 0 && w > 1 {
					continue
				}
				c := append([]byte{}, p...)
				_, _, _, err := in.Open(c, ScratchLen, len(c))
				switch err {
				case nil:
					if _, dup := ok.LoadOrStore(i, true); dup {
						t.Errorf("packet %d accepted twice", i)
					}
				case ErrReplay:
					replay.Store(i, true)
				default:
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	n := 0
	ok.Range(func(_, _ any) bool { n++; return true })
	if n != len(pkts) {
		t.Fatalf("%d of %d packets accepted", n, len(pkts))
	}
}

func TestAllocs(t *testing.T) {
	out, in := pair(t, testKey16)
	buf, s, e := datagram(1400, 3)
	var es, ee int
	if a := testing.AllocsPerRun(1000, func() {
		var err error
		if es, ee, err = out.Seal(buf, s, e); err != nil {
			t.Fatal(err)
		}
		if _, _, _, err = in.Open(buf, es, ee); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Seal+Open: %v allocations per packet", a)
	}
	tbl, _ := NewTable(in)
	if a := testing.AllocsPerRun(1000, func() {
		es, ee, _ = out.Seal(buf, s, e)
		if _, _, _, _, err := tbl.Open(buf, es, ee); err != nil {
			t.Fatal(err)
		}
		// Refusals do not allocate either.
		if _, _, _, err := in.Open(buf, es, ee); err != ErrReplay {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Table.Open: %v allocations per packet", a)
	}
}

func TestTable(t *testing.T) {
	out, in := pair(t, testKey16)
	in2, _ := NewInbound(0x2222, testKey16, testSalt)
	if _, err := NewTable(in, in); err == nil {
		t.Error("duplicate SPI accepted")
	}
	tbl, err := NewTable(in, in2)
	if err != nil || tbl.Len() != 2 || tbl.Lookup(0x2222) != in2 {
		t.Fatal(err)
	}
	buf, s, e := datagram(10, 0)
	es, ee, _ := out.Seal(buf, s, e)
	if sa, _, _, _, err := tbl.Open(buf, es, ee); err != nil || sa != in {
		t.Fatal(sa, err)
	}
	binary.BigEndian.PutUint32(buf[es:], 0x3333)
	if _, _, _, _, err := tbl.Open(buf, es, ee); err != ErrUnknownSPI {
		t.Error("unknown SPI:", err)
	}
	binary.BigEndian.PutUint32(buf[es:], 0) // IKE non-ESP marker
	if _, _, _, _, err := tbl.Open(buf, es, ee); err != ErrMalformed {
		t.Error("non-ESP marker:", err)
	}
	var nilTable *Table
	if _, _, _, _, err := nilTable.Open(buf, es, es+MinLen); err != ErrMalformed && err != ErrUnknownSPI {
		t.Error("nil table:", err)
	}
}

func TestConstructors(t *testing.T) {
	for _, c := range []struct {
		spi       uint32
		key, salt []byte
	}{
		{0, testKey16, testSalt},
		{255, testKey16, testSalt},
		{256, testKey16[:15], testSalt},
		{256, make([]byte, 24), testSalt},
		{256, testKey16, testSalt[:3]},
	} {
		if _, err := NewOutbound(c.spi, c.key, c.salt); err == nil {
			t.Errorf("NewOutbound(%d, %d-byte key, %d-byte salt) accepted", c.spi, len(c.key), len(c.salt))
		}
		if _, err := NewInbound(c.spi, c.key, c.salt); err == nil {
			t.Errorf("NewInbound(%d, %d-byte key, %d-byte salt) accepted", c.spi, len(c.key), len(c.salt))
		}
	}
	if _, err := NewOutboundSA(SA{SPI: 256, Cipher: AES256GCM, Key: testKey16}); err == nil {
		t.Error("cipher/key length mismatch accepted")
	}
}

func TestNoKeyInStrings(t *testing.T) {
	sa := SA{SPI: 0x1000, Key: []byte("SECRETKEYSECRETK"), Salt: [4]byte{'S', 'A', 'L', 'T'}}
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q", "%d"} {
		s := fmt.Sprintf(f, sa) + fmt.Sprintf(f, &sa)
		if bytes.Contains([]byte(s), []byte("SECRET")) || bytes.Contains([]byte(s), []byte("5345435245")) ||
			bytes.Contains([]byte(s), []byte("83 69 67")) || bytes.Contains([]byte(s), []byte("SALT")) {
			t.Errorf("%s prints key material: %s", f, s)
		}
	}
}

func TestReasonOf(t *testing.T) {
	for r, err := range map[Reason]error{ReasonNone: nil, ReasonAuth: ErrAuth, ReasonReplay: ErrReplay,
		ReasonMalformed: ErrMalformed, ReasonUnknownSPI: ErrUnknownSPI, ReasonSeqExhausted: ErrSeqExhausted} {
		if ReasonOf(err) != r || (err != nil && ReasonOf(fmt.Errorf("x: %w", err)) != r) {
			t.Errorf("ReasonOf(%v) != %v", err, r)
		}
	}
	if ReasonOf(errors.New("other")) != ReasonMalformed {
		t.Error("other error")
	}
	if ReasonAuth.String() != "auth" || NumReasons.String() == "" {
		t.Error("names")
	}
}

func TestCipher(t *testing.T) {
	for _, c := range []Cipher{AES128GCM, AES256GCM} {
		p, err := ParseCipher(c.String())
		if err != nil || p != c {
			t.Error(c, err)
		}
	}
	if _, err := ParseCipher("aes192-gcm"); err == nil {
		t.Error("aes192-gcm accepted")
	}
	for n := range 64 {
		if o := Overhead(n); o < HeaderLen+2+ICVLen || o > MaxOverhead || (n+o-HeaderLen-ICVLen)%4 != 0 {
			t.Errorf("Overhead(%d) = %d", n, o)
		}
	}
}
