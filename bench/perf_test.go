package main

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

// TestMain lets the test binary serve as the request/response server and
// client, as the bench binary does (measureRR runs os.Executable()).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == rrServerCmd || os.Args[1] == rrClientCmd) {
		os.Exit(rrMain(os.Args[1], os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestRRClientCountsEchoedTransactions(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- rrServe(ln) }()
	start := time.Now()
	r, err := rrClient(ln.Addr().String(), 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if err := <-served; err != nil {
		t.Errorf("server: %v", err)
	}
	if r.Transactions < 64 || r.Seconds < 0.2 || r.Seconds > elapsed.Seconds() {
		t.Fatalf("result %+v after %v", r, elapsed)
	}
	if got, want := r.Mean(), time.Duration(r.Seconds/float64(r.Transactions)*1e9); got != want {
		t.Errorf("mean %v, want %v", got, want)
	}
	if got := r.Rate(); got != float64(r.Transactions)/r.Seconds {
		t.Errorf("rate %v", got)
	}
}

func TestRRClientFailsWhenTheServerStopsEchoing(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
	}()
	if r, err := rrClient(ln.Addr().String(), time.Second); err == nil {
		t.Fatalf("no error from a server that closed: %+v", r)
	}
}

func TestRRMainClientReportsJSON(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = rrServe(ln) }()
	var out, errOut bytes.Buffer
	if code := rrMain(rrClientCmd, []string{"-addr", ln.Addr().String(), "-duration", "50ms"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	r, err := parseRR(out.Bytes())
	if err != nil || r.Transactions <= 0 {
		t.Fatalf("%+v %v from %q", r, err, out.String())
	}
	if code := rrMain("rr-bogus", nil, &out, &errOut); code == 0 {
		t.Error("unknown subcommand exited 0")
	}
}

func TestParseRRRejectsEmptyReports(t *testing.T) {
	for _, in := range []string{"", "{}", `{"transactions":0,"seconds":1}`, "garbage"} {
		if r, err := parseRR([]byte(in)); err == nil {
			t.Errorf("parseRR(%q) = %+v, want error", in, r)
		}
	}
	r, err := parseRR([]byte(`{"transactions":1000,"seconds":2}`))
	if err != nil || r.Rate() != 500 || r.Mean() != 2*time.Millisecond {
		t.Errorf("%+v %v", r, err)
	}
}

func TestAnchorsTableSetsEachRowBesideItsAnchor(t *testing.T) {
	gb := func(g float64) testbed.IperfResult { return testbed.IperfResult{ReceivedBitsPerSecond: g * 1e9} }
	ping := func(us int) testbed.PingResult {
		return testbed.PingResult{Received: 20, Avg: time.Duration(us) * time.Microsecond}
	}
	var out bytes.Buffer
	printAnchors(&out, config{streams: 4}, []result{
		{name: "vxmesh", iperf: gb(6), multi: gb(8), rr: rrResult{Transactions: 20000, Seconds: 1}, ping: ping(200)},
		{name: "kernel", iperf: gb(10), multi: gb(20), rr: rrResult{Transactions: 40000, Seconds: 1}, ping: ping(80)},
		{name: "vxmesh-overlay", iperf: gb(4), multi: gb(5), rr: rrResult{Transactions: 10000, Seconds: 1}, ping: ping(700)},
		{name: "kernel-vxlan", iperf: gb(12), multi: gb(10), rr: rrResult{Transactions: 25000, Seconds: 1}, ping: ping(160)},
		{name: "kernel-vxlan-sw", iperf: gb(2), multi: gb(4)},
		{name: "vxmesh-esp", iperf: gb(2)},
		{name: wireguardTopology, err: os.ErrNotExist},
	})
	s := out.String()
	lines := map[string]string{}
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) > 2 {
			lines[f[0]+" "+f[1]] = l
		}
	}
	for pair, want := range map[string][]string{
		"vxmesh kernel":                  {"0.60", "0.40", "0.50", "+25 us", "+120 us"},
		"vxmesh-overlay kernel-vxlan":    {"0.33", "0.50", "0.40", "+60 us", "+540 us"},
		"vxmesh-overlay kernel-vxlan-sw": {"2.00", "1.25"},
	} {
		l, ok := lines[pair]
		if !ok {
			t.Errorf("no row %q:\n%s", pair, s)
			continue
		}
		for _, w := range want {
			if !strings.Contains(l, w) {
				t.Errorf("row %q lacks %q: %s", pair, w, l)
			}
		}
	}
	if _, ok := lines["vxmesh-esp "+wireguardTopology]; ok {
		t.Errorf("a failed anchor got a row:\n%s", s)
	}
}

