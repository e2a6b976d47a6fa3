package cluster

import (
	"net/netip"
	"reflect"
	"testing"
)

func sampleMessages() []*message {
	return []*message{
		{Type: msgEntries, From: "n1", Entries: []Entry{{Table: "networks", Key: "web", Value: []byte("10.0.1.0/24"), Owner: "n1", Version: 7}}},
		{Type: msgState, From: "n2", Clock: 42, Entries: []Entry{
			{Table: "endpoints", Key: "c1", Value: []byte{1, 2, 3}, Owner: "n2", Version: 40},
			{Table: "networks", Key: "db", Owner: "n1", Version: 41, Deleted: true},
		}, Marks: []mark{{Table: "networks", Version: 30}}},
		{Type: msgClaimReq, ID: 3, From: "n3", Entries: []Entry{{Table: ipamTable, Key: "web|10.0.1.0/26|n3", Owner: "n3", Version: 9}}},
		{Type: msgClaimResp, ID: 3, From: "n1", Held: true},
		{Type: msgLeave, From: "n1"},
		{Type: msgEntries, ID: 9, From: "n2", Entries: []Entry{{Table: "endpoints", Key: "n2", Value: []byte("x"), Owner: "n2", Version: 12}}},
		{Type: msgAck, ID: 9, From: "n3"},
		{Type: msgCatchUp, ID: 0x9e3779b97f4a7c15, Clock: 50, From: "n4"},
		{Type: msgCatchUp, Clock: 51, From: "n1", Held: true},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		got, err := decode(m.encode())
		if err != nil {
			t.Fatalf("decode %+v: %v", m, err)
		}
		if m.Entries == nil {
			m.Entries = []Entry{}
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
		}
	}
	bad := [][]byte{nil, {wireVersion}, {2, msgEntries}, {wireVersion, 99}, append(sampleMessages()[0].encode(), 0)}
	for _, b := range bad {
		if _, err := decode(b); err == nil {
			t.Fatalf("decoded %x", b)
		}
	}
	// A huge claimed entry count must not allocate.
	huge := []byte{wireVersion, msgEntries, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}
	if _, err := decode(huge); err == nil {
		t.Fatal("huge count accepted")
	}
	nm := NodeMeta{DataAddr: netip.MustParseAddrPort("192.168.50.1:4789")}
	if got, err := decodeMeta(encodeMeta(nm)); err != nil || got != nm {
		t.Fatalf("meta round trip: %+v %v", got, err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(m.encode())
	}
	f.Add(encodeMeta(NodeMeta{DataAddr: netip.MustParseAddrPort("[fd00::1]:4789")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeMeta(b)
		m, err := decode(b)
		if err != nil {
			return
		}
		if len(m.Entries) > len(b) {
			t.Fatalf("%d entries from %d bytes", len(m.Entries), len(b))
		}
		// What decodes re-encodes to something that decodes the same.
		m2, err := decode(m.encode())
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if len(m2.Entries) != len(m.Entries) || m2.From != m.From || m2.Clock != m.Clock || len(m2.Marks) != len(m.Marks) {
			t.Fatal("re-decode differs")
		}
	})
}
