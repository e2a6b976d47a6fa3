package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/vxmesh/vxmesh/api"
)

// cmdCapture captures the frames at a container's switch port (or a
// network's tunnel port): a pcap with -w FILE or -w - (stdout), else one
// line per frame. It ends after -c frames or on Ctrl-C, with the file
// holding whole frames only.
func cmdCapture(env *cliEnv, args []string) error {
	fs := newFlags(env, "capture", false)
	var req api.CaptureRequest
	var out string
	fs.StringVar(&req.Network, "network", "", "the network (needed if the container has several, and with --tunnel)")
	fs.BoolVar(&req.Tunnel, "tunnel", false, "capture the network's tunnel port (frames to and from other hosts, in the clear)")
	fs.StringVar(&out, "w", "", "write a pcap to FILE, or to stdout with -w - (default: print one line per frame)")
	fs.IntVar(&req.Count, "c", 0, "stop after N frames (default: until Ctrl-C)")
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	switch {
	case req.Count < 0:
		return usagef("-c %d: want a positive number of frames", req.Count)
	case req.Tunnel && len(pos) != 0:
		return usagef("--tunnel captures a network's tunnel port: give no container%s", extra(pos))
	case req.Tunnel && req.Network == "":
		return usagef("--tunnel needs --network NET")
	case !req.Tunnel:
		if err := wantArgs(pos, 1, "a container name"); err != nil {
			return err
		}
		req.Container = pos[0]
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	stream, err := fs.client().Capture(ctx, req)
	if err != nil {
		return err
	}
	defer stream.Close()
	r, err := pcapgo.NewReader(stream)
	if err != nil {
		return fmt.Errorf("capture stream: %w", err)
	}
	write, closeOut, err := captureOutput(env, out, r)
	if err != nil {
		return err
	}
	n, err := copyFrames(ctx, r, write)
	if cerr := closeOut(); err == nil {
		err = cerr
	}
	if dropped, ok := stream.Dropped(); ok && dropped > 0 {
		fmt.Fprintf(env.stderr, "%d frames captured, %d left out (read too slowly)\n", n, dropped)
	} else {
		fmt.Fprintf(env.stderr, "%d frames captured\n", n)
	}
	return err
}

// captureOutput returns what writes each frame for -w out and what closes
// the output.
func captureOutput(env *cliEnv, out string, r *pcapgo.Reader) (func(gopacket.CaptureInfo, []byte) error, func() error, error) {
	if out == "" {
		return func(ci gopacket.CaptureInfo, data []byte) error {
			_, err := fmt.Fprintln(env.stdout, frameSummary(ci, data))
			return err
		}, func() error { return nil }, nil
	}
	var w io.Writer = env.stdout
	closeOut := func() error { return nil }
	if out != "-" {
		f, err := os.Create(out)
		if err != nil {
			return nil, nil, err
		}
		w, closeOut = f, f.Close
	}
	pw := pcapgo.NewWriterNanos(w)
	if err := pw.WriteFileHeader(r.Snaplen(), r.LinkType()); err != nil {
		closeOut()
		return nil, nil, err
	}
	return pw.WritePacket, closeOut, nil
}

// copyFrames hands every whole frame of r to write until the stream ends;
// a stream cut by ctx (Ctrl-C) ends cleanly.
func copyFrames(ctx context.Context, r *pcapgo.Reader, write func(gopacket.CaptureInfo, []byte) error) (int, error) {
	n := 0
	for {
		data, ci, err := r.ReadPacketData()
		switch {
		case errors.Is(err, io.EOF), err != nil && ctx.Err() != nil:
			return n, nil
		case err != nil:
			return n, fmt.Errorf("capture stream: %w", err)
		}
		if err := write(ci, data); err != nil {
			return n, err
		}
		n++
	}
}

// frameSummary is a one-line description of an Ethernet frame.
func frameSummary(ci gopacket.CaptureInfo, data []byte) string {
	ts := ci.Timestamp.Format("15:04:05.000000")
	p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
	eth, ok := p.LinkLayer().(*layers.Ethernet)
	if !ok {
		return fmt.Sprintf("%s malformed frame, length %d", ts, ci.Length)
	}
	head := fmt.Sprintf("%s %s > %s", ts, eth.SrcMAC, eth.DstMAC)
	if a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
		if a.Operation == layers.ARPReply {
			return fmt.Sprintf("%s ARP reply %s is-at %s, length %d", head, net.IP(a.SourceProtAddress), net.HardwareAddr(a.SourceHwAddress), ci.Length)
		}
		return fmt.Sprintf("%s ARP who-has %s tell %s, length %d", head, net.IP(a.DstProtAddress), net.IP(a.SourceProtAddress), ci.Length)
	}
	nl := p.NetworkLayer()
	if nl == nil {
		return fmt.Sprintf("%s ethertype %s, length %d", head, eth.EthernetType, ci.Length)
	}
	src, dst := nl.NetworkFlow().Endpoints()
	proto := nl.LayerType().String()
	if tl := p.TransportLayer(); tl != nil {
		s, d := tl.TransportFlow().Endpoints()
		return fmt.Sprintf("%s %s %s:%s > %s:%s %s, length %d", head, proto, src, s, dst, d, tl.LayerType(), ci.Length)
	}
	if l := p.Layer(layers.LayerTypeICMPv4); l != nil {
		return fmt.Sprintf("%s %s %s > %s %s, length %d", head, proto, src, dst, l.(*layers.ICMPv4).TypeCode, ci.Length)
	}
	return fmt.Sprintf("%s %s %s > %s, length %d", head, proto, src, dst, ci.Length)
}
