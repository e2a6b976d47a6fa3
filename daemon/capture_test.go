package daemon

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/vxmesh/vxmesh/api"
	"github.com/vxmesh/vxmesh/tunnel"
)

// TestCaptureStreamsPcap: GET /v1/capture streams a pcap of a container's
// switch port that Go's pcap reader decodes; a TCP transfer from c1 to c2
// shows up with c1's and c2's addresses in both directions, and the stream
// ends after count frames.
func TestCaptureStreamsPcap(t *testing.T) {
	sb := newFakeSandbox()
	sb.useNetstack = true
	d := startNode(t, nodeConfig(t, tunnel.NewMemNetwork(), "h1", netip.MustParseAddr("127.0.0.1"), sb, t.TempDir()))
	if _, err := d.CreateNetwork(api.NetworkCreateRequest{Name: "web", Subnet: "10.8.0.0/24"}); err != nil {
		t.Fatal(err)
	}
	ep1 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c1", Create: true})
	ep2 := mustAttach(t, d, api.AttachRequest{Network: "web", Name: "c2", Create: true})
	srv := httptest.NewServer(d.Handler())
	defer srv.Close()

	for _, bad := range []string{"container=nope", "container=c1&network=db", "network=web&tunnel=true&container=c1", "container=c1&count=-1"} {
		resp, err := http.Get(srv.URL + "/v1/capture?" + bad)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("capture?%s: status %d, want a 4xx", bad, resp.StatusCode)
		}
		// The CLI prefixes "vxmesh capture: ", so the message must not
		// say "capture: " again.
		if strings.Contains(string(msg), "capture: ") {
			t.Errorf("capture?%s: message %q repeats the command", bad, msg)
		}
	}

	const count = 6
	resp, err := http.Get(srv.URL + "/v1/capture?" + url.Values{"container": {"c1"}, "count": {"6"}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("capture: %s: %s", resp.Status, b)
	}
	r, err := pcapgo.NewReader(resp.Body) // the header arrives before any frame
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("link type %v", r.LinkType())
	}
	tcpOnce(t, sb, sb, "/run/netns/c1", "/run/netns/c2", netip.MustParseAddr(ep2.IP), 5002, 4<<10)

	var out, in, frames int
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("frame %d: %v", frames, err)
		}
		frames++
		if ci.CaptureLength != len(data) || ci.Length < len(data) || ci.Timestamp.IsZero() {
			t.Errorf("frame %d: capture info %+v for %d bytes", frames, ci, len(data))
		}
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if ip == nil || tcp == nil {
			continue
		}
		switch {
		case ip.SrcIP.String() == ep1.IP && ip.DstIP.String() == ep2.IP && tcp.DstPort == 5002:
			out++
		case ip.SrcIP.String() == ep2.IP && ip.DstIP.String() == ep1.IP && tcp.SrcPort == 5002:
			in++
		}
	}
	if got := resp.Trailer.Get(api.CaptureDroppedTrailer); got != "0" {
		t.Errorf("trailer %s = %q, want 0", api.CaptureDroppedTrailer, got)
	}
	if frames != count {
		t.Errorf("stream ended after %d frames, want count=%d", frames, count)
	}
	if out == 0 || in == 0 {
		t.Errorf("TCP c1->c2 frames %d, c2->c1 frames %d: want both directions", out, in)
	}
}
