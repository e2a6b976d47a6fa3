package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vxmesh/vxmesh/internal/testbed"
	"github.com/vxmesh/vxmesh/internal/testenv"
)

func TestTableShowsRatioToKernel(t *testing.T) {
	var out bytes.Buffer
	printTable(&out, config{duration: 10 * time.Second, pings: 20, mtu: 1450}, []result{
		{name: "vxmesh", desc: "userspace", group: singleHost, iperf: testbed.IperfResult{ReceivedBitsPerSecond: 2.5e9}, ping: testbed.PingResult{Received: 20, Avg: 90 * time.Microsecond}},
		{name: "kernel", desc: "bridge", group: singleHost, baseline: true, iperf: testbed.IperfResult{ReceivedBitsPerSecond: 10e9}, ping: testbed.PingResult{Received: 20, Avg: 30 * time.Microsecond}},
	})
	s := out.String()
	for _, want := range []string{"2.50", "10.00", "0.25", "1.00", "0.090 ms", "MTU 1450"} {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
}

func TestKernelTopologyMeasuresAndCleansUp(t *testing.T) {
	if err := checkTools(); err != nil {
		testenv.Missing(t, "%v", err)
	}
	prefix := "vxbt" + testbed.RandomID(2)
	var log bytes.Buffer
	m, err := benchKernel(context.Background(), config{duration: time.Second, pings: 5, mtu: 1450, streams: 2, rr: true}, prefix, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if m.iperf.ReceivedBitsPerSecond <= 0 || m.multi.ReceivedBitsPerSecond <= 0 || m.rr.Transactions <= 0 || m.ping.Received != 5 || m.ping.Avg <= 0 {
		t.Errorf("measurement %+v", m)
	}
	if left, _ := testbed.ListNetns(prefix); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}

func TestTableGroupsTwoHostRowsWithTheirOwnBaseline(t *testing.T) {
	var out bytes.Buffer
	printTable(&out, config{duration: 10 * time.Second, pings: 20, mtu: 1450}, []result{
		{name: "vxmesh", group: singleHost, iperf: testbed.IperfResult{ReceivedBitsPerSecond: 2e9}, ping: testbed.PingResult{Received: 20}},
		{name: "kernel", group: singleHost, baseline: true, iperf: testbed.IperfResult{ReceivedBitsPerSecond: 8e9}, ping: testbed.PingResult{Received: 20}},
		{name: "vxmesh-overlay", group: twoHosts, iperf: testbed.IperfResult{ReceivedBitsPerSecond: 3e9}, ping: testbed.PingResult{Received: 20}},
		{name: "kernel-vxlan", group: twoHosts, baseline: true, iperf: testbed.IperfResult{ReceivedBitsPerSecond: 4e9}, ping: testbed.PingResult{Received: 20}},
	})
	s := out.String()
	single, two, ok := strings.Cut(s, twoHosts)
	if !ok || !strings.Contains(single, singleHost) {
		t.Fatalf("no separate two-host section:\n%s", s)
	}
	if !strings.Contains(single, "0.25") || !strings.Contains(two, "0.75") || strings.Contains(two, "vxmesh  ") {
		t.Errorf("ratios not per group (want 0.25 single host, 0.75 two hosts):\n%s", s)
	}
}

func TestKernelVXLANTopologyMeasuresAndCleansUp(t *testing.T) {
	if err := checkTools(); err != nil {
		testenv.Missing(t, "%v", err)
	}
	prefix := "vxbt" + testbed.RandomID(2)
	var log bytes.Buffer
	m, err := benchKernelVXLAN(context.Background(), config{duration: time.Second, pings: 5, mtu: 1450, streams: 2, rr: true}, prefix, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if m.iperf.ReceivedBitsPerSecond <= 0 || m.multi.ReceivedBitsPerSecond <= 0 || m.rr.Transactions <= 0 || m.ping.Received != 5 || m.ping.Avg <= 0 {
		t.Errorf("measurement %+v", m)
	}
	if left, _ := testbed.ListNetns(prefix); len(left) != 0 {
		t.Errorf("left behind: %v", left)
	}
}
