package keyring

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/crypto/esp"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func mustNew(t *testing.T) *Ring {
	t.Helper()
	r, err := New(rand.Reader, t0)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRotation(t *testing.T) {
	r := mustNew(t)
	if r.PrimaryID != 1 || len(r.Keys) != 1 || r.Validate() != nil {
		t.Fatal(r)
	}
	if _, err := r.Promote(); err != ErrNothingPending {
		t.Fatal("promote without pending:", err)
	}
	if r.Due(t0.Add(time.Hour), 12*time.Hour) || !r.Due(t0.Add(12*time.Hour), 12*time.Hour) {
		t.Fatal("Due")
	}
	alive := []string{"h1", "h2", "h3"}
	for gen := uint32(2); gen <= 6; gen++ {
		now := t0.Add(time.Duration(gen) * 12 * time.Hour)
		r2, err := r.Rotate(rand.Reader, now)
		if err != nil {
			t.Fatal(err)
		}
		if r2.Version != r.Version+1 || r2.PrimaryID != gen-1 || r2.Validate() != nil {
			t.Fatalf("after rotate: %v", r2)
		}
		p, ok := r2.Pending()
		if !ok || p.ID != gen || p.Secret == r.Primary().Secret || !p.Created.Equal(now) {
			t.Fatalf("pending %v", p)
		}
		// The old primary is still the send key, and still receivable.
		if r2.Primary().ID != gen-1 {
			t.Fatal("primary changed by Rotate")
		}
		if _, err := r2.Rotate(rand.Reader, now); err != ErrRotationPending {
			t.Fatal("second rotate:", err)
		}
		if r2.Due(now.Add(100*time.Hour), time.Hour) {
			t.Fatal("due while pending")
		}
		installed := map[string]uint32{"h1": gen, "h2": gen, "h3": gen - 1}
		if r2.ReadyToPromote(alive, installed) {
			t.Fatal("ready although h3 lacks the key")
		}
		installed["h3"] = gen
		installed["dead"] = 0
		if !r2.ReadyToPromote(alive, installed) {
			t.Fatal("not ready although every alive node has the key")
		}
		r3, err := r2.Promote()
		if err != nil {
			t.Fatal(err)
		}
		if r3.PrimaryID != gen || r3.Version != r2.Version+1 || r3.Validate() != nil {
			t.Fatalf("after promote: %v", r3)
		}
		if _, pending := r3.Pending(); pending {
			t.Fatal("pending after promote")
		}
		if len(r3.Keys) != min(int(gen), MaxKeys) {
			t.Fatalf("%d keys at generation %d", len(r3.Keys), gen)
		}
		// The ring before promotion is unchanged (immutability).
		if r2.PrimaryID != gen-1 {
			t.Fatal("Promote modified its receiver")
		}
		r = r3
	}
	if r.Keys[0].ID != 6 || r.Keys[2].ID != 4 {
		t.Fatalf("keys %v", r)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	r := mustNew(t)
	r, _ = r.Rotate(rand.Reader, t0.Add(time.Hour))
	r, _ = r.Promote()
	r, _ = r.Rotate(rand.Reader, t0.Add(2*time.Hour))
	b := r.Marshal()
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != r.Version || got.PrimaryID != r.PrimaryID || len(got.Keys) != len(r.Keys) {
		t.Fatalf("%v != %v", got, r)
	}
	for i := range r.Keys {
		if got.Keys[i].ID != r.Keys[i].ID || got.Keys[i].Secret != r.Keys[i].Secret || !got.Keys[i].Created.Equal(r.Keys[i].Created) {
			t.Fatalf("key %d differs", i)
		}
	}
	if !bytes.Equal(got.Marshal(), b) {
		t.Fatal("re-encoding differs")
	}
}

func TestUnmarshalStrict(t *testing.T) {
	r := mustNew(t)
	r, _ = r.Rotate(rand.Reader, t0)
	good := r.Marshal()
	bad := map[string][]byte{
		"empty":     nil,
		"short":     good[:headerLen-1],
		"truncated": good[:len(good)-1],
		"trailing":  append(append([]byte{}, good...), 0),
		"magic":     append([]byte("VXKQ"), good[4:]...),
	}
	mod := func(name string, f func(b []byte)) {
		b := append([]byte{}, good...)
		f(b)
		bad[name] = b
	}
	mod("format", func(b []byte) { b[4] = 2 })
	mod("count", func(b []byte) { b[17] = 3 })
	mod("zero keys", func(b []byte) { b[17] = 0 })
	mod("primary", func(b []byte) { b[16] = 9 })
	mod("order", func(b []byte) { b[headerLen+3] = 1; b[headerLen+keyRecLen+3] = 2 })
	mod("id zero", func(b []byte) { b[headerLen+keyRecLen+3] = 0 })
	mod("time", func(b []byte) { b[headerLen+4] = 0xff })
	four := append(append([]byte{}, good...), good[headerLen:headerLen+2*keyRecLen]...)
	four[17] = 4
	bad["four keys"] = four
	for name, b := range bad {
		if _, err := Unmarshal(b); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), hex.EncodeToString(r.Keys[0].Secret[:4])) {
			t.Errorf("%s: error quotes the secret", name)
		}
	}
}

