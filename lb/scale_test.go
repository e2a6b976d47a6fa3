package lb

import (
	"net/netip"
	"testing"
	"unsafe"
)

// withBackend returns snap with service i of svcs given one more backend.
func withBackend(t testing.TB, snap *Snapshot, svcs []Service, i, j int) *Snapshot {
	s := svcs[i]
	s.Backends = append(s.Backends[:len(s.Backends):len(s.Backends)], Backend{IP: netip.AddrFrom4([4]byte{10, 201, byte(j >> 8), byte(j)}), MAC: beMAC(9)})
	next, err := snap.With(s)
	if err != nil {
		t.Fatal(err)
	}
	return next
}

// Adding a backend to one service (Snapshot.With then Table.Swap)
// allocates the same whatever the number of services: With copies a
// fixed-size part of the VIP index, not a share of all services.
func TestAddBackendAllocsIndependentOfServices(t *testing.T) {
	allocs := map[int]float64{}
	for _, n := range []int{10, 10000} {
		svcs := manyServices(n, 4)
		snap, err := NewSnapshot(svcs)
		if err != nil {
			t.Fatal(err)
		}
		tb := NewTable(NewConntrack(Config{Max: 1024}), 1)
		tb.Swap(snap)
		j := 0
		allocs[n] = testing.AllocsPerRun(50, func() {
			j++
			tb.Swap(withBackend(t, tb.Snapshot(), svcs, n/2, j))
		})
	}
	if allocs[10000] != allocs[10] {
		t.Fatalf("adding a backend: %v allocations with 10 services, %v with 10000", allocs[10], allocs[10000])
	}
}

// Swap after With visits only the changed service, not the others that
// share its part of the VIP index.
func TestSwapVisitsOnlyTheChangedService(t *testing.T) {
	svcs := manyServices(10000, 4)
	old, err := NewSnapshot(svcs)
	if err != nil {
		t.Fatal(err)
	}
	next := withBackend(t, old, svcs, 5000, 1)
	var seen []string
	next.each(old, func(c *service) { seen = append(seen, c.cfg.Name) })
	if len(seen) != 1 || seen[0] != svcs[5000].Name {
		t.Fatalf("services visited by Swap after one change among 10000: %d (%.5v)", len(seen), seen)
	}
	left := 0
	old.each(next, func(*service) { left++ })
	if left != 1 {
		t.Fatalf("old services visited for leaving backends: %d, want 1", left)
	}
}

// VIPs of a network wider than /16 share index slots (same last two
// bytes); each is still found, and removing one keeps the other.
func TestSnapshotVIPsSharingASlot(t *testing.T) {
	a := Service{Name: "a", VIP: netip.MustParseAddr("10.1.7.9"), Backends: []Backend{{IP: beIP(1), MAC: beMAC(1)}}}
	b := Service{Name: "b", VIP: netip.MustParseAddr("10.2.7.9"), Backends: []Backend{{IP: beIP(2), MAC: beMAC(2)}}}
	c := Service{Name: "c", VIP: netip.MustParseAddr("10.3.7.9"), Backends: []Backend{{IP: beIP(3), MAC: beMAC(3)}}}
	snap, err := NewSnapshot([]Service{a, b, c})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []Service{a, b, c} {
		if got := snap.get(s.VIP.As4()); got == nil || got.cfg.Name != s.Name {
			t.Fatalf("VIP %v: got %v, want service %q", s.VIP, got, s.Name)
		}
	}
	if snap.get([4]byte{10, 4, 7, 9}) != nil {
		t.Fatal("10.4.7.9 is no VIP but was found")
	}
	for _, gone := range []Service{a, b} {
		snap = snap.Without(gone.VIP)
		if snap.get(gone.VIP.As4()) != nil {
			t.Fatalf("VIP %v found after Without", gone.VIP)
		}
	}
	if got := snap.get(c.VIP.As4()); got == nil || got.cfg.Name != "c" {
		t.Fatalf("VIP %v lost when the others sharing its slot left", c.VIP)
	}
	if n := len(snap.Services()); n != 1 {
		t.Fatalf("%d services left, want 1", n)
	}
	if _, err := snap.With(Service{Name: "d", VIP: a.VIP, Backends: a.Backends}); err != nil {
		t.Fatal(err)
	}
}

// The data a new connection reads of a small service (its header,
// backends and active list) is one allocation, with no map to look the
// client up in; a backend's per-packet counters are on their own cache
// line, apart from what new connections read.
func TestSmallServiceHotDataIsCompact(t *testing.T) {
	c, err := compile(&manyServices(1, inlineBackends)[0])
	if err != nil {
		t.Fatal(err)
	}
	lo, hi := uintptr(unsafe.Pointer(c)), uintptr(unsafe.Pointer(c))+unsafe.Sizeof(*c)
	in := func(p unsafe.Pointer, size uintptr) bool { return uintptr(p) >= lo && uintptr(p)+size <= hi }
	if !in(unsafe.Pointer(unsafe.SliceData(c.backends)), uintptr(len(c.backends))*unsafe.Sizeof(backend{})) ||
		!in(unsafe.Pointer(unsafe.SliceData(c.active)), uintptr(len(c.active))*4) {
		t.Fatal("a small service's backends or active list are allocations of their own")
	}
	if c.byIP != nil {
		t.Fatal("a small service has a backend map: each new connection looks the client up in it")
	}
	var sv service
	if off := unsafe.Offsetof(sv.cfg); off < unsafe.Offsetof(sv.inlineBE) {
		t.Fatalf("the cold configuration (offset %d) lies between the hot fields", off)
	}
	for _, off := range []uintptr{unsafe.Offsetof(sv.vip) + 4, unsafe.Offsetof(sv.ports) + unsafe.Sizeof(sv.ports), unsafe.Offsetof(sv.st) + 8} {
		if off > 64 {
			t.Fatalf("a field every packet reads ends at offset %d, past the first cache line", off)
		}
	}
	var be beState
	hot := []uintptr{unsafe.Offsetof(be.cfg), unsafe.Offsetof(be.ejectedUntil), unsafe.Offsetof(be.active), unsafe.Offsetof(be.newConns)}
	for _, off := range hot {
		if off/64 == unsafe.Offsetof(be.packets)/64 || off/64 == unsafe.Offsetof(be.bytes)/64 {
			t.Fatalf("beState: field at offset %d shares a cache line with the per-packet counters", off)
		}
	}
	if unsafe.Sizeof(be)%64 != 0 {
		t.Fatalf("beState is %d bytes, not whole cache lines", unsafe.Sizeof(be))
	}
	st := unsafe.Pointer(c.backends[0].st)
	for i := range c.backends {
		if want := uintptr(st) + uintptr(i)*unsafe.Sizeof(be); uintptr(unsafe.Pointer(c.backends[i].st)) != want {
			t.Fatal("a new service's backend states are not one contiguous allocation")
		}
	}
}
