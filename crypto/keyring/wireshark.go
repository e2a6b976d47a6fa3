package keyring

import (
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"

	"github.com/vxmesh/vxmesh/crypto/esp"
)

// WiresharkSA is one SA as seen on the underlay: its outer source and
// destination addresses and its parameters.
type WiresharkSA struct {
	Src, Dst netip.Addr
	SA       esp.SA
}

// ExportWireshark writes one line per SA for Wireshark's ESP SA table, the
// "esp_sa" UAT file in the Wireshark profile directory (Preferences >
// Protocols > ESP > ESP SAs; also enable "Attempt to detect/decode
// encrypted ESP payloads"). THE LINES CONTAIN THE KEYS: this is for an
// operator's explicit request only (vxmesh key export --wireshark, root).
//
// Each line is a UAT record: comma-separated, every field double-quoted,
// in the column order of packet-ipsec.c's esp_uat_flds:
//
//	"Protocol","Src IP","Dest IP","SPI","Encryption","Encryption Key","Authentication","Authentication Key"
//	"IPv4","192.168.50.1","192.168.50.2","0x8a2b3c4d","AES-GCM with 16 octet ICV [RFC4106]","0x<key><salt>","NULL",""
//
// The encryption key is the AES key followed by the 4-byte salt (RFC 4106
// keying material, as Wireshark and ip-xfrm expect), in hex with 0x. GCM
// authenticates itself, so the authentication algorithm is NULL with an
// empty key. Wireshark decodes UDP port 4500 as UDP-encapsulated ESP by
// default, then the inner UDP datagram on port 4789 as VXLAN.
//
// vxmesh SAs use extended sequence numbers. Wireshark releases whose ESP SA
// table has no sequence-number-length column compute the ICV over a 32-bit
// sequence number: they decrypt and decode the payload (GCM's encryption
// does not depend on the AAD) but mark the ICV as bad. Recent releases add
// sequence-number columns after these eight; this format does not fill
// them.
func ExportWireshark(w io.Writer, sas ...WiresharkSA) error {
	for _, s := range sas {
		s.Src, s.Dst = s.Src.Unmap(), s.Dst.Unmap()
		if !s.Src.IsValid() || !s.Dst.IsValid() || s.Src.Is4() != s.Dst.Is4() {
			return fmt.Errorf("keyring: SA 0x%08x: source %v and destination %v must both be IPv4 or both IPv6", s.SA.SPI, s.Src, s.Dst)
		}
		c := s.SA.Cipher
		if c == 0 || len(s.SA.Key) != c.KeyLen() {
			return fmt.Errorf("keyring: SA 0x%08x: %v with a %d-byte key", s.SA.SPI, c, len(s.SA.Key))
		}
		proto := "IPv4"
		if !s.Src.Is4() {
			proto = "IPv6"
		}
		_, err := fmt.Fprintf(w, "%q,%q,%q,\"0x%08x\",%q,\"0x%s%s\",\"NULL\",\"\"\n",
			proto, s.Src.String(), s.Dst.String(), s.SA.SPI,
			"AES-GCM with 16 octet ICV [RFC4106]",
			hex.EncodeToString(s.SA.Key), hex.EncodeToString(s.SA.Salt[:]))
		if err != nil {
			return err
		}
	}
	return nil
}
