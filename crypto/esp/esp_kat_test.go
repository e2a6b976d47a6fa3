package esp

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"testing"
)

// katCase is one ESP packet of draft-mcgrew-gcm-test-01 (testdata).
type katCase struct {
	name                      string
	key, salt, iv, pt, espOut []byte
	spi                       uint32
	seq                       uint64
	esn                       bool
}

func loadKAT(t *testing.T) []katCase {
	t.Helper()
	f, err := os.Open("testdata/draft-mcgrew-gcm-test-01.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []katCase
	var c *katCase
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<16)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, _ := strings.Cut(line, " ")
		if k == "case" {
			cases = append(cases, katCase{name: "case" + v})
			c = &cases[len(cases)-1]
			continue
		}
		if c == nil {
			t.Fatalf("field %q before the first case", k)
		}
		b, err := hex.DecodeString(v)
		if err != nil {
			t.Fatalf("%s %s: %v", c.name, k, err)
		}
		switch k {
		case "key":
			c.key = b
		case "salt":
			c.salt = b
		case "iv":
			c.iv = b
		case "plaintext":
			c.pt = b
		case "esp":
			c.espOut = b
		case "spi":
			c.spi = binary.BigEndian.Uint32(b)
		case "seq":
			n, err := strconv.ParseUint(v, 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			c.seq, c.esn = n, len(v) == 16
		default:
			t.Fatalf("%s: unknown field %q", c.name, k)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(cases) != 14 {
		t.Fatalf("%d cases, want 14", len(cases))
	}
	return cases
}

// aad builds the RFC 4106 AAD independently of the package.
func (c katCase) aad() []byte {
	a := binary.BigEndian.AppendUint32(nil, c.spi)
	if c.esn {
		return binary.BigEndian.AppendUint64(a, c.seq)
	}
	return binary.BigEndian.AppendUint32(a, uint32(c.seq))
}

// packet returns the ESP packet of the case as on the wire.
func (c katCase) packet() []byte {
	p := binary.BigEndian.AppendUint32(nil, c.spi)
	p = binary.BigEndian.AppendUint32(p, uint32(c.seq))
	p = append(p, c.iv...)
	return append(p, c.espOut...)
}

// TestKATVectorsGCM checks the transcribed vectors with crypto/cipher alone
// (nonce = salt || IV, AAD = SPI || seq), so a transcription error cannot
// hide behind a matching bug in the package.
func TestKATVectorsGCM(t *testing.T) {
	for _, c := range loadKAT(t) {
		block, err := aes.NewCipher(c.key)
		if err != nil {
			t.Fatal(err)
		}
		g, _ := cipher.NewGCM(block)
		nonce := append(append([]byte{}, c.salt...), c.iv...)
		if got := g.Seal(nil, nonce, c.pt, c.aad()); !bytes.Equal(got, c.espOut) {
			t.Errorf("%s: crypto/cipher gives %x, vector %x", c.name, got, c.espOut)
		}
	}
}

func TestKATOpen(t *testing.T) {
	for _, c := range loadKAT(t) {
		if _, ok := cipherFor(len(c.key)); !ok {
			t.Logf("%s: %d-byte key (AES-192) is not a vxmesh cipher; checked by TestKATVectorsGCM only", c.name, len(c.key))
			continue
		}
		sa := SA{SPI: c.spi, Key: c.key, NoESN: !c.esn}
		copy(sa.Salt[:], c.salt)
		in, err := newInbound(sa, false)
		if err != nil {
			t.Fatal(err)
		}
		in.win.top = c.seq - 1 // as if the previous packet had arrived
		pkt := c.packet()
		buf := make([]byte, 64+len(pkt))
		copy(buf[64:], pkt)
		s, e, nh, err := in.Open(buf, 64, len(buf))
		if err != nil {
			t.Errorf("%s: Open: %v", c.name, err)
			continue
		}
		pad := int(c.pt[len(c.pt)-2])
		if want := c.pt[:len(c.pt)-2-pad]; !bytes.Equal(buf[s:e], want) {
			t.Errorf("%s: Open gives %x, want %x", c.name, buf[s:e], want)
		}
		if nh != c.pt[len(c.pt)-1] {
			t.Errorf("%s: next header %d, want %d", c.name, nh, c.pt[len(c.pt)-1])
		}
		if !bytes.Equal(buf[64:80], pkt[:16]) {
			t.Errorf("%s: ESP header changed by Open", c.name)
		}
		if st := in.Stats(); st.Seq != c.seq || st.Packets != 1 {
			t.Errorf("%s: stats %+v", c.name, st)
		}
		// The same packet again is a replay.
		copy(buf[64:], pkt)
		if _, _, _, err := in.Open(buf, 64, len(buf)); err != ErrReplay {
			t.Errorf("%s: second Open: %v, want ErrReplay", c.name, err)
		}
	}
}

func TestKATSeal(t *testing.T) {
	for _, c := range loadKAT(t) {
		if _, ok := cipherFor(len(c.key)); !ok {
			continue
		}
		sa := SA{SPI: c.spi, Key: c.key, NoESN: !c.esn}
		copy(sa.Salt[:], c.salt)
		out, err := newOutbound(sa, false)
		if err != nil {
			t.Fatal(err)
		}
		out.seq.Store(c.seq - 1)
		pad := int(c.pt[len(c.pt)-2])
		inner := c.pt[:len(c.pt)-2-pad]
		buf := make([]byte, 128+len(inner), 128+len(inner)+MaxTrailerLen)
		copy(buf[128:], inner)
		s, e, err := out.seal(buf, 128, len(buf), c.pt[len(c.pt)-1], c.iv)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := buf[s:e]; !bytes.Equal(got, c.packet()) {
			t.Errorf("%s: Seal gives\n%x\nwant\n%x", c.name, got, c.packet())
		}
	}
}
