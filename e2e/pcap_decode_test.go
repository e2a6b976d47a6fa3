package e2e

import (
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadVXLANCapture checks the capture decoder the underlay tests rely
// on against a hand-made pcap holding one VXLAN datagram (an echo request
// in a broadcast frame, VNI 4097) and one unrelated UDP datagram.
func TestReadVXLANCapture(t *testing.T) {
	inner := "ffffffffffff" + "0242aabbccdd" + "0800" + // broadcast dst, src, IPv4
		"45000054000040004001" + "0000" + "0a000002" + "0a000003" + "08" + strings.Repeat("00", 63)
	vx := "08000000" + "001001" + "00" // flags 0x08, VNI 4097
	udp := func(sport, dport uint16, payload string) string {
		b := make([]byte, 8)
		binary.BigEndian.PutUint16(b, sport)
		binary.BigEndian.PutUint16(b[2:], dport)
		binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)/2))
		return hex.EncodeToString(b) + payload
	}
	outer := func(u string) []byte {
		ipHdr := "45000000000040004011" + "0000" + "c0a86401" + "c0a86402"
		b, err := hex.DecodeString("020000000002" + "020000000001" + "0800" + ipHdr + u)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var file []byte
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr, 0xa1b2c3d4)
	binary.LittleEndian.PutUint32(hdr[20:], 1)
	file = append(file, hdr...)
	for _, f := range [][]byte{outer(udp(5000, 53, "abcd")), outer(udp(51234, 4789, vx+inner))} {
		rec := make([]byte, 16)
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(f)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(f)))
		file = append(append(file, rec...), f...)
	}
	file = append(file, 0, 0, 0) // a record tcpdump is still writing
	path := filepath.Join(t.TempDir(), "c.pcap")
	if err := os.WriteFile(path, file, 0o644); err != nil {
		t.Fatal(err)
	}
	ps, err := readVXLANCapture(path, 4789)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 {
		t.Fatalf("got %d VXLAN packets, want 1: %v", len(ps), ps)
	}
	p := ps[0]
	if p.Flags != 0x08 || p.VNI != 4097 || p.Reserved1 != 0 || p.Reserved2 != 0 || p.SrcPort != 51234 || p.DstPort != 4789 ||
		p.OuterSrc.String() != "192.168.100.1" || p.OuterDst.String() != "192.168.100.2" || !p.broadcast() ||
		!macIs(p.InnerSrc, "02:42:aa:bb:cc:dd") || p.InnerIPSrc.String() != "10.0.0.2" || p.InnerIPDst.String() != "10.0.0.3" || p.InnerICMPType != 8 {
		t.Errorf("decoded %v", p)
	}
}
