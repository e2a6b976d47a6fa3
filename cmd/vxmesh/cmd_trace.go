package main

import (
	"fmt"
	"io"

	"github.com/vxmesh/vxmesh/api"
)

// cmdTrace shows what the data plane would do with the first packet of a
// flow from a local container (or endpoint address) to IP[:PORT/PROTO],
// step by step, without sending it.
func cmdTrace(env *cliEnv, args []string) error {
	fs := newFlags(env, "trace", true)
	var req api.TraceRequest
	fs.StringVar(&req.Network, "network", "", "the network the frame is sent on (required)")
	fs.StringVar(&req.From, "from", "", "the sending container on this host, or the IP address of a local endpoint (required)")
	fs.StringVar(&req.To, "to", "", "the destination: IP (an ICMP echo), IP:PORT (TCP) or IP:PORT/tcp|udp (required)")
	fs.IntVar(&req.Size, "size", 0, "the IP packet's length in bytes, to check the MTU (default: the headers alone)")
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments (use --network, --from and --to)"); err != nil {
		return err
	}
	switch {
	case req.Network == "":
		return usagef("--network NET is required")
	case req.From == "":
		return usagef("--from CONTAINER|IP is required")
	case req.To == "":
		return usagef("--to IP[:PORT/PROTO] is required")
	case req.Size < 0 || req.Size > 65535:
		return usagef("--size %d: want 0-65535", req.Size)
	}
	if _, _, _, err := api.ParseTraceTarget(req.To); err != nil {
		return usagef("--to: %v", err)
	}
	t, err := fs.client().Trace(req)
	if err != nil {
		return err
	}
	return fs.output(env.stdout, t, func() error { return printTrace(env.stdout, t) })
}

// printTrace is the text output of trace: the frame, then one line per
// decision, like ovs-appctl ofproto/trace.
func printTrace(w io.Writer, t api.Trace) error {
	to := t.Dst
	if t.DstPort != 0 {
		to = fmt.Sprintf("%s:%d", t.Dst, t.DstPort)
	}
	dmac := t.DstMAC
	if dmac == "" {
		dmac = "(unresolved)"
	}
	fmt.Fprintf(w, "Flow: %s %s (%s, %s) -> %s (%s) on network %s, port %s\n", t.Proto, t.Src, t.Container, t.SrcMAC, to, dmac, t.Network, t.Port)
	for i, s := range t.Steps {
		fmt.Fprintf(w, "%2d. %-13s %s\n", i+1, s.Stage+":", s.Result)
	}
	return nil
}
