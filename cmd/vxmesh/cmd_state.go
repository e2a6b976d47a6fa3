package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/vxmesh/vxmesh/api"
)

func cmdFDB(env *cliEnv, args []string) error {
	fs := newFlags(env, "fdb", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "a network name"); err != nil {
		return err
	}
	entries, err := fs.client().FDB(pos[0])
	if err != nil {
		return err
	}
	return fs.output(env.stdout, entries, func() error {
		t := newTable(env.stdout, "MAC", "IP", "PORT", "KIND", "VTEP", "AGE SECONDS")
		for _, e := range entries {
			age := "-"
			if e.Kind == "learned" {
				age = fmt.Sprintf("%.0f", e.AgeSeconds)
			}
			t.row(e.MAC, dash(e.IP), e.Port, e.Kind, dash(e.VTEP), age)
		}
		return t.flush()
	})
}

func cmdStats(env *cliEnv, args []string) error {
	fs := newFlags(env, "stats", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	s, err := fs.client().Stats()
	if err != nil {
		return err
	}
	return fs.output(env.stdout, s, func() error { return printStats(env.stdout, s) })
}

// printStats is the text output of stats.
func printStats(w io.Writer, s api.Stats) error {
	fmt.Fprintf(w, "Node: %s\n", s.Node)
	fmt.Fprintf(w, "Open files: %d of %d%s\n", s.OpenFDs, s.FDLimit, fdPercent(s.OpenFDs, s.FDLimit))
	fmt.Fprintf(w, "Goroutines: %d\n", s.Goroutines)
	d := s.DNS
	fmt.Fprintf(w, "DNS: %d queries, %d local, %d forwarded, %d nxdomain, %d servfail, %d overloaded, %d not forwarded (internal networks only), %d upstream errors, %d answers sent coalesced; upstream avg %.3f ms, max %.3f ms (%d answers); upstreams %s\n",
		d.Queries, d.Local, d.Forwarded, d.NXDomain, d.ServFail, d.Overloaded, d.NoEgress, d.UpstreamErrors, d.Coalesced,
		d.UpstreamLatency.AvgMs, d.UpstreamLatency.MaxMs, d.UpstreamLatency.Count, dash(strings.Join(d.Upstreams, ",")))
	if len(s.TunnelDrops) > 0 {
		fmt.Fprintf(w, "Tunnel drops: %s\n", fmtDrops(s.TunnelDrops))
	}
	if k := s.KernelTunnel; k != nil {
		if k.Mode != "" {
			fmt.Fprintf(w, "Kernel tunnel segmentation (--kernel-tunnel=%s): %s: %s\n", k.Mode, onOff(k.Active), dash(k.Reason))
		}
		fmt.Fprintf(w, "Kernel tunnel segmentation: %d super-packets sent, %d refused (split here), %d received whole\n", k.TxSupers, k.SuperFallbacks, k.RxSupers)
	}
	if s.ESPAESGCM != "" || s.ESPHelperSealed > 0 {
		fmt.Fprintf(w, "ESP: AES-GCM by %s; %d datagrams sealed by helper goroutines\n", dash(s.ESPAESGCM), s.ESPHelperSealed)
	}
	if len(s.GossipDrops) > 0 {
		fmt.Fprintf(w, "Gossip: %s\n", formatDrops(s.GossipDrops))
	}
	c := s.Conntrack
	fmt.Fprintf(w, "Conntrack: %d of %d entries, %d evictions, %d fragment evictions, %d fragments held, drops %s\n",
		c.Entries, c.Max, c.Evictions, c.FragEvictions, c.FragHeld, formatDrops(c.Drops))
	if len(s.Services) > 0 {
		fmt.Fprintln(w, "\nServices:")
		t := newTable(w, "SERVICE", "NETWORK", "VIP", "NEW CONNS", "ACTIVE CONNS", "PACKETS", "BYTES", "RETRIES", "REJECTS", "EJECTIONS")
		for _, v := range s.Services {
			t.row(v.Service, v.Network, v.VIP, v.NewConns, v.Active, v.Packets, v.Bytes, v.Retries, v.Rejects, v.Ejections)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	eg := s.Egress
	fmt.Fprintf(w, "Egress: %d tcp, %d udp, %d icmp flows open of %d; %d flows, %d bytes out, %d bytes in, %d icmp errors (%d ttl exceeded, %d held by the rate limit); refused %s\n",
		eg.ActiveTCP, eg.ActiveUDP, eg.ActiveICMP, eg.MaxFlows, eg.Total, eg.BytesOut, eg.BytesIn, eg.ICMPErrors, eg.TTLExceeded, eg.ICMPRateLimited, formatDrops(eg.Refused))
	fmt.Fprintf(w, "Published ports: %d tcp, %d udp flows open; %d flows (%d from the gateway address), %d failed (%d refused: no host address), %d bytes in, %d bytes out; %d tcp on the fast path, %d fell back\n",
		eg.IngressTCP, eg.IngressUDP, eg.IngressTotal, eg.IngressSNAT, eg.IngressFailed, eg.IngressRefused, eg.IngressBytesIn, eg.IngressBytesOut, eg.IngressFast, eg.IngressFastFallback)
	if n := eg.NAT; n != nil {
		if n.Mode != "" {
			fmt.Fprintf(w, "Published-port NAT (--mesh-nat=%s): steering %s: %s; %d open connections cut by switching off\n", n.Mode, onOff(n.Active), dash(n.Reason), n.Cut)
		}
		fmt.Fprintf(w, "Published-port NAT: %d ports steered; %d connections open, %d flows of %d, %d started, %d evicted; %d frames in, %d out; drops %s; %d resets\n",
			n.Ports, n.Open, n.Flows, n.Max, n.Total, n.Evicted, n.FramesIn, n.FramesOut, formatDrops(n.Drops), n.Resets)
	}
	for _, n := range s.Networks {
		fmt.Fprintf(w, "\nNetwork %s: flooded %d, flood without peers %d, arp suppressed %d, drops %s\n", n.Network, n.Flooded, n.FloodNoPeers, n.ARPSuppressed, formatDrops(n.Drops))
		t := newTable(w, "NAME", "RX PACKETS", "RX BYTES", "TX PACKETS", "TX BYTES", "DROPS")
		for _, p := range n.Ports {
			t.row(p.Name, p.RxPackets, p.RxBytes, p.TxPackets, p.TxBytes, formatDrops(p.Drops))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	return nil
}

// fdPercent is " (N%)" of the open-files limit used, or "" when the limit
// is unknown.
func fdPercent(open int, limit uint64) string {
	if limit == 0 {
		return ""
	}
	return fmt.Sprintf(" (%.1f%%)", 100*float64(open)/float64(limit))
}

// formatDrops prints drop counters as reason=count pairs, or "none".
func formatDrops(m map[string]uint64) string {
	var parts []string
	for k, v := range m {
		if v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, v))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printEndpoints(w io.Writer, eps []api.Endpoint) error {
	t := newTable(w, "NAME", "NETWORK", "IP", "MAC", "IFNAME", "ALIASES", "NODE", "STATE")
	for _, e := range eps {
		t.row(e.Name, e.Network, e.IP, e.MAC, dash(e.IfName), dash(strings.Join(e.Aliases, ",")), dash(e.Node), e.State)
	}
	return t.flush()
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
