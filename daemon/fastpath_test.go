package daemon

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/vxmesh/vxmesh/gateway"
)

// fastSandbox is a fakeSandbox with the fast path's plumbing, counting
// what it is asked.
type fastSandbox struct {
	*fakeSandbox
	mu                sync.Mutex
	enabled, disabled []string
	made              []*fakeFastSockets
	failEnable        error
}

type fakeFastSockets struct{ closed bool }

func (s *fakeFastSockets) Socket() (int, error) { return -1, errors.New("fake") }
func (s *fakeFastSockets) Close()               { s.closed = true }

func (f *fastSandbox) EnableFastPath(nsPath string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failEnable != nil {
		return f.failEnable
	}
	f.enabled = append(f.enabled, nsPath)
	return nil
}

func (f *fastSandbox) DisableFastPath(nsPath string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disabled = append(f.disabled, nsPath)
	return nil
}

func (f *fastSandbox) NewFastSockets(nsPath string, prep func(int) error) (fastSockets, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &fakeFastSockets{}
	f.made = append(f.made, s)
	return s, nil
}

// fastDaemon is a daemon with only what the fast path uses, and a
// published port of container c1 at 10.0.1.2.
func fastDaemon(t *testing.T, cfg Config) (*Daemon, *fastSandbox, *publishedPort, *bytes.Buffer) {
	t.Helper()
	fsb := &fastSandbox{fakeSandbox: newFakeSandbox()}
	fsb.ns["/run/netns/c1"] = 7
	var logs bytes.Buffer
	d := &Daemon{cfg: cfg, sb: fsb, log: slog.New(slog.NewTextHandler(&logs, nil)), egress: gateway.NewEgress(gateway.EgressConfig{})}
	c := &container{name: "c1", netns: "/run/netns/c1", nsDev: 1, nsIno: 7, managed: true, endpoints: map[string]*endpoint{}}
	pp := &publishedPort{}
	ip := netip.MustParseAddr("10.0.1.2")
	pp.ip.Store(&ip)
	pp.ctr.Store(c)
	return d, fsb, pp, &logs
}

// TestFastPathSetUpOnceAndDropped: a container's fast path is set up once,
// at its first published connection, however many come at once; only its
// own address takes it; teardown closes its sockets and removes the rule
// from a namespace that stays, and none is set up for a container gone.
func TestFastPathSetUpOnceAndDropped(t *testing.T) {
	d, fsb, pp, _ := fastDaemon(t, Config{})
	fp := d.portFast(pp)
	if fp == nil {
		t.Fatal("no fast path with a sandbox that has one")
	}
	ip := *pp.ip.Load()
	var wg sync.WaitGroup
	got := make([]gateway.LocalSockets, 8)
	for i := range got {
		wg.Go(func() {
			s, err := fp(ip)
			if err != nil {
				t.Error(err)
			}
			got[i] = s
		})
	}
	wg.Wait()
	if len(fsb.enabled) != 1 || len(fsb.made) != 1 {
		t.Fatalf("8 connections: namespace set up %d times, %d socket makers; want 1, 1", len(fsb.enabled), len(fsb.made))
	}
	for _, s := range got {
		if s != fsb.made[0] {
			t.Fatalf("a connection got %v, want the container's socket maker", s)
		}
	}
	if s, err := fp(netip.MustParseAddr("10.0.1.3")); s != nil || err != nil {
		t.Errorf("another address: %v, %v; want the gateway path (nil, nil)", s, err)
	}
	d.dropFast("c1", "/proc/self/fd/9", false)
	if !fsb.made[0].closed || len(fsb.disabled) != 1 || fsb.disabled[0] != "/proc/self/fd/9" {
		t.Errorf("teardown: sockets closed %v, disabled at %v; want closed, once at the pinned path", fsb.made[0].closed, fsb.disabled)
	}
	pp.ctr.Load().gone.Store(true)
	if s, err := fp(ip); s != nil || err != nil || len(fsb.enabled) != 1 {
		t.Errorf("a container gone: %v, %v, set up %d times; want nil, nil, still once", s, err, len(fsb.enabled))
	}
	// A namespace deleted next is left alone.
	pp.ctr.Load().gone.Store(false)
	fp(ip)
	d.dropFast("c1", "/proc/self/fd/9", true)
	if len(fsb.disabled) != 1 {
		t.Errorf("a namespace deleted next: disabled %d times, want 1 (the first teardown only)", len(fsb.disabled))
	}
}

// TestFastPathFallbackLoggedOnce: a fast path that cannot be set up is an
// error for every connection (the gateway path, counted by the gateway)
// and one warning naming the container.
func TestFastPathFallbackLoggedOnce(t *testing.T) {
	d, fsb, pp, logs := fastDaemon(t, Config{})
	fsb.failEnable = errors.New("rule: operation not permitted")
	fp := d.portFast(pp)
	for range 3 {
		if s, err := fp(*pp.ip.Load()); s != nil || err == nil {
			t.Fatalf("setup failed: %v, %v; want an error", s, err)
		}
	}
	if n := strings.Count(logs.String(), "fast path unavailable"); n != 1 || !strings.Contains(logs.String(), "container=c1") {
		t.Errorf("logged %d times, want once naming c1:\n%s", n, logs.String())
	}
}

// TestFastPathOff: --publish-fast-path=false, or a sandbox without the
// plumbing, gives published ports no fast path.
func TestFastPathOff(t *testing.T) {
	d, _, pp, _ := fastDaemon(t, Config{NoFastPath: true})
	if d.portFast(pp) != nil {
		t.Error("NoFastPath: a fast path")
	}
	d.sb = newFakeSandbox()
	d.cfg.NoFastPath = false
	if d.portFast(pp) != nil {
		t.Error("a sandbox without the plumbing: a fast path")
	}
}
