package packet

import (
	"net/netip"
	"testing"
)

func TestIPv4Accessors(t *testing.T) {
	p := IPv4(append([]byte(nil), ipv4Example...))
	p = append(p, make([]byte, 0x73-20)...)
	if !p.Valid() {
		t.Fatal("example header not valid")
	}
	if p.HeaderLen() != 20 || p.TotalLen() != 0x73 || p.TTL() != 64 || p.Protocol() != ProtoUDP {
		t.Errorf("hl %d tl %d ttl %d proto %d", p.HeaderLen(), p.TotalLen(), p.TTL(), p.Protocol())
	}
	if p.Src() != netip.MustParseAddr("192.168.0.1") || p.Dst() != netip.MustParseAddr("192.168.0.199") {
		t.Errorf("src %s dst %s", p.Src(), p.Dst())
	}
	if p.Checksum() != 0xb861 || p.HeaderChecksum() != 0xb861 || !p.ChecksumValid() {
		t.Errorf("checksum %#04x computed %#04x", p.Checksum(), p.HeaderChecksum())
	}
	if len(p.Payload()) != 0x73-20 {
		t.Errorf("payload %d bytes", len(p.Payload()))
	}
	p.SetDst(netip.MustParseAddr("10.1.2.3"))
	if p.Dst() != netip.MustParseAddr("10.1.2.3") || p.ChecksumValid() {
		t.Error("SetDst: address not written or checksum unexpectedly still valid")
	}
	p.SetChecksum(p.HeaderChecksum())
	if !p.ChecksumValid() {
		t.Error("SetChecksum(HeaderChecksum()) does not validate")
	}
	// Ethernet padding behind the packet is allowed.
	if !append(p, 0, 0, 0).Valid() {
		t.Error("padded packet not valid")
	}
}

func TestIPv4Invalid(t *testing.T) {
	good := append(IPv4(nil), ipv4Example...)
	good[2], good[3] = 0, 20
	if !good.Valid() {
		t.Fatal("20-byte packet not valid")
	}
	mod := func(f func(p IPv4) IPv4) IPv4 { return f(append(IPv4(nil), good...)) }
	for name, p := range map[string]IPv4{
		"short":          good[:19],
		"version 6":      mod(func(p IPv4) IPv4 { p[0] = 0x65; return p }),
		"IHL 4":          mod(func(p IPv4) IPv4 { p[0] = 0x44; return p }),
		"IHL past end":   mod(func(p IPv4) IPv4 { p[0] = 0x46; p[3] = 24; return p }),
		"total < header": mod(func(p IPv4) IPv4 { p[3] = 19; return p }),
		"total past end": mod(func(p IPv4) IPv4 { p[3] = 21; return p }),
	} {
		if p.Valid() {
			t.Errorf("%s: Valid() = true", name)
		}
	}
}
