package lb

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vxmesh/vxmesh/packet"
)

// activeConns is what `vxmesh stats` shows as ACTIVE CONNS: the service's
// sum over its backends.
func activeConns(tb *Table, now int64) int64 {
	var n int64
	for _, s := range tb.Stats(now) {
		n += s.Active
	}
	return n
}

// TestActiveFollowsClose opens connections through the table and closes
// them the ways real ones close (FIN/ACK both ways, a RST from either
// side) or leaves them idle until they expire: the active count must go
// back to what is still open, and to 0 once the rest expire. A
// half-closed connection (one FIN) is still open.
func TestActiveFollowsClose(t *testing.T) {
	const n = 400
	tb := newTest(t, Config{Max: 4096, Timeouts: Timeouts{TCPEstablished: time.Minute}}, Service{}, 3)
	client := func(port uint16, fl header.TCPFlags) {
		t.Helper()
		if v := tb.Translate(toVIP(packet.ProtoTCP, port, 80, fl).build(), nil, t0); v != Forward {
			t.Fatalf("port %d flags %v: client packet verdict %d", port, fl, v)
		}
	}
	got := make([]fields, n)
	backend := func(i int, fl header.TCPFlags) {
		t.Helper()
		if v := tb.Untranslate(reply(got[i], packet.ProtoTCP, fl).build(), nil, t0); v != Forward {
			t.Fatalf("conn %d flags %v: backend packet verdict %d", i, fl, v)
		}
	}
	for i := range n {
		port := uint16(20000 + i)
		f := toVIP(packet.ProtoTCP, port, 80, header.TCPFlagSyn).build()
		if v := tb.Translate(f, nil, t0); v != Forward {
			t.Fatalf("SYN %d: verdict %d", i, v)
		}
		got[i] = parseFields(f)
		backend(i, header.TCPFlagSyn|header.TCPFlagAck)
		client(port, header.TCPFlagAck)
	}
	if a := activeConns(tb, t0); a != n {
		t.Fatalf("active %d after opening %d connections", a, n)
	}
	open := 0
	for i := range n {
		port := uint16(20000 + i)
		switch i % 5 {
		case 0: // the client closes first
			client(port, header.TCPFlagFin|header.TCPFlagAck)
			backend(i, header.TCPFlagFin|header.TCPFlagAck)
			client(port, header.TCPFlagAck)
		case 1: // the backend closes first
			backend(i, header.TCPFlagFin|header.TCPFlagAck)
			client(port, header.TCPFlagFin|header.TCPFlagAck)
			backend(i, header.TCPFlagAck)
		case 2:
			client(port, header.TCPFlagRst)
		case 3:
			backend(i, header.TCPFlagRst)
		case 4: // half-closed: the backend still sends
			client(port, header.TCPFlagFin|header.TCPFlagAck)
			backend(i, header.TCPFlagAck)
			open++
		}
	}
	if a := activeConns(tb, t0); a != int64(open) {
		t.Fatalf("active %d after closing all but %d half-closed connections", a, open)
	}
	// A closed tuple reused by a new connection counts again.
	f := toVIP(packet.ProtoTCP, 20000, 80, header.TCPFlagSyn).build()
	if v := tb.Translate(f, nil, t0+1); v != Forward {
		t.Fatalf("SYN on a closed tuple: verdict %d", v)
	}
	if a := activeConns(tb, t0); a != int64(open+1) {
		t.Fatalf("active %d after reusing a closed tuple, want %d", a, open+1)
	}
	// Everything left expires.
	tb.ct.Sweep(t0 + int64(3*time.Minute))
	if a, l := activeConns(tb, t0), tb.ct.Len(); a != 0 || l != 0 {
		t.Fatalf("after expiry: active %d, entries %d", a, l)
	}
}
