//go:build linux

package health_test

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vxmesh/vxmesh/internal/testenv"
	"github.com/vxmesh/vxmesh/lb/health"
	"github.com/vxmesh/vxmesh/sandbox"
)

// TestCheckInsideNamespace: the same address and port answer 200 inside
// a container's namespace and 503 in the daemon's; a check dialed with
// sandbox.NetnsDialer sees the container's server, a plain one the
// daemon's.
func TestCheckInsideNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	b := make([]byte, 5)
	rand.Read(b)
	name := "vxh" + hex.EncodeToString(b)
	ns, err := sandbox.CreateNamedNetns(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sandbox.DeleteNamedNetns(name) })

	// A port free here, then the same address in the new namespace.
	outside, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var inside net.Listener
	err = sandbox.RunInNetns(ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		inside, err = net.Listen("tcp4", outside.Addr().String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	answer := func(code int) *http.Server {
		return &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) })}
	}
	for ln, srv := range map[net.Listener]*http.Server{inside: answer(200), outside: answer(503)} {
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}

	p := health.NewProber(func(health.Event) {})
	defer p.Close()
	port := uint16(inside.Addr().(*net.TCPAddr).Port)
	spec := health.Spec{Kind: health.HTTP, Port: port, Path: "/", Interval: 50 * time.Millisecond,
		Timeout: 50 * time.Millisecond, Healthy: 1, Unhealthy: 1}
	addr := netip.MustParseAddr("127.0.0.1")
	err = p.SetTargets([]health.Target{
		{Key: "container", Addr: addr, Spec: spec, Dial: sandbox.NetnsDialer(ns)},
		{Key: "daemon", Addr: addr, Spec: spec},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"container": "healthy http 200", "daemon": "unhealthy http 503"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := map[string]string{}
		for _, st := range p.Status() {
			got[st.Key] = st.State.String() + " " + st.Reason
		}
		if got["container"] == want["container"] && got["daemon"] == want["daemon"] {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond) // polling
	}
}
