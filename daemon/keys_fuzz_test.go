package daemon

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/vxmesh/vxmesh/crypto/esp"
	"github.com/vxmesh/vxmesh/crypto/keyring"
)

// FuzzKeyState feeds arbitrary keystate values (written by other nodes) to
// decodeKeyState: it never panics, and what it accepts has a usable public
// key and well-formed SPI and outbound entries, each found by spiFor and
// sendsTo, and survives a round trip.
func FuzzKeyState(f *testing.F) {
	run, _ := keyring.NewRunKey(rand.Reader)
	peer, _ := keyring.NewRunKey(rand.Reader)
	good := keyStateRecord{Pub: run.Public(), Installed: 3, SeenVersion: 9, SeenKey: 3}
	good.SPIs = appendSPI(good.SPIs, peer.Public(), 3, esp.AES128GCM, 0x12345678)
	good.SPIs = appendSPI(good.SPIs, peer.Public(), 2, esp.AES256GCM, 0x100)
	good.Out = appendOut(good.Out, peer.Public(), 3, esp.AES128GCM)
	b, _ := json.Marshal(good)
	f.Add(b)
	refused := good
	refused.Refused, refused.RefusedKeys, refused.RefusedCount = 12, []uint32{1}, 2
	b, _ = json.Marshal(refused)
	f.Add(b)
	f.Add([]byte(`{"pub":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","installed":1}`)) // small order
	f.Add([]byte(`{"pub":"","spis":"AAAA"}`))
	f.Add([]byte(`{"epoch":1,"installed":1}`)) // the format before run keys
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := decodeKeyState(b)
		if err != nil {
			return
		}
		if _, err := run.Shared(rec.Pub); err != nil {
			t.Fatalf("accepted a public key without a shared secret: %v", err)
		}
		for e := rec.SPIs; len(e) > 0; e = e[spiEntryLen:] {
			key, c, spi := binary.BigEndian.Uint32(e[spiPeerLen:]), esp.Cipher(e[spiPeerLen+4]), binary.BigEndian.Uint32(e[spiPeerLen+5:])
			if spi < 256 || c.KeyLen() == 0 || key == 0 {
				t.Fatalf("accepted SPI entry key %d %v SPI %d", key, c, spi)
			}
			pub := make([]byte, keyring.PubLen)
			copy(pub, e[:spiPeerLen])
			if got, ok := rec.spiFor(pub, key, c); !ok || (got != spi && !earlierEntry(rec.SPIs, e, key, c)) {
				t.Fatalf("spiFor does not find SPI %d", spi)
			}
		}
		for e := rec.Out; len(e) > 0; e = e[outEntryLen:] {
			key, c := binary.BigEndian.Uint32(e[spiPeerLen:]), esp.Cipher(e[spiPeerLen+4])
			if c.KeyLen() == 0 || key == 0 {
				t.Fatalf("accepted outbound entry key %d %v", key, c)
			}
			pub := make([]byte, keyring.PubLen)
			copy(pub, e[:spiPeerLen])
			if !rec.sendsTo(pub, c, func(k uint32) bool { return k == key }) {
				t.Fatalf("sendsTo does not find key %d %v", key, c)
			}
		}
		again, _ := json.Marshal(rec)
		rec2, err := decodeKeyState(again)
		if err != nil || !reflect.DeepEqual(rec, rec2) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// earlierEntry reports whether an entry before e in all has e's peer, key
// and cipher (spiFor returns the first).
func earlierEntry(all, e []byte, key uint32, c esp.Cipher) bool {
	for x := all; len(x) > len(e); x = x[spiEntryLen:] {
		if string(x[:spiPeerLen]) == string(e[:spiPeerLen]) && binary.BigEndian.Uint32(x[spiPeerLen:]) == key && esp.Cipher(x[spiPeerLen+4]) == c {
			return true
		}
	}
	return false
}

// TestDecodeKeyStateRefusesBadRecords: a keystate record whose public key
// has the wrong length or is of small order, or whose SPI entries are cut
// or name a reserved SPI, an unknown cipher or key 0, or whose outbound
// entries are cut or name an unknown cipher or key 0, counts as missing.
func TestDecodeKeyStateRefusesBadRecords(t *testing.T) {
	run, _ := keyring.NewRunKey(rand.Reader)
	good := keyStateRecord{Pub: run.Public(), Installed: 1, SPIs: appendSPI(nil, run.Public(), 1, esp.AES128GCM, 0x1000), Out: appendOut(nil, run.Public(), 1, esp.AES128GCM)}
	enc := func(r keyStateRecord) []byte { b, _ := json.Marshal(r); return b }
	if _, err := decodeKeyState(enc(good)); err != nil {
		t.Fatal(err)
	}
	mod := func(f func(r *keyStateRecord)) []byte {
		r := good
		r.Pub, r.SPIs, r.Out = append([]byte{}, good.Pub...), append([]byte{}, good.SPIs...), append([]byte{}, good.Out...)
		f(&r)
		return enc(r)
	}
	order8 := []byte{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00}
	bad := map[string][]byte{
		"not json":        []byte("{"),
		"no public key":   mod(func(r *keyStateRecord) { r.Pub = nil }),
		"short key":       mod(func(r *keyStateRecord) { r.Pub = r.Pub[:31] }),
		"zero key":        mod(func(r *keyStateRecord) { r.Pub = make([]byte, 32) }),
		"order 8 key":     mod(func(r *keyStateRecord) { r.Pub = order8 }),
		"cut SPI entry":   mod(func(r *keyStateRecord) { r.SPIs = r.SPIs[:spiEntryLen-1] }),
		"reserved SPI":    mod(func(r *keyStateRecord) { r.SPIs[spiEntryLen-2], r.SPIs[spiEntryLen-1] = 0, 7 }),
		"unknown cipher":  mod(func(r *keyStateRecord) { r.SPIs[spiPeerLen+4] = 9 }),
		"key 0":           mod(func(r *keyStateRecord) { copy(r.SPIs[spiPeerLen:], []byte{0, 0, 0, 0}) }),
		"cut out entry":   mod(func(r *keyStateRecord) { r.Out = r.Out[:outEntryLen-1] }),
		"out cipher":      mod(func(r *keyStateRecord) { r.Out[spiPeerLen+4] = 9 }),
		"out key 0":       mod(func(r *keyStateRecord) { copy(r.Out[spiPeerLen:], []byte{0, 0, 0, 0}) }),
		"too many keys":   mod(func(r *keyStateRecord) { r.RefusedKeys = []uint32{1, 2, 3, 4} }),
		"old epoch field": []byte(`{"epoch":12345,"installed":1}`),
	}
	for name, b := range bad {
		if _, err := decodeKeyState(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
