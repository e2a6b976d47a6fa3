package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/vxmesh/vxmesh/api"
)

func networkCreate(env *cliEnv, args []string) error {
	fs := newFlags(env, "network create", true)
	var req api.NetworkCreateRequest
	fs.StringVar(&req.Subnet, "subnet", "", "IPv4 subnet in CIDR form, without the hosts' underlay addresses (default: a free /24 of 10.0.0.0/8 outside the underlay's LAN)")
	fs.StringVar(&req.Gateway, "gateway", "", "gateway address (default: the subnet's first address)")
	fs.IntVar(&req.MTU, "mtu", 0, "network MTU (default: underlay MTU - 50; encrypted: - 95)")
	vni := fs.Uint("vni", 0, "VXLAN network identifier (default: the lowest free from 4096)")
	var vteps stringList
	fs.Var(&vteps, "vtep", "external RFC 7348 VTEP address `IP` (repeatable)")
	fs.BoolVar(&req.Encrypted, "encrypted", false, "encrypt the network's traffic between hosts (ESP in UDP, AES-GCM)")
	fs.StringVar(&req.Cipher, "cipher", "", "cipher of an encrypted network: aes128-gcm (default) or aes256-gcm")
	fs.BoolVar(&req.Internal, "internal", false, "no egress: containers reach only the overlay (the gateway still answers ping and DNS)")
	fs.IntVar(&req.StormLimit, "storm-limit", 0, "flooded frames (broadcast, multicast, unknown unicast) per second each container may send; 0: the default 1000, -1: no limit")
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "a network name"); err != nil {
		return err
	}
	req.Name, req.VNI, req.VTEPs = pos[0], uint32(*vni), vteps
	if *vni > 1<<24-1 {
		return usagef("network %q: --vni %d: out of range 1-16777215", req.Name, *vni)
	}
	c := fs.client()
	var n api.Network
	err = noteClaimWaits(env, c, func() (err error) {
		n, err = c.CreateNetwork(req)
		return err
	})
	if err != nil {
		return err
	}
	return fs.output(env.stdout, n, func() error {
		_, err := fmt.Fprintln(env.stdout, n.Name)
		return err
	})
}

func networkLs(env *cliEnv, args []string) error {
	fs := newFlags(env, "network ls", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 0, "no arguments"); err != nil {
		return err
	}
	nets, err := fs.client().Networks()
	if err != nil {
		return err
	}
	return fs.output(env.stdout, nets, func() error {
		t := newTable(env.stdout, "NAME", "ID", "SUBNET", "GATEWAY", "VNI", "MTU", "ENCRYPTED", "INTERNAL")
		for _, n := range nets {
			enc := "no"
			if n.Encrypted {
				enc = n.Cipher
			}
			internal := "no"
			if n.Internal {
				internal = "yes"
			}
			t.row(n.Name, shortID(n.ID), n.Subnet, n.Gateway, n.VNI, n.MTU, enc, internal)
		}
		return t.flush()
	})
}

func networkInspect(env *cliEnv, args []string) error {
	fs := newFlags(env, "network inspect", true)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "a network name"); err != nil {
		return err
	}
	n, err := fs.client().Network(pos[0])
	if err != nil {
		return err
	}
	return fs.output(env.stdout, n, func() error { return printNetwork(env.stdout, n) })
}

// printNetwork is network inspect's text output.
func printNetwork(w io.Writer, n api.Network) error {
	fmt.Fprintf(w, "Name:     %s\nID:       %s\nSubnet:   %s\nGateway:  %s\nVNI:      %d\nMTU:      %d\nCreated:  %s\n",
		n.Name, n.ID, n.Subnet, n.Gateway, n.VNI, n.MTU, n.Created.Format("2006-01-02 15:04:05 MST"))
	fmt.Fprintf(w, "VTEPs:    %s\n", dash(strings.Join(n.VTEPs, ", ")))
	storm := fmt.Sprintf("%d flooded frames/s per container", n.StormLimit)
	if n.StormLimit < 0 {
		storm = "unlimited"
	}
	fmt.Fprintf(w, "Storm limit: %s\n", storm)
	fmt.Fprintf(w, "Egress:   %s\n", egressOf(n))
	if n.Encrypted {
		fmt.Fprintf(w, "Encrypted: %s (ESP in UDP)\n", n.Cipher)
	}
	fmt.Fprintf(w, "Endpoints: %d\n", len(n.Endpoints))
	if len(n.Endpoints) > 0 {
		if err := printEndpoints(w, n.Endpoints); err != nil {
			return err
		}
	}
	if len(n.Drops) > 0 {
		fmt.Fprintf(w, "Drops:    %s\n", fmtDrops(n.Drops))
	}
	if n.FloodNoPeers > 0 {
		fmt.Fprintf(w, "Flood without peers: %d (no other host yet; not an error)\n", n.FloodNoPeers)
	}
	fmt.Fprintf(w, "Peers: %d\n", len(n.Peers))
	if len(n.Peers) > 0 {
		t := newTable(w, "VTEP", "NODE", "RX PACKETS", "RX BYTES", "TX PACKETS", "TX BYTES", "TX DROPS")
		for _, p := range n.Peers {
			t.row(p.VTEP, dash(p.Node), p.RxPackets, p.RxBytes, p.TxPackets, p.TxBytes, p.TxDrops)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if n.Encrypted {
		fmt.Fprintf(w, "SAs: %d\n", len(n.SAs))
		if len(n.SAs) > 0 {
			t := newTable(w, "NODE", "VTEP", "DIRECTION", "KEY", "STATE", "SPI", "CIPHER", "SEQ", "PACKETS", "BYTES", "DROPS")
			for _, sa := range n.SAs {
				t.row(sa.Node, sa.VTEP, sa.Direction, sa.Key, sa.State, sa.SPI, sa.Cipher, sa.Seq, sa.Packets, sa.Bytes, dash(fmtDrops(sa.Drops)))
			}
			return t.flush()
		}
	}
	return nil
}

// fmtDrops prints drop counters as reason=count, sorted by reason.
func fmtDrops(m map[string]uint64) string {
	var out []string
	for r, n := range m {
		out = append(out, fmt.Sprintf("%s=%d", r, n))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func networkUpdate(env *cliEnv, args []string) error {
	fs := newFlags(env, "network update", true)
	var req api.NetworkUpdateRequest
	var add, rm stringList
	fs.Var(&add, "add-vtep", "add an external RFC 7348 VTEP `IP` (repeatable)")
	fs.Var(&rm, "rm-vtep", "remove an external VTEP `IP` (repeatable)")
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if err := wantArgs(pos, 1, "a network name"); err != nil {
		return err
	}
	if len(add) == 0 && len(rm) == 0 {
		return usagef("network %q: nothing to update (want --add-vtep or --rm-vtep)", pos[0])
	}
	req.AddVTEPs, req.RemoveVTEPs = add, rm
	n, err := fs.client().UpdateNetwork(pos[0], req)
	if err != nil {
		return err
	}
	return fs.output(env.stdout, n, func() error {
		_, err := fmt.Fprintln(env.stdout, n.Name)
		return err
	})
}

func networkRm(env *cliEnv, args []string) error {
	fs := newFlags(env, "network rm", false)
	pos, _, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return usagef("want one or more network names")
	}
	return removeEach(env, pos, fs.client().RemoveNetwork)
}

// shortID is the first 12 characters of an ID, as tables show it.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// egressOf says whether a network's containers reach outside the overlay.
func egressOf(n api.Network) string {
	if n.Internal {
		return "no (internal)"
	}
	return "yes"
}