func TestWireguardUAPISetNamesKeysPeerAndAddress(t *testing.T) {
	c := wgConfig{
		PrivateKey: bytes.Repeat([]byte{0xab}, 32),
		ListenPort: 51820,
		PeerKey:    bytes.Repeat([]byte{0x01}, 32),
		Endpoint:   "192.168.7.2:51820",
		AllowedIP:  "10.89.2.2/32",
	}
	got := c.uapi()
	for _, want := range []string{
		"set=1\n", "private_key=" + strings.Repeat("ab", 32) + "\n", "listen_port=51820\n",
		"public_key=" + strings.Repeat("01", 32) + "\n", "endpoint=192.168.7.2:51820\n", "allowed_ip=10.89.2.2/32\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("UAPI set lacks %q:\n%s", want, got)
		}
	}
	if !strings.HasSuffix(got, "\n\n") || strings.Index(got, "public_key=") < strings.Index(got, "private_key=") {
		t.Errorf("peer keys must follow the interface keys and the set end with an empty line:\n%q", got)
	}
	if err := readUAPIErrno(bufio.NewReader(strings.NewReader("errno=0\n\n"))); err != nil {
		t.Errorf("errno=0: %v", err)
	}
	if err := readUAPIErrno(bufio.NewReader(strings.NewReader("errno=-22\n\n"))); err == nil || !strings.Contains(err.Error(), "-22") {
		t.Errorf("errno=-22: %v", err)
	}
	if err := readUAPIErrno(bufio.NewReader(strings.NewReader(""))); err == nil {
		t.Error("no answer: no error")
	}
}

func TestDisableUnderlayOffloadsTurnsOffTunnelSegmentation(t *testing.T) {
	if err := checkTools(); err != nil {
		testenv.Missing(t, "%v", err)
	}
	if _, err := exec.LookPath("ethtool"); err != nil {
		testenv.Missing(t, "ethtool: %v", err)
	}
	tb, err := testbed.New(testbed.Options{Hosts: 2, Prefix: "vxbt" + testbed.RandomID(2) + "-"})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	features := func(ns, dev string) string {
		out, err := exec.Command("ip", "netns", "exec", ns, "ethtool", "-k", dev).CombinedOutput()
		if err != nil {
			t.Fatalf("ethtool -k %s: %v: %s", dev, err, out)
		}
		return string(out)
	}
	if f := features(tb.Hosts[0].Netns, "eth0"); !strings.Contains(f, "tx-udp_tnl-segmentation: on") {
		t.Fatalf("veth starts without tunnel segmentation, the anchor would equal kernel-vxlan:\n%s", f)
	}
	if err := disableUnderlayOffloads(context.Background(), tb); err != nil {
		t.Fatal(err)
	}
	for _, h := range tb.Hosts {
		for _, d := range [][2]string{{h.Netns, "eth0"}, {tb.Underlay, h.Name}} {
			f := features(d[0], d[1])
			for _, want := range []string{"tx-udp_tnl-segmentation: off", "tx-udp_tnl-csum-segmentation: off", "generic-segmentation-offload: off", "tcp-segmentation-offload: off"} {
				if !strings.Contains(f, want) {
					t.Errorf("%s %s: want %q", d[0], d[1], want)
				}
			}
		}
	}
}

func TestKernelVXLANSoftSegMeasuresAndCleansUp(t *testing.T) {
	if err := checkTools(); err != nil {
		testenv.Missing(t, "%v", err)
	}
	prefix := "vxbt" + testbed.RandomID(2)
	var log bytes.Buffer
	m, err := benchKernelVXLANSoftSeg(context.Background(), config{duration: time.Second, pings: 3, mtu: 1450}, prefix, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if m.iperf.ReceivedBitsPerSecond <= 0 || m.ping.Received != 3 {
		t.Errorf("measurement %+v", m)
	}
	if left, _ := testbed.ListNetns(prefix); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestWireguardGoTopologyMeasures runs with VXMESH_BENCH_WIREGUARD_GO
// naming a wireguard-go binary (it is not packaged; see the Makefile).
func TestWireguardGoTopologyMeasures(t *testing.T) {
	bin := os.Getenv("VXMESH_BENCH_WIREGUARD_GO")
	if bin == "" {
		t.Skip("VXMESH_BENCH_WIREGUARD_GO not set")
	}
	if err := checkTools(); err != nil {
		testenv.Missing(t, "%v", err)
	}
	prefix := "vxbt" + testbed.RandomID(2)
	var log bytes.Buffer
	m, err := benchWireguardGo(context.Background(), config{duration: time.Second, pings: 3, mtu: 1450, wireguardGo: bin}, prefix, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if m.iperf.ReceivedBitsPerSecond <= 0 || m.ping.Received != 3 {
		t.Errorf("measurement %+v", m)
	}
	if left, _ := testbed.ListNetns(prefix); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}
