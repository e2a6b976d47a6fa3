package gateway

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakePick is a Picked whose backends are given in order: Failed moves
// to the next one while there is one. It records what it was told.
type fakePick struct {
	mu                        sync.Mutex
	backends                  []netip.AddrPort
	connected, failed, closed int
	src, dst                  netip.AddrPort
}

func (f *fakePick) Backend() netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.backends[0]
}

func (f *fakePick) Connected() { f.mu.Lock(); f.connected++; f.mu.Unlock() }
func (f *fakePick) Closed()    { f.mu.Lock(); f.closed++; f.mu.Unlock() }

func (f *fakePick) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failed++
	if len(f.backends) == 1 {
		return false
	}
	f.backends = f.backends[1:]
	return true
}

func (f *fakePick) counts() [3]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return [3]int{f.connected, f.failed, f.closed}
}

// picker returns a Picker that gives pk once (and records the flow's
// source and destination), nothing after.
func (f *fakePick) picker() Picker {
	var once sync.Once
	return func(src, dst netip.AddrPort) (Picked, bool) {
		ok := false
		once.Do(func() {
			f.mu.Lock()
			f.src, f.dst, ok = src, dst, true
			f.mu.Unlock()
		})
		return f, ok
	}
}

// publishPicked publishes a free host port to vip through h's gateway,
// with f's fast path and pk as the Picker, until the test ends.
func publishPicked(t *testing.T, h *harness, f *fastCtr, vip netip.AddrPort, pk *fakePick) Publish {
	t.Helper()
	spec := Publish{HostPort: freePort(t, "tcp"), Port: vip.Port(), Proto: "tcp"}
	target := func() (*Gateway, netip.Addr, bool) { return h.gw, vip.Addr(), true }
	p, err := h.eg.PublishMesh(spec, target, f.path(), pk.picker())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return spec
}

// TestPublishPicked: a published flow to a VIP whose picked backend is a
// container the fast path knows goes there on the fast path, from the
// client's address; the pick hears that it connected and, at the end,
// that it closed. A backend that refuses is reported failed and the flow
// goes to the next backend the pick moves to.
func TestPublishPicked(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	f := newFastCtr(t, h.eg)
	ha := publicAddr(t)
	acceptEach(f.listen(t, 80), func(c net.Conn) { go echoPeer(c) })
	vip := netip.AddrPortFrom(netip.MustParseAddr("10.0.1.100"), 80)
	for _, tc := range []struct {
		name     string
		backends []netip.AddrPort
		want     [3]int // connected, failed, closed
	}{
		{"local", []netip.AddrPort{netip.AddrPortFrom(ctrAddr.Addr(), 80)}, [3]int{1, 0, 1}},
		{"refused, then local", []netip.AddrPort{netip.AddrPortFrom(ctrAddr.Addr(), 81), netip.AddrPortFrom(ctrAddr.Addr(), 80)}, [3]int{1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pk := &fakePick{backends: tc.backends}
			spec := publishPicked(t, h, f, vip, pk)
			fast := h.eg.Stats().IngressFast
			peer := checkEcho(t, netip.AddrPortFrom(ha, spec.HostPort), "hello")
			poll(t, "the flow ended", func() bool { return h.eg.Stats().IngressTCP == 0 })
			if got := pk.counts(); got != tc.want {
				t.Fatalf("the pick was told connected/failed/closed %v, want %v", got, tc.want)
			}
			if pk.dst != vip || pk.src.Addr() != ha || !strings.HasPrefix(peer, pk.src.String()+"\n") {
				t.Fatalf("picked for %v -> %v, the container saw %q", pk.src, pk.dst, peer)
			}
			if st := h.eg.Stats(); st.IngressFast != fast+1 {
				t.Fatalf("stats %+v: want the flow on the fast path", st)
			}
		})
	}
}

