package main

import (
	"os"
	"testing"
)

func TestParseNftCountersSumsEveryRule(t *testing.T) {
	b, err := os.ReadFile("testdata/nft-gossip-counters.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseNftCounters(b)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(331870 + 4130); got != want {
		t.Fatalf("gossip bytes %d, want %d", got, want)
	}
	for _, bad := range []string{`{"nftables": []}`, `[`, `{"nftables": [{"rule": {"expr": [{"accept": null}]}}]}`} {
		if _, err := parseNftCounters([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestParseLinkRxByPort(t *testing.T) {
	b, err := os.ReadFile("testdata/ip-link-stats.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseLinkRx(b)
	if err != nil {
		t.Fatal(err)
	}
	if got["h1"] != 987654 || got["br0"] != 1048 || got["lo"] != 0 || len(got) != 3 {
		t.Fatalf("rx bytes %v", got)
	}
	if _, err := parseLinkRx([]byte(`{"not": "a list"}`)); err == nil {
		t.Fatal("an object instead of a list: no error")
	}
}

func FuzzParseScaleCounters(f *testing.F) {
	for _, p := range []string{"testdata/nft-gossip-counters.json", "testdata/ip-link-stats.json"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, err := parseNftCounters(b); err != nil && n != 0 {
			t.Fatalf("error %v with a sum %d", err, n)
		}
		if m, err := parseLinkRx(b); err != nil && m != nil {
			t.Fatalf("error %v with links %v", err, m)
		}
	})
}