func FuzzUnmarshal(f *testing.F) {
	r, _ := New(rand.Reader, t0)
	f.Add(r.Marshal())
	r, _ = r.Rotate(rand.Reader, t0)
	f.Add(r.Marshal())
	r, _ = r.Promote()
	r, _ = r.Rotate(rand.Reader, t0)
	f.Add(r.Marshal())
	f.Add([]byte("VXKR"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Unmarshal(b)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted an invalid ring: %v", err)
		}
		if !bytes.Equal(r.Marshal(), b) {
			t.Fatal("accepted a non-canonical encoding")
		}
	})
}

func TestNoSecretInOutput(t *testing.T) {
	r := mustNew(t)
	r, _ = r.Rotate(rand.Reader, t0)
	k := r.Keys[0]
	sec := hex.EncodeToString(k.Secret[:6])
	var outs []string
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%d", "%q"} {
		outs = append(outs, fmt.Sprintf(f, r), fmt.Sprintf(f, *r), fmt.Sprintf(f, k), fmt.Sprintf(f, &k), fmt.Sprintf(f, k.Secret), fmt.Sprintf(f, r.Keys))
	}
	j, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	outs = append(outs, string(j))
	ks, es := runs(t, 2)
	sa, _ := DeriveSA(k, esp.AES128GCM, 0x1000, mustShared(t, ks[0], es[1].Pub), es[0], es[1])
	outs = append(outs, fmt.Sprintf("%v %+v %#v %x %d", sa, sa, sa, sa, sa))
	for _, o := range outs {
		low := strings.ToLower(o)
		if strings.Contains(low, sec) || strings.Contains(low, hex.EncodeToString(sa.Key[:6])) ||
			strings.Contains(o, fmt.Sprint(k.Secret[0], " ", k.Secret[1], " ", k.Secret[2])) {
			t.Fatalf("key material in output: %s", o)
		}
	}
}

// runs returns n run keys and their endpoints named h1, h2, ...
func runs(t *testing.T, n int) ([]*RunKey, []Endpoint) {
	t.Helper()
	var ks []*RunKey
	var es []Endpoint
	for i := range n {
		k, err := NewRunKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		ks = append(ks, k)
		es = append(es, Endpoint{fmt.Sprint("h", i+1), k.Public()})
	}
	return ks, es
}

func mustShared(t *testing.T, k *RunKey, pub []byte) []byte {
	t.Helper()
	s, err := k.Shared(pub)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDeriveSA(t *testing.T) {
	r := mustNew(t)
	k := r.Primary()
	ks, es := runs(t, 4)
	a, b, c := es[0], es[1], es[2]
	const spi = 0x1234567
	// The sender's outbound SA is the receiver's inbound SA.
	ab, err := DeriveSA(k, esp.AES128GCM, spi, mustShared(t, ks[0], b.Pub), a, b)
	if err != nil {
		t.Fatal(err)
	}
	atB, _ := DeriveSA(k, esp.AES128GCM, spi, mustShared(t, ks[1], a.Pub), a, b)
	if atB.SPI != spi || !bytes.Equal(atB.Key, ab.Key) || atB.Salt != ab.Salt {
		t.Fatal("sender and receiver derive different SAs")
	}
	if len(ab.Key) != 16 || ab.Cipher != esp.AES128GCM || ab.NoESN || ab.SPI != spi {
		t.Fatalf("%v", ab)
	}
	// Every variation gives other key material: direction, peer, run,
	// key, cipher, SPI.
	r2, _ := r.Rotate(rand.Reader, t0)
	k2, _ := r2.Pending()
	a2 := Endpoint{"h1", ks[3].Public()} // h1 restarted with h4's run key
	variants := []struct {
		k      Key
		c      esp.Cipher
		spi    uint32
		shared []byte
		s, d   Endpoint
	}{
		{k, esp.AES128GCM, spi, mustShared(t, ks[1], a.Pub), b, a},
		{k, esp.AES128GCM, spi, mustShared(t, ks[0], c.Pub), a, c},
		{k, esp.AES128GCM, spi, mustShared(t, ks[3], b.Pub), a2, b},
		{k2, esp.AES128GCM, spi, mustShared(t, ks[0], b.Pub), a, b},
		{k, esp.AES256GCM, spi, mustShared(t, ks[0], b.Pub), a, b},
		{k, esp.AES128GCM, spi + 1, mustShared(t, ks[0], b.Pub), a, b},
		{k, esp.AES128GCM, spi, mustShared(t, ks[0], b.Pub), Endpoint{"h", a.Pub}, Endpoint{"1h2", b.Pub}}, // name boundaries
	}
	for i, v := range variants {
		sa, err := DeriveSA(v.k, v.c, v.spi, v.shared, v.s, v.d)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(sa.Key[:16], ab.Key) || sa.Salt == ab.Salt {
			t.Errorf("variant %d shares key or salt with the base SA", i)
		}
	}
	// The same ring secret and the same names in another run pair give
	// other material: a restart never repeats an SA.
	if _, err := DeriveSA(k, esp.AES128GCM, spi, mustShared(t, ks[0], a.Pub), a, a); err == nil {
		t.Error("SA to self accepted")
	}
	sh := mustShared(t, ks[0], b.Pub)
	bad := []struct {
		name   string
		spi    uint32
		shared []byte
		s, d   Endpoint
		c      esp.Cipher
	}{
		{"empty node name", spi, sh, Endpoint{"", a.Pub}, b, esp.AES128GCM},
		{"no public key", spi, sh, Endpoint{"h1", nil}, b, esp.AES128GCM},
		{"unknown cipher", spi, sh, a, b, 0},
		{"reserved SPI", 255, sh, a, b, esp.AES128GCM},
		{"no shared secret", spi, nil, a, b, esp.AES128GCM},
	}
	for _, x := range bad {
		if _, err := DeriveSA(k, x.c, x.spi, x.shared, x.s, x.d); err == nil {
			t.Errorf("%s accepted", x.name)
		}
	}
	out, err := esp.NewOutboundSA(ab)
	if err != nil {
		t.Fatal(err)
	}
	in, err := esp.NewInboundSA(atB)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 200)
	copy(buf[40:], "hello")
	s, e, err := out.Seal(buf, 40, 45)
	if err != nil {
		t.Fatal(err)
	}
	is, ie, _, err := in.Open(buf, s, e)
	if err != nil || string(buf[is:ie]) != "hello" {
		t.Fatal(err)
	}
}

