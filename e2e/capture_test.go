package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// icmpBetween counts the frames of a finished pcap and the ICMP ones
// between IPs a and b (either direction); the pcap must parse to its end.
func icmpBetween(t *testing.T, pcap []byte, a, b string) (frames, icmp int) {
	t.Helper()
	frames, icmp, err := countICMP(pcap, a, b)
	if err != nil {
		t.Fatalf("pcap after %d frames: %v", frames, err)
	}
	return frames, icmp
}

// countICMP counts the whole frames of a pcap and the ICMP ones between
// a and b, up to the end or the first error.
func countICMP(pcap []byte, a, b string) (frames, icmp int, err error) {
	r, err := pcapgo.NewReader(bytes.NewReader(pcap))
	if err != nil {
		return 0, 0, err
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		return 0, 0, fmt.Errorf("link type %v, want Ethernet", r.LinkType())
	}
	for {
		data, _, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return frames, icmp, nil
		}
		if err != nil {
			return frames, icmp, err
		}
		frames++
		p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
		if ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ip != nil && p.Layer(layers.LayerTypeICMPv4) != nil {
			if s, d := ip.SrcIP.String(), ip.DstIP.String(); s == a && d == b || s == b && d == a {
				icmp++
			}
		}
	}
}

// pingUntil pings to from c in the background every 200 ms until done is
// closed.
func pingUntil(e *env, c, to string, done <-chan struct{}) {
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(200 * time.Millisecond):
				e.pingOnce(c, to)
			}
		}
	}()
}

// TestCapture: `vxmesh capture` writes a pcap of a container's port (-c N
// frames to a file), streams one to stdout (-w -) that ends cleanly on
// Ctrl-C, and shows an encrypted network's tunnel port in the clear.
func TestCapture(t *testing.T) {
	es := newCluster(t, 2)
	h1, h2 := es[0], es[1]
	h1.network("sec", "10.74.0.0/24", "--encrypted")
	h1.run("c1", "sec")
	h2.waitNetwork("sec") // network create does not wait for the other hosts
	h2.run("c2", "sec")
	ip1, ip2 := addrOnly(h1.ip("c1")), addrOnly(h2.ip("c2"))
	h1.mustPing("c1", ip2)

	t.Run("count to file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "c1.pcap")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		done := make(chan struct{})
		defer close(done)
		pingUntil(h1, "c1", ip2, done)
		if out, err := h1.h.CLIContext(ctx, "capture", "c1", "-c", "4", "-w", file); err != nil {
			t.Fatalf("capture -c 4: %v (%s)", err, out)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if frames, icmp := icmpBetween(t, b, ip1, ip2); frames != 4 || icmp == 0 {
			t.Errorf("pcap has %d frames, %d ICMP between %s and %s; want 4 frames with ICMP", frames, icmp, ip1, ip2)
		}
		if _, err := exec.LookPath("tshark"); err != nil {
			t.Log("tshark not installed: not checking that it reads the file")
			return
		}
		if out, err := exec.Command("tshark", "-r", file).CombinedOutput(); err != nil || !bytes.Contains(out, []byte("ICMP")) {
			t.Errorf("tshark -r: %v\n%s", err, out)
		}
	})

	t.Run("one line per frame", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		done := make(chan struct{})
		defer close(done)
		pingUntil(h1, "c1", ip2, done)
		out, err := h1.h.CLIContext(ctx, "capture", "c1", "-c", "6")
		if err != nil {
			t.Fatalf("capture -c 6: %v", err)
		}
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if len(lines) != 6 || !strings.Contains(out, ip1+" > "+ip2+" EchoRequest") {
			t.Errorf("capture -c 6 printed %d lines, want 6 with an echo request %s > %s:\n%s", len(lines), ip1, ip2, out)
		}
	})

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"stdout until Ctrl-C", []string{"capture", "c1", "--network", "sec", "-w", "-"}},
		{"encrypted tunnel in the clear", []string{"capture", "--network", "sec", "--tunnel", "-w", "-"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := h1.h.Command(context.Background(), tc.args...)
			var stdout, stderr syncBuffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			p := startBackground(t, cmd)
			done := make(chan struct{})
			pingUntil(h1, "c1", ip2, done)
			eventually(t, 20*time.Second, func() error {
				if _, icmp, _ := countICMP([]byte(stdout.String()), ip1, ip2); icmp < 2 {
					return errors.New("fewer than 2 ICMP frames")
				}
				return nil
			}, "capture %v shows no ping between %s and %s; stderr %q", tc.args, ip1, ip2, stderr.String())
			close(done)
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			if exited, err := p.wait(10 * time.Second); !exited || err != nil {
				t.Fatalf("after Ctrl-C: exited %v, err %v; stderr %q", exited, err, stderr.String())
			}
			icmpBetween(t, []byte(stdout.String()), ip1, ip2) // whole frames only, to the end
		})
	}
}
