package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// IperfResult is the part of iperf3's JSON report (-J) a throughput
// comparison needs.
type IperfResult struct {
	// ReceivedBitsPerSecond is end.sum_received.bits_per_second.
	ReceivedBitsPerSecond float64
	// ReceivedBytes is end.sum_received.bytes.
	ReceivedBytes int64
	// Seconds is the measured duration (end.sum_received.seconds).
	Seconds float64
	// Retransmits is end.sum_sent.retransmits (TCP only).
	Retransmits int64
}

// Gbps returns the received throughput in Gbit/s.
func (r IperfResult) Gbps() float64 { return r.ReceivedBitsPerSecond / 1e9 }

// ParseIperf3JSON parses the report of `iperf3 -c ... -J`.
func ParseIperf3JSON(b []byte) (IperfResult, error) {
	var rep struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int64 `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived *struct {
				Seconds       float64 `json:"seconds"`
				Bytes         int64   `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return IperfResult{}, fmt.Errorf("iperf3 JSON: %w", err)
	}
	if rep.Error != "" {
		return IperfResult{}, fmt.Errorf("iperf3: %s", rep.Error)
	}
	if rep.End.SumReceived == nil {
		return IperfResult{}, fmt.Errorf("iperf3 JSON: no end.sum_received")
	}
	s := rep.End.SumReceived
	return IperfResult{
		ReceivedBitsPerSecond: s.BitsPerSecond,
		ReceivedBytes:         s.Bytes,
		Seconds:               s.Seconds,
		Retransmits:           rep.End.SumSent.Retransmits,
	}, nil
}

// PingResult summarises a ping run.
type PingResult struct {
	Transmitted, Received int
	Min, Avg, Max         time.Duration
}

var (
	pingCountRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingRTTRE   = regexp.MustCompile(`(?:rtt|round-trip) min/avg/max/(?:mdev|stddev) = ([\d.]+)/([\d.]+)/([\d.]+)/[\d.]+ ms`)
)

// ParsePing parses the summary lines of iputils (or busybox) ping.
func ParsePing(out string) (PingResult, error) {
	var r PingResult
	m := pingCountRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("ping: no summary in output %q", truncate(out, 200))
	}
	r.Transmitted, _ = strconv.Atoi(m[1])
	r.Received, _ = strconv.Atoi(m[2])
	if m := pingRTTRE.FindStringSubmatch(out); m != nil {
		r.Min = msDuration(m[1])
		r.Avg = msDuration(m[2])
		r.Max = msDuration(m[3])
	}
	return r, nil
}

func msDuration(s string) time.Duration {
	f, _ := strconv.ParseFloat(s, 64)
	return time.Duration(f * float64(time.Millisecond))
}

// WaitTCPListen polls until something listens on TCP port inside the
// network namespace at netnsPath, or ctx ends.
func WaitTCPListen(ctx context.Context, netnsPath string, port int) error {
	filter := fmt.Sprintf("sport = :%d", port)
	for {
		out, err := InNetns(ctx, netnsPath, "ss", "-Hltn", filter)
		if err == nil && strings.TrimSpace(out) != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nothing listening on TCP port %d in %s: %w", port, netnsPath, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
