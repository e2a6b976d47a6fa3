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
	if fs.format == "json" {
		return printJSON(env.stdout, entries)
	}
	t := newTable(env.stdout, "MAC", "IP", "PORT", "KIND", "VTEP", "AGE")
	for _, e := range entries {
		age := "-"
		if e.Kind == "learned" {
			age = fmt.Sprintf("%.0fs", e.AgeSeconds)
		}
		t.row(e.MAC, dash(e.IP), e.Port, e.Kind, dash(e.VTEP), age)
	}
	return t.flush()
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
	if fs.format == "json" {
		return printJSON(env.stdout, s)
	}
	fmt.Fprintf(env.stdout, "Node: %s\n", s.Node)
	d := s.DNS
	fmt.Fprintf(env.stdout, "DNS: %d queries, %d local, %d forwarded, %d nxdomain, %d servfail, %d overloaded, %d upstream errors; upstream avg %.3f ms, max %.3f ms (%d answers); upstreams %s\n",
		d.Queries, d.Local, d.Forwarded, d.NXDomain, d.ServFail, d.Overloaded, d.UpstreamErrors,
		d.UpstreamLatency.AvgMs, d.UpstreamLatency.MaxMs, d.UpstreamLatency.Count, dash(strings.Join(d.Upstreams, ",")))
	if len(s.TunnelDrops) > 0 {
		fmt.Fprintf(env.stdout, "Tunnel drops: %s\n", fmtDrops(s.TunnelDrops))
	}
	for _, n := range s.Networks {
		fmt.Fprintf(env.stdout, "\nNetwork %s: flooded %d, flood without peers %d, arp suppressed %d, drops %s\n", n.Network, n.Flooded, n.FloodNoPeers, n.ARPSuppressed, formatDrops(n.Drops))
		t := newTable(env.stdout, "PORT", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES", "DROPS")
		for _, p := range n.Ports {
			t.row(p.Name, p.RxPackets, p.RxBytes, p.TxPackets, p.TxBytes, formatDrops(p.Drops))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	return nil
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

func printEndpoints(w io.Writer, eps []api.Endpoint) {
	t := newTable(w, "CONTAINER", "NETWORK", "IP", "MAC", "IFNAME", "ALIASES", "NODE", "STATE")
	for _, e := range eps {
		t.row(e.Name, e.Network, e.IP, e.MAC, dash(e.IfName), dash(strings.Join(e.Aliases, ",")), dash(e.Node), e.State)
	}
	t.flush()
}