// TestPublishPickedElsewhere: a picked backend the fast path does not
// know (on another host) leaves the flow to the gateway's dial of the VIP
// (here the harness's container, standing in for what the switch does),
// and the pick is told nothing; every backend refusing resets the client.
func TestPublishPickedElsewhere(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	f := newFastCtr(t, h.eg)
	ha := publicAddr(t)
	serveEcho(t, h, 80)
	remote := &fakePick{backends: []netip.AddrPort{netip.MustParseAddrPort("10.0.1.77:80")}}
	spec := Publish{HostPort: freePort(t, "tcp"), Port: 80, Proto: "tcp"}
	// The fast path knows no container at the VIP (ctrAddr here): only
	// its own address, which the pick does not give.
	onlyFast := func(dst netip.Addr) (LocalSockets, error) {
		if dst == netip.MustParseAddr("10.0.1.50") {
			return f.sockets, nil
		}
		return nil, nil
	}
	p, err := h.eg.PublishMesh(spec, h.target(), onlyFast, remote.picker())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	checkEcho(t, netip.AddrPortFrom(ha, spec.HostPort), "hi")
	poll(t, "the flow ended", func() bool { return h.eg.Stats().IngressTCP == 0 })
	if got := remote.counts(); got != [3]int{} || !remote.src.IsValid() {
		t.Fatalf("a remote pick (asked: %v) was told connected/failed/closed %v, want nothing", remote.src, got)
	}
	if st := h.eg.Stats(); st.IngressFast != 0 || st.IngressTotal != 1 {
		t.Fatalf("stats %+v: want 1 flow through the gateway's stack", st)
	}

	// Every backend refuses: a reset for the client, each failure told.
	refusing := &fakePick{backends: []netip.AddrPort{netip.AddrPortFrom(ctrAddr.Addr(), 81), netip.AddrPortFrom(ctrAddr.Addr(), 82)}}
	spec.HostPort = freePort(t, "tcp")
	p2, err := h.eg.PublishMesh(spec, h.target(), f.path(), refusing.picker())
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	if err := readErr(netip.AddrPortFrom(ha, spec.HostPort).String()); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("every picked backend refused: the client got %v, want a reset", err)
	}
	poll(t, "the failure counted", func() bool { return h.eg.Stats().IngressFailed == 1 })
	if got := refusing.counts(); got != [3]int{0, 2, 0} {
		t.Fatalf("two refusing backends: told connected/failed/closed %v, want 2 failures", got)
	}
}

// TestPublishPickedEndsTimeWait: a picked flow on the fast path whose
// backend closed first leaves no TIME-WAIT socket in the backend's
// namespace (see TimeWaitEnder): the client's port may come back through
// another host's gateway.
func TestPublishPickedEndsTimeWait(t *testing.T) {
	h := newHarness(t, false, EgressConfig{})
	f := newFastCtr(t, h.eg)
	ha := publicAddr(t)
	acceptEach(f.listen(t, 82), func(c net.Conn) {
		io.WriteString(c, "bye\n")
		c.Close()
	})
	vip := netip.AddrPortFrom(netip.MustParseAddr("10.0.1.100"), 82)
	pk := &fakePick{backends: []netip.AddrPort{netip.AddrPortFrom(ctrAddr.Addr(), 82)}}
	spec := publishPicked(t, h, f, vip, pk)
	c, err := net.Dial("tcp4", netip.AddrPortFrom(ha, spec.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "bye\n" {
		t.Fatalf("read %q, %v", b, err)
	}
	c.Close()
	poll(t, "the flow ended", func() bool { return h.eg.Stats().IngressTCP == 0 })
	if got := pk.counts(); got != [3]int{1, 0, 1} {
		t.Fatalf("the pick was told connected/failed/closed %v", got)
	}
	out, err := exec.Command("nsenter", "--net="+f.ns, "ss", "-Htn", "state", "time-wait").CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v: %s", err, out)
	}
	if strings.Contains(string(out), pk.src.String()) {
		t.Fatalf("the backend's namespace still has a TIME-WAIT socket of the flow from %v:\n%s", pk.src, out)
	}
}
