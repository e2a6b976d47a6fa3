package testbed

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vxmesh/vxmesh/internal/testenv"
	"time"
)

func needRoot(t *testing.T) {
	t.Helper()
	if err := CheckPrereqs(); err != nil {
		testenv.Missing(t, "%v", err)
	}
}

func newTestbed(t *testing.T, opts Options) *Testbed {
	t.Helper()
	tb, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tb
}

func fakeBinary(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("testdata/fakevxmesh.sh")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHostsReachEachOtherAndCloseRemovesEverything(t *testing.T) {
	needRoot(t)
	tb := newTestbed(t, Options{Hosts: 3})
	if got := len(tb.Hosts); got != 3 {
		t.Fatalf("hosts: got %d, want 3", got)
	}
	for _, h := range tb.Hosts {
		if !NetnsExists(h.Netns) {
			t.Fatalf("host %s: netns %s missing", h.Name, h.Netns)
		}
		links, err := h.Links()
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"lo", "eth0"}; !reflect.DeepEqual(links, want) {
			t.Errorf("host %s links: got %v, want %v", h.Name, links, want)
		}
		// (/sys inside nsenter would still show the caller's namespace.)
		out, err := run("ip", "-n", h.Netns, "-o", "addr", "show", "eth0")
		if err != nil || !strings.Contains(out, h.Addr+"/24") {
			t.Errorf("host %s eth0 addr: %q %v", h.Name, out, err)
		}
		out, err = run("ip", "-n", h.Netns, "-o", "link", "show", "eth0")
		if err != nil || !strings.Contains(out, "mtu 1500") || !strings.Contains(out, "state UP") {
			t.Errorf("host %s eth0: %q %v", h.Name, out, err)
		}
	}
	// Every host reaches every other over the underlay bridge.
	for _, a := range tb.Hosts {
		for _, b := range tb.Hosts {
			if a == b {
				continue
			}
			out, err := InNetns(context.Background(), a.NetnsPath, "ping", "-c", "1", "-W", "2", b.Addr)
			if err != nil {
				t.Errorf("%s -> %s: %v", a.Name, b.Name, err)
				continue
			}
			if r, err := ParsePing(out); err != nil || r.Received != 1 {
				t.Errorf("%s -> %s: %+v %v", a.Name, b.Name, r, err)
			}
		}
	}
	// A peer on the underlay (an external VTEP's machine) reaches the hosts.
	p, err := tb.AddUnderlayPeer("ext")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := InNetns(context.Background(), p.NetnsPath, "ping", "-c", "1", "-W", "2", tb.Hosts[2].Addr); err != nil {
		t.Errorf("underlay peer %s -> h3: %v", p.Addr, err)
	}
	// A namespace made by a user under the prefix goes away with Close
	// too, with the /etc/netns resolv.conf the daemon writes for containers.
	if _, err := tb.AddNetns("extra"); err != nil {
		t.Fatal(err)
	}
	etc := filepath.Join(NetnsEtcDir, tb.Prefix+"extra")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 127.0.0.11\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := tb.Dir
	if err := tb.Close(); err != nil {
		t.Fatal(err)
	}
	if left, _ := ListNetns(tb.Prefix); len(left) != 0 {
		t.Errorf("netns left after Close: %v", left)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dir %s left after Close: %v", dir, err)
	}
	if _, err := os.Stat(etc); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left after Close: %v", etc, err)
	}
}

