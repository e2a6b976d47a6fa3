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
	sa, _ := DeriveSA(k, esp.AES128GCM, Endpoint{"a", 1}, Endpoint{"b", 2})
	outs = append(outs, fmt.Sprintf("%v %+v %#v %x %d", sa, sa, sa, sa, sa))
	for _, o := range outs {
		low := strings.ToLower(o)
		if strings.Contains(low, sec) || strings.Contains(low, hex.EncodeToString(sa.Key[:6])) ||
			strings.Contains(o, fmt.Sprint(k.Secret[0], " ", k.Secret[1], " ", k.Secret[2])) {
			t.Fatalf("key material in output: %s", o)
		}
	}
}

func TestDeriveSA(t *testing.T) {
	r := mustNew(t)
	k := r.Primary()
	a, b, c := Endpoint{"h1", 11}, Endpoint{"h2", 22}, Endpoint{"h3", 33}
	ab, err := DeriveSA(k, esp.AES128GCM, a, b)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := DeriveSA(k, esp.AES128GCM, a, b)
	if again.SPI != ab.SPI || !bytes.Equal(again.Key, ab.Key) || again.Salt != ab.Salt {
		t.Fatal("derivation is not deterministic")
	}
	if len(ab.Key) != 16 || ab.Cipher != esp.AES128GCM || ab.NoESN {
		t.Fatalf("%v", ab)
	}
	// Every variation gives another SA: direction, peer, epoch, key,
	// cipher.
	r2, _ := r.Rotate(rand.Reader, t0)
	k2, _ := r2.Pending()
	variants := []struct {
		k    Key
		c    esp.Cipher
		s, d Endpoint
	}{
		{k, esp.AES128GCM, b, a},
		{k, esp.AES128GCM, a, c},
		{k, esp.AES128GCM, Endpoint{"h1", 12}, b},
		{k, esp.AES128GCM, a, Endpoint{"h2", 23}},
		{k2, esp.AES128GCM, a, b},
		{k, esp.AES256GCM, a, b},
		{k, esp.AES128GCM, Endpoint{"h", 11}, Endpoint{"1h2", 22}}, // name boundaries
	}
	for i, v := range variants {
		sa, err := DeriveSA(v.k, v.c, v.s, v.d)
		if err != nil {
			t.Fatal(err)
		}
		if sa.SPI == ab.SPI || bytes.Equal(sa.Key[:16], ab.Key) || sa.Salt == ab.Salt {
			t.Errorf("variant %d shares SPI, key or salt with the base SA", i)
		}
		if sa.SPI < 256 {
			t.Errorf("variant %d: reserved SPI %d", i, sa.SPI)
		}
	}
	if _, err := DeriveSA(k, esp.AES128GCM, a, a); err == nil {
		t.Error("SA to self accepted")
	}
	if _, err := DeriveSA(k, esp.AES128GCM, Endpoint{}, b); err == nil {
		t.Error("empty node name accepted")
	}
	if _, err := DeriveSA(k, 0, a, b); err == nil {
		t.Error("unknown cipher accepted")
	}
	// Many SAs: no reserved SPI, and the SA works end to end.
	for i := range 2000 {
		sa, _ := DeriveSA(k, esp.AES256GCM, Endpoint{fmt.Sprint("n", i), 1}, b)
		if sa.SPI < 256 {
			t.Fatalf("reserved SPI %d", sa.SPI)
		}
	}
	out, err := esp.NewOutboundSA(ab)
	if err != nil {
		t.Fatal(err)
	}
	in, err := esp.NewInboundSA(ab)
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
