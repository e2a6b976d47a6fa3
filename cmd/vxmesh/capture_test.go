package main

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// frame serializes an Ethernet frame from ls.
func frame(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func summaryFrames(t testing.TB) map[string][]byte {
	mac1 := net.HardwareAddr{2, 0x42, 10, 1, 0, 2}
	mac2 := net.HardwareAddr{2, 0x42, 10, 1, 0, 3}
	ip1, ip2 := net.IP{10, 1, 0, 2}, net.IP{10, 1, 0, 3}
	eth := &layers.Ethernet{SrcMAC: mac1, DstMAC: mac2, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: ip1, DstIP: ip2, Protocol: layers.IPProtocolICMPv4}
	tcpIP := *ip
	tcpIP.Protocol = layers.IPProtocolTCP
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true}
	tcp.SetNetworkLayerForChecksum(&tcpIP)
	arpEth := &layers.Ethernet{SrcMAC: mac1, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: mac1, SourceProtAddress: ip1, DstHwAddress: make([]byte, 6), DstProtAddress: ip2}
	return map[string][]byte{
		"02:42:0a:01:00:02 > 02:42:0a:01:00:03 IPv4 10.1.0.2 > 10.1.0.3 EchoRequest":  frame(t, eth, ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0)}),
		"02:42:0a:01:00:02 > 02:42:0a:01:00:03 IPv4 10.1.0.2:40000 > 10.1.0.3:80 TCP": frame(t, eth, &tcpIP, tcp),
		"02:42:0a:01:00:02 > ff:ff:ff:ff:ff:ff ARP who-has 10.1.0.3 tell 10.1.0.2":    frame(t, arpEth, arp),
		"malformed frame": {1, 2, 3},
	}
}

// TestFrameSummary: without -w, capture prints each frame as one line
// with its addresses and protocol.
func TestFrameSummary(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	for want, f := range summaryFrames(t) {
		got := frameSummary(gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(f), Length: len(f)}, f)
		if !strings.HasPrefix(got, "03:04:05.000006 ") || !strings.Contains(got, want) || strings.Contains(got, "\n") {
			t.Errorf("summary %q, want one line containing %q", got, want)
		}
	}
}

// FuzzFrameSummary: any bytes from the capture stream give one line, no
// panic.
func FuzzFrameSummary(f *testing.F) {
	for _, fr := range summaryFrames(f) {
		f.Add(fr)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if s := frameSummary(gopacket.CaptureInfo{CaptureLength: len(data), Length: len(data)}, data); strings.Contains(s, "\n") {
			t.Errorf("summary has a newline: %q", s)
		}
	})
}