// TestPublicKeyChecks: published run keys of the wrong length or of small
// order (the all-zero shared secret) are refused, in every encoding.
func TestPublicKeyChecks(t *testing.T) {
	ks, es := runs(t, 2)
	if err := CheckPublic(es[1].Pub); err != nil {
		t.Fatal(err)
	}
	le := func(h string) []byte { b, _ := hex.DecodeString(h); return b }
	bad := map[string][]byte{
		"empty":          nil,
		"short":          es[1].Pub[:31],
		"long":           append(bytes.Clone(es[1].Pub), 0),
		"zero":           make([]byte, 32),
		"one":            le("0100000000000000000000000000000000000000000000000000000000000000"),
		"order 8a":       le("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
		"order 8b":       le("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
		"p-1":            le("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
		"p":              le("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
		"p+1":            le("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
		"zero+2^255":     le("0000000000000000000000000000000000000000000000000000000000000080"),
		"order 8a+2^255": le("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880"),
	}
	for name, pub := range bad {
		if err := CheckPublic(pub); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, err := ks[0].Shared(pub); err == nil {
			t.Errorf("%s: shared secret computed", name)
		}
	}
	if fmt.Sprint(ks[0]) != "run key [redacted]" {
		t.Error("run key prints itself")
	}
}

func TestRandomSPI(t *testing.T) {
	taken := map[uint32]bool{}
	for range 1000 {
		spi, err := RandomSPI(rand.Reader, func(s uint32) bool { return taken[s] })
		if err != nil || spi < 256 || taken[spi] {
			t.Fatalf("SPI %d, %v", spi, err)
		}
		taken[spi] = true
	}
	// A source that keeps giving reserved or taken SPIs: an error, not a
	// duplicate.
	rep := bytes.NewReader(bytes.Repeat([]byte{0, 0, 0, 7, 0, 0, 1, 0}, 100))
	if spi, err := RandomSPI(rep, func(s uint32) bool { return s == 256 }); err == nil {
		t.Fatalf("got SPI %d from a source of reserved and taken ones", spi)
	}
}

func TestExportWireshark(t *testing.T) {
	sa := esp.SA{SPI: 0x8a2b3c4d, Cipher: esp.AES128GCM, Key: bytes.Repeat([]byte{0xab}, 16), Salt: [4]byte{1, 2, 3, 4}}
	var b bytes.Buffer
	err := ExportWireshark(&b,
		WiresharkSA{netip.MustParseAddr("192.168.50.1"), netip.MustParseAddr("192.168.50.2"), sa},
		WiresharkSA{netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), sa})
	if err != nil {
		t.Fatal(err)
	}
	want := `"IPv4","192.168.50.1","192.168.50.2","0x8a2b3c4d","AES-GCM with 16 octet ICV [RFC4106]","0xabababababababababababababababab01020304","NULL",""` + "\n" +
		`"IPv6","fd00::1","fd00::2","0x8a2b3c4d","AES-GCM with 16 octet ICV [RFC4106]","0xabababababababababababababababab01020304","NULL",""` + "\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
	if err := ExportWireshark(&b, WiresharkSA{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::2"), sa}); err == nil {
		t.Error("mixed families accepted")
	}
}
