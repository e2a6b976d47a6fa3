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

func TestParseProcStatAddsUserAndSystemTime(t *testing.T) {
	// A command name with spaces and parentheses, as a process may choose.
	stat := "4242 (vx (mesh) d) S 1 4242 4242 0 -1 4194560 2939 0 0 0 731 269 0 0 20 0 12 0 5373 2035576832 11331 18446744073709551615"
	got, err := parseProcStat([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	if got != 731+269 {
		t.Fatalf("cpu ticks %d, want %d", got, 731+269)
	}
	for _, bad := range []string{"", "4242 vxmesh S 1", "4242 (vxmesh) S 1 2 3", "4242 (vxmesh) S 1 4242 4242 0 -1 4194560 2939 0 0 0 x 269"} {
		if _, err := parseProcStat([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	rss, err := parseStatmRSS([]byte("496967 11331 5021 4590 0 70380 0\n"))
	if err != nil || rss != 11331 {
		t.Fatalf("statm resident %d, %v; want 11331", rss, err)
	}
	if _, err := parseStatmRSS([]byte("496967")); err == nil {
		t.Error("statm with one field: no error")
	}
}

func FuzzParseScaleCounters(f *testing.F) {
	f.Add([]byte("4242 (vxmesh) S 1 4242 4242 0 -1 4194560 2939 0 0 0 731 269 0 0 20"))
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
		if n, err := parseProcStat(b); err != nil && n != 0 {
			t.Fatalf("error %v with cpu ticks %d", err, n)
		}
		if n, err := parseStatmRSS(b); err != nil && n != 0 {
			t.Fatalf("error %v with rss %d", err, n)
		}
	})
}

func TestParseProcStatTotalLeavesOutIdleAndIOWait(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	b := []byte("cpu  100 5 50 1000 20 3 7 0 40 0\ncpu0 50 2 25 500 10 1 3 0 20 0\n")
	busy, total, err := parseProcStatTotal(b)
	if err != nil {
		t.Fatal(err)
	}
	// guest time is already in user time: not added again.
	if busy != 165 || total != 1185 {
		t.Fatalf("busy %d, total %d; want 165, 1185", busy, total)
	}
	if _, _, err := parseProcStatTotal([]byte("intr 1 2\n")); err == nil {
		t.Fatal("a /proc/stat without its cpu line first was accepted")
	}
}

func TestKernelThreadsAreKthreaddAndItsChildren(t *testing.T) {
	for _, c := range []struct {
		stat string
		want bool
	}{
		{"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 3 0 0", true},
		{"812 (kworker/u8:4-events (unbound)) I 2 0 0 0 -1 69238880 0 0 0 0 12 40 0 0", true},
		{"1 (systemd) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 0 0", false},
		{"4242 (vxmesh) S 4200 4242 4200 0 -1 4194560 0 0 0 0 7 8 0 0", false},
	} {
		if got := kernelThread([]byte(c.stat)); got != c.want {
			t.Errorf("%q: kernel thread %v, want %v", c.stat, got, c.want)
		}
	}
	a := cpuTicks{kthreads: map[string]uint64{"2": 10, "812": 100, "900": 50}}
	b := cpuTicks{kthreads: map[string]uint64{"2": 12, "812": 130, "950": 7}}
	// 900 exited (not counted), 950 started (counted whole).
	if got := kernelTicksSince(a, b); got != 2+30+7 {
		t.Fatalf("kernel ticks %d, want 39", got)
	}
}