func TestParallelTestbedsDoNotCollide(t *testing.T) {
	needRoot(t)
	a := newTestbed(t, Options{Hosts: 1})
	b := newTestbed(t, Options{Hosts: 1})
	if a.Prefix == b.Prefix {
		t.Fatalf("same prefix %q", a.Prefix)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if !NetnsExists(b.Hosts[0].Netns) {
		t.Fatalf("closing one testbed removed the other's host")
	}
}

func TestDaemonRunsInHostNetnsAndStops(t *testing.T) {
	needRoot(t)
	tb := newTestbed(t, Options{Hosts: 1, Binary: fakeBinary(t)})
	h := tb.Hosts[0]
	if err := h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	if !h.Running() {
		t.Fatal("daemon not running after StartDaemon")
	}
	got, err := os.ReadFile(filepath.Join(h.StateDir, "netns"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.Readlink(h.NetnsPath)
	if err != nil {
		// A bind mount is not a symlink: compare inode strings instead.
		want, err = InNetns(context.Background(), h.NetnsPath, "readlink", "/proc/self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
	}
	if strings.TrimSpace(string(got)) != strings.TrimSpace(want) {
		t.Errorf("daemon netns %q, host netns %q", got, want)
	}
	if err := h.StartDaemon(); err == nil {
		t.Error("second StartDaemon succeeded while one runs")
	}
	if err := h.StopDaemon(); err != nil {
		t.Fatal(err)
	}
	if h.Running() {
		t.Fatal("daemon still running after StopDaemon")
	}
	if !strings.Contains(h.LogTail(5), "fake daemon: stopping") {
		t.Errorf("SIGTERM not delivered; log:\n%s", h.LogTail(10))
	}
	// Restart, then crash it.
	if err := h.StartDaemon(); err != nil {
		t.Fatal(err)
	}
	if err := h.KillDaemon(); err != nil {
		t.Fatal(err)
	}
	if h.Running() {
		t.Fatal("daemon still running after KillDaemon")
	}
}

func TestDaemonGetsClusterFlags(t *testing.T) {
	needRoot(t)
	tb := newTestbed(t, Options{Hosts: 2, Binary: fakeBinary(t), DaemonFlags: []string{"--node-grace", "3s"}})
	for _, h := range tb.Hosts {
		if err := h.StartDaemon(); err != nil {
			t.Fatal(err)
		}
	}
	h1 := tb.Hosts[0]
	b, err := os.ReadFile(filepath.Join(tb.Hosts[1].StateDir, "args"))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(strings.Fields(string(b)), " ")
	want := "daemon --node h2 --socket " + tb.Hosts[1].Socket + " --state-dir " + tb.Hosts[1].StateDir +
		" --netns-prefix " + tb.Hosts[1].ContainerPrefix + " --advertise " + tb.Hosts[1].Addr +
		" --cluster-key-file " + tb.KeyFile + " --join " + h1.Addr + " --node-grace 3s"
	if got != want {
		t.Errorf("h2 daemon args:\n got %s\nwant %s", got, want)
	}
	b, err = os.ReadFile(filepath.Join(h1.StateDir, "args"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "--join") || !strings.Contains(string(b), "--advertise\n"+h1.Addr+"\n") {
		t.Errorf("h1 daemon args: %q, want --advertise and no --join", b)
	}
	st, err := os.Stat(tb.KeyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file %s: %v %v, want mode 0600", tb.KeyFile, st, err)
	}
}

func TestWriteKeyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k")
	if err := WriteKeyFile(p); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) != 32 {
		t.Errorf("key %q: %d bytes, %v; want base64 of 32 bytes", b, len(k), err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	q := filepath.Join(t.TempDir(), "k")
	if err := WriteKeyFile(q); err != nil {
		t.Fatal(err)
	}
	if c, _ := os.ReadFile(q); string(c) == string(b) {
		t.Error("two keys are equal")
	}
}

func TestStartDaemonReportsEarlyExitWithLog(t *testing.T) {
	needRoot(t)
	tb := newTestbed(t, Options{Hosts: 1, Binary: fakeBinary(t)})
	err := tb.Hosts[0].StartDaemon("--fail")
	if err == nil {
		t.Fatal("StartDaemon succeeded for a daemon that exits")
	}
	if !strings.Contains(err.Error(), "fake daemon: boom") {
		t.Errorf("error lacks the log tail: %v", err)
	}
}

func TestStartDaemonTimesOut(t *testing.T) {
	needRoot(t)
	// `true` exits 0 for "daemon", so use sleep-like behaviour: a binary
	// whose "network ls" never succeeds.
	dir := t.TempDir()
	bin := filepath.Join(dir, "never-ready")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n[ \"$1\" = daemon ] && exec sleep 60\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tb := newTestbed(t, Options{Hosts: 1, Binary: bin, ReadyTimeout: 500 * time.Millisecond})
	start := time.Now()
	err := tb.Hosts[0].StartDaemon()
	if err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("want a not-ready error, got %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("timeout took %v", d)
	}
	if tb.Hosts[0].Running() {
		t.Error("daemon left running after a failed start")
	}
}

func TestCLIPassesSocketAndReportsExitCode(t *testing.T) {
	needRoot(t)
	tb := newTestbed(t, Options{Hosts: 1, Binary: fakeBinary(t)})
	h := tb.Hosts[0]
	out, err := h.CLI("echo", "a", "b")
	if err != nil || strings.TrimSpace(out) != "a b" {
		t.Fatalf("echo: %q %v", out, err)
	}
	_, err = h.CLI("fail", "7")
	var ce *CLIError
	if !errors.As(err, &ce) || ce.ExitCode != 7 || !strings.Contains(err.Error(), "failing with 7") {
		t.Fatalf("want CLIError with exit 7 and stderr, got %#v", err)
	}
}

func TestWithFormatJSON(t *testing.T) {
	cases := []struct{ in, want []string }{
		{[]string{"ps"}, []string{"ps", "--format", "json"}},
		{[]string{"fdb", "web"}, []string{"fdb", "--format", "json", "web"}},
		{[]string{"network", "ls"}, []string{"network", "ls", "--format", "json"}},
		{[]string{"network", "inspect", "web"}, []string{"network", "inspect", "--format", "json", "web"}},
		{[]string{"endpoint", "ls"}, []string{"endpoint", "ls", "--format", "json"}},
	}
	for _, c := range cases {
		if got := WithFormatJSON(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%v: got %v, want %v", c.in, got, c.want)
		}
	}
}

func TestParseIperf3JSON(t *testing.T) {
	b, err := os.ReadFile("testdata/iperf3.json")
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParseIperf3JSON(b)
	if err != nil {
		t.Fatal(err)
	}
	if r.ReceivedBitsPerSecond != 9.5e9 || r.ReceivedBytes != 11875000000 || r.Retransmits != 12 {
		t.Errorf("got %+v", r)
	}
	if g := r.Gbps(); g != 9.5 {
		t.Errorf("Gbps = %v", g)
	}
	if _, err := ParseIperf3JSON([]byte(`{"error":"unable to connect to server"}`)); err == nil ||
		!strings.Contains(err.Error(), "unable to connect") {
		t.Errorf("iperf3 error not surfaced: %v", err)
	}
	if _, err := ParseIperf3JSON([]byte(`{"end":{}}`)); err == nil {
		t.Error("missing sum_received accepted")
	}
}

func TestParsePing(t *testing.T) {
	out := `PING 10.0.0.3 (10.0.0.3) 56(84) bytes of data.
64 bytes from 10.0.0.3: icmp_seq=1 ttl=64 time=0.051 ms

--- 10.0.0.3 ping statistics ---
20 packets transmitted, 19 received, 5% packet loss, time 1001ms
rtt min/avg/max/mdev = 0.030/0.045/0.120/0.010 ms
`
	r, err := ParsePing(out)
	if err != nil {
		t.Fatal(err)
	}
	want := PingResult{Transmitted: 20, Received: 19, Min: 30 * time.Microsecond, Avg: 45 * time.Microsecond, Max: 120 * time.Microsecond}
	if r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
	r, err = ParsePing("3 packets transmitted, 0 received, 100% packet loss, time 2040ms\n")
	if err != nil || r.Received != 0 || r.Avg != 0 {
		t.Errorf("all lost: %+v %v", r, err)
	}
	if _, err := ParsePing("connect: Network is unreachable"); err == nil {
		t.Error("garbage accepted")
	}
}
