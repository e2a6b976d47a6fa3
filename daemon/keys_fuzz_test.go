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
// key and well-formed SPI entries, each found by spiFor, and survives a
// round trip.
func FuzzKeyState(f *testing.F) {
	run, _ := keyring.NewRunKey(rand.Reader)
	peer, _ := keyring.NewRunKey(rand.Reader)
	good := keyStateRecord{Pub: run.Public(), Installed: 3, SeenVersion: 9, SeenKey: 3}
	good.SPIs = appendSPI(good.SPIs, peer.Public(), 3, esp.AES128GCM, 0x12345678)
	good.SPIs = appendSPI(good.SPIs, peer.Public(), 2, esp.AES256GCM, 0x100)
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
